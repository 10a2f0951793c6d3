"""Deviations of a series from the assumptions behind the Agatston score.

``calcium-scoring.md``: scores of a series that is not 120 kVp, whose slice
thickness is outside 2.5-3.0 mm, that is contrast enhanced, or that the header
says is not ECG gated, are estimates, and the report says so.  Flags are
stable identifiers for scripts; :data:`FLAG_TEXT` gives the sentence for people.
"""

from __future__ import annotations

from pipeline.reading.series import Acquisition, Geometry

NOT_120_KVP = "kvp-not-120"
KVP_UNKNOWN = "kvp-unknown"
THICKNESS_OUTSIDE_RANGE = "slice-thickness-outside-2.5-3.0mm"
CONTRAST_ENHANCED = "contrast-enhanced"
NOT_ECG_GATED = "not-ecg-gated"

FLAG_TEXT = {
    NOT_120_KVP: "Tube voltage is not 120 kVp; the score uses the configured profile and is an estimate.",
    KVP_UNKNOWN: "Tube voltage is not in the header; 120 kVp is assumed.",
    THICKNESS_OUTSIDE_RANGE: "Slice thickness is outside 2.5-3.0 mm; the score is an estimate.",
    CONTRAST_ENHANCED: "The series is contrast enhanced; blood pool may exceed the threshold, the score is an estimate.",
    NOT_ECG_GATED: "The header says the acquisition is not ECG gated; the score is an estimate.",
}


def deviation_flags(acquisition: Acquisition, geometry: Geometry) -> tuple[str, ...]:
    """Flags for every deviation from the scoring assumptions that the header shows."""
    flags = []
    if acquisition.kvp is None:
        flags.append(KVP_UNKNOWN)
    elif abs(acquisition.kvp - 120.0) > 0.5:
        flags.append(NOT_120_KVP)
    thickness = geometry.slice_thickness_mm
    if thickness is not None and not (2.5 - 1e-6 <= thickness <= 3.0 + 1e-6):
        flags.append(THICKNESS_OUTSIDE_RANGE)
    if acquisition.contrast_agent:
        flags.append(CONTRAST_ENHANCED)
    if acquisition.ecg_gated is False:
        flags.append(NOT_ECG_GATED)
    return tuple(flags)


def is_estimate(flags: tuple[str, ...]) -> bool:
    """True when any flag makes the score an estimate (an unknown kVp alone does not)."""
    return any(f != KVP_UNKNOWN for f in flags)
