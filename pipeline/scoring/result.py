"""A scored series and its JSON form: the stable contract of ``cacnode score --json``.

The same dictionary is written as ``truth.json`` by the phantom generator, kept
beside each report by the node, and read back by the SR reader's tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.scoring.flags import deviation_flags
from pipeline.scoring.agatston import ArteryScore, CalciumScore, ScoringProfile, score_calcium
from pipeline.scoring.uncounted import HeartBox, UncountedCalcium, find_uncounted
from pipeline.reading.series import CTSeries


@dataclass(frozen=True)
class SeriesResult:
    """Everything reported about one scored series."""

    series_uid: str
    study_uid: str
    profile: ScoringProfile
    kvp: float | None
    slice_thickness_mm: float | None
    increment_mm: float
    pixel_spacing_mm: tuple[float, float]
    n_slices: int
    score: CalciumScore
    flags: tuple[str, ...]
    labels_source: str  # "model:<name> <version>" or "labels:<file name>"
    # Calcium of the heart crop that no artery label counts (``pipeline.scoring.uncounted``);
    # None when not assessed (no heart crop given to :func:`score_series`).
    uncounted: UncountedCalcium | None = None


def result_for(series: CTSeries, score: CalciumScore, profile: ScoringProfile, labels_source: str,
               uncounted: UncountedCalcium | None = None) -> SeriesResult:
    """Attach the series identity, acquisition facts and deviation flags to a score."""
    g = series.geometry
    return SeriesResult(
        series_uid=series.series_uid,
        study_uid=series.study_uid,
        profile=profile,
        kvp=series.acquisition.kvp,
        slice_thickness_mm=g.slice_thickness_mm,
        increment_mm=g.increment_mm,
        pixel_spacing_mm=g.pixel_spacing_mm,
        n_slices=g.shape[0],
        score=score,
        flags=deviation_flags(series.acquisition, g),
        labels_source=labels_source,
        uncounted=uncounted,
    )


def _artery_json(s: ArteryScore) -> dict[str, Any]:
    return {"agatston": s.agatston, "volume_mm3": s.volume_mm3, "mass_mg": s.mass_mg, "lesions": s.lesions}


def _uncounted_json(u: UncountedCalcium | None) -> dict[str, Any] | None:
    if u is None:
        return None  # not assessed
    return {"volume_mm3": u.volume_mm3, "components": u.components, "agatston": u.agatston,
            "bone_objects_excluded": u.bone_objects, "review": u.review, "review_text": u.review_text}


def to_json(result: SeriesResult) -> dict[str, Any]:
    """The JSON object of ``cacnode score --json`` (unrounded numbers).

    ``uncounted_calcium`` is null when it was not assessed (no heart crop given).
    """
    return {
        "series_uid": result.series_uid,
        "study_uid": result.study_uid,
        "labels_source": result.labels_source,
        "profile": dataclasses.asdict(result.profile),
        "acquisition": {
            "kvp": result.kvp,
            "slice_thickness_mm": result.slice_thickness_mm,
            "increment_mm": result.increment_mm,
            "pixel_spacing_mm": list(result.pixel_spacing_mm),
            "n_slices": result.n_slices,
        },
        "total": _artery_json(result.score.total),
        "arteries": {name: _artery_json(result.score.arteries[name]) for name in ARTERY_NAMES},
        "risk_category": result.score.risk_category,
        "cac_drs": result.score.cac_drs,
        "flags": list(result.flags),
        "uncounted_calcium": _uncounted_json(result.uncounted),
    }


def format_table(result: SeriesResult) -> str:
    """A readable table of the scores for a terminal."""
    lines = [
        f"Series {result.series_uid}",
        f"Profile {result.profile.name}: threshold {result.profile.threshold_hu:g} HU, "
        f"min area {result.profile.min_area:g} {result.profile.min_area_unit}, "
        f"{result.profile.connectivity}-connectivity, "
        f"increment normalisation {'on' if result.profile.normalise_increment else 'off'}",
        f"kVp {result.kvp if result.kvp is not None else 'unknown'}, thickness {result.slice_thickness_mm} mm, "
        f"increment {result.increment_mm:.3g} mm, {result.n_slices} slices",
        "",
        f"{'Artery':<8}{'Agatston':>10}{'Volume mm3':>12}{'Mass mg':>10}{'Lesions':>9}",
    ]
    rows = [(name, result.score.arteries[name]) for name in ARTERY_NAMES] + [("Total", result.score.total)]
    for name, s in rows:
        mass = "-" if s.mass_mg is None else f"{s.mass_mg:.1f}"
        lines.append(f"{name:<8}{s.agatston:>10.1f}{s.volume_mm3:>12.1f}{mass:>10}{s.lesions:>9}")
    lines += ["", f"Risk category: {result.score.risk_category}    CAC-DRS: {result.score.cac_drs}"]
    u = result.uncounted
    if u is not None:  # one line; the review flag ends it
        lines.append(f"Not attributed to an artery (not counted): {u.volume_mm3:.1f} mm3 in {u.components} "
                     f"object(s), Agatston-equivalent {u.agatston:.1f}"
                     + ("    REVIEW: look at the images, the score may miss calcium" if u.review else ""))
    for flag in result.flags:
        lines.append(f"Flag: {flag}")
    return "\n".join(lines)


def score_series(series: CTSeries, labels: np.ndarray, profile: ScoringProfile, labels_source: str,
                 heart_box: HeartBox | None = None) -> SeriesResult:
    """Score a loaded series with a label map in its slice order (the one entry point of the node and CLI).

    ``heart_box``: the heart crop the labels were made in (``Labeller.heart_box``, or the heart
    localiser's box for reference labels); with it, the calcium of the crop that no label counts
    is found (``result.uncounted``), without it that is not assessed (None).
    """
    g = series.geometry
    score = score_calcium(series.hu, labels, g.pixel_spacing_mm, g.increment_mm, profile)
    uncounted = None
    if heart_box is not None:
        uncounted = find_uncounted(series.hu, labels, heart_box, g.pixel_spacing_mm, g.increment_mm, profile,
                                   score.total.volume_mm3)
    return result_for(series, score, profile, labels_source, uncounted)
