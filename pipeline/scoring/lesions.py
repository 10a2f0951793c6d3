"""The counted lesions of a scored series, each with its own Agatston score.

A lesion is what ``calcium-scoring.md`` counts: the counted voxels of one
artery grouped in 3-D with 26-connectivity.  Every 2-D component of the
Agatston definition lies inside exactly one lesion (in-plane connectivity is
part of 26-connectivity), so a lesion's Agatston is the sum of its
components' scores and the lesions of an artery sum to the artery's score.

Pure functions, as the rest of the scoring: arrays in, frozen dataclasses out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.scoring.agatston import ScoringProfile, counted_voxels, density_weight, in_plane_structure
from pipeline.scoring.arteries import ARTERIES
from pipeline.scoring.sparse import flat_nonzero


@dataclass(frozen=True, eq=False)
class Lesion:
    """One counted lesion and where a viewer should draw it.

    The peak component is the lesion's largest 2-D component (ties: higher
    peak HU, then the lower slice): the slice a reader would pick to show it.
    """

    artery: str  # LM, LAD, LCX or RCA
    number: int  # 1, 2, ... within the artery, in slice order of first appearance
    agatston: float  # normalised as the artery's score
    volume_mm3: float
    slice_index: int  # slice of the peak component, in the series' slice order
    area_mm2: float  # area of the peak component
    # Pixels of the peak component, cropped; pixel (r, c) of it is (row + r, col + c) of the slice.
    mask: np.ndarray = field(repr=False)
    row: int
    col: int


def find_lesions(
    hu: np.ndarray,
    labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
) -> tuple[Lesion, ...]:
    """Every counted lesion of every artery, in LM, LAD, LCX, RCA order.

    Arguments are those of :func:`pipeline.scoring.agatston.score_calcium`.
    """
    z, y, x = np.unravel_index(flat_nonzero(labels), labels.shape)
    calcified = hu[z, y, x] >= profile.threshold_hu
    z, y, x = z[calcified], y[calcified], x[calcified]
    artery_of = labels[z, y, x]
    lesions: list[Lesion] = []
    for a in ARTERIES:
        mine = artery_of == a.label
        if not mine.any():
            continue
        # As score_calcium: every counted component lies in the box of the artery's calcium.
        start = tuple(int(c[mine].min()) for c in (z, y, x))
        box = tuple(slice(s, int(c[mine].max()) + 1) for s, c in zip(start, (z, y, x)))
        lesions += _artery_lesions(
            a.name, hu[box], labels[box] == a.label, start, pixel_spacing_mm, increment_mm, profile
        )
    return tuple(lesions)


def _artery_lesions(
    artery: str,
    hu: np.ndarray,
    mask: np.ndarray,
    start: tuple[int, ...],
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
) -> list[Lesion]:
    counted, _ = counted_voxels(hu, mask, pixel_spacing_mm, profile)
    # The kept 2-D components of the definition, found again on the counted voxels.
    components, n = ndimage.label(counted, structure=in_plane_structure(profile.connectivity))
    lesion_map, n_lesions = ndimage.label(counted, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    ids = np.arange(1, n + 1)
    n_pixels = np.bincount(components.ravel(), minlength=n + 1)[1:]
    peak = ndimage.maximum(hu, components, ids)
    lesion_of = ndimage.maximum(lesion_map, components, ids).astype(int)  # one lesion per component
    area_mm2 = n_pixels * float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
    weight = density_weight(peak, profile)
    factor = profile.increment_factor(increment_mm)
    voxel_mm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(increment_mm)
    boxes = ndimage.find_objects(components)
    slice_of = [b[0].start for b in boxes]  # a 2-D component lies on one slice
    lesions = []
    for lesion in range(1, n_lesions + 1):
        parts = np.flatnonzero(lesion_of == lesion)
        agatston = math.fsum((area_mm2[parts] * weight[parts]).tolist()) * factor
        best = max(parts, key=lambda i: (n_pixels[i], peak[i], -slice_of[i]))
        zs, ys, xs = boxes[best]
        lesions.append(
            Lesion(
                artery=artery,
                number=lesion,
                agatston=agatston,
                volume_mm3=float(n_pixels[parts].sum()) * voxel_mm3,
                slice_index=start[0] + zs.start,
                area_mm2=float(area_mm2[best]),
                mask=components[zs, ys, xs][0] == best + 1,
                row=start[1] + ys.start,
                col=start[2] + xs.start,
            )
        )
    return lesions
