"""Validation figures on *scored* results, not only voxel overlap (pure numpy/scipy).

Used by training (validation, calibration, the phantom evaluation) and by
``cacnode evaluate``, so the figures of the model card and those a site
measures on its own series are computed alike.

Per case, :func:`case_outcome` compares a predicted label map with the truth
(:func:`score_truth` once, then :func:`compare` per prediction, or
:func:`compare_by_artery` for the per-artery figures too);
:func:`summarise` turns a list of outcomes into the figures the model card
reports:

- ``icc``: total Agatston intraclass correlation, ICC(2,1) (two-way random,
  absolute agreement, single measure; Shrout & Fleiss 1979), truth vs prediction;
- ``kappa``: linearly weighted Cohen's kappa on the 5 risk categories;
- ``zero_to_zero``: share of truth-zero cases scored exactly 0;
- ``right_artery``: of the truth Agatston the model detected, the share given
  the right artery (each voxel carries its lesion's area x weight share);
  ``right_artery_of_truth``: the same over all truth Agatston (misses count as wrong);
- ``lesion_sensitivity``: truth lesions (3-D, 26-connected counted voxels) with
  at least one voxel labelled coronary;
- ``fp_per_scan``: predicted lesions touching no truth coronary voxel, per case.

Beside it: :func:`risk_confusion` (the 5x5 risk-category table behind the
kappa), :func:`artery_agreement` (per artery ICC and the share of its truth
Agatston found on it) and :func:`limits_of_agreement` (Bland & Altman 1986).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.scoring.arteries import ARTERIES
from pipeline.scoring.agatston import RISK_CATEGORIES, ScoringProfile, counted_voxels, in_plane_structure, risk_category

_CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class CaseOutcome:
    """What one predicted label map got right and wrong."""

    true_total: float
    pred_total: float
    right_artery: float  # truth Agatston of detected voxels labelled with the right artery
    detected: float  # truth Agatston of detected voxels (any artery)
    lesions: int
    lesions_found: int
    false_positives: int


@dataclass(frozen=True)
class ArteryOutcome:
    """One artery of one case (Agatston, increment-normalised as the case totals)."""

    true: float  # truth Agatston of the artery
    pred: float  # Agatston the prediction gave the artery
    right: float  # truth Agatston of the artery on voxels the prediction counted and gave this artery


def voxel_agatston(hu: np.ndarray, labels: np.ndarray, pixel_spacing_mm: tuple[float, float],
                   profile: ScoringProfile) -> np.ndarray:
    """Each counted voxel's share of the (un-normalised) Agatston score: pixel area x lesion weight."""
    out = np.zeros(hu.shape, dtype=np.float64)
    pixel_area = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
    cutoffs = np.asarray(profile.weight_cutoffs_hu)
    for artery in ARTERIES:
        counted, _ = counted_voxels(hu, labels == artery.label, pixel_spacing_mm, profile)
        components, n = ndimage.label(counted, structure=in_plane_structure(profile.connectivity))
        if n == 0:
            continue
        # Peak HU per lesion over its own voxels only (ndimage.maximum sorts the whole volume).
        inside = components > 0
        ids = components[inside]
        peak = np.full(n + 1, -np.inf)
        np.maximum.at(peak, ids, hu[inside])
        weight = np.concatenate(([0.0], 1 + np.searchsorted(cutoffs, peak[1:], side="right")))
        out[inside] += pixel_area * weight[ids]
    return out


@dataclass(frozen=True)
class ScoredTruth:
    """The truth side of :func:`case_outcome`, computed once per case (calibration compares many predictions)."""

    labels: np.ndarray
    density: np.ndarray  # each counted voxel's share of the Agatston score (increment-normalised)
    lesions: np.ndarray  # 3-D (26-connected) truth lesions, labelled 1..n
    n_lesions: int


def score_truth(hu: np.ndarray, true_labels: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
                profile: ScoringProfile) -> ScoredTruth:
    density = voxel_agatston(hu, true_labels, pixel_spacing_mm, profile) * profile.increment_factor(increment_mm)
    lesions, n = ndimage.label(density > 0, structure=_CUBE)
    return ScoredTruth(true_labels, density, lesions, int(n))


def compare(
    truth: ScoredTruth,
    hu: np.ndarray,
    pred_labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
    true_total: float | None = None,
) -> CaseOutcome:
    """Compare one prediction with the scored truth (``true_total`` overrides the truth total, e.g. whole-volume)."""
    pred_density = voxel_agatston(hu, pred_labels, pixel_spacing_mm, profile) * profile.increment_factor(increment_mm)
    return _outcome(truth, pred_labels, pred_density, true_total)


def compare_by_artery(
    truth: ScoredTruth,
    hu: np.ndarray,
    pred_labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
) -> tuple[CaseOutcome, dict[str, ArteryOutcome]]:
    """As :func:`compare`, with each artery's truth, predicted and rightly placed Agatston (keyed LM..RCA)."""
    pred_density = voxel_agatston(hu, pred_labels, pixel_spacing_mm, profile) * profile.increment_factor(increment_mm)
    true_counted, pred_counted = truth.density > 0, pred_density > 0
    right = true_counted & pred_counted & (truth.labels == pred_labels)
    # Sums per label value over the few counted voxels only (not a mask of the whole volume per artery).
    true_by = _sum_by_label(truth.labels, truth.density, true_counted)
    pred_by = _sum_by_label(pred_labels, pred_density, pred_counted)
    right_by = _sum_by_label(truth.labels, truth.density, right)
    arteries = {a.name: ArteryOutcome(float(true_by[a.label]), float(pred_by[a.label]), float(right_by[a.label]))
                for a in ARTERIES}
    return _outcome(truth, pred_labels, pred_density, None), arteries


def _sum_by_label(labels: np.ndarray, values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over ``where`` per label value 0..4."""
    return np.bincount(labels[where].astype(np.intp), weights=values[where], minlength=len(ARTERIES) + 1)


def _outcome(truth: ScoredTruth, pred_labels: np.ndarray, pred_density: np.ndarray,
             true_total: float | None) -> CaseOutcome:
    true_counted, pred_counted = truth.density > 0, pred_density > 0
    detected = true_counted & pred_counted
    right = detected & (truth.labels == pred_labels)
    found = np.unique(truth.lesions[detected])
    pred_lesions, n_pred = ndimage.label(pred_counted, structure=_CUBE)
    touching = np.unique(pred_lesions[pred_counted & (truth.labels > 0)])
    return CaseOutcome(
        true_total=float(truth.density.sum()) if true_total is None else float(true_total),
        pred_total=float(pred_density.sum()),
        right_artery=float(truth.density[right].sum()),
        detected=float(truth.density[detected].sum()),
        lesions=truth.n_lesions,
        lesions_found=int(np.count_nonzero(found)),
        false_positives=int(n_pred - np.count_nonzero(touching)),
    )


def case_outcome(
    hu: np.ndarray,
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
    true_total: float | None = None,
) -> CaseOutcome:
    """Compare one prediction with the truth (``true_total`` overrides the truth total, e.g. whole-volume)."""
    truth = score_truth(hu, true_labels, pixel_spacing_mm, increment_mm, profile)
    return compare(truth, hu, pred_labels, pixel_spacing_mm, increment_mm, profile, true_total)


def icc_absolute(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(2,1) of two raters over the same subjects; nan for fewer than 2 subjects."""
    y = np.stack([np.asarray(a, float), np.asarray(b, float)], axis=1)
    n, k = y.shape
    if n < 2:
        return math.nan
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    ms_rows, ms_cols = ss_rows / (n - 1), ss_cols / (k - 1)
    ms_err = ss_err / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n
    if denominator == 0:
        return 1.0 if ss_err == 0 and ss_cols == 0 else math.nan
    return float((ms_rows - ms_err) / denominator)


def confusion_matrix(true_cat: Sequence[int], pred_cat: Sequence[int], n_categories: int) -> np.ndarray:
    """Case counts, int64 (n_categories, n_categories): rows the truth category, columns the predicted one."""
    counts = np.zeros((n_categories, n_categories), dtype=np.int64)
    np.add.at(counts, (np.asarray(true_cat, dtype=np.intp), np.asarray(pred_cat, dtype=np.intp)), 1)
    return counts


def weighted_kappa(true_cat: Sequence[int], pred_cat: Sequence[int], n_categories: int) -> float:
    """Linearly weighted Cohen's kappa; 1.0 when both raters agree on a single category."""
    observed = confusion_matrix(true_cat, pred_cat, n_categories).astype(np.float64)
    if observed.sum() == 0:
        return math.nan
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices(observed.shape)
    w = np.abs(i - j) / (n_categories - 1)
    disagreement_expected = float(np.sum(w * expected))
    if disagreement_expected == 0:
        return 1.0 if float(np.sum(w * observed)) == 0 else math.nan
    return 1.0 - float(np.sum(w * observed)) / disagreement_expected


def category_index(total_agatston: float) -> int:
    """Index in ``RISK_CATEGORIES`` of an unrounded total Agatston score."""
    return RISK_CATEGORIES.index(risk_category(total_agatston))


def risk_confusion(outcomes: Sequence[CaseOutcome]) -> np.ndarray:
    """The 5x5 risk-category table of the cases: rows truth, columns predicted (``RISK_CATEGORIES`` order)."""
    return confusion_matrix([category_index(o.true_total) for o in outcomes],
                            [category_index(o.pred_total) for o in outcomes], len(RISK_CATEGORIES))


@dataclass(frozen=True)
class ArteryAgreement:
    """How well one artery's Agatston agrees over a set of cases."""

    icc: float  # ICC(2,1) of the artery's truth vs predicted Agatston; nan for fewer than 2 cases
    right_artery: float  # of the artery's truth Agatston, the share found and given this artery; nan without any
    true_total: float  # truth Agatston of the artery, summed over the cases
    pred_total: float  # predicted Agatston of the artery, summed over the cases


def artery_agreement(per_case: Sequence[Mapping[str, ArteryOutcome]]) -> dict[str, ArteryAgreement]:
    """Per artery (LM, LAD, LCX, RCA) agreement over cases, each given as :func:`compare_by_artery`'s dict."""
    out = {}
    for name in (a.name for a in ARTERIES):
        true = np.array([case[name].true for case in per_case], dtype=np.float64)
        pred = np.array([case[name].pred for case in per_case], dtype=np.float64)
        true_sum = float(true.sum())
        right = sum(case[name].right for case in per_case)
        out[name] = ArteryAgreement(
            icc=icc_absolute(true, pred),
            right_artery=right / true_sum if true_sum > 0 else math.nan,
            true_total=true_sum,
            pred_total=float(pred.sum()),
        )
    return out


@dataclass(frozen=True)
class LimitsOfAgreement:
    """Bland & Altman (1986) on differences predicted - truth (nan where fewer cases than needed)."""

    mean_difference: float
    sd_difference: float  # sample SD (n - 1)
    lower: float  # mean - 1.96 SD: 95 % of differences expected above
    upper: float  # mean + 1.96 SD


def limits_of_agreement(true: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray) -> LimitsOfAgreement:
    """Mean difference and 95 % limits of agreement of ``pred - true``."""
    difference = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if difference.size == 0:
        return LimitsOfAgreement(math.nan, math.nan, math.nan, math.nan)
    mean = float(difference.mean())
    sd = float(difference.std(ddof=1)) if difference.size > 1 else math.nan
    return LimitsOfAgreement(mean, sd, mean - 1.96 * sd, mean + 1.96 * sd)


def summarise(outcomes: Sequence[CaseOutcome]) -> dict[str, float]:
    """The validation figures of a list of cases (nan where undefined)."""
    true = np.array([o.true_total for o in outcomes])
    pred = np.array([o.pred_total for o in outcomes])
    zero = true == 0
    detected = sum(o.detected for o in outcomes)
    truth_sum = sum(o.true_total for o in outcomes)
    lesions = sum(o.lesions for o in outcomes)
    return {
        "cases": float(len(outcomes)),
        "icc": icc_absolute(true, pred),
        "kappa": weighted_kappa([category_index(t) for t in true], [category_index(p) for p in pred],
                                len(RISK_CATEGORIES)),
        "zero_to_zero": float(np.mean(pred[zero] == 0)) if zero.any() else math.nan,
        "right_artery": sum(o.right_artery for o in outcomes) / detected if detected > 0 else math.nan,
        # The stricter reading: of *all* truth Agatston, the share found and given the right artery.
        "right_artery_of_truth": sum(o.right_artery for o in outcomes) / truth_sum if truth_sum > 0 else math.nan,
        "lesion_sensitivity": sum(o.lesions_found for o in outcomes) / lesions if lesions else math.nan,
        "fp_per_scan": sum(o.false_positives for o in outcomes) / len(outcomes) if outcomes else math.nan,
        "mean_abs_error": float(np.mean(np.abs(true - pred))) if outcomes else math.nan,
    }
