"""Calcium in the heart region that no artery label counts: shown, never hidden behind a zero.

A score counts only labelled voxels (``calcium-scoring.md``).  When the model
(or an annotator) leaves calcium unlabelled, the score can read 0 although a
reader would see calcium on the images.  This module finds that calcium so the
report can show it:

1. the region is the heart crop the model looked at (``pipeline.model.preprocess.CropBox``,
   clipped to the volume; for reference labels the heart localiser's box);
2. in it, the voxels at or above the profile's threshold that carry no artery
   label and do not belong to bone (below), grouped in 2-D candidates with the
   profile's connectivity; a candidate must stand out of the noise (below);
3. of those, what the profile would count if they were labelled: minimum area,
   peak-HU weight (:func:`pipeline.scoring.agatston.counted_voxels`), so volume
   and the Agatston-equivalent are what labelling them would add to the score;
4. a review flag when that volume is large against the counted calcium
   (``uncounted_review_min_mm3`` and ``uncounted_review_ratio`` of the profile).

Bone: the 160 mm heart crop reaches the sternum, the vertebral body and ribs.
A voxel is bone-like when its 26-connected calcified object (``hu >= threshold``,
found over the whole volume, so bone cut by the crop keeps its size) holds at
least :data:`BONE_MIN_OBJECT_MM3`.  One rule on volume, not on shape: bone at
130 HU forms objects of several millilitres (a vertebral body's shell alone is
about 10 mL; a rib is long), while a coronary lesion stays under 1 mL.
A very large valve or annulus calcification is excluded with the bone: calcium
outside the coronary tree.  The phantoms (``training.phantom``) model ribs as
short pieces; those under 1 mL that reach the crop's corners are shown.

Noise: see :data:`NOISE_PEAK_SD`.

Pure functions on arrays, as the rest of the scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import ndimage

from pipeline.model.noise import noise_sd_hu
from pipeline.scoring.agatston import ScoringProfile, counted_voxels, in_plane_structure
from pipeline.scoring.sparse import flat_nonzero

# A calcified object at least this large (mm3) is bone (or another non-coronary mass), not a lesion.
# 1 mL: above the largest single coronary lesion of the phantoms (0.93 mL, heavy burden; clinical
# lesions are tens to hundreds of mm3), below the bone a heart crop reaches (sternum, vertebrae,
# ribs: several mL each; the phantoms' short rib pieces from about 0.15 mL, see the module docstring).
BONE_MIN_OBJECT_MM3 = 1000.0

# Noise: at the 130 HU threshold a noisy scan makes many 1 mm2 specks in the crop (a phantom with
# 33 HU noise: over a thousand, several mL).  A candidate counts here only when its peak HU is at
# least this many noise SDs (``pipeline.model.noise``, of the crop) over the threshold.  On 8 phantoms
# (noise SD 17-33 HU) 2.5 SD removed the specks (what stayed outside the phantoms' distractors was
# rib pieces) and kept nearly all of the distractors' calcium (aortic wall, valve, mitral annulus).
NOISE_PEAK_SD = 2.5

DESCRIPTION = "Calcium not attributed to a coronary artery"  # also the SEG segment's label (LO, <= 64)


class HeartBox(Protocol):
    """The heart crop of a volume (satisfied by ``pipeline.model.preprocess.CropBox``)."""

    z0: int
    z1: int
    row0: int
    col0: int
    rows: int
    cols: int


@dataclass(frozen=True, eq=False)
class UncountedCalcium:
    """Calcium in the heart crop that the score does not count, and whether a reader must look."""

    shape: tuple[int, int, int]  # of the volume
    voxels: np.ndarray = field(repr=False)  # ascending flat indices into the volume
    volume_mm3: float  # voxels x row x column spacing x increment, as the volume score
    components: int  # 26-connected objects, as lesions are counted
    agatston: float  # what they would add to the Agatston score if labelled (normalised as the profile)
    bone_objects: int  # calcified objects in the crop left out as bone (>= BONE_MIN_OBJECT_MM3)
    review: bool  # large against the counted calcium (the profile's review settings)
    review_text: str | None  # the sentence for the report when ``review``; None otherwise

    def mask(self) -> np.ndarray:
        """The voxels as a boolean volume."""
        out = np.zeros(int(np.prod(self.shape)), dtype=bool)
        out[self.voxels] = True
        return out.reshape(self.shape)


def heart_region(box: HeartBox, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The part of ``box`` inside a volume of ``shape`` (the box may run past the image)."""
    return (
        slice(max(box.z0, 0), min(box.z1, shape[0])),
        slice(max(box.row0, 0), min(box.row0 + box.rows, shape[1])),
        slice(max(box.col0, 0), min(box.col0 + box.cols, shape[2])),
    )


def needs_review(volume_mm3: float, counted_volume_mm3: float, profile: ScoringProfile) -> bool:
    """True when the uncounted volume is at least ``max(min_mm3, ratio x counted volume)`` (and not 0)."""
    limit = max(profile.uncounted_review_min_mm3, profile.uncounted_review_ratio * counted_volume_mm3)
    return volume_mm3 > 0 and volume_mm3 >= limit


def review_sentence(volume_mm3: float, counted_volume_mm3: float, components: int) -> str:
    """The flag text of a series whose uncounted calcium needs a reader's look."""
    return (
        f"{DESCRIPTION}: {volume_mm3:.1f} mm3 in {components} object(s) in the heart region "
        f"(counted calcium {counted_volume_mm3:.1f} mm3); review the images, the score may miss it."
    )


def find_uncounted(
    hu: np.ndarray,
    labels: np.ndarray,
    box: HeartBox,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    profile: ScoringProfile,
    counted_volume_mm3: float,
) -> UncountedCalcium:
    """The calcium of the heart crop that carries no artery label (see the module docstring).

    Parameters
    ----------
    hu, labels
        As :func:`pipeline.scoring.agatston.score_calcium`: (slices, rows, columns) HU and
        the final artery label map.
    box
        The heart crop the labels were made in (the model's, or the heart localiser's).
    pixel_spacing_mm, increment_mm, profile
        As for scoring; the threshold, minimum area and connectivity are the profile's.
    counted_volume_mm3
        The total counted calcium volume of the series, for the review rule.
    """
    if hu.shape != labels.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} must be the same 3-D shape")
    shape = (int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2]))
    zs, rows, cols = heart_region(box, shape)
    voxel_mm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(increment_mm)
    empty = UncountedCalcium(shape, np.zeros(0, dtype=np.int64), 0.0, 0, 0.0, 0, False, None)
    if zs.stop <= zs.start or rows.stop <= rows.start or cols.stop <= cols.start:
        return empty

    # Bone: large calcified objects, measured over the whole volume (bone cut by the crop keeps its size).
    objects, n_objects = ndimage.label(hu >= profile.threshold_hu, structure=np.ones((3, 3, 3), dtype=bool))
    if n_objects == 0:
        return empty
    bone = np.bincount(objects.ravel(), minlength=n_objects + 1) * voxel_mm3 >= BONE_MIN_OBJECT_MM3
    bone[0] = False
    in_crop = objects[zs, rows, cols]
    bone_objects = int(np.count_nonzero(bone[np.unique(in_crop)]))

    # Unlabelled calcium of the crop outside bone, as 2-D candidates (the profile's connectivity).
    hu_crop = hu[zs, rows, cols]
    candidate = (in_crop > 0) & ~bone[in_crop] & (labels[zs, rows, cols] == 0)
    parts, n_parts = ndimage.label(candidate, structure=in_plane_structure(profile.connectivity))
    if n_parts:
        # Noise: a candidate must peak NOISE_PEAK_SD noise SDs over the threshold.
        peak = ndimage.maximum(hu_crop, parts, np.arange(1, n_parts + 1))
        limit = profile.threshold_hu + NOISE_PEAK_SD * noise_sd_hu(hu_crop)
        candidate = np.concatenate(([False], np.asarray(peak) >= limit))[parts]
    # What the profile would count of them if they were labelled: minimum area, peak-HU weight.
    counted, agatston = counted_voxels(hu_crop, candidate, pixel_spacing_mm, profile)
    agatston *= profile.increment_factor(increment_mm)
    n = int(np.count_nonzero(counted))
    if n == 0:
        return UncountedCalcium(shape, empty.voxels, 0.0, 0, 0.0, bone_objects, False, None)
    _, components = ndimage.label(counted, structure=np.ones((3, 3, 3), dtype=bool))
    # Flat indices of the crop's voxels in the whole volume.
    z, r, c = np.unravel_index(flat_nonzero(counted), counted.shape)
    voxels = np.ravel_multi_index((z + zs.start, r + rows.start, c + cols.start), shape).astype(np.int64)
    volume = n * voxel_mm3
    review = needs_review(volume, counted_volume_mm3, profile)
    text = review_sentence(volume, counted_volume_mm3, int(components)) if review else None
    return UncountedCalcium(shape, voxels, volume, int(components), agatston, bone_objects, review, text)
