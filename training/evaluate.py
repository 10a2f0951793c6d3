"""Evaluate a weights file on held-out phantoms and print the figures of the model card.

Usage::

    python -m training.evaluate models/cacnode-v1.pt --first-seed 900000 --n 50
    python -m training.evaluate models/cacnode-v1.pt --first-seed 950000 --n 50 --shifted --record

Each phantom is generated from its seed (``training.phantom.generate``),
labelled by the model through the same path as ``cacnode score``
(``Labeller.predict_volume``: preprocessing, network, lesion classifier --
or the candidate majority rule for a file without one) and
compared with the phantom's truth labels (``evaluation.metrics``).  Seeds from
900000 on are never used by training (``[training]`` uses 10000+ and 20000+).
``--record`` stores the figures in the weights file's ``validation`` field
under a name with the generator's revision (the UID is kept: the weights do
not change).  Figures recorded before revision 2 carry no revision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from pipeline.inference import Labeller, ModelConfig
from pipeline.scoring import ScoringProfile
from pipeline.weights import load_weights, save_weights
from training.cases import phantom_geometry
from evaluation.metrics import CaseOutcome, case_outcome, summarise
from training.phantom import REVISION

log = logging.getLogger(__name__)


def evaluate(labeller: Labeller, seeds: range, shifted: bool) -> tuple[list[CaseOutcome], float]:
    """Outcomes of the phantoms ``seeds`` and the mean model time (s) per case."""
    from training.phantom.generate import generate_case

    profile = ScoringProfile()
    outcomes, model_seconds = [], []
    for seed in seeds:
        case = generate_case(seed, shifted=shifted)
        spacing, increment = phantom_geometry(case.datasets)
        started = time.perf_counter()
        predicted = labeller.predict_volume(case.hu, spacing, increment, name=f"phantom {seed}")
        model_seconds.append(time.perf_counter() - started)
        o = case_outcome(case.hu, case.labels, predicted, spacing, increment, profile)
        outcomes.append(o)
        print(f"seed {seed}{' shifted' if shifted else ''}: truth {o.true_total:8.1f} predicted {o.pred_total:8.1f}"
              f"  lesions {o.lesions_found}/{o.lesions}  fp {o.false_positives}", flush=True)
    return outcomes, float(np.mean(model_seconds)) if model_seconds else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--first-seed", type=int, default=900000)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--shifted", action="store_true", help="phantoms from the shifted (held-out) parameter ranges")
    p.add_argument("--record", action="store_true", help="store the figures in the weights file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs (the recorded figures name it; CPU is the reference)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    labeller = Labeller.load(ModelConfig(weights=args.weights), device=args.device)
    seeds = range(args.first_seed, args.first_seed + args.n)
    outcomes, seconds = evaluate(labeller, seeds, args.shifted)
    figures = summarise(outcomes)
    figures[f"model_seconds_per_case_{args.device}"] = seconds
    # The generator's revision is part of the name: the same seeds of another revision are other cases.
    name = f"phantom_r{REVISION}_{'shifted' if args.shifted else 'heldout'}_seeds_{seeds.start}-{seeds.stop - 1}"
    if args.device != "cpu":  # the CPU figures stay the reference under the plain name
        name += f"_{args.device}"
    print(json.dumps({name: figures}, indent=2))
    if args.record:
        weights = load_weights(args.weights)
        clean = {k: v for k, v in figures.items() if not math.isnan(v)}
        save_weights(dataclasses.replace(weights, validation={**weights.validation, name: clean}), args.weights)
        print(f"recorded in {args.weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
