"""Evaluate weights files on held-out phantoms of either family and print the figures of the model card.

Usage::

    python -m training.evaluate models/cacnode-v1.pt --family b --first-seed 900000 --n 200 --workers 2
    python -m training.evaluate A.pt B.pt --family a --n 200 --json figures.json

Each phantom is generated once from its seed (``training.families``) and
labelled by every weights file through the same path as ``cacnode score``
(``Labeller.predict_volume``: preprocessing, network, lesion classifier), then
compared with the phantom's truth labels (``evaluation.metrics``).  Seeds from
900000 on are never used by training (``[training]`` uses 10000+ to 70000+ of
each family).  ``--workers`` spreads the phantoms over processes, each with
its own copy of the models and one torch thread; the figures do not depend on
it.  ``--record`` stores the figures in each weights file's ``validation``
field under a name with the family and the generator's revision (the UID is
kept: the weights do not change).  ``cacnode evaluate`` is the same comparison
on written series with reference label files, for a site's own data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from evaluation.metrics import CaseOutcome, case_outcome, summarise
from pipeline.model.inference import Labeller, ModelConfig
from pipeline.scoring.agatston import ScoringProfile
from pipeline.model.weights import load_weights, save_weights
from training.cases import phantom_geometry
from training.families import FAMILIES, Family, generate, revision

log = logging.getLogger(__name__)

_labellers: list[Labeller] = []  # one set per worker process


def _load_labellers(weights: tuple[Path, ...], device: str, threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    _labellers[:] = [Labeller.load(ModelConfig(weights=w), device=device) for w in weights]


def evaluate_seed(family: Family, seed: int, shifted: bool) -> list[tuple[CaseOutcome, float]]:
    """Phantom ``seed`` labelled by every loaded labeller: its outcome and model seconds, per labeller."""
    case = generate(family, seed, shifted=shifted)
    spacing, increment = phantom_geometry(case.datasets)
    out = []
    for labeller in _labellers:
        started = time.perf_counter()
        predicted = labeller.predict_volume(case.hu, spacing, increment, name=f"phantom {family}{seed}")
        seconds = time.perf_counter() - started
        out.append((case_outcome(case.hu, case.labels, predicted, spacing, increment, ScoringProfile()), seconds))
    return out


def evaluate(weights: tuple[Path, ...], family: Family, seeds: range, *, shifted: bool = False,
             device: str = "cpu", workers: int = 1,
             cases_out: Path | None = None) -> list[list[tuple[CaseOutcome, float]]]:
    """Per seed, per weights file: the outcome and model seconds (printed one line per seed as they come,
    and appended to ``cases_out`` as JSON lines when given)."""
    if workers <= 1:
        _load_labellers(weights, device, 0)
        results = map(evaluate_seed, [family] * len(seeds), seeds, [shifted] * len(seeds))
        return [_printed(family, seed, shifted, r, cases_out) for seed, r in zip(seeds, results)]
    with ProcessPoolExecutor(workers, initializer=_load_labellers, initargs=(weights, device, 1)) as pool:
        results = pool.map(evaluate_seed, [family] * len(seeds), seeds, [shifted] * len(seeds))
        return [_printed(family, seed, shifted, r, cases_out) for seed, r in zip(seeds, results)]


def _printed(family: Family, seed: int, shifted: bool, per_weights: list[tuple[CaseOutcome, float]],
             cases_out: Path | None = None) -> list[tuple[CaseOutcome, float]]:
    if cases_out is not None:  # one JSON line per case as it comes: a run stopped early still has its cases
        with open(cases_out, "a") as fh:
            fh.write(json.dumps({"family": family, "seed": seed,
                                 "outcomes": [dataclasses.asdict(o) for o, _ in per_weights]}) + "\n")
    columns = "  |  ".join(f"predicted {o.pred_total:8.1f} lesions {o.lesions_found}/{o.lesions} fp {o.false_positives}"
                           for o, _ in per_weights)
    truth = per_weights[0][0].true_total if per_weights else math.nan
    print(f"{family} seed {seed}{' shifted' if shifted else ''}: truth {truth:8.1f}  {columns}", flush=True)
    return per_weights


def figures_name(family: Family, seeds: range, shifted: bool, device: str) -> str:
    """Where the figures are recorded: family, generator revision and seeds (the same seed of another
    family or revision is another case); the CPU figures stay the reference under the plain name."""
    kind = "shifted" if shifted else "heldout"
    name = f"phantom_{family}_r{revision(family)}_{kind}_seeds_{seeds.start}-{seeds.stop - 1}"
    return name if device == "cpu" else f"{name}_{device}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", type=Path, nargs="+")
    p.add_argument("--family", choices=FAMILIES, default="a", help="phantom family (training.families)")
    p.add_argument("--first-seed", type=int, default=900000)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--shifted", action="store_true", help="family a's shifted (held-out) parameter ranges")
    p.add_argument("--workers", type=int, default=1, help="processes, each with the models and one torch thread")
    p.add_argument("--record", action="store_true", help="store the figures in the weights files")
    p.add_argument("--json", type=Path, help="also write the figures of every weights file to this file")
    p.add_argument("--cases-out", type=Path, help="append each case's outcomes to this file as a JSON line")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs (the recorded figures name it; CPU is the reference)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seeds = range(args.first_seed, args.first_seed + args.n)
    weights = tuple(args.weights)
    per_seed = evaluate(weights, args.family, seeds, shifted=args.shifted, device=args.device, workers=args.workers,
                        cases_out=args.cases_out)
    name = figures_name(args.family, seeds, args.shifted, args.device)
    report = {}
    for i, path in enumerate(weights):
        figures = summarise([r[i][0] for r in per_seed])
        figures[f"model_seconds_per_case_{args.device}"] = float(np.mean([r[i][1] for r in per_seed]))
        report[str(path)] = {name: figures}
        if args.record:
            recorded = load_weights(path)
            clean = {k: v for k, v in figures.items() if not math.isnan(v)}
            save_weights(dataclasses.replace(recorded, validation={**recorded.validation, name: clean}), path)
            print(f"recorded in {path}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
