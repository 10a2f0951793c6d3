"""Ingest speed: the same dcmtk storescu sending the same 60-slice 512x512 CT series to four receivers.

Receivers, alternating round by round so that machine noise hits them alike:
the node (``cacnode serve``, fsync of every instance, long quiet period so
nothing is scored meanwhile), dcmtk ``storescp``, Orthanc, and pynetdicom's
bundled ``storescp`` app.  Prints the seconds of every send and the median
per receiver.

    python benchmarks/bench_ingest.py [--rounds 3] [--slices 60]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from conftest import dcmtk, free_port, simple_hu_volume  # noqa: E402
from node_support import (  # noqa: E402
    DcmtkStoreSCP,
    NodeProcess,
    OrthancPeer,
    echo,
    wait_for,
    write_node_config,
)

from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets  # noqa: E402


def make_series(folder: Path, slices: int) -> int:
    """Write the benchmark series; return its size in bytes."""
    datasets = build_ct_datasets(
        simple_hu_volume(slices, 512), pixel_spacing_mm=(0.4, 0.4), slice_thickness_mm=3.0, increment_mm=3.0,
        origin_mm=(-102.4, -102.4, -100.0), header=CTHeader(),
    )
    paths = write_datasets(datasets, folder)
    return sum(p.stat().st_size for p in paths)


def send(port: int, called: str, folder: Path) -> float:
    """Seconds for dcmtk storescu to send ``folder`` (one association)."""
    start = time.perf_counter()
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", "BENCH", "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called}:{port} failed: {result.stderr.strip()}")
    return elapsed


class PynetdicomStoreSCP:
    """pynetdicom's bundled storescp app (``python -m pynetdicom storescp``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> PynetdicomStoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "storescp", str(self.port), "-od", str(self.folder), "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: echo(self.port, called="STORESCP"), 60, "pynetdicom storescp")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def weights_for(root: Path) -> Path:
    bundled = REPO / "models" / "cacnode-v1.pt"
    if bundled.is_file():
        return bundled
    import torch

    from pipeline.model.unet import UNet3D, UNetConfig
    from pipeline.model.preprocess import PreprocessConfig
    from pipeline.model.weights import WeightsFile, new_uid, save_weights

    model = UNetConfig(channels=(4, 8, 8, 8))
    torch.manual_seed(0)
    path = root / "random.pt"
    save_weights(WeightsFile("bench-random", "0", new_uid(), model, PreprocessConfig(), UNet3D(model).state_dict()),
                 path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        size = make_series(root / "series", args.slices)
        print(f"series: {args.slices} slices of 512x512, {size / 1e6:.1f} MB")
        port = free_port()
        config = write_node_config(
            root / "node.toml", port=port, storage=root / "node-var", weights=weights_for(root),
            quiet_seconds=3600.0,  # nothing is scored while we measure
        )
        node = NodeProcess(config, port, root / "node.log").start()
        dcm = DcmtkStoreSCP(root / "dcmtk").start()
        orthanc = OrthancPeer(root / "orthanc").start()
        pyn = PynetdicomStoreSCP(root / "pynetdicom").start()
        receivers = {
            "cacnode (fsync)": (node.port, "CACNODE"),
            "dcmtk storescp": (dcm.port, dcm.aet),
            "Orthanc": (orthanc.dicom_port, orthanc.aet),
            "pynetdicom storescp": (pyn.port, "STORESCP"),
        }
        times: dict[str, list[float]] = {name: [] for name in receivers}
        try:
            for r in range(args.rounds):
                order = list(receivers) if r % 2 == 0 else list(reversed(receivers))
                for name in order:
                    seconds = send(*receivers[name], root / "series")
                    times[name].append(seconds)
                    print(f"round {r + 1}: {name:<20} {seconds:6.2f} s")
        finally:
            node.stop()
            dcm.stop()
            orthanc.stop()
            pyn.stop()
        print("\nmedian seconds (MB/s):")
        for name, values in sorted(times.items(), key=lambda kv: statistics.median(kv[1])):
            med = statistics.median(values)
            print(f"  {name:<20} {med:6.2f} s  ({size / 1e6 / med:6.1f} MB/s)  runs: "
                  + ", ".join(f"{v:.2f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
