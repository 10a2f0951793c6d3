"""``cacnode evaluate``: score series that have reference labels and report the model's agreement with them.

Order matters to the person waiting: the case list and the output folder are
checked first, then the model is loaded, and only then is anything scored.
Exit status: 0 when every case was scored, 1 when some were skipped (their
reasons are listed and the others reported); errors (nothing scored, an
unusable input) are one line and exit 2 (``cacnode.cli``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from cacnode.config import Config
from evaluation.cases import find_cases
from evaluation.report import output_paths, write_cases_csv, write_report
from evaluation.run import ScoredCase, SkippedCase, evaluate_cases
from evaluation.summary import build_summary, format_summary
from pipeline.errors import CacnodeError


def run_evaluate(args: argparse.Namespace, config: Config) -> int:
    """Score ``args.cases``, write the report under ``args.out`` and print it; returns the exit status.

    Raises
    ------
    CacnodeError
        The case list or output folder is unusable, the model cannot be loaded, or no case could be scored.
    """
    cases = find_cases(args.cases, ignore=args.out)
    paths = output_paths(args.out)
    from pipeline.model.inference import Labeller  # torch: imported once the cheap checks have passed

    model_config = config.model if args.weights is None else dataclasses.replace(config.model, weights=args.weights)
    labeller = Labeller.load(model_config, device=args.device)
    # Log lines (a skipped case) are written above the progress bar instead of through it.
    with logging_redirect_tqdm():
        results = evaluate_cases(cases, labeller, config.scoring, config.eligibility.max_obliquity_degrees,
                                 progress=not args.no_progress)
    skipped = [r for r in results if isinstance(r, SkippedCase)]
    if not any(isinstance(r, ScoredCase) for r in results):
        write_cases_csv(results, paths.cases_csv)
        first = skipped[0]
        raise CacnodeError(f"none of the {len(results)} case(s) could be scored (reasons in {paths.cases_csv}); "
                           f"first: {first.case}: {first.reason}")
    identity = labeller.identity
    model = {"name": identity.name, "version": identity.version, "uid": identity.uid,
             "weights": str(model_config.weights)}
    summary = build_summary(results, model)
    write_report(results, summary, paths)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_summary(summary))
        print(f"\nWrote {', '.join(str(p) for p in paths.all)}")
    return 1 if skipped else 0
