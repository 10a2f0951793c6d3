"""Score each case with the model and compare it with its reference labels.

Per case: load the series once (as ``cacnode score``), read the reference
labels onto it (DICOM SEG or NIfTI, ``pipeline.reading.labels_io``; none when the
reference has no calcium), label it with the model (``Labeller.predict``, the
node's own path) and compare the two with ``evaluation.metrics``.  The
reference is read before the model runs, so a label file that does not fit
costs no model time.

A case that cannot be used (unreadable series, labels that do not fit it,
missing files) becomes a :class:`SkippedCase` with its one-line reason: it
is counted and listed, never dropped.  Only the project's own errors are
caught; anything else is a bug and stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from evaluation.cases import Case
from evaluation.metrics import ArteryOutcome, CaseOutcome, compare_by_artery, score_truth
from pipeline.errors import CacnodeError
from pipeline.model.inference import Labeller
from pipeline.reading.labels_io import read_labels
from pipeline.reading.loader import load_series
from pipeline.scoring.agatston import ScoringProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredCase:
    """A case the model scored, with what it got right and wrong."""

    case: str
    series_uid: str
    outcome: CaseOutcome
    arteries: dict[str, ArteryOutcome] = field(hash=False)  # keyed LM, LAD, LCX, RCA


@dataclass(frozen=True)
class SkippedCase:
    """A case that could not be scored, and why (one line)."""

    case: str
    reason: str
    series_uid: str | None = None  # known when the series loaded but its labels did not fit


CaseResult = ScoredCase | SkippedCase


def evaluate_case(case: Case, labeller: Labeller, profile: ScoringProfile, max_obliquity_degrees: float) -> CaseResult:
    """Score one case with the model and compare it with its reference labels."""
    if case.problem is not None:
        return SkippedCase(case.name, case.problem)
    try:
        series = load_series(case.series_dir, max_obliquity_degrees=max_obliquity_degrees)
    except CacnodeError as exc:
        return SkippedCase(case.name, str(exc))
    try:
        reference = (np.zeros(series.hu.shape, dtype=np.uint8) if case.labels is None
                     else read_labels(case.labels, series))
        predicted = labeller.predict(series)
    except CacnodeError as exc:
        return SkippedCase(case.name, str(exc), series.series_uid)
    g = series.geometry
    truth = score_truth(series.hu, reference, g.pixel_spacing_mm, g.increment_mm, profile)
    outcome, arteries = compare_by_artery(truth, series.hu, predicted, g.pixel_spacing_mm, g.increment_mm, profile)
    return ScoredCase(case.name, series.series_uid, outcome, arteries)


def evaluate_cases(cases: Sequence[Case], labeller: Labeller, profile: ScoringProfile, max_obliquity_degrees: float,
                   progress: bool = True) -> list[CaseResult]:
    """Every case in turn, in the order given; skipped ones are logged as they happen (progress bar on stderr)."""
    results: list[CaseResult] = []
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        result = evaluate_case(case, labeller, profile, max_obliquity_degrees)
        if isinstance(result, SkippedCase):
            log.warning("skipped %s: %s", result.case, result.reason)
        results.append(result)
    return results
