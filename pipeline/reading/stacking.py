"""Geometry checks of a stack of single-frame slices: orientation, order, spacing.

Pure functions on header values (no files, no pixel data), shared by the
loader (which refuses a stack it cannot turn into a correct volume) and by
the eligibility rules (which only read headers).

Why not :func:`highdicom.spatial.get_series_volume_positions`: it answers
"regular volume or not" (``None``) without saying why, so a user could not be
told which slice is missing or which positions are duplicated, and it compares
Image Orientation (Patient) strings for exact equality, which real scanners
break with rounding noise.  The checks below are the narrow piece it leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Relative tolerance of slice spacing regularity: real scanners write positions
# with rounding noise of a few hundredths of a millimetre.
SPACING_RTOL = 0.02
SPACING_ATOL_MM = 0.02
# Direction cosines are unit vectors written as decimal strings (PS3.3 C.7.6.2.1.1).
ORIENTATION_ATOL = 1e-4


class StackError(ValueError):
    """A stack that is not a regular volume; the message is one line without the series UID."""


@dataclass(frozen=True)
class Stack:
    """Where a stack's slices go: ``order[k]`` is the input index of sorted slice ``k``."""

    order: tuple[int, ...]
    increment_mm: float
    normal: tuple[float, float, float]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice: row direction x column direction (PS3.3 C.7.6.2.1.1)."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise StackError(f"Image Orientation (Patient) {list(orientation)} has parallel row and column directions")
    return normal / length


def obliquity_degrees(orientation: Sequence[float]) -> float:
    """Angle between the slice normal and the patient z (feet-head) axis, 0-90 degrees."""
    cos = abs(float(slice_normal(orientation)[2]))
    return math.degrees(math.acos(min(1.0, cos)))


def plane_name(orientation: Sequence[float]) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the patient axis closest to the slice normal."""
    axis = int(np.argmax(np.abs(slice_normal(orientation))))
    return ("sagittal", "coronal", "axial")[axis]


def check_orientations(orientations: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The common orientation of all slices, or :class:`StackError` when they differ."""
    first = np.asarray(orientations[0], dtype=np.float64)
    if first.shape != (6,):
        raise StackError(f"Image Orientation (Patient) has {first.size} values, expected 6")
    for k, other in enumerate(orientations[1:], start=1):
        o = np.asarray(other, dtype=np.float64)
        if o.shape != (6,) or np.max(np.abs(o - first)) > ORIENTATION_ATOL:
            raise StackError(f"orientation differs between slices ({list(first)} and {list(o)})")
    return tuple(float(v) for v in first)


def sort_stack(
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float],
    names: Sequence[str],
    default_increment_mm: float | None = None,
) -> Stack:
    """Sort slices along the slice normal and check the spacing is regular.

    Parameters
    ----------
    positions
        Image Position (Patient) of each slice, in input order.
    orientation
        The common Image Orientation (Patient).
    names
        A name per slice (file name or SOP Instance UID) for error messages.
    default_increment_mm
        Increment of a single-slice stack (Spacing Between Slices or Slice Thickness).

    Returns
    -------
    Stack
        The ascending order along the normal and the median slice increment.

    Raises
    ------
    StackError
        Duplicate positions, a missing slice, irregular spacing, or slices not
        stacked along their normal (a sheared stack, as gantry tilt gives).
    """
    normal = slice_normal(orientation)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise StackError("Image Position (Patient) must have 3 values per slice")
    distance = pos @ normal
    order = np.argsort(distance, kind="stable")
    if len(order) == 1:
        if default_increment_mm is None or default_increment_mm <= 0:
            raise StackError("one slice without Slice Thickness or Spacing Between Slices")
        return Stack((0,), float(default_increment_mm), tuple(float(v) for v in normal))
    d = distance[order]
    steps = np.diff(d)
    duplicate = np.flatnonzero(steps < SPACING_ATOL_MM)
    if duplicate.size:
        i = int(duplicate[0])
        raise StackError(
            f"{duplicate.size} duplicate slice position(s), e.g. {_pos(pos[order[i]])} in "
            f"{names[order[i]]} and {names[order[i + 1]]}"
        )
    # A stack is a volume only when successive slices move along the normal.
    span = pos[order[-1]] - pos[order[0]]
    cos = float(abs(span @ normal) / np.linalg.norm(span))
    if cos < math.cos(math.radians(0.5)):
        raise StackError(
            f"slices are not stacked along their normal (sheared by {math.degrees(math.acos(cos)):.1f} degrees, "
            "gantry tilt?)"
        )
    increment = float(np.median(steps))
    tolerance = max(SPACING_ATOL_MM, SPACING_RTOL * increment)
    bad = np.flatnonzero(np.abs(steps - increment) > tolerance)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / increment
        if abs(ratio - round(ratio)) * increment <= tolerance and round(ratio) >= 2:
            missing = int(round(ratio)) - 1
            raise StackError(
                f"{missing} slice(s) missing between {_pos(pos[order[i]])} and {_pos(pos[order[i + 1]])} "
                f"(gap {steps[i]:.3g} mm, increment {increment:.3g} mm)"
                + (f"; {bad.size} irregular step(s) in all" if bad.size > 1 else "")
            )
        raise StackError(f"slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm")
    return Stack(tuple(int(i) for i in order), increment, tuple(float(v) for v in normal))


def _pos(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"
