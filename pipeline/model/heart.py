"""Classical heart localisation on a CT volume: where the heart is, and which slices hold it.

A calcium-scoring CT shows the chest from the carina to below the heart.  The
heart is the large soft-tissue mass *between the lungs*, above the diaphragm.
The method, on a volume resampled to ~3 mm in-plane for speed:

1. body  = the largest connected object denser than -500 HU once what is under
   three samples thick is opened away (the table's shells and a bridge to them),
   holes filled per slice (and gaps along rows and columns, for a body cut by
   the field of view, and a lung that the field cut open: a gap reaching the
   field's edge that reads as lung, not outside air, within the body's rows);
2. lungs = air regions (< -400 HU) inside the body, small pockets (bowel gas)
   dropped by volume;
3. mediastinum = soft tissue and fat (-250..250 HU; bone excluded) lying on the
   same image row between a lung on the left and a lung on the right;
4. the heart centre is where the mediastinum is thickest (maximum of its 3-D
   distance transform) on slices where the lungs are still large (this excludes
   the liver dome below the diaphragm);
5. the heart itself is the mediastinum "opened" by a ball of a fraction of that
   thickness (thin vessels and the paraspinal strip drop out), as the connected
   object holding the centre; its extent along z gives the heart slices.

Everything here is a pure function of the HU array and its spacing.  When no
lungs are found (e.g. a phantom without them) the body centre and all slices
are returned with ``found=False`` so the caller can log it; nothing is guessed
silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_SLICE_2D = np.zeros((3, 3, 3), dtype=bool)
_SLICE_2D[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class HeartLocation:
    """Where the heart is in a (slices, rows, columns) volume, in voxel coordinates.

    ``z0:z1`` are the slices kept (heart extent plus margin); ``centre_row`` and
    ``centre_col`` the in-plane centre in (fractional) pixels of the original grid.
    """

    z0: int
    z1: int
    centre_row: float
    centre_col: float
    found: bool  # False when the fallback (body centre, all slices) was used


@dataclass(frozen=True)
class HeartLocatorSettings:
    """Tuning of :func:`locate_heart` (stored in the weights file with the preprocessing)."""

    step_mm: float = 3.0  # in-plane sampling used for localisation only
    body_hu: float = -500.0
    lung_hu: float = -400.0
    no_data_hu: float = -1500.0  # below: padding outside the reconstruction circle (not opened away from)
    # A gap in the body reaching the field's edge is lung when most of it is above this: lung reads
    # -900..-700 HU, outside air -1000 HU.
    outside_air_hu: float = -950.0
    # Air regions smaller than this are not lung (bowel gas, bronchi).  Not more: a heart turned into
    # the left chest of a thin patient can leave a left lung of 75 mL in the slab (a shifted phantom).
    min_lung_ml: float = 20.0
    tissue_hu: tuple[float, float] = (-250.0, 250.0)  # soft tissue and fat, not bone
    min_lung_fraction: float = 0.3  # centre only on slices whose lung area is >= this x the largest
    opening_fraction: float = 0.45  # ball radius of the opening, as a fraction of the heart's half-thickness
    z_margin_mm: float = 15.0  # kept above and below the detected heart (LM origin, apex)
    min_height_mm: float = 90.0  # the kept slab is at least this tall, centred on the heart
    max_height_mm: float = 200.0


def locate_heart(
    hu: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    increment_mm: float,
    settings: HeartLocatorSettings,
) -> HeartLocation:
    """Find the heart of a CT volume (see the module docstring for the method)."""
    n_slices = hu.shape[0]
    step = max(1, int(round(settings.step_mm / min(pixel_spacing_mm))))
    small = np.ascontiguousarray(hu[:, ::step, ::step])  # read several times below: one strided read
    sampling = (float(increment_mm), pixel_spacing_mm[0] * step, pixel_spacing_mm[1] * step)
    voxel_ml = float(np.prod(sampling)) / 1000.0

    body = _body_mask(small, settings)
    lungs = _lung_mask(small, body, settings.lung_hu, settings.min_lung_ml / voxel_ml)
    lung_area = lungs.sum(axis=(1, 2))
    if lung_area.max() == 0:
        return _fallback(body, step, n_slices)

    mediastinum = _between_lungs(lungs) & body & (small > settings.tissue_hu[0]) & (small < settings.tissue_hu[1])
    # Distances only within the mediastinum's box (grown by one background voxel): the same
    # numbers as over the whole volume, since no voxel outside it is nearer.
    box = _grown_box(mediastinum)
    depth = np.zeros(mediastinum.shape)
    depth[box] = ndimage.distance_transform_edt(mediastinum[box], sampling=sampling)
    allowed = lung_area >= settings.min_lung_fraction * lung_area.max()
    depth_allowed = np.where(allowed[:, None, None], depth, 0.0)
    half_thickness = float(depth_allowed.max())
    if half_thickness <= 0:
        return _fallback(body, step, n_slices)

    # Opening by a ball of radius r: the voxels within r of a voxel at depth >= r.
    radius = settings.opening_fraction * half_thickness
    cores = depth >= radius
    near_core = np.full(mediastinum.shape, np.inf)  # every core lies in the box
    near_core[box] = ndimage.distance_transform_edt(~cores[box], sampling=sampling)
    opened = mediastinum & (near_core <= radius)
    components, _ = ndimage.label(opened)
    centre = np.unravel_index(int(np.argmax(depth_allowed)), depth.shape)
    heart = components == components[centre]

    zs = np.nonzero(heart.any(axis=(1, 2)))[0]
    rows, cols = np.nonzero(heart.any(axis=0))
    centre_row = (rows.min() + rows.max()) / 2.0 * step
    centre_col = (cols.min() + cols.max()) / 2.0 * step
    z0, z1 = _slab(int(zs.min()), int(zs.max()) + 1, increment_mm, n_slices, settings)
    return HeartLocation(z0=z0, z1=z1, centre_row=float(centre_row), centre_col=float(centre_col), found=True)


def _grown_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by one voxel on each side that is not the array's edge."""
    found = ndimage.find_objects(mask.astype(np.int8))
    if not found:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found[0], mask.shape))


def _body_mask(hu: np.ndarray, settings: HeartLocatorSettings) -> np.ndarray:
    """Largest object denser than ``body_hu``, holes filled per slice.

    Structures under three samples thick are opened away first: the table's shells,
    and the bridge that noise and blur make across a narrow gap between the back and
    the table, would otherwise join the table to the body and fill the air beside
    the body above it as if it were lung.  The padding outside the reconstruction circle
    (below ``no_data_hu``) is no air: the body is not opened away from it.
    """
    no_data = hu < settings.no_data_hu
    dense = _open_in_plane(hu > settings.body_hu, no_data)
    components, n = ndimage.label(dense)
    if n == 0:
        return dense
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    # A large patient is cut by the reconstruction field of view, and a lung touching
    # the image edge is then no "hole".  Also fill every pixel lying between body
    # pixels along its row or along its column (the trunk is nearly convex), and the
    # lung that the field cut open.
    filled = _fill_holes_per_slice(body) | _first_to_last(body, axis=2) | _first_to_last(body, axis=1)
    return filled | _lung_cut_open(hu, filled, no_data, settings.outside_air_hu)


def _lung_cut_open(hu: np.ndarray, body: np.ndarray, no_data: np.ndarray, outside_air_hu: float) -> np.ndarray:
    """The gaps of each slice of ``body`` that reach the field's edge (the image's edge or the padding),
    read as lung (most of their pixels above ``outside_air_hu``) and lie within the body's rows on
    a slice where the field cuts the body too: lung that a small field of view cut open.

    Outside air reads as air; the table's foam core reads as lung, but lies beyond the back.
    """
    field_edge = _next_to(no_data)
    field_edge[:, [0, -1]] = field_edge[:, :, [0, -1]] = True
    cut_slices = (body & field_edge).any(axis=(1, 2))
    if not cut_slices.any():  # the whole body within the field: nothing was cut open
        return np.zeros_like(body)
    gaps, n = ndimage.label(~body & ~no_data, structure=_SLICE_2D)
    at_edge = np.zeros(n + 1, dtype=bool)
    at_edge[gaps[field_edge]] = True
    above = np.bincount(gaps[hu > outside_air_hu], minlength=n + 1)
    lung_like = 2 * above > np.bincount(gaps.ravel(), minlength=n + 1)
    lung_like[0] = False
    first, last = _first_and_last(body.any(axis=2), axis=1)  # the body's first and last row per slice
    boxes = ndimage.find_objects(gaps)
    keep = np.zeros(n + 1, dtype=bool)
    for i in np.flatnonzero(at_edge & lung_like):
        z, rows, _ = boxes[i - 1]
        # not past the front or the back
        keep[i] = cut_slices[z.start] and first[z.start] < rows.start and rows.stop - 1 < last[z.start]
    return keep[gaps]


def _next_to(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel along rows and columns (the in-plane cross); nothing comes in from
    past the image's edge."""
    near = mask.copy()
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    near[:, :, 1:] |= mask[:, :, :-1]
    near[:, :, :-1] |= mask[:, :, 1:]
    return near


def _open_in_plane(mask: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """``mask`` opened by the in-plane cross: what is under three pixels thick drops out.

    Pixels past the image edge and ``unknown`` ones count as inside for the erosion: a body
    wider than the field of view is cut there, not thin.  Array shifts: a twentieth of the
    time of ``ndimage.binary_opening``.
    """
    outside = ~(mask | unknown)
    core = ~_next_to(outside)  # the erosion: nothing outside comes in from past the image's edge
    return _next_to(core) & mask


def _first_and_last(mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first and of the last True of each line of ``mask`` along ``axis`` (0 and n - 1
    for a line without one)."""
    n = mask.shape[axis]
    return np.argmax(mask, axis=axis), n - 1 - np.argmax(np.flip(mask, axis=axis), axis=axis)


def _first_to_last(mask: np.ndarray, axis: int) -> np.ndarray:
    """True from the first to the last True of each line of ``mask`` along ``axis``, both included."""
    n = mask.shape[axis]
    first, last = (np.expand_dims(i, axis) for i in _first_and_last(mask, axis))
    shape = [1] * mask.ndim
    shape[axis] = n
    position = np.arange(n).reshape(shape)
    return (position >= first) & (position <= last) & np.expand_dims(mask.any(axis=axis), axis)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask, structure=_SLICE_2D)``: the gaps of each slice that do not reach
    its edge, filled; found by labelling the gaps once (three times faster than the iterated dilation)."""
    gaps, n = ndimage.label(~mask, structure=_SLICE_2D)
    open_to_edge = np.zeros(n + 1, dtype=bool)
    for edge in (gaps[:, 0], gaps[:, -1], gaps[:, :, 0], gaps[:, :, -1]):
        open_to_edge[edge] = True
    open_to_edge[0] = True  # not a gap: the mask itself
    return mask | ~open_to_edge[gaps]


def _lung_mask(hu: np.ndarray, body: np.ndarray, lung_hu: float, min_voxels: float) -> np.ndarray:
    """Air inside the body in objects of at least ``min_voxels``."""
    air = (hu < lung_hu) & body
    components, n = ndimage.label(air)
    if n == 0:
        return air
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def _between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung both to their left and to their right on the same image row."""
    return _first_to_last(lungs, axis=2) & ~lungs


def _slab(z0: int, z1: int, increment_mm: float, n_slices: int, s: HeartLocatorSettings) -> tuple[int, int]:
    """The detected heart extent plus margin, held between the minimum and maximum heights."""
    margin = int(np.ceil(s.z_margin_mm / increment_mm))
    z0, z1 = z0 - margin, z1 + margin
    centre = (z0 + z1) / 2.0
    height = z1 - z0
    lo = int(np.ceil(s.min_height_mm / increment_mm))
    hi = int(np.floor(s.max_height_mm / increment_mm))
    height = min(max(height, lo), max(hi, 1))
    z0 = int(round(centre - height / 2.0))
    z1 = z0 + height
    # Shift (not shrink) a slab that runs past an end of the volume.
    if z0 < 0:
        z1, z0 = z1 - z0, 0
    if z1 > n_slices:
        z0, z1 = max(0, z0 - (z1 - n_slices)), n_slices
    return int(z0), int(z1)


def _fallback(body: np.ndarray, step: int, n_slices: int) -> HeartLocation:
    """Body centre and every slice, for volumes without recognisable lungs."""
    if body.any():
        rows, cols = np.nonzero(body.any(axis=0))
        row, col = (rows.min() + rows.max()) / 2.0 * step, (cols.min() + cols.max()) / 2.0 * step
    else:
        row, col = (body.shape[1] - 1) / 2.0 * step, (body.shape[2] - 1) / 2.0 * step
    return HeartLocation(z0=0, z1=n_slices, centre_row=float(row), centre_col=float(col), found=False)
