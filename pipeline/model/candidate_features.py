"""Per-candidate features for the lesion classifier (pure numpy/scipy).

A candidate is a 2-D connected component of ``hu >= threshold`` within a slice
(calcium-scoring.md, "From model output to labels").  The U-Net's probabilities
alone decide a candidate poorly: on the 1.4 mm grid a coronary plaque, an
aortic-wall or mitral-annulus calcification next to it and a rib tip can share
cells.  So each candidate gets a short feature vector that a small classifier
(``pipeline.model.candidate_classifier``) turns into background or an artery:

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

Everything is computed on the heart crop (``pipeline.model.preprocess.extract``), so
training (cached crops) and inference (whole series) see the same numbers.
Two steps: ``map_candidates`` finds the candidates and what their HU says of
them (inference runs it while the network runs), ``describe_candidates`` adds
what needs the network; ``candidate_features`` is the two in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.object_consensus import agatston_weight
from pipeline.model.preprocess import CropBox, cell_index
from pipeline.scoring.agatston import in_plane_structure
from pipeline.scoring.sparse import flat_nonzero

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
_CORONARY_MAX = FEATURE_NAMES.index("p_coronary_max")
_NETWORK_COLUMNS = _CORONARY_MAX + 1  # the network's opinion (``network_opinion``)

# HU bands of the context windows: lung/air, fat, soft tissue (blood, muscle), calcium/bone.
_AIR_BELOW = -250.0
_FAT_BELOW = -30.0
_NEAR_MM = 7.0  # side of the small context window
_WIDE_MM = 17.0  # side of the large context window
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
    features: np.ndarray  # float32 (n, N_FEATURES), row i - 1 for candidate i; a candidate under the gate
    # has only p_coronary_max, NaN elsewhere (``candidate_features``)
    centres: np.ndarray  # float64 (n, 3): mean (z, row, col) voxel index of each candidate
    voxels: np.ndarray  # flat indices into ``ids`` of every candidate voxel, ascending
    which: np.ndarray  # the 0-based candidate of each of those voxels
    # For the vote within calcified objects (``pipeline.model.object_consensus``); None when not known:
    object_of: np.ndarray | None = None  # int64 (n,): each candidate's 26-connected 3-D object
    object_mm3: np.ndarray | None = None  # float64 (n,): that object's volume
    weight: np.ndarray | None = None  # float64 (n,): what the candidate would add to the Agatston score

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def area_and_peak(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area (mm^2) and peak HU of each candidate, decoded from its feature rows."""
    area = np.exp(features[:, FEATURE_NAMES.index("log_area_mm2")].astype(np.float64))
    peak = features[:, FEATURE_NAMES.index("peak_hu")].astype(np.float64) * 1000.0
    return area, peak


def gated(features: np.ndarray, gate: float) -> np.ndarray:
    """Boolean mask of the candidates worth a closer look: network coronary probability >= ``gate``.

    Compared in float32, as the feature rows hold it, so that the rows given
    in full and the candidates looked at are the same ones.
    """
    return features[:, _CORONARY_MAX] >= np.float32(gate)


@dataclass(frozen=True)
class CandidateMap:
    """The candidates of one heart crop as its HU alone gives them (``map_candidates``).

    Nothing here needs the network, so inference finds the candidates while
    the network runs (``pipeline.model.inference``); ``describe_candidates`` adds
    the network's opinion and the features that are only worth computing past
    the gate.
    """

    ids: np.ndarray  # int32 (z, rows, cols): 0 outside candidates, i for candidate i (1..n)
    voxels: np.ndarray  # flat indices of every candidate voxel, ascending
    z: np.ndarray  # their voxel coordinates
    r: np.ndarray
    c: np.ndarray
    which: np.ndarray  # int64: the 0-based candidate of each voxel
    per_candidate: _PerCandidate
    centres: np.ndarray  # float64 (n, 3): mean (z, row, col) voxel index of each candidate
    peak_hu: np.ndarray  # float64 (n,)
    mean_hu: np.ndarray  # float64 (n,)
    objects: np.ndarray  # float64 (n, 3): volume (mm^3), z and in-plane extent (mm) of its 3-D object
    object_of: np.ndarray  # int64 (n,): that object (0, 1, ...)
    area_mm2: np.ndarray  # float64 (n,)

    @property
    def count(self) -> int:
        return int(self.centres.shape[0])


def map_candidates(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
                   threshold_hu: float, connectivity: int) -> CandidateMap:
    """The candidates of a heart crop (2-D components of ``hu >= threshold_hu``) and what the HU says of them."""
    mask = hu_crop >= threshold_hu
    ids, n = ndimage.label(mask, structure=in_plane_structure(connectivity))
    ids = ids.astype(np.int32, copy=False)
    voxels = flat_nonzero(mask)
    z, r, c = np.unravel_index(voxels, ids.shape)
    which = ids.reshape(-1)[voxels].astype(np.int64) - 1
    per_candidate = _PerCandidate(which, np.bincount(which, minlength=n).astype(np.float64))
    centres = np.column_stack([per_candidate.mean(v.astype(np.float64)) for v in (z, r, c)])
    values = hu_crop.reshape(-1).take(voxels).astype(np.float64)
    if n:
        object_of, *measures = _object_features(ids, z, r, c, which, per_candidate, connectivity, pixel_spacing_mm,
                                                increment_mm)
        objects = np.column_stack(measures)
    else:
        object_of, objects = np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    area_mm2 = per_candidate.size * (pixel_spacing_mm[0] * pixel_spacing_mm[1])
    return CandidateMap(ids, voxels, z, r, c, which, per_candidate, centres, per_candidate.max(values),
                        per_candidate.mean(values), objects, object_of, area_mm2)


def network_opinion(found: CandidateMap, probabilities: np.ndarray, box: CropBox,
                    gate: float = 0.0) -> np.ndarray:
    """The network's columns of the candidates' feature rows, float32 (n, 6): the highest coronary
    probability among each candidate's voxels' cells and, for the candidates past ``gate`` (``gated``),
    the mean class probabilities over those cells (NaN for the others: they are never looked at)."""
    grid = probabilities.shape[-1]
    rows, cols = cell_index(box, grid)
    cell = (found.z * grid + rows[found.r]) * grid + cols[found.c]  # flat index of each voxel's grid cell
    per_cell = probabilities.reshape(N_CLASSES, -1)
    opinion = np.full((found.count, _NETWORK_COLUMNS), np.nan, dtype=np.float32)
    opinion[:, _CORONARY_MAX] = found.per_candidate.max(1.0 - per_cell[0].take(cell).astype(np.float64))
    past = gated(opinion, gate)
    keep = past[found.which]
    kept = _PerCandidate(found.which[keep], found.per_candidate.size)
    for k, p in enumerate(per_cell.take(cell[keep], axis=1).astype(np.float64)):  # (N_CLASSES, kept voxels)
        opinion[past, k] = kept.mean(p)[past]
    return opinion


def past_the_gate(opinion: np.ndarray) -> np.ndarray:
    """Boolean mask of the candidates past the gate ``opinion`` was made with (``network_opinion`` gave
    them mean probabilities): the ones the classifier looks at."""
    return ~np.isnan(opinion[:, 0])


def describe_candidates(hu_crop: np.ndarray, found: CandidateMap, opinion: np.ndarray, box: CropBox,
                        pixel_spacing_mm: tuple[float, float], increment_mm: float) -> Candidates:
    """The feature rows of the candidates ``found``, given the network's ``opinion`` of them.

    The candidates past the gate ``opinion`` was made with (those it gives
    mean probabilities) get the whole row; the others, which the classifier
    never looks at, keep their ``p_coronary_max`` and NaN elsewhere.  ``box``
    is in the crop's own coordinates, as for :func:`candidate_features`.
    """
    n = found.count
    features = np.full((n, N_FEATURES), np.nan, dtype=np.float32)
    features[:, :_NETWORK_COLUMNS] = opinion
    past = past_the_gate(opinion)  # the gate is applied once, by network_opinion
    full = np.flatnonzero(past)
    if full.size:
        size = found.per_candidate.size
        keep = past[found.which]
        z, r, c = found.z[keep], found.r[keep], found.c[keep]
        kept = _PerCandidate(found.which[keep], size)  # every voxel of a kept candidate is kept: same sizes
        centre = found.centres[full]
        # Position relative to the heart centre, as the network's position channels measure it.
        z_mm = (centre[:, 0] - (hu_crop.shape[0] - 1) / 2.0) * increment_mm
        row_mm = (centre[:, 1] + 0.5 - box.centre_row) * pixel_spacing_mm[0]
        col_mm = (centre[:, 2] + 0.5 - box.centre_col) * pixel_spacing_mm[1]
        near, wide = _context(hu_crop, pixel_spacing_mm, (_NEAR_MM, _WIDE_MM), z, r, c, kept)
        picture = _picture(hu_crop, pixel_spacing_mm, increment_mm, tuple(centre.T))
        volume, z_extent, inplane_extent = found.objects[full].T
        features[full, _NETWORK_COLUMNS:] = np.column_stack([
            np.log(found.area_mm2[full]), found.peak_hu[full] / 1000.0, found.mean_hu[full] / 1000.0,
            np.log(volume), z_extent / 10.0, inplane_extent / 10.0,
            z_mm / 100.0, row_mm / 100.0, col_mm / 100.0, np.sqrt(z_mm**2 + row_mm**2 + col_mm**2) / 100.0,
            near[full], wide[full], picture,
        ])
    return Candidates(found.ids, features, found.centres, found.voxels, found.which, found.object_of,
                      found.objects[:, 0], agatston_weight(found.area_mm2, found.peak_hu))


def candidate_features(
    hu_crop: np.ndarray,
    probabilities: np.ndarray,
    box: CropBox,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    threshold_hu: float,
    connectivity: int,
    gate: float = 0.0,
) -> Candidates:
    """Candidates of a heart crop and their feature rows: :func:`map_candidates`, then :func:`describe_candidates`.

    Parameters
    ----------
    hu_crop
        (z, rows, cols) HU of the crop (``box`` in the crop's own coordinates:
        ``row0 = col0 = 0``, the heart centre relative to the crop).
    probabilities
        (N_CLASSES, z, grid, grid) softmax of the network on this crop.
    gate
        Only candidates whose ``p_coronary_max`` reaches it get the whole row
        (``describe_candidates``).  0 computes every row.
    """
    found = map_candidates(hu_crop, pixel_spacing_mm, increment_mm, threshold_hu, connectivity)
    return describe_candidates(hu_crop, found, network_opinion(found, probabilities, box, gate), box,
                               pixel_spacing_mm, increment_mm)


class _PerCandidate:
    """Means and maxima of per-voxel values over each candidate's voxels (``which``: candidate per voxel)."""

    def __init__(self, which: np.ndarray, size: np.ndarray) -> None:
        self.which, self.size = which, size
        self.order = np.argsort(which, kind="stable")  # the voxels grouped by candidate
        counts = np.bincount(which, minlength=size.size)
        self.present = counts > 0
        self.counts = counts[self.present]  # voxels per group, groups in candidate order
        self.starts = np.cumsum(self.counts) - self.counts

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Per candidate (0 for a candidate without voxels in ``which``)."""
        return np.bincount(self.which, weights=values, minlength=self.size.size) / self.size

    def max(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.size.size, -np.inf)
        if self.which.size:
            out[self.present] = self.per_group(np.maximum, values)
        return out

    def per_group(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        """``ufunc`` reduced over each present candidate's voxels, in candidate order."""
        return ufunc.reduceat(values[self.order], self.starts)


def _object_features(
    ids: np.ndarray, z: np.ndarray, r: np.ndarray, c: np.ndarray, which: np.ndarray, per_candidate: _PerCandidate,
    connectivity: int, pixel_spacing_mm: tuple[float, float], increment_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate: its 26-connected 3-D object (0, 1, ...), and that object's volume (mm^3), z extent
    and in-plane extent (mm).

    ``ids`` labels the candidates, ``z, r, c`` are every candidate voxel and
    ``which`` its 0-based candidate.  The objects (those of ``ndimage.label``
    of the candidate mask with a 3 x 3 x 3 structure) are the candidates
    joined where they touch (``_objects``), and their sizes and extents are
    those of the candidates they join: counted over the candidate voxels, not
    over the whole crop, most of which is empty.
    """
    object_of = _objects(ids, z, r, c, which, per_candidate.size.size, connectivity)
    n_objects = int(object_of.max()) + 1
    counts = np.bincount(object_of, weights=per_candidate.size, minlength=n_objects)  # sums of whole numbers: exact
    low = np.full((n_objects, 3), np.iinfo(np.int64).max)
    high = np.full((n_objects, 3), -1)
    for axis, v in enumerate((z, r, c)):  # every candidate has a voxel: per_group covers them all
        np.minimum.at(low[:, axis], object_of, per_candidate.per_group(np.minimum, v))
        np.maximum.at(high[:, axis], object_of, per_candidate.per_group(np.maximum, v))
    extent = (high - low + 1).astype(np.float64)  # stop - start, as ndimage.find_objects gives them
    volume = counts[object_of] * (pixel_spacing_mm[0] * pixel_spacing_mm[1] * increment_mm)
    z_extent = extent[object_of, 0] * increment_mm
    inplane = np.hypot(extent[object_of, 1] * pixel_spacing_mm[0], extent[object_of, 2] * pixel_spacing_mm[1])
    return object_of, volume, z_extent, inplane


def _objects(ids: np.ndarray, z: np.ndarray, r: np.ndarray, c: np.ndarray, which: np.ndarray, n: int,
             connectivity: int) -> np.ndarray:
    """The 26-connected object (0, 1, ...) of each of the ``n`` candidates of ``ids``.

    Two candidates are in one object when a voxel of one touches a voxel of
    the other: in the next slice (any of the 9 voxels above), or diagonally
    within a slice for 4-connected candidates.  Each candidate voxel looks up
    those neighbours; the candidates so joined are the components of a small
    graph.  A sixth of the time of labelling the whole crop in 3-D.
    """
    n_slices, n_rows, n_cols = ids.shape
    flat = ids.reshape(-1)
    joined_from, joined_to = [np.arange(n)], [np.arange(n)]  # every candidate is a node of the graph

    def record(candidate: np.ndarray, neighbour: np.ndarray) -> None:
        """Join each voxel's ``candidate`` (0-based) to the ``neighbour`` id it touches (0: none)."""
        touching = np.flatnonzero(neighbour)
        start, end = candidate[touching], neighbour[touching] - 1
        # Neighbouring voxels mostly repeat the pair before them: keep the first of each run.
        new = np.ones(start.size, dtype=bool)
        new[1:] = (start[1:] != start[:-1]) | (end[1:] != end[:-1])
        joined_from.append(start[new])
        joined_to.append(end[new])

    def join(at: np.ndarray, dz: int, row_steps: tuple[int, ...], col_steps: tuple[int, ...]) -> None:
        """Join the candidates of the voxels ``at`` to those of their neighbours (dz, dr, dc)."""
        slice_start = (z[at] + dz) * n_rows
        # A neighbour past the crop's edge is clipped onto one inside it, which still touches the voxel.
        row_starts = [(slice_start + np.clip(r[at] + dr, 0, n_rows - 1)) * n_cols for dr in row_steps]
        cols = [np.clip(c[at] + dc, 0, n_cols - 1) for dc in col_steps]
        candidate = which[at]
        for row_start in row_starts:
            for col in cols:
                record(candidate, flat.take(row_start + col))

    if connectivity == 4:  # the other in-plane touches are within one candidate
        join(np.arange(z.size), 0, (1,), (-1, 1))
    below_top = np.flatnonzero(z < n_slices - 1)
    # Every voxel of a 3 x 3 square touches its centre in-plane, and candidates touching in-plane
    # are joined already (one candidate if 8-connected, the diagonal pass above if 4-connected); so
    # where the voxel straight above is a candidate's, the other eight above join nothing more.
    # Most voxels are bone and have one.
    above = flat.take(((z[below_top] + 1) * n_rows + r[below_top]) * n_cols + c[below_top])
    record(which[below_top], above)
    join(below_top[above == 0], 1, (-1, 0, 1), (-1, 0, 1))  # the 9 voxels in the next slice
    start, end = np.concatenate(joined_from), np.concatenate(joined_to)
    graph = coo_matrix((np.ones(start.size, dtype=np.int32), (start, end)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _context(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], sides_mm: tuple[float, ...],
             z: np.ndarray, r: np.ndarray, c: np.ndarray, per_candidate: _PerCandidate) -> list[np.ndarray]:
    """Per candidate and window side, the share of fat, soft tissue, air and calcium in the in-plane window.

    A candidate lies on one slice: each is filtered on the block its windows
    reach (``_blocks``), blocks of like size stacked into one call -- the
    numbers of a whole-crop filter at a fraction of the work.  The filter
    runs along rows, then along columns (as ``ndimage.uniform_filter`` does);
    the second pass only on the block rows that hold a candidate voxel.
    """
    sizes = [(max(3, int(round(side / pixel_spacing_mm[0]))) | 1, max(3, int(round(side / pixel_spacing_mm[1]))) | 1)
             for side in sides_mm]
    reach = np.array([max(s[0] for s in sizes) // 2, max(s[1] for s in sizes) // 2])
    shares = np.empty((len(sizes), 4, z.size))
    order = per_candidate.order
    first = order[per_candidate.starts]  # one voxel per candidate: its slice
    low = np.stack([per_candidate.per_group(np.minimum, v) for v in (r, c)], axis=1)
    span = np.stack([per_candidate.per_group(np.maximum, v) for v in (r, c)], axis=1) - low + 1
    slot = np.repeat(np.arange(per_candidate.counts.size), per_candidate.counts)  # candidate slot per sorted voxel
    # Blocks of like size together (spans rounded up to a power of two): one big candidate
    # does not inflate the blocks of the many small ones.
    bucket = np.maximum(np.ceil(np.log2(span.max(axis=1))), 3).astype(int)
    for b in np.unique(bucket):
        group = np.flatnonzero(bucket == b)
        shape = tuple(int(x) for x in 2**b + 2 * reach)
        block = _blocks(hu_crop, z[first[group]], low[group] - reach, shape)
        # Band pixels counted down each column: a window's count is a difference of two rows.
        # (Row by row: several times faster than np.cumsum along this axis.)
        bands = _bands(block).view(np.int8)
        counts = np.zeros((4, len(group), shape[0] + 1, shape[1]), dtype=np.int16)  # a block has < 32768 rows
        for i in range(shape[0]):
            np.add(counts[:, :, i], bands[:, :, i], out=counts[:, :, i + 1])
        voxels = np.flatnonzero(np.isin(slot, group))
        k = np.searchsorted(group, slot[voxels])
        row = r[order[voxels]] - low[group][k, 0] + reach[0]
        col = c[order[voxels]] - low[group][k, 1] + reach[1]
        lines, line_of = np.unique(k * shape[0] + row, return_inverse=True)  # the (block, row) pairs voxels lie on
        line_block, line_row = np.divmod(lines, shape[0])
        for s, (rows_size, cols_size) in enumerate(sizes):
            half = rows_size // 2  # windows stay inside the block: reach >= half
            in_window = (counts[:, line_block, line_row + half + 1] - counts[:, line_block, line_row - half])
            # uniform_filter's first pass is float32(count / size): with an odd size a count / size
            # is never halfway between two float32 values, so its running sum's last-bit drift
            # cannot change the rounding.  Its second pass runs as it would, along each line.
            by_rows = (in_window / rows_size).astype(np.float32)
            share = ndimage.uniform_filter1d(by_rows, cols_size, axis=2, mode="nearest")
            shares[s, :, order[voxels]] = share[:, line_of, col].T
    return [np.column_stack([per_candidate.mean(v) for v in per_size]) for per_size in shares]


def _bands(hu: np.ndarray) -> np.ndarray:
    """Boolean masks (4, *hu.shape) of fat, soft tissue, lung/air and calcium (the context bands)."""
    air = hu < _AIR_BELOW
    fat = (hu >= _AIR_BELOW) & (hu < _FAT_BELOW)
    calcium = hu >= 130.0
    soft = ~(air | fat | calcium)
    return np.stack((fat, soft, air, calcium))


def _blocks(hu_crop: np.ndarray, z: np.ndarray, low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """In-plane blocks (k, *shape) of slices ``z`` from (row, col) ``low``, the crop's edges repeated beyond it.

    Repeating the edge is what ``mode="nearest"`` does at the crop's edge, so a
    block filtered alone gives the crop's numbers at points whose window stays
    inside the block.
    """
    _, n_rows, n_cols = hu_crop.shape
    rows = np.clip(low[:, :1] + np.arange(shape[0]), 0, n_rows - 1)
    cols = np.clip(low[:, 1:] + np.arange(shape[1]), 0, n_cols - 1)
    row_starts = (z[:, None] * n_rows + rows) * n_cols
    # One flat gather: two to three times faster than indexing with three broadcast arrays.
    return hu_crop.reshape(-1).take(row_starts[:, :, None] + cols[:, None, :])


def _picture(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
             centre: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Box-mean HU on grids round each candidate centre (see the module docstring), scaled to about -1..1.

    Each candidate's boxes are filtered on the block they reach (``_blocks``).
    """
    zc, rc, cc = centre
    n_slices, n_rows, n_cols = hu_crop.shape
    columns = []
    dz = int(round(_NEIGHBOUR_MM / increment_mm)) or 1
    for (boxes, step_mm), dzs in ((_SLICE_GRID, (0,)), (_NEIGHBOUR_GRID, (-dz, dz))):
        size = (max(1, int(round(step_mm / pixel_spacing_mm[0]))), max(1, int(round(step_mm / pixel_spacing_mm[1]))))
        offsets = (np.arange(boxes) - (boxes - 1) / 2.0) * step_mm
        ri = np.clip(np.round(rc[:, None] + offsets / pixel_spacing_mm[0]).astype(np.int64), 0, n_rows - 1)
        ci = np.clip(np.round(cc[:, None] + offsets / pixel_spacing_mm[1]).astype(np.int64), 0, n_cols - 1)
        low = np.stack([ri[:, 0] - size[0] // 2, ci[:, 0] - size[1] // 2], axis=1)
        shape = (int((ri[:, -1] - ri[:, 0]).max()) + size[0], int((ci[:, -1] - ci[:, 0]).max()) + size[1])
        k = np.arange(zc.size)[:, None, None]
        for d in dzs:
            zi = np.clip(np.round(zc).astype(np.int64) + d, 0, n_slices - 1)
            block = np.clip(_blocks(hu_crop, zi, low, shape), *_PICTURE_WINDOW_HU).astype(np.float32)
            means = ndimage.uniform_filter(block, size=(1, *size), mode="nearest")
            picked = means[k, (ri - low[:, :1])[:, :, None], (ci - low[:, 1:])[:, None, :]]
            columns.append(picked.reshape(zc.size, -1) / _PICTURE_WINDOW_HU[1])
    return np.concatenate(columns, axis=1)


def candidate_patches(hu_crop: np.ndarray, found: Candidates | CandidateMap, which: np.ndarray,
                      pixel_spacing_mm: tuple[float, float], increment_mm: float) -> np.ndarray:
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


def wide_patches(hu_crop: np.ndarray, found: Candidates | CandidateMap, which: np.ndarray,
                 pixel_spacing_mm: tuple[float, float], increment_mm: float) -> np.ndarray:
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
    # Flat indices into the crop: one gather per slice and sample instead of three index arrays.
    slice_starts = [np.clip(zc + dz, 0, n_slices - 1)[:, None, None] * (n_rows * n_cols) for dz in slice_offsets]
    middle = slice_offsets.index(0)
    flat_hu = hu_crop.reshape(-1)
    for i in range(sub[0]):
        r_mm = step + ((i + 0.5) / sub[0] - 0.5) * pixel_mm
        rows = np.round(centres[:, 1, None] + r_mm[None] / pixel_spacing_mm[0]).astype(np.int64)
        for j in range(sub[1]):
            c_mm = step + ((j + 0.5) / sub[1] - 0.5) * pixel_mm
            cols = np.round(centres[:, 2, None] + c_mm[None] / pixel_spacing_mm[1]).astype(np.int64)
            inside = ((rows >= 0) & (rows < n_rows))[:, :, None] & ((cols >= 0) & (cols < n_cols))[:, None, :]
            in_slice = np.clip(rows, 0, n_rows - 1)[:, :, None] * n_cols + np.clip(cols, 0, n_cols - 1)[:, None, :]
            for k, start in enumerate(slice_starts):
                hu = flat_hu.take(start + in_slice)
                hu[~inside] = air
                sums[:, k] += hu
                if k == middle:
                    np.maximum(peak, hu, out=peak)
            if centre_ids is not None:
                ids, label = centre_ids
                mask |= inside & (ids.reshape(-1).take(slice_starts[middle] + in_slice) == label)
    return sums / (sub[0] * sub[1]), peak, mask
