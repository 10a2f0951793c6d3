"""The chest around the heart: body wall, lungs, spine, sternum, ribs, diaphragm, table.

The trunk's cross-section is a superellipse (flatter over the back, where the
patient lies on the table) with nested layers: skin and subcutaneous fat,
muscle, the rib layer, then the pleural cavity that the lungs fill wherever the
mediastinum leaves room.  These layers do not change along z and are painted
once (``template``).  What does change along z is painted per plane:

* ribs, found in polar coordinates round the body centre: at angle ``theta``
  from the back, rib ``k`` lies at height ``head_k - drop * f(theta)`` (ribs
  fall 60-110 mm from the spine to their anterior ends), continued by costal
  cartilage that rises again towards the sternum;
* intervertebral discs;
* the diaphragm as two paraboloid domes, the right (liver) higher than the left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.phantom_b.params import Body
from training.phantom_b.sdf import coverage

AIR_HU = -1000.0
DISC_HU = 90.0
CSF_HU = 15.0
SPLEEN_HU = 45.0
TABLE_SHELL_HU = 300.0
TABLE_FOAM_HU = -900.0

_THETA_RIB_START = 0.10 * np.pi  # ribs start beside the vertebra
_THETA_RIB_END = 0.70 * np.pi  # bony rib ends, costal cartilage begins
_THETA_STERNUM = 0.93 * np.pi  # cartilage reaches the sternum


def paint(img: np.ndarray, alpha: np.ndarray, value: float | np.ndarray) -> None:
    """Blend ``value`` into ``img`` with coverage ``alpha`` (in place)."""
    img += alpha * (value - img)


@dataclass(frozen=True)
class Chest:
    """Where the chest's structures lie (patient mm, LPS)."""

    body: Body
    spine: tuple[float, float, float]  # vertebral body centre x, y and radius
    sternum: tuple[float, float, float, float]  # centre x, y, half-width, half-depth
    desc: tuple[float, float]  # descending aorta axis x, y
    esophagus: tuple[float, float, float]  # x, y, radius
    trachea: tuple[float, float, float]  # x, y, radius (above the carina)
    inner_inset: float  # skin to pleura

    def g(self, x: np.ndarray, y: np.ndarray, inset: float) -> np.ndarray:
        """Superellipse norm of the body outline moved ``inset`` mm inwards (1 on it, < 1 inside)."""
        b = self.body
        # Front and back carry less of the wall's thickness than the flanks (fat and muscle gather at the sides).
        a, d = b.half_width - inset, b.half_depth - 0.75 * inset
        u = np.abs(x - b.centre_x) / a
        v = (y - b.centre_y) / d
        # The back lies flat on the table: a larger exponent behind the centre.
        back = v > 0
        p = np.where(back, b.exponent + 1.0, b.exponent)
        return (u**p + np.abs(v) ** p) ** (1.0 / p)

    def signed(self, x: np.ndarray, y: np.ndarray, inset: float) -> np.ndarray:
        """Approximate signed distance (mm) to the outline moved ``inset`` inwards."""
        b = self.body
        g = self.g(x, y, inset)
        rho = np.sqrt((x - b.centre_x) ** 2 + (y - b.centre_y) ** 2)
        return rho * (1.0 - 1.0 / np.maximum(g, 1e-6))

    def inside_thorax(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie in the pleural cavity at least ``margin`` mm from its wall."""
        return self.signed(x, y, self.inner_inset) <= -margin

    def point_inside_thorax(self, x: float, y: float, margin: float = 0.0) -> bool:
        """``inside_thorax`` for one point, without array overhead (for walks that test a point per step)."""
        b = self.body
        a, d = b.half_width - self.inner_inset, b.half_depth - 0.75 * self.inner_inset
        u, v = abs(x - b.centre_x) / a, (y - b.centre_y) / d
        p = b.exponent + 1.0 if v > 0 else b.exponent
        g = (u**p + abs(v) ** p) ** (1.0 / p)
        rho = math.hypot(x - b.centre_x, y - b.centre_y)
        return rho * (1.0 - 1.0 / max(g, 1e-6)) <= -margin

    def bone_distance(self, points: np.ndarray) -> np.ndarray:
        """Distance (mm) from points (n, 3) to the vertebral body and sternum (in-plane), a lower bound for bone."""
        sx, sy, sr = self.spine
        d_spine = np.hypot(points[:, 0] - sx, points[:, 1] - sy) - sr * 1.05
        tx, ty, ta, tb = self.sternum
        d_sternum = np.hypot((points[:, 0] - tx) * tb / ta, points[:, 1] - ty) - tb
        return np.minimum(d_spine, d_sternum)


def build_chest(body: Body, esophagus_radius: float = 8.0) -> Chest:
    """Place the spine, sternum, descending aorta, oesophagus and trachea in ``body``."""
    r = body.spine_radius
    # Vertebral body: behind it lie the canal and posterior elements (about 30 mm) and the back's fat.
    sy = body.centre_y + body.half_depth - 0.8 * body.fat_mm - 30.0 - r
    sx = body.centre_x
    st_y = body.centre_y - body.half_depth + body.fat_mm + body.muscle_mm + 0.5 * body.wall_mm
    sternum = (body.centre_x, st_y, 15.0, 0.35 * body.wall_mm + 2.0)
    desc_d = r + 12.0 + 4.0  # vertebra radius + aortic radius (at most 14) + gap
    angle = np.radians(35.0)  # anterior-left of the vertebra
    desc = (sx + desc_d * np.cos(angle), sy - desc_d * np.sin(angle))
    eso = (sx + 6.0, sy - r - esophagus_radius + 1.0, esophagus_radius)
    trachea_r = 8.0 + 0.02 * (body.half_width - 128.0)
    trachea = (sx - 2.0, eso[1] - esophagus_radius - trachea_r - 3.0, trachea_r)
    return Chest(body, (sx, sy, r), sternum, desc, eso, trachea, body.fat_mm + body.muscle_mm + body.wall_mm)


@dataclass(frozen=True)
class Template:
    """The z-invariant slice on the design grid, with the masks the per-plane painting needs."""

    img: np.ndarray  # HU
    inner: np.ndarray  # coverage of the pleural cavity (where lungs, domes and mediastinum may go)
    wall_index: np.ndarray  # flat indices of the rib layer's pixels
    wall_theta: np.ndarray  # their angle from the back (0) round to the front (pi)
    wall_depth: np.ndarray  # their position across the rib layer: 0 pleura ... 1 muscle
    wall_left: np.ndarray  # whether they lie on the patient's left
    spine_box: tuple[slice, slice]
    spine_cover: np.ndarray  # bone coverage of the vertebra on ``spine_box``
    disc_cover: np.ndarray  # coverage of the vertebral body's marrow on ``spine_box`` (where discs go)


def template(chest: Chest, x: np.ndarray, y: np.ndarray, width: float) -> Template:
    """Paint the body layers, lung background, spine, sternum and table on the grid ``x`` (cols), ``y`` (rows)."""
    b = chest.body
    X, Y = x[None, :], y[:, None]
    img = np.full((y.size, x.size), AIR_HU, np.float32)
    _table(img, chest, X, Y, width)
    paint(img, coverage(chest.signed(X, Y, 0.0), width), b.fat_hu)
    paint(img, coverage(chest.signed(X, Y, b.fat_mm), width), b.muscle_hu)
    inner_d = chest.signed(X, Y, chest.inner_inset)
    inner = coverage(inner_d, width).astype(np.float32)
    # Lungs: denser towards the back (dependent lung).
    gradient = 40.0 * np.clip((Y - b.centre_y + b.half_depth) / (2.0 * b.half_depth), 0.0, 1.0)
    paint(img, inner, (b.lung_hu + gradient).astype(np.float32))
    wall_outer = chest.signed(X, Y, b.fat_mm + b.muscle_mm)
    in_wall = (wall_outer < 0) & (inner_d > -0.5 * width)
    depth = np.clip(inner_d / np.maximum(inner_d - wall_outer, 1e-3), 0.0, 1.0)
    theta = np.arctan2(np.abs(X - b.centre_x), Y - b.centre_y) * np.ones_like(Y)
    index = np.flatnonzero(in_wall)

    sx, sy, r = chest.spine
    vb = coverage(np.hypot((X - sx) / 1.08, Y - sy) - r, width)
    marrow = coverage(np.hypot((X - sx) / 1.08, Y - sy) - (r - 1.8), width)
    canal_y = sy + r + 9.0
    arch = coverage(np.hypot((X - sx) / 1.2, Y - canal_y) - 11.0, width)
    canal = coverage(np.hypot(X - sx, Y - canal_y) - 7.0, width)
    spinous = coverage(np.hypot((X - sx) * 2.5, Y - canal_y - 20.0) - 12.0, width)
    # Soft tissue round the vertebra keeps the lungs a few mm off the bone.
    paint(img, coverage(np.hypot((X - sx) / 1.08, Y - sy) - (r + 4.0), width), b.muscle_hu)
    bone = np.maximum(np.maximum(vb, arch), spinous)
    paint(img, bone, b.cortex_hu * 0.8)
    paint(img, marrow, b.marrow_hu)
    paint(img, canal, CSF_HU)
    rows = np.flatnonzero(bone.max(axis=1) > 0)
    cols = np.flatnonzero(bone.max(axis=0) > 0)
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)) if rows.size else (
        slice(0, 0), slice(0, 0))

    tx, ty, ta, tb = chest.sternum
    st = np.hypot((X - tx) * tb / ta, Y - ty) - tb
    paint(img, coverage(st, width), b.cortex_hu * 0.75)
    paint(img, coverage(st + 1.5, width), b.marrow_hu)
    inner = inner * (1.0 - coverage(st - 2.0, width)) * (1.0 - vb)
    spine_cover = np.maximum(bone, coverage(np.hypot((X - sx) / 1.08, Y - sy) - (r + 1.0), width))
    left = np.broadcast_to(X > b.centre_x, img.shape).ravel()[index]
    return Template(img, inner.astype(np.float32), index, theta.ravel()[index].astype(np.float32),
                    depth.ravel()[index].astype(np.float32), left, box, spine_cover[box].astype(np.float32),
                    marrow[box].astype(np.float32))


def _table(img: np.ndarray, chest: Chest, X: np.ndarray, Y: np.ndarray, width: float) -> None:
    """A curved carbon-fibre table top (two shells round a foam core) under the back, and its pad."""
    b = chest.body
    top = b.centre_y + b.half_depth + b.table_gap
    bend = (X - b.centre_x) ** 2 / 1400.0  # the cradle rises towards its sides
    half = min(240.0, b.half_width + 60.0)
    across = coverage(np.abs(X - b.centre_x) - half, width)
    for y0, y1, value in ((top - 8.0, top, -150.0), (top, top + 40.0, TABLE_FOAM_HU), (top, top + 2.0, TABLE_SHELL_HU),
                          (top + 38.0, top + 40.0, TABLE_SHELL_HU)):
        if value == -150.0 and b.table_gap < 8.0:
            continue  # no room for a pad
        d = np.maximum(y0 - (Y - bend), (Y - bend) - y1)
        paint(img, across * coverage(d, width), value)


@dataclass(frozen=True)
class Ribs:
    """The rib cage in polar form (see the module docstring)."""

    heads: np.ndarray  # z of each rib's head (at the spine)
    drop: float
    half_height: float
    cortex_mm: float
    asymmetry: float  # the left ribs sit this much higher than the right


def make_ribs(body: Body, z_low: float, z_high: float, rng: np.random.Generator) -> Ribs:
    """Ribs whose heads lie from below ``z_low`` to above ``z_high + drop`` (so every plane is crossed)."""
    start = z_low - 40.0 + body.rib_phase
    heads = np.arange(start, z_high + body.rib_drop + 40.0, body.rib_spacing)
    heads = heads + rng.normal(0.0, 1.5, heads.size)
    return Ribs(heads, body.rib_drop, float(rng.uniform(5.0, 7.0)), 1.4, float(rng.uniform(-3.0, 3.0)))


def rib_height(ribs: Ribs, theta: np.ndarray) -> np.ndarray:
    """How far below its head a rib (or its cartilage) runs at angle ``theta``."""
    t = np.clip((theta - _THETA_RIB_START) / (_THETA_RIB_END - _THETA_RIB_START), 0.0, 1.0)
    fall = ribs.drop * t**1.3
    rise = 0.25 * ribs.drop * np.clip((theta - _THETA_RIB_END) / (_THETA_STERNUM - _THETA_RIB_END), 0.0, 1.0)
    return fall - rise


def paint_ribs(img: np.ndarray, tpl: Template, ribs: Ribs, body: Body, z: float, width: float) -> None:
    """Ribs and costal cartilage crossing plane ``z`` (in place, on the rib layer's pixels only)."""
    theta, depth = tpl.wall_theta, tpl.wall_depth
    zz = z + rib_height(ribs, theta) - np.where(tpl.wall_left, ribs.asymmetry, 0.0)
    k = np.clip(np.searchsorted(ribs.heads, zz), 1, ribs.heads.size - 1)
    near = np.where(np.abs(zz - ribs.heads[k - 1]) < np.abs(zz - ribs.heads[k]), k - 1, k)
    dz = (zz - ribs.heads[near]) / ribs.half_height
    dr = (depth - 0.5) / 0.38
    q = np.sqrt(dz * dz + dr * dr)
    # q is 1 on the rib's surface; one unit of q is about half_height mm vertically.
    d = (q - 1.0) * ribs.half_height
    present = (theta > _THETA_RIB_START) & (theta < _THETA_STERNUM)
    outer = coverage(d, width) * present
    flat = img.reshape(-1)
    values = flat[tpl.wall_index]
    cartilage = theta > _THETA_RIB_END
    cortex = np.where(cartilage, body.cartilage_hu, body.cortex_hu)
    values += outer * (cortex - values)
    inner = coverage(d + ribs.cortex_mm, width) * present * ~cartilage
    values += inner * (body.marrow_hu - values)
    flat[tpl.wall_index] = values


def cartilage_points(ribs: Ribs, body: Body, chest: Chest, z_low: float, z_high: float,
                     rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` points inside costal cartilage between ``z_low`` and ``z_high`` (for calcifications)."""
    out: list[np.ndarray] = []
    inset = body.fat_mm + body.muscle_mm + 0.5 * body.wall_mm
    for _ in range(40 * max(n, 1)):
        if len(out) >= n:
            break
        theta = float(rng.uniform(_THETA_RIB_END + 0.03, _THETA_STERNUM - 0.03))
        side = 1.0 if rng.random() < 0.5 else -1.0
        k = int(rng.integers(ribs.heads.size))
        zc = ribs.heads[k] - float(rib_height(ribs, np.array([theta]))[0]) + (ribs.asymmetry if side > 0 else 0.0)
        if not z_low < zc < z_high:
            continue
        # Walk along the ray at angle theta to the middle of the rib layer.
        direction = np.array([side * np.sin(theta), np.cos(theta)])
        lo, hi = 0.0, 2.0 * body.half_width
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            p = np.array([[body.centre_x + mid * direction[0]]]), np.array([[body.centre_y + mid * direction[1]]])
            if chest.signed(p[0], p[1], inset)[0, 0] < 0:
                lo = mid
            else:
                hi = mid
        out.append(np.array([body.centre_x + lo * direction[0], body.centre_y + lo * direction[1], zc]))
    return out


def paint_discs(img: np.ndarray, tpl: Template, body: Body, z: float) -> None:
    """An intervertebral disc where plane ``z`` crosses one (in place)."""
    phase = (z - body.disc_phase) % body.disc_spacing
    if phase < 6.0:  # discs are about 6 mm high
        region = img[tpl.spine_box]
        paint(region, tpl.disc_cover, DISC_HU)


@dataclass(frozen=True)
class Domes:
    """The diaphragm: the abdomen lies below ``max(right, left)`` paraboloid surfaces."""

    right_top: float
    left_top: float
    right_centre: tuple[float, float]
    left_centre: tuple[float, float]
    radius: float  # curvature radius of each dome
    gas: tuple[float, float, float, float] | None  # stomach gas bubble x, y, z, radius


def make_domes(chest: Chest, heart_bottom: float, rng: np.random.Generator) -> Domes:
    """Domes set from the heart's lowest point: the right dome 15-35 mm above it, the left 5-20 mm."""
    b = chest.body
    lateral = 0.45 * (b.half_width - chest.inner_inset)
    right_top = heart_bottom + float(rng.uniform(15.0, 35.0))
    left_top = heart_bottom + float(rng.uniform(5.0, 20.0))
    gas = None
    if rng.random() < 0.5:
        gas = (b.centre_x + lateral * 0.9, b.centre_y - 0.1 * b.half_depth, left_top - float(rng.uniform(25.0, 45.0)),
               float(rng.uniform(10.0, 22.0)))
    return Domes(right_top, left_top, (b.centre_x - lateral, b.centre_y + 0.1 * b.half_depth),
                 (b.centre_x + lateral, b.centre_y + 0.1 * b.half_depth), float(rng.uniform(110.0, 160.0)), gas)


def paint_domes(img: np.ndarray, tpl: Template, domes: Domes, body: Body, X: np.ndarray, Y: np.ndarray,
                z: float, width: float) -> None:
    """Liver under the right dome, spleen and stomach under the left (in place), within the pleural cavity."""
    if z > max(domes.right_top, domes.left_top) + width:
        return
    (rx, ry), (lx, ly) = domes.right_centre, domes.left_centre
    right = domes.right_top - ((X - rx) ** 2 + (Y - ry) ** 2) / (2.0 * domes.radius)
    left = domes.left_top - ((X - lx) ** 2 + (Y - ly) ** 2) / (2.0 * domes.radius)
    surface = np.maximum(right, left)
    below = coverage(z - surface, width) * tpl.inner
    organ = np.where(right >= left, body.liver_hu, SPLEEN_HU).astype(np.float32)
    paint(img, below, organ)
    if domes.gas is not None:
        gx, gy, gz, gr = domes.gas
        if abs(z - gz) < gr:
            rr = np.sqrt(max(gr * gr - (z - gz) ** 2, 0.0))
            paint(img, coverage(np.hypot(X - gx, Y - gy) - rr, width) * below, AIR_HU)
