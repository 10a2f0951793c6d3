"""Inference time of a 60-slice 512x512 series: preprocessing + network + lesion classifier + scoring.

The stages are timed one after the other (``total``), then end to end as
``Labeller.predict_volume`` runs them (``end to end``: the candidates are found
in a thread while the network runs; that is the time to judge).

Usage::

    python benchmarks/bench_inference.py [--weights models/cacnode-v1.pt] [--device cpu|cuda] [--repeats 5]
                                          [--network-wait S]

The series is a phantom (``training.phantom.generate``) with at least 60
slices, cut to the 60 slices around its middle.  Loading DICOM files is not
timed (``benchmarks`` of the loader cover it).  Targets (issue 4): <= 5 s on a
2-core CPU, <= 0.3 s on an H100.  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.model.inference import Labeller, ModelConfig
from pipeline.scoring.agatston import ScoringProfile, score_calcium
from training.cases import phantom_geometry


def sixty_slice_volume(first_seed: int = 990000) -> tuple[np.ndarray, tuple[float, float], float]:
    from training.phantom.generate import generate_case

    for seed in range(first_seed, first_seed + 50):
        case = generate_case(seed)
        if case.hu.shape[0] >= 60:
            spacing, increment = phantom_geometry(case.datasets)
            z0 = (case.hu.shape[0] - 60) // 2
            return np.ascontiguousarray(case.hu[z0 : z0 + 60]), spacing, increment
    raise RuntimeError("no phantom with 60 slices among 50 seeds")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=Path("models/cacnode-v1.pt"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--network-wait", type=float, default=None, metavar="S",
                   help="a what-if on the CPU, not a GPU figure: the network replaced by a wait of S seconds (its "
                        "output computed once beforehand), to see the CPU work around a fast GPU network")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labeller = Labeller.load(ModelConfig(weights=args.weights), device=args.device)
    hu, spacing, increment = sixty_slice_volume()
    if args.network_wait is not None:
        stand_in = labeller.logits(labeller.preprocess(hu, spacing, increment))

        def waiting_network(prepared: object, on_device: bool = False) -> torch.Tensor:
            time.sleep(args.network_wait)  # lets go of the GIL, as a GPU's wait does
            return stand_in.clone()

        labeller.logits = waiting_network  # type: ignore[method-assign]
        print(f"WHAT-IF: the network is a {args.network_wait} s wait; these are not GPU measurements")
    profile = ScoringProfile()
    print(f"volume {hu.shape}, pixel {spacing[0]:.3f} mm, increment {increment} mm, device {labeller.device}, "
          f"torch threads {torch.get_num_threads()}")
    sync = torch.cuda.synchronize if labeller.device.type == "cuda" else (lambda: None)
    stages: dict[str, list[float]] = {"preprocess": [], "network": [], "labels": [], "scoring": [], "total": []}
    for i in range(args.repeats + 1):  # the first run warms up (allocator, cuDNN) and is not counted
        t0 = time.perf_counter()
        prepared = labeller.preprocess(hu, spacing, increment)
        t1 = time.perf_counter()
        logits = labeller.logits(prepared)
        sync()
        t2 = time.perf_counter()
        labels = labeller.to_labels(hu, prepared, logits)
        t3 = time.perf_counter()
        score = score_calcium(hu, labels, spacing, increment, profile)
        t4 = time.perf_counter()
        if i:
            for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                stages[name].append(value)
    # End to end as `cacnode score` runs it: the candidates are found while the network runs.
    stages["end to end"] = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        labels = labeller.predict_volume(hu, spacing, increment)
        score = score_calcium(hu, labels, spacing, increment, profile)
        if i:
            stages["end to end"].append(time.perf_counter() - t0)
    print(f"network input {prepared.image.shape}; total Agatston {score.total.agatston:.1f}")
    for name, values in stages.items():
        print(f"{name:>10}: median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f},"
              f" {len(values)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
