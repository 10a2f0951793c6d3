"""Time loading (+HU) and scoring of a 60-slice 512x512 int16 series; report peak memory.

Targets (issue 2): loading <= 1.0 s, scoring <= 0.2 s, peak memory <= 1 GiB.

Run ``python benchmarks/bench_load_score.py``.  The series is written to a
temporary folder; loading and scoring run in a fresh child process so that its
peak resident memory (``VmHWM``) counts only that work plus the imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_SLICES, SIZE = 60, 512


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A body-like volume with noise and 40 calcified spots, and their artery labels."""
    rng = np.random.default_rng(seed)
    hu = np.full((N_SLICES, SIZE, SIZE), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = (yy - SIZE / 2) ** 2 / 0.8 + (xx - SIZE / 2) ** 2 < (SIZE * 0.42) ** 2
    hu[:, body] = 40.0
    hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for i in range(40):
        k, r, c = rng.integers(5, N_SLICES - 5), rng.integers(180, 330), rng.integers(180, 330)
        radius = rng.integers(1, 5)
        spot = (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        for dk in range(rng.integers(1, 4)):
            hu[k + dk][spot] = rng.uniform(150, 900)
            labels[k + dk][spot] = 1 + i % 4
    return np.rint(hu), labels


def peak_rss_kib() -> int:
    """Peak resident memory of this process in KiB.

    ``VmHWM`` belongs to the process image started by exec; ``ru_maxrss`` is not
    used because Linux carries it over from the forking parent (getrusage(2)),
    which here holds the whole generated series.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(folder: Path, labels_path: Path, repeats: int) -> None:
    """Load and score ``repeats`` times; print timings and peak memory as JSON."""
    from pipeline.reading.loader import load_series
    from pipeline.scoring.result import score_series
    from pipeline.scoring.agatston import ScoringProfile

    base_rss = peak_rss_kib()
    labels = np.load(labels_path)
    load_s, score_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        series = load_series(folder)
        t1 = time.perf_counter()
        result = score_series(series, labels, ScoringProfile(), "labels:bench")
        t2 = time.perf_counter()
        load_s.append(t1 - t0)
        score_s.append(t2 - t1)
        del series
    peak_rss = peak_rss_kib()
    print(
        json.dumps(
            {
                "load_s": load_s,
                "score_s": score_s,
                "total_agatston": result.score.total.agatston,
                "rss_after_imports_mib": base_rss / 1024,
                "peak_rss_mib": peak_rss / 1024,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, type=Path, metavar=("FOLDER", "LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeats)
        return 0

    from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

    hu, labels = make_case()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        datasets = build_ct_datasets(
            hu,
            pixel_spacing_mm=(0.4, 0.4),
            slice_thickness_mm=3.0,
            increment_mm=3.0,
            header=CTHeader(),
            descending=True,
        )
        write_datasets(datasets, folder)
        del datasets
        np.save(Path(tmp) / "labels.npy", labels)  # the child scores these labels
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        labels_path = Path(tmp) / "labels.npy"
        command = [sys.executable, __file__, "--repeats", str(args.repeats), "--child", str(folder), str(labels_path)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"series: {N_SLICES} slices {SIZE}x{SIZE} int16, {size_mb:.1f} MB on disk, {args.repeats} runs")
    for key, target in (("load_s", 1.0), ("score_s", 0.2)):
        values = figures[key]
        print(
            f"{key[:-2]:>6}: median {statistics.median(values):.3f} s, min {min(values):.3f} s, "
            f"max {max(values):.3f} s (target <= {target} s)"
        )
    print(
        f"  peak: {figures['peak_rss_mib']:.0f} MiB resident "
        f"(after imports {figures['rss_after_imports_mib']:.0f} MiB; target <= 1024 MiB)"
    )
    print(f" score: total Agatston {figures['total_agatston']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
