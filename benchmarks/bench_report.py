"""Time the report objects of a 60-slice 512x512 series: SEG, SR, summary image, and the whole report.

Target (issue 5): SR + SEG + summary in at most 2 s on the CI CPU.  highdicom
SEG creation has been slow in the past, so it is timed on its own.

Run: ``python benchmarks/bench_report.py [--repeat 3] [--png summary.png]``
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dicom_sr.config import ReportConfig
from dicom_sr.seg import build_lesion_seg
from dicom_sr.sr import build_sr
from dicom_sr.summary import build_summary, render_summary
from dicom_sr.writer import build_report
from pipeline.model.identity import AlgorithmIdentity
from pipeline.scoring.result import score_series
from pipeline.scoring.agatston import ScoringProfile
from pipeline.reading.series import Acquisition, CTSeries, Geometry
from training.phantom.ct_writer import CTHeader, build_ct_datasets

IDENTITY = AlgorithmIdentity(name="cacnode-bench", version="0.0.0", uid="2.25.98765432109876543210")


def chest_series(n_slices: int = 60, size: int = 512, seed: int = 0) -> tuple[CTSeries, np.ndarray]:
    """A chest-like 512x512 series with calcified spots in all four arteries."""
    rng = np.random.default_rng(seed)
    hu = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (size * 0.36)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    hu[:, body] = 40.0
    heart = (yy - size * 0.45) ** 2 + (xx - size * 0.55) ** 2 < (size * 0.15) ** 2
    hu[:, heart] = 50.0
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    centres = {1: (200, 270), 2: (220, 320), 3: (250, 330), 4: (260, 220)}
    for label, (r, c) in centres.items():
        for k in range(10 + 5 * label, 16 + 7 * label):
            dr, dc = rng.integers(-3, 4, 2)
            hu[k, r + dr - 2 : r + dr + 3, c + dc - 2 : c + dc + 3] = rng.uniform(180, 700)
            labels[k, r + dr - 5 : r + dr + 6, c + dc - 5 : c + dc + 6] = label
    spacing = (0.39, 0.39)
    datasets = build_ct_datasets(hu, pixel_spacing_mm=spacing, slice_thickness_mm=3.0, increment_mm=3.0,
                                 origin_mm=(-100.0, -100.0, -90.0), header=CTHeader())  # fmt: skip
    geometry = Geometry(
        shape=hu.shape,
        pixel_spacing_mm=spacing,
        increment_mm=3.0,
        slice_thickness_mm=3.0,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        positions=tuple(tuple(float(v) for v in ds.ImagePositionPatient) for ds in datasets),
    )
    series = CTSeries(str(datasets[0].SeriesInstanceUID), str(datasets[0].StudyInstanceUID), hu, geometry,
                      Acquisition(kvp=120.0), tuple(datasets))  # fmt: skip
    return series, labels


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time in seconds over ``repeat`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--png", type=Path, help="also save the summary image as PNG here")
    args = parser.parse_args()

    series, labels = chest_series()
    result = score_series(series, labels, ScoringProfile(), "labels:bench")
    config = ReportConfig()
    print(f"series: {series.hu.shape[0]} slices {series.hu.shape[1]}x{series.hu.shape[2]}, "
          f"total Agatston {result.score.total.agatston:.1f}, {args.repeat} runs, median")  # fmt: skip

    def seg_only() -> object:
        return build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902,
                                series_description=config.seg_series_description)  # fmt: skip

    t_seg, seg = timed(seg_only, args.repeat)
    t_sr, _ = timed(lambda: build_sr(result, series.datasets, IDENTITY, config, seg), args.repeat)
    t_render, image = timed(lambda: render_summary(result, labels, series, IDENTITY, config), args.repeat)
    t_sc, _ = timed(lambda: build_summary(result, labels, series, IDENTITY, config), args.repeat)
    t_all, report = timed(lambda: build_report(result, labels, series, IDENTITY, config), args.repeat)

    def encode() -> int:
        size = 0
        for ds in report.datasets():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            size += buffer.tell()
        return size

    t_write, size = timed(encode, args.repeat)
    print(f"  highdicom SEG build        {t_seg:6.3f} s")
    print(f"  SR build                   {t_sr:6.3f} s")
    print(f"  summary render (Pillow)    {t_render:6.3f} s")
    print(f"  summary SC build (total)   {t_sc:6.3f} s")
    print(f"  build_report SR+SEG+SC     {t_all:6.3f} s   (target <= 2 s)")
    print(f"  encode to bytes            {t_write:6.3f} s   ({size / 1e6:.1f} MB)")
    print(f"  report + encode            {t_all + t_write:6.3f} s")
    if args.png:
        image.save(args.png)
        print(f"summary image saved to {args.png} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
