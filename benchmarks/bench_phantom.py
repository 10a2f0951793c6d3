"""Phantom generation speed and memory: cases per second (in memory and written), peak RSS.

Usage::

    python benchmarks/bench_phantom.py [--n 8] [--seed 1000] [--workers 2]

Prints, for ``--n`` consecutive seeds: seconds per ``generate_case`` (the
cost a training DataLoader worker pays per case), the same normalised to a
50-slice case, seconds per ``write_case``, the throughput of
``cacnode phantom``-style generation in ``--workers`` processes, and the peak
resident memory of one generating process (ru_maxrss, which includes the
Python interpreter and the imported libraries).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from training.phantom.generate import generate_case, write_case


def _one(seed: int) -> tuple[int, float, float]:
    """Generate one case; returns its slice count, seconds, and this process's peak RSS (MiB)."""
    t0 = time.perf_counter()
    case = generate_case(seed)
    seconds = time.perf_counter() - t0
    return case.hu.shape[0], seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    seeds = list(range(args.seed, args.seed + args.n))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    generate_case(seeds[0])  # warm-up: imports, highdicom tables, first allocations
    slices, seconds = 0, 0.0
    write_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            t0 = time.perf_counter()
            case = generate_case(seed)
            t1 = time.perf_counter()
            write_case(case, Path(tmp))
            write_seconds += time.perf_counter() - t1
            slices += case.hu.shape[0]
            seconds += t1 - t0
    n = len(seeds)
    print(f"generate_case: {n} cases, {slices / n:.1f} slices/case, {seconds / n:.3f} s/case, "
          f"{n / seconds:.2f} cases/s")
    print(f"  normalised to 50 slices: {50.0 * seconds / slices:.3f} s/case = {slices / (50.0 * seconds):.2f} cases/s")
    print(f"write_case (DICOM files, SEG, npy, json): {write_seconds / n:.3f} s/case")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.0f} MiB")

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_one, seeds))
    wall = time.perf_counter() - t0
    peak = max(r[2] for r in results)
    print(f"{args.workers} worker processes: {n / wall:.2f} cases/s (wall {wall:.1f} s, incl. start-up), "
          f"peak RSS per worker {peak:.0f} MiB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
