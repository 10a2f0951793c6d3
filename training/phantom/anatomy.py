"""The thorax of one phantom: where every organ lies, and painting it slice by slice.

Patient coordinates are DICOM LPS (PS3.3 C.7.6.2.1.1): +x towards the
patient's left, +y posterior, +z towards the head; the coronary ostia lie at
z = 0.  The structures that do not change along z (body outline, fat, muscle,
lungs, mediastinum, sternum, vertebral bodies, descending aorta) are painted
once into a template slice; the heart, great vessels, ribs, discs and the
diaphragm are painted per slice on small crops around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom.params import BodyParams, HeartParams, PhantomParams
from training.phantom.shapes import Capsule, Ellipsoid, SliceView, coverage, paint, paint_shape

AIR_HU = -1000.0
CARTILAGE_HU = 120.0
DISC_HU = 85.0
CSF_HU = 15.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class HeartFrame:
    """The heart's long axis ``u`` (base to apex) and the two short axes.

    ``p`` points to the anterior free wall and ``q`` to the left-lateral wall
    (after the roll); angles around the long axis are measured from ``p``
    towards ``q``.
    """

    u: np.ndarray
    p: np.ndarray
    q: np.ndarray
    root: np.ndarray  # aortic sinus centre (3,)
    center: np.ndarray  # ventricle ellipsoid centre (3,)
    half_length: float
    radius_p: float
    radius_q: float

    def surface(self, s: float, phi_deg: float, margin: float = 0.0) -> np.ndarray:
        """Point on the ventricle ellipsoid (grown by ``margin``) at axial ``s`` in [-1, 1] (base..apex)."""
        phi = np.radians(phi_deg)
        ring = np.sqrt(max(0.0, 1.0 - s * s))
        return (
            self.center
            + s * (self.half_length + margin) * self.u
            + ring * ((self.radius_p + margin) * np.cos(phi) * self.p + (self.radius_q + margin) * np.sin(phi) * self.q)
        )


def heart_frame(heart: HeartParams, body: BodyParams) -> HeartFrame:
    """Place the heart in the chest, shifted back if it would cross the anterior chest wall."""
    az, el, roll = np.radians([heart.azimuth, heart.elevation, heart.roll])
    u = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), -np.sin(el)])
    anterior = np.array([0.0, -1.0, 0.0])
    p0 = _unit(anterior - (anterior @ u) * u)
    q0 = np.cross(u, p0)
    if q0[0] < 0:  # q must point to the patient's left
        q0 = -q0
    p = np.cos(roll) * p0 + np.sin(roll) * q0
    q = -np.sin(roll) * p0 + np.cos(roll) * q0
    root = np.array([heart.root_x, heart.root_y, -5.0])
    half = 0.5 * heart.length
    # The base pole lies just below and left of the aortic root, so the root sits above it in fat.
    center = root + (half + 12.0) * u + 12.0 * q - 4.0 * p
    frame = HeartFrame(u, p, q, root, center, half, heart.radius_p, heart.radius_q)
    # The atrioventricular groove (where the LCX and RCA run) lies at or below the ostia (z = 0).
    ring_top = max(frame.surface(-0.85, phi)[2] for phi in range(0, 360, 15))
    if ring_top > -4.0:
        center = center - np.array([0.0, 0.0, ring_top + 4.0])
        frame = HeartFrame(u, p, q, root, center, half, heart.radius_p, heart.radius_q)
    inner_front = -(body.half_depth - body.fat_thickness - body.muscle_thickness - body.rib_layer)
    front = _ventricle(frame, heart).extent()
    shift = (inner_front + 4.0) - (center[1] - front[1])
    if shift > 0:
        dy = np.array([0.0, shift, 0.0])
        frame = HeartFrame(u, p, q, root + dy, center + dy, half, heart.radius_p, heart.radius_q)
    return frame


def _ventricle(frame: HeartFrame, heart: HeartParams) -> Ellipsoid:
    return Ellipsoid(frame.center, np.stack([frame.u, frame.p, frame.q]),
                     np.array([frame.half_length, heart.radius_p, heart.radius_q]))


@dataclass(frozen=True)
class Thorax:
    """All anatomical shapes of one case, in painting order groups."""

    frame: HeartFrame
    fat_shell: tuple[Ellipsoid, ...]  # epicardial fat around the chambers
    pericardium: tuple[Ellipsoid, ...]  # a thin fibrous layer just outside the epicardial fat
    chambers: tuple[tuple[Ellipsoid, float], ...]  # (shape, HU) painted in order
    vessels: tuple[tuple[Capsule | Ellipsoid, float], ...]  # aorta, pulmonary trunk
    ribs: tuple[tuple[Capsule, float], ...]  # cortex then marrow capsules
    lung_vessels: tuple[Capsule, ...]  # pulmonary arteries and veins branching from the hila
    domes: tuple[tuple[Ellipsoid, float], ...]
    discs: tuple[tuple[float, float], ...]  # (z low, z high) of intervertebral discs
    spine_center: tuple[float, float]
    aorta_desc: tuple[float, float, float]  # x, y, radius
    ascending: Capsule
    root: Ellipsoid


def build_thorax(params: PhantomParams) -> Thorax:
    """Every organ's shape and density from the case parameters."""
    b, h = params.body, params.heart
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0xA7A7])
    frame = heart_frame(h, b)
    u, p, q = frame.u, frame.p, frame.q
    vent = _ventricle(frame, h)
    axes = vent.axes
    myo, blood = b.myocardium_hu, b.blood_hu
    lv_blood = myo + h.blood_offset
    rv = Ellipsoid(frame.center + 0.55 * h.radius_p * p - 0.45 * h.radius_q * q - 0.1 * frame.half_length * u,
                   axes, np.array([0.85 * frame.half_length, 0.75 * h.radius_p, 0.8 * h.radius_q]))
    base = frame.center - frame.half_length * u
    spine_y = b.half_depth - b.fat_thickness - b.muscle_thickness - 14.0 - b.spine_radius
    desc_y = spine_y - b.spine_radius - h.desc_radius + 4.0
    la_semi = np.array([32.0, 20.0, 24.0]) * rng.uniform(0.85, 1.1)
    # The left atrium lies behind the base, in front of the spine and the descending aorta.
    la_y = min(base[1] + 30.0, desc_y - h.desc_radius - h.epicardial_fat - 3.0 - la_semi[1])
    la = Ellipsoid(np.array([base[0] + 8.0, la_y, base[2] + 8.0]), np.eye(3), la_semi)
    ra_semi = np.array([24.0, 26.0, 30.0]) * rng.uniform(0.85, 1.1)
    ra_y = min(base[1] + 12.0, spine_y - b.spine_radius - h.epicardial_fat - 3.0 - ra_semi[1])
    ra = Ellipsoid(np.array([base[0] - 38.0, ra_y, base[2] - 4.0]), np.eye(3), ra_semi)
    lv_cavity = Ellipsoid(vent.center + 0.12 * frame.half_length * (-u), axes,
                          vent.semi - np.array([14.0, 11.0, 11.0]))
    rv_cavity = Ellipsoid(rv.center, axes, rv.semi - 4.0)
    fat = tuple(s.grown(h.epicardial_fat) for s in (vent, rv, la, ra))
    pericardium = tuple(s.grown(h.epicardial_fat + 1.2) for s in (vent, rv))
    chambers = ((la, blood), (ra, blood), (vent, myo), (rv, myo), (lv_cavity, lv_blood), (rv_cavity, blood))

    root = Ellipsoid(frame.root, np.eye(3), np.array([h.root_radius, h.root_radius, h.root_radius * 1.1]))
    top = params.grid.origin_mm[2] + params.grid.increment_mm * params.grid.n_slices + 60.0
    asc_top = frame.root + np.array([-6.0, -4.0, 0.0]) + np.array([0.0, 0.0, top])
    ascending = Capsule(frame.root, asc_top, h.asc_radius)
    desc = (b.spine_radius * 0.9 + h.desc_radius * 0.6, desc_y, h.desc_radius)
    pa_start = frame.root + np.array([10.0, -22.0, -6.0])
    pa_top = frame.root + np.array([28.0, 6.0, 35.0])
    pa_left = pa_top + np.array([30.0, 15.0, -5.0])
    vessels = (
        (Capsule(pa_start, pa_top, h.pa_radius), blood),
        (Capsule(pa_top, pa_left, h.pa_radius * 0.75), blood),
        (root, blood),
        (ascending, blood),
    )
    ribs = _ribs(b, params.grid.origin_mm[2], top, rng)
    dome_r = 140.0
    domes = (
        (Ellipsoid(np.array([-45.0, 10.0, b.dome_right_z - dome_r * 0.55]), np.eye(3),
                   np.array([95.0, b.half_depth * 0.9, dome_r * 0.55])), b.liver_hu),
        (Ellipsoid(np.array([50.0, 10.0, b.dome_right_z - 15.0 - dome_r * 0.55]), np.eye(3),
                   np.array([85.0, b.half_depth * 0.85, dome_r * 0.55])), b.muscle_hu - 10.0),
    )
    discs = []
    z = params.grid.origin_mm[2] - 40.0 + b.disc_phase
    while z < top:
        discs.append((z, z + 5.0))
        z += 27.0
    hila = (frame.root + np.array([-45.0, 15.0, 5.0]), pa_left)
    lung_vessels = _lung_vessels(b, hila, rng)
    return Thorax(frame, fat, pericardium, chambers, vessels, ribs, lung_vessels, domes, tuple(discs),
                  (0.0, spine_y), desc, ascending, root)


def _lung_vessels(b: BodyParams, hila: tuple[np.ndarray, np.ndarray],
                  rng: np.random.Generator) -> tuple[Capsule, ...]:
    """Branching pulmonary vessels from each hilum, tapering from 4.5 to under 1 mm, kept inside the lungs."""
    iw = b.half_width - b.fat_thickness - b.muscle_thickness - b.rib_layer
    idp = b.half_depth - b.fat_thickness - b.muscle_thickness - b.rib_layer
    out: list[Capsule] = []

    def inside(p: np.ndarray, side: float) -> bool:
        return ((p[0] - side * 0.5 * iw) / (0.5 * iw)) ** 2 + (p[1] / idp) ** 2 < 0.9

    def grow(start: np.ndarray, direction: np.ndarray, radius: float, steps: int, side: float, depth: int) -> None:
        p, d = start, direction
        for step in range(steps):
            d = d + rng.normal(scale=0.25, size=3)
            d /= np.linalg.norm(d)
            q = p + d * rng.uniform(14.0, 24.0)
            if not inside(q, side) and (depth or step):  # the first segment leaves the hilum
                return
            out.append(Capsule(p, q, radius))
            if depth < 1 and rng.random() < 0.6:
                branch = d + rng.normal(scale=0.8, size=3)
                grow(q, branch / np.linalg.norm(branch), radius * 0.6, 2, side, depth + 1)
            p, radius = q, max(0.8, radius * 0.85)

    for side, hilum in zip((-1.0, 1.0), hila):
        for _ in range(8):
            d = np.array([side * rng.uniform(0.4, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 0.6)])
            start = hilum + side * np.array([12.0, 0.0, 0.0])
            grow(start, d / np.linalg.norm(d), rng.uniform(3.0, 4.5), 5, side, 0)
    return tuple(out)


def _ribs(b: BodyParams, z_low: float, z_high: float, rng: np.random.Generator) -> tuple[tuple[Capsule, float], ...]:
    """Ribs as chains of capsules along the chest wall, dropping 35-50 mm from back to front."""
    a = b.half_width - b.fat_thickness - b.muscle_thickness - 0.5 * b.rib_layer
    c = b.half_depth - b.fat_thickness - b.muscle_thickness - 0.5 * b.rib_layer
    drop = rng.uniform(85.0, 115.0)  # a rib's anterior end lies 3-4 vertebrae below its head
    out: list[tuple[Capsule, float]] = []
    z0 = z_low - 60.0 + b.rib_phase % b.rib_spacing
    # Angle from the posterior midline: from beside the spine, round the side, to the costal cartilage.
    angles = np.radians(np.linspace(22.0, 145.0, 12))
    while z0 < z_high + drop:
        for side in (-1.0, 1.0):
            fall = drop * (angles - angles[0]) / (angles[-1] - angles[0])
            pts = [np.array([side * a * np.sin(t), c * np.cos(t), z0 - f]) for t, f in zip(angles, fall)]
            for p0, p1 in zip(pts[:-1], pts[1:]):
                out.append((Capsule(p0, p1, RIB_RADIUS_MM), b.bone_cortex_hu * 0.8))
                out.append((Capsule(p0, p1, 3.2), b.bone_marrow_hu))
        z0 += b.rib_spacing
    return tuple(out)


def _ellipse_cov(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, edge: float) -> np.ndarray:
    """Partial-volume coverage of an axial ellipse (a cylinder along z) on the full slice."""
    dx = (x[None, :] - cx) / a
    dy = (y[:, None] - cy) / b
    k = np.sqrt(dx * dx + dy * dy)
    grad = np.sqrt((dx / a) ** 2 + (dy / b) ** 2) + 1e-9
    return coverage(k * (k - 1.0) / grad, edge)


@dataclass(frozen=True)
class Template:
    """The z-invariant slice, with the masks the per-slice painting needs.

    ``inner`` is the inner thorax (inside the ribs, outside the spine and the
    sternum) as a coverage map: the diaphragm domes and lung vessels fill only
    that.  ``spine`` is the coverage of the vertebra on its crop ``spine_box``:
    it is restored after the heart is painted, so no soft organ ever covers it.
    """

    img: np.ndarray
    inner: np.ndarray
    spine_box: tuple[slice, slice]
    spine: np.ndarray


STERNUM_SEMI_MM = (16.0, 6.0)  # x, y semi-axes of the sternum's outer cortex
VERTEBRA_WIDTH = 1.05  # the vertebral body's x semi-axis over its y semi-axis (``BodyParams.spine_radius``)
RIB_RADIUS_MM = 5.0  # a rib's outer cortex


def sternum_y(b: BodyParams) -> float:
    """The y of the sternum's centre (x = 0), just behind the anterior chest muscle."""
    return -(b.half_depth - b.fat_thickness) + b.muscle_thickness * 0.6 + 6.0


def template_slice(params: PhantomParams, thorax: Thorax, view: SliceView) -> Template:
    """The z-invariant part of every slice: body, subcutaneous fat, muscle, lungs, mediastinum, spine, sternum."""
    b = params.body
    x, y, e = view.x, view.y, view.edge
    img = np.full((y.size, x.size), AIR_HU, np.float32)
    paint(img, _ellipse_cov(x, y, 0.0, 0.0, b.half_width, b.half_depth, e), b.fat_hu)
    mw, md = b.half_width - b.fat_thickness, b.half_depth - b.fat_thickness
    paint(img, _ellipse_cov(x, y, 0.0, 0.0, mw, md, e), b.muscle_hu)
    # Posterior paraspinal fat plane and inner thorax.
    iw, idp = mw - b.muscle_thickness - b.rib_layer, md - b.muscle_thickness - b.rib_layer
    sx, sy = thorax.spine_center
    inner = _ellipse_cov(x, y, 0.0, 0.0, iw, idp * 0.97, e)
    for side in (-1.0, 1.0):
        lung = _ellipse_cov(x, y, side * iw * 0.5, 0.0, iw * 0.5, idp * 0.97, e)
        paint(img, lung, b.lung_hu)
    # Mediastinum: from the sternum to the spine, fat with the heart painted over it per slice.
    f = thorax.frame
    med_x = 0.5 * (f.center[0] + f.root[0])
    paint(img, _ellipse_cov(x, y, med_x * 0.7, -idp * 0.25, 55.0 + 0.15 * iw, idp * 0.78, e), b.fat_hu)
    paint(img, _ellipse_cov(x, y, sx + 5.0, sy - 20.0, 28.0, 30.0, e), b.fat_hu)
    # Vertebral body with cortical shell, spinal canal and posterior arch.
    r = b.spine_radius
    body_cov = _ellipse_cov(x, y, sx, sy, r * VERTEBRA_WIDTH, r, e)
    inner *= 1.0 - body_cov
    paint(img, body_cov, b.bone_cortex_hu)
    paint(img, _ellipse_cov(x, y, sx, sy, r * VERTEBRA_WIDTH - 1.6, r - 1.6, e), b.bone_marrow_hu)
    arch = (sx, sy + r + 9.0)
    paint(img, _ellipse_cov(x, y, arch[0], arch[1], 13.0, 10.0, e), b.bone_cortex_hu * 0.7)
    paint(img, _ellipse_cov(x, y, arch[0], arch[1] - 1.0, 8.0, 6.0, e), CSF_HU)
    spinous = _ellipse_cov(x, y, sx, arch[1] + 18.0, 4.0, 10.0, e)
    paint(img, spinous, b.bone_cortex_hu * 0.7)
    spine = np.maximum(np.maximum(body_cov, _ellipse_cov(x, y, arch[0], arch[1], 13.0, 10.0, e)), spinous)
    rows = np.flatnonzero(spine.any(axis=1))
    cols = np.flatnonzero(spine.any(axis=0))
    spine_box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)) if rows.size else (
        slice(0, 0), slice(0, 0))
    # Sternum: a flat bone behind the anterior chest wall.
    st_y, (st_a, st_b) = sternum_y(b), STERNUM_SEMI_MM
    paint(img, _ellipse_cov(x, y, 0.0, st_y, st_a, st_b, e), b.bone_cortex_hu * 0.7)
    paint(img, _ellipse_cov(x, y, 0.0, st_y, st_a - 1.8, st_b - 1.8, e), b.bone_marrow_hu)
    inner *= 1.0 - _ellipse_cov(x, y, 0.0, st_y, st_a, st_b, e)
    _table(img, b, x, y, e)
    return Template(img, inner, spine_box, spine[spine_box].copy())


def _table(img: np.ndarray, b: BodyParams, x: np.ndarray, y: np.ndarray, edge: float) -> None:
    """The patient table under the back: carbon-fibre shells around a foam core."""
    top = b.half_depth + b.table_gap
    half_width = min(230.0, b.half_width + 40.0)
    across = coverage(np.abs(x[None, :]) - half_width, edge)
    for y0, y1, value in ((top, top + 45.0, -850.0), (top, top + 2.5, 250.0), (top + 42.5, top + 45.0, 250.0)):
        down = coverage(np.maximum(y0 - y[:, None], y[:, None] - y1), edge)
        paint(img, across * down, value)


@dataclass(frozen=True)
class PaintOp:
    """Paint ``shape`` grown by ``margin`` with ``value``; only slices within [z_low, z_high] are touched."""

    shape: Capsule | Ellipsoid
    value: float
    margin: float
    z_low: float
    z_high: float
    inside_thorax: bool = False  # only where the template's inner thorax is (the diaphragm domes)


def _op(shape: Capsule | Ellipsoid, value: float, margin: float = 0.0, inside_thorax: bool = False) -> PaintOp:
    if isinstance(shape, Capsule):
        lo = min(shape.a[2], shape.b[2]) - shape.radius - margin
        hi = max(shape.a[2], shape.b[2]) + shape.radius + margin
    else:
        ext = shape.grown(margin).extent()[2]
        lo, hi = shape.center[2] - ext, shape.center[2] + ext
    return PaintOp(shape, float(value), float(margin), float(lo), float(hi), inside_thorax)


def paint_ops(params: PhantomParams, thorax: Thorax, coronaries: tuple[Capsule, ...]) -> list[PaintOp]:
    """The z-dependent anatomy in painting order (later operations cover earlier ones)."""
    b, h = params.body, params.heart
    ops = [_op(cap, b.blood_hu, inside_thorax=True) for cap in thorax.lung_vessels]
    ops += [_op(shape, value, inside_thorax=True) for shape, value in thorax.domes]
    ops += [_op(shape, value) for shape, value in thorax.ribs]
    ops += [_op(shape, b.muscle_hu - 15.0) for shape in thorax.pericardium]
    ops += [_op(shape, b.fat_hu) for shape in thorax.fat_shell]
    for shape, value in thorax.vessels[:2]:  # pulmonary trunk with its fat sleeve
        ops += [_op(shape, b.fat_hu, 2.0), _op(shape, value)]
    ops += [_op(shape, value) for shape, value in thorax.chambers]
    for shape, value in thorax.vessels[2:]:  # aortic root and ascending aorta
        ops += [_op(shape, b.fat_hu, 1.5), _op(shape, value)]
    # Coronary arteries run in a sleeve of fat, even where they cross a chamber's surface.
    ops += [_op(cap, b.fat_hu, h.groove_fat) for cap in coronaries]
    ops += [_op(cap, b.blood_hu) for cap in coronaries]
    dx, dy, dr = thorax.aorta_desc  # the descending aorta, in front of and left of the spine
    z_lo, z_hi = params.grid.origin_mm[2] - 100.0, params.grid.origin_mm[2] + 400.0
    desc = Capsule(np.array([dx, dy, z_lo]), np.array([dx, dy, z_hi]), dr)
    ops += [_op(desc, b.fat_hu, 1.5), _op(desc, b.blood_hu)]
    return ops


def paint_slice(img: np.ndarray, template: Template, params: PhantomParams, thorax: Thorax, ops: list[PaintOp],
                view: SliceView) -> None:
    """Paint the z-dependent anatomy of one slice into a copy of the template (in place)."""
    b = params.body
    reach = view.thickness + view.edge
    for op in ops:
        if not op.z_low - reach <= view.z <= op.z_high + reach:
            continue
        if op.inside_thorax:
            hit = op.shape.coverage_on(view, op.margin)
            if hit is not None:
                box, alpha = hit
                paint(img[box], alpha * template.inner[box], op.value)
        else:
            paint_shape(img, view, op.shape, op.value, op.margin)
    # Bone stays bone: restore the vertebra wherever a soft organ was painted over it.
    box = template.spine_box
    paint(img[box], template.spine, template.img[box])
    sx, sy = thorax.spine_center
    half = 0.5 * view.thickness
    for z0, z1 in thorax.discs:
        # Fraction of the slab inside the disc: partial volume across the slice thickness.
        w = float(np.clip((min(view.z + half, z1) - max(view.z - half, z0)) / view.thickness, 0.0, 1.0))
        if w > 0:
            disc = Ellipsoid(np.array([sx, sy, view.z]), np.eye(3),
                             np.array([b.spine_radius * VERTEBRA_WIDTH - 1.0, b.spine_radius - 1.0, 1e3]))
            hit = disc.coverage_on(view)
            if hit is not None:
                box, alpha = hit
                paint(img[box], alpha * w, DISC_HU)
