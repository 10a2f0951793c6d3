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
MOTION_STEPS = 3


@dataclass(frozen=True)
class Segments:
    """The capsules of one or more tubes, ready for stamping."""

    a: np.ndarray  # (n, 3)
    b: np.ndarray
    ra: np.ndarray  # (n,)
    rb: np.ndarray
    z_lo: np.ndarray  # (n,) lowest z a segment (with its sleeve) reaches
    z_hi: np.ndarray
    half: np.ndarray  # (n,) stamp half size in design pixels, one of ``_STAMP_HALVES``


# Stamp sizes: each segment gets the smallest that holds it, so thin vessels are not stamped as large as thick ones.
_STAMP_HALVES = np.array([4, 6, 9, 13, 19, 28, 40, 60, 90])


def segments(layers: tuple[TubeLayer, ...] | list[TubeLayer], reach: float, spacing: float) -> Segments:
    """All segments of ``layers`` (a zero radius at either end breaks a polyline); ``reach``: sleeve + edge."""
    parts = []
    for layer in layers:
        keep = (layer.radii[:-1] > 0) & (layer.radii[1:] > 0)
        parts.append((layer.points[:-1][keep], layer.points[1:][keep], layer.radii[:-1][keep], layer.radii[1:][keep]))
    a = np.concatenate([p[0] for p in parts]).astype(np.float32)
    b = np.concatenate([p[1] for p in parts]).astype(np.float32)
    ra = np.concatenate([p[2] for p in parts]).astype(np.float32)
    rb = np.concatenate([p[3] for p in parts]).astype(np.float32)
    r = np.maximum(ra, rb) + reach
    need = np.ceil((0.5 * np.linalg.norm(b - a, axis=1) + r) / spacing) + 1
    half = _STAMP_HALVES[np.minimum(np.searchsorted(_STAMP_HALVES, need), _STAMP_HALVES.size - 1)]
    return Segments(a, b, ra, rb, np.minimum(a[:, 2], b[:, 2]) - r, np.maximum(a[:, 2], b[:, 2]) + r, half)


def tube_distance(seg: Segments, z: float, x0: float, y0: float, spacing: float,
                  shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Distance to the nearest tube on plane ``z``, on the box the stamps cover (large where none reaches)."""
    sel = np.flatnonzero((seg.z_lo <= z) & (seg.z_hi >= z))
    if sel.size == 0:
        return None
    mid = 0.5 * (seg.a[sel] + seg.b[sel])
    ci = np.rint((mid[:, 0] - x0) / spacing).astype(int)
    ri = np.rint((mid[:, 1] - y0) / spacing).astype(int)
    h = seg.half[sel]
    r0, r1 = max(int((ri - h).min()), 0), min(int((ri + h).max()) + 1, shape[0])
    c0, c1 = max(int((ci - h).min()), 0), min(int((ci + h).max()) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    out = np.full((r1 - r0) * (c1 - c0), 1e3, np.float32)
    for half in np.unique(h):
        group = h == half
        idx = sel[group]
        offsets = np.arange(-half, half + 1)
        _stamp(out, seg.a[idx], seg.b[idx], seg.ra[idx], seg.rb[idx], ci[group][:, None] + offsets,
               ri[group][:, None] + offsets, z, x0, y0, spacing, (r0, r1, c0, c1))
    return (slice(r0, r1), slice(c0, c1)), out.reshape(r1 - r0, c1 - c0)


def _stamp(out: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray, cols: np.ndarray,
           rows: np.ndarray, z: float, x0: float, y0: float, spacing: float, box: tuple[int, int, int, int]) -> None:
    """Lower ``out`` (the flattened box) to each capsule's distance on its stamp of ``rows`` x ``cols``."""
    r0, r1, c0, c1 = box
    ab = b - a
    inv = (1.0 / np.maximum((ab * ab).sum(axis=1), 1e-12)).astype(np.float32)
    dx = (np.float32(x0) + np.float32(spacing) * cols.astype(np.float32) - a[:, 0:1])[:, None, :]
    dy = (np.float32(y0) + np.float32(spacing) * rows.astype(np.float32) - a[:, 1:2])[:, :, None]
    dz = (np.float32(z) - a[:, 2])[:, None, None]
    abx, aby, abz = (ab[:, i, None, None] for i in range(3))
    t = (dx * abx + dy * aby + dz * abz) * inv[:, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    ex = dx - t * abx
    ey = dy - t * aby
    ez = dz - t * abz
    d = np.sqrt(ex * ex + ey * ey + ez * ez) - (ra[:, None, None] + t * (rb - ra)[:, None, None])
    valid = ((rows >= r0) & (rows < r1))[:, :, None] & ((cols >= c0) & (cols < c1))[:, None, :]
    index = (rows - r0)[:, :, None] * (c1 - c0) + (cols - c0)[:, None, :]
    if valid.all():
        np.minimum.at(out, index.ravel(), d.ravel())
    else:
        np.minimum.at(out, index[valid], d[valid])


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


def _paint_ghosts(img: np.ndarray, ghosts: list[tuple[Segments, float]], hu: float, sleeve_mm: float, sleeve_hu: float,
                  z: float, x0: float, y0: float, spacing: float) -> None:
    """Paint tubes as the weighted mean of their coverage at several positions (in place)."""
    sleeve = np.zeros(img.shape, np.float32)
    lumen = np.zeros(img.shape, np.float32)
    for seg, weight in ghosts:
        hit = tube_distance(seg, z, x0, y0, spacing, img.shape)
        if hit is not None:
            box, d = hit
            sleeve[box] += weight * coverage(d - sleeve_mm, spacing)
            lumen[box] += weight * coverage(d, spacing)
    paint(img, sleeve, sleeve_hu)
    paint(img, lumen, hu)


def upsample2(coarse: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of (n, h, w) from block centres to pixel centres: (n, 2h, 2w) float32.

    Pixel ``2i`` lies a quarter of a block before block ``i``'s centre and
    pixel ``2i + 1`` a quarter after it (edges repeat the last block).  Done
    slice by slice, so no volume-sized temporaries are made.
    """
    n, h, w = coarse.shape
    quarter, three = np.float32(0.25), np.float32(0.75)
    out = np.empty((n, 2 * h, 2 * w), np.float32)
    rows = np.empty((h, 2, w), np.float32)  # rows[i, 0] is image row 2i, rows[i, 1] row 2i + 1
    flat = rows.reshape(2 * h, w)
    for k in range(n):
        c = coarse[k]
        np.multiply(c, three, out=rows[:, 0])
        rows[1:, 0] += quarter * c[:-1]
        rows[0, 0] += quarter * c[0]
        np.multiply(c, three, out=rows[:, 1])
        rows[:-1, 1] += quarter * c[1:]
        rows[-1, 1] += quarter * c[-1]
        o = out[k].reshape(2 * h, w, 2)
        np.multiply(flat, three, out=o[..., 0])
        o[:, 1:, 0] += quarter * flat[:, :-1]
        o[:, 0, 0] += quarter * flat[:, 0]
        np.multiply(flat, three, out=o[..., 1])
        o[:, :-1, 1] += quarter * flat[:, 1:]
        o[:, -1, 1] += quarter * flat[:, -1]
    return out


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
    layers = (*med.lumens(), *med.others())
    tubes = [segments([layer], max(layer.envelope_mm, layer.sleeve_mm) + spacing, spacing) for layer in layers]
    lung = segments([scene.lung_vessels], spacing, spacing)
    still = [layer for a, layer in zip(scene.arteries, scene.artery_layers) if not a.moving]
    coronary = segments(still, scene.coronary_sleeve + spacing, spacing)
    # The right and circumflex territories move during the acquisition: their vessels are drawn as the
    # mean of their positions along the motion (a directional blur).
    ghosts = []
    for label, vector in scene.motion.items():
        moving = [layer for a, layer in zip(scene.arteries, scene.artery_layers) if a.moving and a.label == label]
        steps = MOTION_STEPS if np.linalg.norm(vector) > 0.2 else 1
        for t in np.linspace(-0.5, 0.5, steps) if steps > 1 else [0.0]:
            shifted = [TubeLayer(m.name, m.points + t * vector, m.radii, m.hu, m.sleeve_mm, m.sleeve_hu)
                       for m in moving]
            if shifted:
                ghosts.append((segments(shifted, scene.coronary_sleeve + spacing, spacing), 1.0 / steps))
    lo, hi = scene.heart.bounds(2.0 * spacing)
    hr = (max(0, int((lo[1] - y0) / spacing)), min(n, int((hi[1] - y0) / spacing) + 2))
    hc = (max(0, int((lo[0] - x0) / spacing)), min(n, int((hi[0] - x0) / spacing) + 2))
    heart_box = (slice(*hr), slice(*hc))
    HX, HY = X[:, heart_box[1]], Y[heart_box[0], :]
    n_lumens = len(med.lumens())

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
        hits = [tube_distance(seg, float(z), x0, y0, spacing, img.shape) for seg in tubes]
        # Mediastinal fat first, then the tubes that the heart may cover, the heart, the coronary
        # arteries, and last the blood-filled great vessels, which leave the heart through its sac.
        for hit, layer in zip(hits, layers):
            if hit is not None and layer.envelope_mm > 0:
                paint(img[hit[0]], coverage(hit[1] - layer.envelope_mm, spacing) * tpl.inner[hit[0]], body.fat_hu)
        for hit, layer in zip(hits[:n_lumens], layers[:n_lumens]):
            if hit is not None and layer.sleeve_mm > 0:
                paint(img[hit[0]], coverage(hit[1] - layer.sleeve_mm, spacing), layer.sleeve_hu)
        for hit, layer in zip(hits[n_lumens:], layers[n_lumens:]):
            if hit is not None:
                if layer.sleeve_mm > 0:
                    paint(img[hit[0]], coverage(hit[1] - layer.sleeve_mm, spacing), layer.sleeve_hu)
                paint(img[hit[0]], coverage(hit[1], spacing), layer.hu)
        if lo[2] <= z <= hi[2] and heart_box[0].start < heart_box[0].stop and heart_box[1].start < heart_box[1].stop:
            scene.heart.paint(img[heart_box], HX, HY, float(z), body, spacing)
        paint_tubes(img, coronary, body.blood_hu, scene.coronary_sleeve, body.fat_hu, float(z), x0, y0, spacing)
        _paint_ghosts(img, ghosts, body.blood_hu, scene.coronary_sleeve, body.fat_hu, float(z), x0, y0, spacing)
        for hit, layer in zip(hits[:n_lumens], layers[:n_lumens]):
            if hit is not None:
                paint(img[hit[0]], coverage(hit[1], spacing), layer.hu)
        # Bone stays bone wherever a soft organ reached over it.
        paint(img[tpl.spine_box], tpl.spine_cover, tpl.img[tpl.spine_box])
        chest_mod.paint_discs(img, tpl, body, float(z))
        for k in ks:
            out[k] += weights[k, j] * img
    return upsample2(out)
