"""Per-candidate features for the lesion classifier (pure numpy/scipy).

A candidate is a 2-D connected component of ``hu >= threshold`` within a slice
(calcium-scoring.md, "From model output to labels").  The U-Net's probabilities
alone decide a candidate poorly: on the 1.4 mm grid a coronary plaque, an
aortic-wall or mitral-annulus calcification next to it and a rib tip can share
cells.  So each candidate gets a short feature vector that a small classifier
(``pipeline.candidate_classifier``) turns into background or an artery:

- the network's opinion: mean softmax of its voxels' cells (5) and the highest
  coronary probability among them;
- the lesion itself: area, peak and mean HU, and the size and extent of the
  3-D calcified object it belongs to (bone is a large 3-D object, a plaque a
  small one);
- where it is: millimetres from the heart centre (the network's position
  channels, same origin) and the distance to it;
- what surrounds it: the share of fat, soft tissue, lung/air and calcium in a
  small and a large in-plane window (a coronary plaque sits in epicardial fat,
  a mitral or valve calcification in soft tissue, a rib next to lung);
- a coarse picture of the neighbourhood in patient directions: mean HU
  (soft-tissue window) of 4 mm boxes on a 5 x 5 grid round the candidate on its
  slice, and of 8 mm boxes on a 3 x 3 grid 6 mm above and below.  Axial series
  all face the same way, so "the aorta is to the right of it" is learnable;
  it tells an aortic-wall calcification from a left-main plaque a few mm away.

Everything is computed on the heart crop (``pipeline.preprocess.extract``), so
training (cached crops) and inference (whole series) see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.arteries import N_CLASSES
from pipeline.preprocess import CropBox, cell_index
from pipeline.scoring import in_plane_structure

FEATURE_NAMES: tuple[str, ...] = (
    "p_background", "p_lm", "p_lad", "p_lcx", "p_rca", "p_coronary_max",
    "log_area_mm2", "peak_hu", "mean_hu",
    "log_object_volume_mm3", "object_z_extent_mm", "object_inplane_extent_mm",
    "z_mm", "row_mm", "col_mm", "distance_mm",
    "near_fat", "near_soft", "near_air", "near_calcium",
    "wide_fat", "wide_soft", "wide_air", "wide_calcium",
) + tuple(f"slice_hu_{i}_{j}" for i in range(5) for j in range(5)) + tuple(
    f"{side}_hu_{i}_{j}" for side in ("below", "above") for i in range(3) for j in range(3))
N_FEATURES = len(FEATURE_NAMES)

# HU bands of the context windows: lung/air, fat, soft tissue (blood, muscle), calcium/bone.
_AIR_BELOW = -250.0
_FAT_BELOW = -30.0
_NEAR_MM = 7.0  # side of the small context window
_WIDE_MM = 17.0  # side of the large context window
_CUBE = np.ones((3, 3, 3), dtype=bool)
_PICTURE_WINDOW_HU = (-300.0, 300.0)  # HU clipped to this before box means: bone must not swamp the picture
_SLICE_GRID = (5, 4.0)  # boxes per side, box side = step (mm), on the candidate's slice
_NEIGHBOUR_GRID = (3, 8.0)  # the same above and below
_NEIGHBOUR_MM = 6.0  # distance of those slices along z

# Image patches for the classifier's convolutional branch (``candidate_patches``).
PATCH_SLICES = 5  # slices centred on the candidate (about +-6-7 mm at 2.5-3 mm increments)
PATCH_SIDE = 32  # pixels per side
PATCH_MM = 40.0  # in-plane field of view (1.25 mm per patch pixel)
PATCH_WINDOW_HU = (-300.0, 700.0)
PATCH_CHANNELS = PATCH_SLICES + 2  # + the peak HU of the candidate's slice + the candidate's mask
# The wide view (``wide_patches``): coarse, three slices, the whole aortic root in sight.
WIDE_SIDE = 24
WIDE_MM = 60.0  # 2.5 mm per pixel
WIDE_CHANNELS = 3


@dataclass(frozen=True)
class Candidates:
    """The candidates of one heart crop and their features."""

    ids: np.ndarray  # int32 (z, rows, cols): 0 outside candidates, i for candidate i (1..n)
    features: np.ndarray  # float32 (n, N_FEATURES), row i - 1 for candidate i
    centres: np.ndarray  # float64 (n, 3): mean (z, row, col) voxel index of each candidate

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def find_candidates(hu_crop: np.ndarray, threshold_hu: float, connectivity: int) -> tuple[np.ndarray, int]:
    """2-D components of ``hu >= threshold_hu`` per slice: (ids, count)."""
    ids, n = ndimage.label(hu_crop >= threshold_hu, structure=in_plane_structure(connectivity))
    return ids.astype(np.int32, copy=False), int(n)


def candidate_features(
    hu_crop: np.ndarray,
    probabilities: np.ndarray,
    box: CropBox,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    threshold_hu: float,
    connectivity: int,
) -> Candidates:
    """Candidates of a heart crop and their feature rows.

    Parameters
    ----------
    hu_crop
        (z, rows, cols) HU of the crop (``box`` in the crop's own coordinates:
        ``row0 = col0 = 0``, the heart centre relative to the crop).
    probabilities
        (N_CLASSES, z, grid, grid) softmax of the network on this crop.
    """
    ids, n = find_candidates(hu_crop, threshold_hu, connectivity)
    if n == 0:
        return Candidates(ids, np.zeros((0, N_FEATURES), dtype=np.float32), np.zeros((0, 3)))
    z, r, c = np.nonzero(ids)
    which = ids[z, r, c].astype(np.int64) - 1
    size = np.bincount(which, minlength=n).astype(np.float64)

    def mean_of(values: np.ndarray) -> np.ndarray:
        return np.bincount(which, weights=values, minlength=n) / size

    grid = probabilities.shape[-1]
    rows, cols = cell_index(box, grid)
    voxel_probs = probabilities[:, z, rows[r], cols[c]].astype(np.float64)  # (N_CLASSES, voxels)
    mean_probs = np.stack([mean_of(p) for p in voxel_probs], axis=1)
    coronary_max = np.full(n, 0.0)
    np.maximum.at(coronary_max, which, 1.0 - voxel_probs[0])

    values = hu_crop[z, r, c].astype(np.float64)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, which, values)
    pixel_area = pixel_spacing_mm[0] * pixel_spacing_mm[1]

    volume, z_extent, inplane_extent = _object_features(ids > 0, z, r, c, which, n, pixel_spacing_mm, increment_mm)

    centre = (mean_of(z.astype(np.float64)), mean_of(r.astype(np.float64)), mean_of(c.astype(np.float64)))
    # Position relative to the heart centre, as the network's position channels measure it.
    z_mm = (centre[0] - (hu_crop.shape[0] - 1) / 2.0) * increment_mm
    row_mm = (centre[1] + 0.5 - box.centre_row) * pixel_spacing_mm[0]
    col_mm = (centre[2] + 0.5 - box.centre_col) * pixel_spacing_mm[1]

    near = _context(hu_crop, pixel_spacing_mm, _NEAR_MM, z, r, c, mean_of)
    wide = _context(hu_crop, pixel_spacing_mm, _WIDE_MM, z, r, c, mean_of)
    picture = _picture(hu_crop, pixel_spacing_mm, increment_mm, centre)

    features = np.column_stack([
        mean_probs, coronary_max,
        np.log(size * pixel_area), peak / 1000.0, mean_of(values) / 1000.0,
        np.log(volume), z_extent / 10.0, inplane_extent / 10.0,
        z_mm / 100.0, row_mm / 100.0, col_mm / 100.0, np.sqrt(z_mm**2 + row_mm**2 + col_mm**2) / 100.0,
        near, wide, picture,
    ]).astype(np.float32)
    assert features.shape == (n, N_FEATURES)
    return Candidates(ids, features, np.column_stack(centre))


def _object_features(
    mask: np.ndarray, z: np.ndarray, r: np.ndarray, c: np.ndarray, which: np.ndarray, n: int,
    pixel_spacing_mm: tuple[float, float], increment_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate: volume (mm^3), z extent and in-plane extent (mm) of its 26-connected 3-D object."""
    objects, n_objects = ndimage.label(mask, structure=_CUBE)
    obj = objects[z, r, c].astype(np.int64)
    voxel_volume = pixel_spacing_mm[0] * pixel_spacing_mm[1] * increment_mm
    counts = np.bincount(obj, minlength=n_objects + 1).astype(np.float64)
    extent = np.zeros((n_objects + 1, 3))
    for axis, coord in enumerate((z, r, c)):
        lo = np.full(n_objects + 1, np.inf)
        hi = np.full(n_objects + 1, -np.inf)
        np.minimum.at(lo, obj, coord)
        np.maximum.at(hi, obj, coord)
        extent[:, axis] = hi - lo + 1
    # Every voxel of candidate i lies in one object: take it from any of them.
    first = np.zeros(n, dtype=np.int64)
    first[which] = obj
    volume = counts[first] * voxel_volume
    z_extent = extent[first, 0] * increment_mm
    inplane = np.hypot(extent[first, 1] * pixel_spacing_mm[0], extent[first, 2] * pixel_spacing_mm[1])
    return volume, z_extent, inplane


def _context(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], side_mm: float,
             z: np.ndarray, r: np.ndarray, c: np.ndarray, mean_of) -> np.ndarray:
    """Per candidate, the share of fat, soft tissue, air and calcium in a ``side_mm`` in-plane window."""
    size = (1, max(3, int(round(side_mm / pixel_spacing_mm[0]))) | 1,
            max(3, int(round(side_mm / pixel_spacing_mm[1]))) | 1)
    air = hu_crop < _AIR_BELOW
    fat = (hu_crop >= _AIR_BELOW) & (hu_crop < _FAT_BELOW)
    calcium = hu_crop >= 130.0
    soft = ~(air | fat | calcium)
    out = []
    for band in (fat, soft, air, calcium):
        # Only the candidate voxels are needed: filter, then gather (the filter is separable and cheap).
        share = ndimage.uniform_filter(band.astype(np.float32), size=size, mode="nearest")
        out.append(mean_of(share[z, r, c].astype(np.float64)))
    return np.column_stack(out)


def _picture(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
             centre: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Box-mean HU on grids round each candidate centre (see the module docstring), scaled to about -1..1."""
    clipped = np.clip(hu_crop, *_PICTURE_WINDOW_HU).astype(np.float32)
    zc, rc, cc = centre
    n_slices = hu_crop.shape[0]
    columns = []
    dz = int(round(_NEIGHBOUR_MM / increment_mm)) or 1
    for grid, dzs in ((_SLICE_GRID, (0,)), (_NEIGHBOUR_GRID, (-dz, dz))):
        boxes, step_mm = grid
        side = (1, max(1, int(round(step_mm / pixel_spacing_mm[0]))), max(1, int(round(step_mm / pixel_spacing_mm[1]))))
        means = ndimage.uniform_filter(clipped, size=side, mode="nearest")
        offsets = (np.arange(boxes) - (boxes - 1) / 2.0) * step_mm
        for d in dzs:
            zi = np.clip(np.round(zc).astype(np.int64) + d, 0, n_slices - 1)
            for off_r in offsets:
                ri = np.clip(np.round(rc + off_r / pixel_spacing_mm[0]).astype(np.int64), 0, hu_crop.shape[1] - 1)
                for off_c in offsets:
                    ci = np.clip(np.round(cc + off_c / pixel_spacing_mm[1]).astype(np.int64), 0, hu_crop.shape[2] - 1)
                    columns.append(means[zi, ri, ci] / _PICTURE_WINDOW_HU[1])
    return np.column_stack(columns)


def candidate_patches(hu_crop: np.ndarray, found: Candidates, which: np.ndarray, pixel_spacing_mm: tuple[float, float],
                      increment_mm: float) -> np.ndarray:
    """Image patches round the candidates ``which`` (0-based), float32 (len(which), PATCH_CHANNELS, side, side).

    Channels: the mean HU of the ``PATCH_SLICES`` slices centred on the candidate,
    the peak HU of its own slice (scaled, clipped to ``PATCH_WINDOW_HU``), and
    the candidate's own mask.  In-plane the patch covers ``PATCH_MM`` at any
    pixel spacing, so every series looks alike to the classifier; each patch
    pixel (1.25 mm) pools the voxels it covers -- mean, peak, any -- so a
    calcification of one 0.5 mm voxel is not skipped.  Outside the crop is air.
    """
    half = PATCH_SLICES // 2
    label = (which + 1)[:, None, None]
    means, peak, mask = _pooled_views(hu_crop, found.centres[which], tuple(range(-half, half + 1)), PATCH_SIDE,
                                      PATCH_MM, pixel_spacing_mm, centre_ids=(found.ids, label))
    out = np.empty((len(which), PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE), dtype=np.float32)
    out[:, :PATCH_SLICES] = _patch_scale(means)
    out[:, PATCH_SLICES] = _patch_scale(peak)
    out[:, PATCH_SLICES + 1] = mask
    return out


def wide_patches(hu_crop: np.ndarray, found: Candidates, which: np.ndarray, pixel_spacing_mm: tuple[float, float],
                 increment_mm: float) -> np.ndarray:
    """A coarse, wide view round the candidates ``which``: float32 (len(which), WIDE_CHANNELS, side, side).

    ``WIDE_MM`` across at ``WIDE_MM / WIDE_SIDE`` per pixel, on the candidate's
    slice and ``_NEIGHBOUR_MM`` above and below: wide enough to show the whole
    aortic root beside a calcification near the coronary ostia, which the fine
    patch shows only in part (aortic-root calcifications called left main are
    among the false positives of the 40 mm patch alone).  Used by a classifier
    with ``wide_channels`` (model card: measured neutral so far).
    """
    dz = int(round(_NEIGHBOUR_MM / increment_mm)) or 1
    means, _, _ = _pooled_views(hu_crop, found.centres[which], (-dz, 0, dz), WIDE_SIDE, WIDE_MM, pixel_spacing_mm)
    return _patch_scale(means).astype(np.float32)


def _patch_scale(hu: np.ndarray) -> np.ndarray:
    lo, hi = PATCH_WINDOW_HU
    return (np.clip(hu, lo, hi) - 40.0) / 300.0


def _pooled_views(hu_crop: np.ndarray, centres: np.ndarray, slice_offsets: tuple[int, ...], side: int, fov_mm: float,
                  pixel_spacing_mm: tuple[float, float],
                  centre_ids: tuple[np.ndarray, np.ndarray] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square views of ``fov_mm`` and ``side`` pixels centred on ``centres`` (n, 3 voxel indices).

    Each view pixel pools the voxels it covers, so a one-voxel calcification is
    not skipped.  Returns, in HU: the mean per slice offset (n, len(offsets),
    side, side); the peak of the middle offset (offset 0); and, when
    ``centre_ids`` = (candidate ids, label per view) is given, whether any
    pooled voxel of offset 0 belongs to the view's own candidate.  Outside the
    crop is air.
    """
    n_slices, n_rows, n_cols = hu_crop.shape
    n = len(centres)
    pixel_mm = fov_mm / side
    sub = [max(1, int(np.ceil(pixel_mm / s))) for s in pixel_spacing_mm]  # samples per view pixel and axis
    zc = np.round(centres[:, 0]).astype(np.int64)
    step = (np.arange(side) - (side - 1) / 2.0) * pixel_mm
    air = PATCH_WINDOW_HU[0]
    sums = np.zeros((n, len(slice_offsets), side, side), dtype=np.float32)
    peak = np.full((n, side, side), -np.inf, dtype=np.float32)
    mask = np.zeros((n, side, side), dtype=bool)
    slices = [np.clip(zc + dz, 0, n_slices - 1)[:, None, None] for dz in slice_offsets]
    middle = slice_offsets.index(0)
    for i in range(sub[0]):
        r_mm = step + ((i + 0.5) / sub[0] - 0.5) * pixel_mm
        rows = np.round(centres[:, 1, None] + r_mm[None] / pixel_spacing_mm[0]).astype(np.int64)
        for j in range(sub[1]):
            c_mm = step + ((j + 0.5) / sub[1] - 0.5) * pixel_mm
            cols = np.round(centres[:, 2, None] + c_mm[None] / pixel_spacing_mm[1]).astype(np.int64)
            inside = ((rows >= 0) & (rows < n_rows))[:, :, None] & ((cols >= 0) & (cols < n_cols))[:, None, :]
            ri = np.clip(rows, 0, n_rows - 1)[:, :, None]
            ci = np.clip(cols, 0, n_cols - 1)[:, None, :]
            for k, z in enumerate(slices):
                hu = np.where(inside, hu_crop[z, ri, ci], air)
                sums[:, k] += hu
                if k == middle:
                    peak = np.maximum(peak, hu)
            if centre_ids is not None:
                ids, label = centre_ids
                mask |= inside & (ids[slices[middle], ri, ci] == label)
    return sums / (sub[0] * sub[1]), peak, mask
