"""Agatston, volume, mass and lesion count from an HU volume and an artery label map.

Pure functions implementing ``calcium-scoring.md`` exactly; nothing here reads
files, logs or touches a device.  Every convention that may vary between
vendors is a field of :class:`ScoringProfile` (the "scoring profile").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from pipeline.scoring.arteries import ARTERIES
from pipeline.scoring.sparse import flat_nonzero

# Area comparisons tolerate float rounding of n_pixels * row * col (e.g. 100 px
# at 0.1 mm is 1.0000000000000002 mm2): a component exactly at the limit is kept.
_AREA_TOLERANCE_MM2 = 1e-9


@dataclass(frozen=True)
class ScoringProfile:
    """The conventions a score is computed with (config section ``[scoring]``).

    Defaults are the "agatston-1990" profile of ``calcium-scoring.md``.
    """

    name: str = "agatston-1990"
    threshold_hu: float = 130.0  # a voxel is calcium at or above this
    # Peak-HU cut-offs where the weight steps 1->2, 2->3, 3->4 (Agatston 1990).
    weight_cutoffs_hu: tuple[float, float, float] = (200.0, 300.0, 400.0)
    min_area: float = 1.0  # components smaller than this are dropped
    min_area_unit: Literal["mm2", "pixels"] = "mm2"
    connectivity: Literal[4, 8] = 8  # 2-D connectivity of a lesion within a slice
    normalise_increment: bool = True  # multiply Agatston by increment / reference
    reference_increment_mm: float = 3.0
    # Mass calibration factor c in mg per mm3 per HU; mass is reported only when set.
    mass_calibration_mg_per_mm3_hu: float | None = None
    # Review of calcium in the heart crop that no artery label counts (``pipeline.scoring.uncounted``):
    # flagged when its volume >= max(min_mm3, ratio x counted volume), so a zero never hides calcium.
    # Not a scoring convention (the score is unchanged): what the report asks a reader to look at.
    uncounted_review_min_mm3: float = 10.0
    uncounted_review_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("scoring.name must not be empty")
        cut = self.weight_cutoffs_hu
        if not (self.threshold_hu < cut[0] < cut[1] < cut[2]):
            raise ValueError(
                f"scoring: need threshold_hu < weight_cutoffs_hu ascending, got {self.threshold_hu} and {cut}"
            )
        if self.min_area < 0:
            raise ValueError(f"scoring.min_area must be >= 0, got {self.min_area}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"scoring.connectivity must be 4 or 8, got {self.connectivity}")
        if self.reference_increment_mm <= 0:
            raise ValueError("scoring.reference_increment_mm must be > 0")
        c = self.mass_calibration_mg_per_mm3_hu
        if c is not None and c <= 0:
            raise ValueError(f"scoring.mass_calibration_mg_per_mm3_hu must be > 0, got {c}")
        if self.uncounted_review_min_mm3 <= 0 or self.uncounted_review_ratio < 0:
            raise ValueError(
                "scoring: need uncounted_review_min_mm3 > 0 and uncounted_review_ratio >= 0, got "
                f"{self.uncounted_review_min_mm3} and {self.uncounted_review_ratio}"
            )

    def increment_factor(self, increment_mm: float) -> float:
        """What Agatston is multiplied by for this slice increment (1 without increment normalisation)."""
        return increment_mm / self.reference_increment_mm if self.normalise_increment else 1.0


@dataclass(frozen=True)
class ArteryScore:
    """Unrounded scores of one artery (or of the total)."""

    agatston: float
    volume_mm3: float
    mass_mg: float | None  # None when the profile has no calibration factor
    lesions: int


@dataclass(frozen=True)
class CalciumScore:
    """The result of scoring one series."""

    arteries: dict[str, ArteryScore] = field(hash=False)  # keyed LM, LAD, LCX, RCA
    total: ArteryScore
    risk_category: str
    cac_drs: str


def density_weight(peak_hu: np.ndarray, profile: ScoringProfile) -> np.ndarray:
    """Agatston's density factor of each component from its peak HU (1 below the first cutoff, then 2, 3, 4)."""
    return 1 + np.searchsorted(np.asarray(profile.weight_cutoffs_hu), peak_hu, side="right")


def in_plane_structure(connectivity: int) -> np.ndarray:
    """3-D structuring element that connects voxels only within a slice."""
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane
    return structure


def counted_voxels(
    hu: np.ndarray,
    mask: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    profile: ScoringProfile,
) -> tuple[np.ndarray, float]:
    """Voxels of ``mask`` that count towards the score, and their summed Agatston.

    Steps 1-5 of the definition for one artery: threshold, 2-D components per
    slice, minimum area, peak-HU weight, area x weight.  Returns the boolean map
    of voxels in kept components and the (un-normalised) Agatston sum.
    """
    calcium = mask & (hu >= profile.threshold_hu)
    components, n = ndimage.label(calcium, structure=in_plane_structure(profile.connectivity))
    if n == 0:
        return np.zeros(hu.shape, dtype=bool), 0.0
    flat = components.ravel()
    n_pixels = np.bincount(flat, minlength=n + 1)[1:]
    # Peak HU per component, vectorised: max over voxels grouped by component id.
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, flat[flat > 0], hu.ravel()[flat > 0])
    peak = peak[1:]
    pixel_area = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
    area_mm2 = n_pixels * pixel_area
    if profile.min_area_unit == "mm2":
        keep = area_mm2 >= profile.min_area - _AREA_TOLERANCE_MM2
    else:
        keep = n_pixels >= profile.min_area
    weight = density_weight(peak, profile)
    # fsum is correctly rounded, so the score does not depend on the order slices were read.
    agatston = math.fsum((area_mm2[keep] * weight[keep]).tolist())
    kept_ids = np.concatenate(([False], keep))
    return kept_ids[components], agatston


def score_artery(
    hu: np.ndarray,
    mask: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
) -> ArteryScore:
    """Score the calcium of one artery whose voxels are ``mask``."""
    counted, agatston = counted_voxels(hu, mask, pixel_spacing_mm, profile)
    agatston *= profile.increment_factor(increment_mm)
    voxel_mm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(increment_mm)
    n_counted = int(np.count_nonzero(counted))
    _, lesions = ndimage.label(counted, structure=np.ones((3, 3, 3), dtype=bool))
    mass = None
    if profile.mass_calibration_mg_per_mm3_hu is not None:
        # sum over lesions of c * volume * mean HU == c * voxel volume * sum of HU
        mass = profile.mass_calibration_mg_per_mm3_hu * voxel_mm3 * math.fsum(hu[counted].astype(np.float64).tolist())
    return ArteryScore(agatston=agatston, volume_mm3=n_counted * voxel_mm3, mass_mg=mass, lesions=int(lesions))


def _no_calcium(profile: ScoringProfile) -> ArteryScore:
    """The score of an artery without any voxel at or above the threshold."""
    mass = None if profile.mass_calibration_mg_per_mm3_hu is None else 0.0
    return ArteryScore(agatston=0.0, volume_mm3=0.0, mass_mg=mass, lesions=0)


def score_calcium(
    hu: np.ndarray,
    labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
) -> CalciumScore:
    """Score every artery of a label map and the total.

    Parameters
    ----------
    hu
        (slices, rows, columns) Hounsfield units, slices sorted along the normal.
    labels
        Same shape; 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA.
    pixel_spacing_mm
        (row spacing, column spacing) in mm.
    increment_mm
        Distance between adjacent slice centres along the normal.
    profile
        The scoring conventions.
    """
    if hu.shape != labels.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} must be the same 3-D shape")
    if increment_mm <= 0 or min(pixel_spacing_mm) <= 0:
        raise ValueError(f"spacing must be positive, got {pixel_spacing_mm} and increment {increment_mm}")
    if labels.size and (labels.min() < 0 or labels.max() > max(a.label for a in ARTERIES)):
        unknown = np.setdiff1d(np.unique(labels), [0] + [a.label for a in ARTERIES])
        raise ValueError(f"label map holds values {unknown.tolist()} outside 0-4")
    # Every counted component of an artery lies inside the box of that artery's
    # calcium, so scoring the box gives the whole volume's numbers, much faster.
    z, y, x = np.unravel_index(flat_nonzero(labels), labels.shape)  # few voxels: threshold those only
    calcified = hu[z, y, x] >= profile.threshold_hu
    z, y, x = z[calcified], y[calcified], x[calcified]
    artery_of = labels[z, y, x]
    arteries = {}
    for a in ARTERIES:
        mine = artery_of == a.label
        if not mine.any():
            arteries[a.name] = _no_calcium(profile)
            continue
        box = tuple(slice(int(c[mine].min()), int(c[mine].max()) + 1) for c in (z, y, x))
        arteries[a.name] = score_artery(hu[box], labels[box] == a.label, pixel_spacing_mm, increment_mm, profile)
    masses = [s.mass_mg for s in arteries.values()]
    total = ArteryScore(
        agatston=math.fsum(s.agatston for s in arteries.values()),
        volume_mm3=math.fsum(s.volume_mm3 for s in arteries.values()),
        mass_mg=None if profile.mass_calibration_mg_per_mm3_hu is None else math.fsum(m for m in masses if m is not None),
        lesions=sum(s.lesions for s in arteries.values()),
    )
    return CalciumScore(
        arteries=arteries,
        total=total,
        risk_category=risk_category(total.agatston),
        cac_drs=cac_drs(total.agatston, [s.agatston for s in arteries.values()]),
    )


RISK_CATEGORIES: tuple[str, ...] = ("0", "1-10", "11-100", "101-400", ">400")


def risk_category(total_agatston: float) -> str:
    """Risk category of an unrounded total Agatston score."""
    s = total_agatston
    if s <= 0:
        return "0"
    if s <= 10:
        return "1-10"
    if s <= 100:
        return "11-100"
    if s <= 400:
        return "101-400"
    return ">400"


def cac_drs(total_agatston: float, artery_agatston: list[float]) -> str:
    """CAC-DRS (SCCT 2018) of an unrounded total, e.g. ``A2/N3``; A0 has no N."""
    s = total_agatston
    if s <= 0:
        return "A0"
    grade = 1 if s < 100 else 2 if s < 300 else 3
    n_vessels = sum(1 for a in artery_agatston if a > 0)
    return f"A{grade}/N{n_vessels}"
