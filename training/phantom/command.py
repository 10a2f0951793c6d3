"""``cacnode phantom OUT --n N --seed S [--workers W] [--family {a,b}] [--shifted] [--no-progress]``.

Case ``i`` uses seed ``S + i``; cases are generated in a process pool (one
case per task, so memory per worker stays that of one case) and written as
they complete.  Output is independent of the number of workers.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import CacnodeError
from training.families import Family, generate, write

logger = logging.getLogger(__name__)


def make_case(seed: int, shifted: bool, out_dir: Path, family: Family = "a") -> tuple[int, float]:
    """Generate and write one case of ``family``; returns its seed and true total Agatston (runs in a worker)."""
    case = generate(family, seed, shifted=shifted)
    write(family, case, out_dir)
    return seed, float(case.truth["total"]["agatston"])


def run_phantom(args: argparse.Namespace) -> int:
    """Write ``args.n`` cases under ``args.out_dir``; returns the process exit status."""
    if args.n < 1:
        raise CacnodeError(f"phantom: --n must be at least 1, not {args.n}")
    if args.seed < 0:
        raise CacnodeError(f"phantom: --seed must be >= 0, not {args.seed}")
    if args.family == "b" and args.shifted:
        raise CacnodeError("phantom: --shifted applies to family a only, not to --family b")
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise CacnodeError(f"phantom: --workers must be at least 1, not {args.workers}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(args.n)]
    bar = tqdm(total=len(seeds), unit="case", disable=args.no_progress, desc="phantoms")
    zero = 0
    if workers == 1 or len(seeds) == 1:
        for seed in seeds:
            _, total = make_case(seed, args.shifted, out_dir, args.family)
            zero += total == 0.0
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(seeds))) as pool:
            futures = [pool.submit(make_case, seed, args.shifted, out_dir, args.family) for seed in seeds]
            for future in futures:
                _, total = future.result()
                zero += total == 0.0
                bar.update()
    bar.close()
    logger.info("%d phantom cases written to %s (%d with zero calcium)", len(seeds), out_dir, zero)
    return 0
