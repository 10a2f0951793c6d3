"""Which series are candidates for calcium scoring (config section ``[eligibility]``)."""

from __future__ import annotations

from dataclasses import dataclass


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
