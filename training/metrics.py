"""Validation figures on *scored* results, not only voxel overlap (pure numpy/scipy).

Per case, :func:`case_outcome` compares a predicted label map with the truth
(:func:`score_truth` once, then :func:`compare` per prediction);
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.arteries import ARTERIES
from pipeline.scoring import RISK_CATEGORIES, ScoringProfile, counted_voxels, in_plane_structure, risk_category

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


def weighted_kappa(true_cat: list[int], pred_cat: list[int], n_categories: int) -> float:
    """Linearly weighted Cohen's kappa; 1.0 when both raters agree on a single category."""
    observed = np.zeros((n_categories, n_categories))
    for t, p in zip(true_cat, pred_cat):
        observed[t, p] += 1
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
    return RISK_CATEGORIES.index(risk_category(total_agatston))


def summarise(outcomes: list[CaseOutcome]) -> dict[str, float]:
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
