"""The anatomy as an HU volume: thin planes on a half-resolution grid, integrated into slices.

Organs are smooth, so they are evaluated on a design grid of half the
reconstruction's resolution (each design pixel is a 2x2 block of image
pixels) and on thin planes (a third of the slice thickness apart).  Each slice
is the slice-profile-weighted mean of the planes near it (``physics.ssp``), so
partial volume along z comes from integration, not from an edge model; the
slices are then brought to the full matrix by bilinear interpolation.  Tubes
(vessels, airways, coronaries) are drawn as stamps round each short segment
near the plane, all segments of a tube set at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom_b import chest as chest_mod
from training.phantom_b.chest import paint
from training.phantom_b.geometry import Grid
from training.phantom_b.physics import SSP_REACH, ssp_weights
from training.phantom_b.scene import Scene
from training.phantom_b.sdf import coverage
from training.phantom_b.vessels import TubeLayer

PLANES_PER_THICKNESS = 3


@dataclass(frozen=True)
class Segments:
    """The capsules of one or more tubes, ready for stamping."""

    a: np.ndarray  # (n, 3)
    b: np.ndarray
    ra: np.ndarray  # (n,)
    rb: np.ndarray
    z_lo: np.ndarray  # (n,) lowest z a segment (with its sleeve) reaches
    z_hi: np.ndarray
    half: int  # stamp half size in design pixels


def segments(layers: tuple[TubeLayer, ...] | list[TubeLayer], reach: float, spacing: float) -> Segments:
    """All segments of ``layers`` (a zero radius at either end breaks a polyline); ``reach``: sleeve + edge."""
    parts = []
    for layer in layers:
        keep = (layer.radii[:-1] > 0) & (layer.radii[1:] > 0)
        parts.append((layer.points[:-1][keep], layer.points[1:][keep], layer.radii[:-1][keep], layer.radii[1:][keep]))
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    ra = np.concatenate([p[2] for p in parts])
    rb = np.concatenate([p[3] for p in parts])
    r = np.maximum(ra, rb) + reach
    length = np.linalg.norm(b - a, axis=1)
    half = int(np.ceil((0.5 * length.max(initial=0.0) + r.max(initial=0.0)) / spacing)) + 1
    return Segments(a, b, ra, rb, np.minimum(a[:, 2], b[:, 2]) - r, np.maximum(a[:, 2], b[:, 2]) + r, half)


def tube_distance(seg: Segments, z: float, x0: float, y0: float, spacing: float,
                  shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Distance to the nearest tube on plane ``z``, on the box the stamps cover (large where none reaches)."""
    sel = np.flatnonzero((seg.z_lo <= z) & (seg.z_hi >= z))
    if sel.size == 0:
        return None
    a, b, ra, rb = seg.a[sel], seg.b[sel], seg.ra[sel], seg.rb[sel]
    mid = 0.5 * (a + b)
    offsets = np.arange(-seg.half, seg.half + 1)
    cols = np.rint((mid[:, 0] - x0) / spacing).astype(int)[:, None] + offsets[None, :]
    rows = np.rint((mid[:, 1] - y0) / spacing).astype(int)[:, None] + offsets[None, :]
    r0, r1 = max(int(rows.min()), 0), min(int(rows.max()) + 1, shape[0])
    c0, c1 = max(int(cols.min()), 0), min(int(cols.max()) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    ab = b - a
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-12)[:, None, None]
    dx = (x0 + spacing * cols - a[:, 0:1])[:, None, :]
    dy = (y0 + spacing * rows - a[:, 1:2])[:, :, None]
    dz = (z - a[:, 2])[:, None, None]
    t = np.clip((dx * ab[:, 0, None, None] + dy * ab[:, 1, None, None] + dz * ab[:, 2, None, None]) / length2, 0, 1)
    ex = dx - t * ab[:, 0, None, None]
    ey = dy - t * ab[:, 1, None, None]
    ez = dz - t * ab[:, 2, None, None]
    d = np.sqrt(ex * ex + ey * ey + ez * ez) - (ra[:, None, None] + t * (rb - ra)[:, None, None])
    valid = ((rows >= r0) & (rows < r1))[:, :, None] & ((cols >= c0) & (cols < c1))[:, None, :]
    index = (rows - r0)[:, :, None] * (c1 - c0) + (cols - c0)[:, None, :]
    out = np.full((r1 - r0) * (c1 - c0), 1e3, np.float32)
    np.minimum.at(out, index[valid], d[valid].astype(np.float32))
    return (slice(r0, r1), slice(c0, c1)), out.reshape(r1 - r0, c1 - c0)


def paint_tubes(img: np.ndarray, seg: Segments, layer_hu: float, sleeve_mm: float, sleeve_hu: float | None,
                z: float, x0: float, y0: float, spacing: float, mask: np.ndarray | None = None) -> None:
    """Paint a tube set's sleeve (when ``sleeve_hu`` is given) and lumen on plane ``z`` (in place)."""
    hit = tube_distance(seg, z, x0, y0, spacing, img.shape)
    if hit is None:
        return
    box, d = hit
    region = img[box]
    weight = 1.0 if mask is None else mask[box]
    if sleeve_hu is not None and sleeve_mm > 0:
        paint(region, coverage(d - sleeve_mm, spacing) * weight, sleeve_hu)
    paint(region, coverage(d, spacing) * weight, layer_hu)


def upsample2(coarse: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of (n, h, w) from block centres to pixel centres: (n, 2h, 2w) float32."""
    def axis_up(a: np.ndarray, axis: int) -> np.ndarray:
        prev = np.concatenate([np.take(a, [0], axis), np.take(a, range(a.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([np.take(a, range(1, a.shape[axis]), axis), np.take(a, [-1], axis)], axis)
        even = 0.75 * a + 0.25 * prev
        odd = 0.75 * a + 0.25 * nxt
        shape = list(a.shape)
        shape[axis] *= 2
        out = np.empty(shape, np.float32)
        index = [slice(None)] * a.ndim
        index[axis] = slice(0, None, 2)
        out[tuple(index)] = even
        index[axis] = slice(1, None, 2)
        out[tuple(index)] = odd
        return out

    return axis_up(axis_up(coarse, 1), 2)


def render_anatomy(scene: Scene, grid: Grid) -> np.ndarray:
    """HU of the anatomy (no calcifications, no blur, no noise): (slices, rows, cols) float32, ascending z."""
    body = scene.params.body
    spacing = 2.0 * grid.pixel_mm
    n = grid.matrix // 2
    x0 = grid.origin_mm[0] + 0.5 * grid.pixel_mm
    y0 = grid.origin_mm[1] + 0.5 * grid.pixel_mm
    x = (x0 + spacing * np.arange(n)).astype(np.float32)
    y = (y0 + spacing * np.arange(n)).astype(np.float32)
    X, Y = x[None, :], y[:, None]
    tpl = chest_mod.template(scene.chest, x, y, spacing)

    z_slices = grid.zs()
    dz = grid.thickness_mm / PLANES_PER_THICKNESS
    reach = SSP_REACH * grid.thickness_mm
    z_planes = np.arange(z_slices[0] - reach, z_slices[-1] + reach + dz, dz)
    weights = ssp_weights(z_slices, z_planes, grid.thickness_mm)

    med = scene.mediastinum
    sleeves = [segments([layer], layer.sleeve_mm + spacing, spacing) for layer in med.lumens()]
    others = [segments([layer], layer.sleeve_mm + spacing, spacing) for layer in med.others()]
    lung = segments([scene.lung_vessels], spacing, spacing)
    coronary = segments(list(scene.artery_layers), scene.coronary_sleeve + spacing, spacing)
    lo, hi = scene.heart.bounds(2.0 * spacing)
    hr = (max(0, int((lo[1] - y0) / spacing)), min(n, int((hi[1] - y0) / spacing) + 2))
    hc = (max(0, int((lo[0] - x0) / spacing)), min(n, int((hi[0] - x0) / spacing) + 2))
    heart_box = (slice(*hr), slice(*hc))
    HX, HY = X[:, heart_box[1]], Y[heart_box[0], :]

    out = np.zeros((z_slices.size, n, n), np.float32)
    for j, z in enumerate(z_planes):
        ks = np.flatnonzero(weights[:, j])
        if ks.size == 0:
            continue
        img = tpl.img.copy()
        chest_mod.paint_ribs(img, tpl, scene.ribs, body, float(z), spacing)
        chest_mod.paint_domes(img, tpl, scene.domes, body, X, Y, float(z), spacing)
        lung_mask = np.clip((-350.0 - img) / 300.0, 0.0, 1.0)
        paint_tubes(img, lung, body.blood_hu, 0.0, None, float(z), x0, y0, spacing, lung_mask)
        for seg, layer in zip(sleeves, med.lumens()):
            hit = tube_distance(seg, float(z), x0, y0, spacing, img.shape)
            if hit is not None:
                box, d = hit
                paint(img[box], coverage(d - layer.sleeve_mm, spacing), layer.sleeve_hu)
        for seg, layer in zip(others, med.others()):
            paint_tubes(img, seg, layer.hu, layer.sleeve_mm, layer.sleeve_hu, float(z), x0, y0, spacing)
        if lo[2] <= z <= hi[2] and heart_box[0].start < heart_box[0].stop and heart_box[1].start < heart_box[1].stop:
            scene.heart.paint(img[heart_box], HX, HY, float(z), body, spacing)
        paint_tubes(img, coronary, body.blood_hu, scene.coronary_sleeve, body.fat_hu, float(z), x0, y0, spacing)
        for seg, layer in zip(sleeves, med.lumens()):
            paint_tubes(img, seg, layer.hu, 0.0, None, float(z), x0, y0, spacing)
        # Bone stays bone wherever a soft organ reached over it.
        paint(img[tpl.spine_box], tpl.spine_cover, tpl.img[tpl.spine_box])
        chest_mod.paint_discs(img, tpl, body, float(z))
        for k in ks:
            out[k] += weights[k, j] * img
    return upsample2(out)
