"""Fit the lesion classifier of a weights file on phantoms its network has never seen.

Usage::

    python -m training.fit_classifier models/cacnode-v1.pt --first-seed 60000 --n 1600 --hard-ostia 400 --version 1.3.0

The network stays as it is; the classifier (``pipeline.model.candidate_classifier``)
is fitted on the candidates of phantoms ``first-seed ..`` run through the
network (``training.candidate_data``) and stored in the file with a fresh
UID (the model changed).  Figures measured on the previous model are dropped;
calibrate (``training.calibrate``) and evaluate (``training.evaluate``) again.
``cacnode train`` runs the same step after the network when
``[training] classifier_phantoms`` > 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.model.candidate_classifier import ClassifierConfig
from pipeline.model.candidate_features import WIDE_CHANNELS
from pipeline.model.weights import WeightsFile, load_weights, new_uid, save_weights
from training.candidate_data import collect_rows
from training.candidate_module import fit_classifier
from training.cases import CaseSource, PhantomSource, phantoms
from training.families import FAMILIES

log = logging.getLogger(__name__)


def add_classifier(weights: WeightsFile, sources: Sequence[CaseSource], cache_dir: Path, *, workers: int = 2,
                   epochs: int = 30, version: str | None = None, accelerator: str = "cpu",
                   config: ClassifierConfig = ClassifierConfig(), max_minutes: float | None = None) -> WeightsFile:
    """``weights`` with a classifier fitted on ``sources`` and a new UID."""
    rows = collect_rows(sources, weights, cache_dir, config.gate, workers=workers)
    describe = {"sources": _describe(sources), "network_uid": weights.network_uid, "gate": config.gate}
    classifier = fit_classifier(rows, epochs=epochs, accelerator=accelerator, config=config, max_minutes=max_minutes,
                                describe=describe)
    return dataclasses.replace(
        weights,
        uid=new_uid(),
        version=version or weights.version,
        classifier=classifier,
        validation={},
    )


def _describe(sources: Sequence[CaseSource]) -> dict[str, object]:
    plain = [s.seed for s in sources if isinstance(s, PhantomSource) and not s.hard_ostia]
    hard = [s.seed for s in sources if isinstance(s, PhantomSource) and s.hard_ostia]
    described: dict[str, object] = {
        "cases": len(sources),
        "phantoms": len(plain) + len(hard),
        "phantom_seeds": [min(plain), max(plain)] if plain else [],
        "families": {f: sum(1 for s in sources if isinstance(s, PhantomSource) and s.family == f)
                     for f in sorted({s.family for s in sources if isinstance(s, PhantomSource)})},
        "generator": "training.families (cacnode synthetic calcium-scoring CT)",
    }
    if hard:
        described["hard_ostia_phantoms"] = len(hard)
        described["hard_ostia_seeds"] = [min(hard), max(hard)]
    return described


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--first-seed", type=int, default=60000)
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--version", help="new version string (default: keep)")
    p.add_argument("--output", type=Path, help="weights file to write (default: overwrite the input)")
    p.add_argument("--cache", type=Path, default=Path("var/training/candidates"))
    p.add_argument("--wide-view", action="store_true", help="add the wide-view branch (model card: neutral so far)")
    p.add_argument("--hard-ostia", type=int, default=0, metavar="N",
                   help="N more phantoms with extra aortic-wall calcifications beside the coronary ostia")
    p.add_argument("--hard-ostia-first-seed", type=int, default=70000)
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=["a"],
                   help="phantom families the --n phantoms are taken from, in turn")
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="where the classifier is fitted")
    p.add_argument("--max-minutes", type=float, help="stop fitting after this long (fewer epochs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sources = phantoms(args.first_seed, args.n, families=tuple(args.families)) + phantoms(args.hard_ostia_first_seed, args.hard_ostia, hard_ostia=True)
    weights = add_classifier(load_weights(args.weights), sources, args.cache,
                             workers=args.workers, epochs=args.epochs, version=args.version,
                             accelerator=args.accelerator, max_minutes=args.max_minutes,
                             config=ClassifierConfig(wide_channels=WIDE_CHANNELS if args.wide_view else 0))
    output = args.output or args.weights
    save_weights(weights, output)
    log.info("wrote %s (uid %s)", output, weights.uid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
