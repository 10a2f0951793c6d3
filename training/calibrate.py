"""Choose the background-logit bias of a weights file on validation phantoms.

Usage::

    python -m training.calibrate models/cacnode-v1.pt --first-seed 20000 --n 60

The network is run once per phantom; the label maps for each candidate bias
are then derived from the same logits and scored (``training.metrics``).  The
bias is the lesion classifier's when the file has one (``classifier.background_bias``),
else the network's (``background_bias``, majority rule).  The bias with the best
selection figure (``training.module.selection``: ICC + kappa + right artery +
sensitivity + zero-to-zero - 0.05 x false positives per scan) is written into
the weights file; the UID is kept, no weight changes.
Use validation seeds only (``[training] val_seed``), never the evaluation seeds
of ``training.evaluate``, so the held-out figures stay held out; and enough of
them (a few dozen): on 24 seeds with 7 zero-calcium cases the choice overfitted
(model card).  ``cacnode train`` runs the same step on ``calibration_phantoms``
validation phantoms after fitting the classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.inference import Labeller, ModelConfig, classify, grid_to_labels
from pipeline.scoring import ScoringProfile
from pipeline.weights import WeightsFile, load_weights, save_weights
from training.cases import CaseSource, phantoms
from training.metrics import CaseOutcome, compare, score_truth, summarise
from training.module import selection

log = logging.getLogger(__name__)

BIASES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)  # network logits (majority rule)
CLASSIFIER_BIASES = (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def calibrate(labeller: Labeller, sources: Sequence[CaseSource],
              biases: tuple[float, ...] | None = None) -> dict[float, dict[str, float]]:
    """Validation figures per bias (default: the classifier's grid when there is one, else the network's)."""
    if biases is None:
        biases = CLASSIFIER_BIASES if labeller.classifier is not None else BIASES
    profile = ScoringProfile()
    outcomes: dict[float, list[CaseOutcome]] = {b: [] for b in biases}
    for source in sources:
        case = source.load()
        spacing, increment = case.pixel_spacing_mm, case.increment_mm
        prepared = labeller.preprocess(case.hu, spacing, increment)
        logits = labeller.logits(prepared)
        decisions = labeller.decide_candidates(case.hu, prepared, logits) if labeller.classifier is not None else None
        truth = score_truth(case.hu, case.labels, spacing, increment, profile)
        for b in biases:
            if decisions is not None:
                labels = labeller.place(case.hu, prepared, decisions.labels(b))
            else:
                labels = grid_to_labels(case.hu, prepared.box, classify(logits, b),
                                        labeller.config.candidate_threshold_hu, labeller.config.candidate_connectivity)
            outcomes[b].append(compare(truth, case.hu, labels, spacing, increment, profile))
        log.info("calibration case %s done", source.key)
    return {b: summarise(o) for b, o in outcomes.items()}


def with_best_bias(weights: WeightsFile, table: dict[float, dict[str, float]], name: str) -> WeightsFile:
    """``weights`` with the bias of the best selection figure in ``table``, recorded as validation ``name``.

    The classifier's bias when the file has one, else the network's; the UID is
    kept (no weight changes).
    """
    best = max(table, key=lambda b: selection(table[b]))
    chosen = {k: v for k, v in table[best].items() if v == v}  # drop nan
    validation = {**weights.validation, name: {"background_bias": best, **chosen}}
    if weights.classifier is not None:
        return dataclasses.replace(weights, classifier=dataclasses.replace(weights.classifier, background_bias=best),
                                   validation=validation)
    return dataclasses.replace(weights, background_bias=best, validation=validation)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--first-seed", type=int, default=20000)
    p.add_argument("--n", type=int, default=60)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a case every ~8 s
    labeller = Labeller.load(ModelConfig(weights=args.weights), device="cpu")
    table = calibrate(labeller, phantoms(args.first_seed, args.n))
    for b, f in table.items():
        print(f"bias {b:4.1f}: selection {selection(f):6.3f}  icc {f['icc']:.4f} kappa {f['kappa']:.3f} "
              f"zero->0 {f['zero_to_zero']:.2f} right {f['right_artery']:.3f} sens {f['lesion_sensitivity']:.3f} "
              f"fp/scan {f['fp_per_scan']:.2f}")
    name = f"calibration_seeds_{args.first_seed}-{args.first_seed + args.n - 1}"
    calibrated = with_best_bias(load_weights(args.weights), table, name)
    save_weights(calibrated, args.weights)
    print(json.dumps(calibrated.validation[name], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
