"""Which series are candidates for calcium scoring (config section ``[eligibility]``).

Works on headers only (read with ``stop_before_pixels``), so the node can
decide before decoding a single frame.  Each failed rule gives one reason a
person can read; an empty tuple means eligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pipeline.reading.stacking import StackError, obliquity_degrees, plane_name


@dataclass(frozen=True)
class EligibilityRules:
    """Rules a series must meet to be scored; each failed rule yields a reason."""

    modalities: tuple[str, ...] = ("CT",)
    require_axial: bool = True
    max_obliquity_degrees: float = 5.0  # slice normal vs patient z axis
    require_original: bool = True  # ImageType value 1 ORIGINAL
    # ImageType values that mark a series that is never scored (localizers, dose reports, ...)
    excluded_image_types: tuple[str, ...] = ("LOCALIZER", "SCOUT", "SCREEN SAVE", "DOSE_INFO", "SECONDARY")
    min_slices: int = 20
    min_slice_thickness_mm: float = 2.0
    max_slice_thickness_mm: float = 3.5

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"eligibility.min_slices must be >= 1, got {self.min_slices}")
        if not 0 < self.min_slice_thickness_mm <= self.max_slice_thickness_mm:
            raise ValueError(
                "eligibility: need 0 < min_slice_thickness_mm <= max_slice_thickness_mm, got "
                f"{self.min_slice_thickness_mm} and {self.max_slice_thickness_mm}"
            )


def eligibility_reasons(headers: Sequence[Dataset], rules: EligibilityRules) -> tuple[str, ...]:
    """Why a series is not a candidate for calcium scoring; empty when it is.

    Parameters
    ----------
    headers
        The datasets of one series; pixel data not needed.
    rules
        The ``[eligibility]`` section.

    Returns
    -------
    tuple of str
        One human-readable reason per failed rule, in a fixed order.
    """
    if not headers:
        return ("no images",)
    first = headers[0]
    reasons = []
    modalities = sorted({str(ds.get("Modality", "") or "(none)") for ds in headers})
    wrong = [m for m in modalities if m not in rules.modalities]
    if wrong:
        reasons.append(f"modality {'/'.join(wrong)} is not {'/'.join(rules.modalities)}")
    image_types = [tuple(str(v).upper() for v in _values(ds.get("ImageType"))) for ds in headers]
    excluded = sorted({v for types in image_types for v in types if v in rules.excluded_image_types})
    if excluded:
        reasons.append(f"image type {'/'.join(excluded)} is never scored")
    if rules.require_original and any(not types or types[0] != "ORIGINAL" for types in image_types):
        # Image Type value 1 (PS3.3 C.7.6.1.1.2): DERIVED images are reformats or reprocessed.
        reasons.append("image type is not ORIGINAL")
    if rules.require_axial:
        reasons.extend(_orientation_reasons(first, rules.max_obliquity_degrees))
    thickness = _float(first.get("SliceThickness"))
    if thickness is None:
        reasons.append("slice thickness is not in the header")
    elif not rules.min_slice_thickness_mm - 1e-6 <= thickness <= rules.max_slice_thickness_mm + 1e-6:
        reasons.append(
            f"slice thickness {thickness:g} mm is outside "
            f"{rules.min_slice_thickness_mm:g}-{rules.max_slice_thickness_mm:g} mm"
        )
    if len(headers) < rules.min_slices:
        reasons.append(f"{len(headers)} slices, fewer than {rules.min_slices}")
    return tuple(reasons)


def _orientation_reasons(ds: Dataset, max_obliquity: float) -> list[str]:
    orientation = [_float(v) for v in _values(ds.get("ImageOrientationPatient"))]
    if len(orientation) != 6 or any(v is None for v in orientation):
        return ["image orientation is not in the header"]
    try:
        tilt = obliquity_degrees(orientation)
        plane = plane_name(orientation)
    except StackError as exc:
        return [str(exc)]
    if plane != "axial":
        return [f"slices are {plane}, not axial"]
    if tilt > max_obliquity:
        return [f"slices are oblique, {tilt:.1f} degrees from axial (at most {max_obliquity:g})"]
    return []


def _values(value: object) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
