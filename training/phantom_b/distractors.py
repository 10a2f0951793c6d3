"""Calcium that is not coronary, placed where it confuses: never labelled.

* aortic root: on the sinus wall within 15-50 degrees and a few millimetres of
  a coronary ostium;
* aortic wall: ascending aorta, arch and descending aorta (nodules and arcs in the wall);
* aortic valve: arcs on the cusps inside the root;
* mitral annulus: an arc in the posterior annulus, a few millimetres from the LCX;
* pericardium: flat plaques on the pericardial surface;
* costal cartilage: nodules and streaks where the ribs meet the sternum;
* lymph nodes: subcarinal, hilar and paratracheal, solid or eggshell;
* lung granulomas: dense round nodules in the lung.

Calcium touching a coronary artery is that artery's calcium to a reader,
whatever it grew from: every distractor keeps 1.5 mm between its surface and
every coronary lumen, and 4 mm from every plaque.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.phantom_b.calcium import Calcification
from training.phantom_b.chest import cartilage_points
from training.phantom_b.geometry import Grid
from training.phantom_b.heart import shell_points
from training.phantom_b.scene import Scene
from training.phantom_b.sdf import polyline_distance

CORONARY_CLEARANCE_MM = 1.5
PLAQUE_CLEARANCE_MM = 4.0
_TRIES = 12


def _cap(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    return np.concatenate([a, b, [r]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _perpendicular(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([0.0, 0.0, 1.0]) if abs(t[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    n1 = _unit(np.cross(t, ref))
    return n1, np.cross(t, n1)


def _arc(centre: np.ndarray, axis: np.ndarray, radius: float, start: float, span: float, thick: float) -> np.ndarray:
    """Capsules along an arc of a circle round ``axis`` through ``centre`` (n, 7)."""
    n1, n2 = _perpendicular(_unit(axis))
    angles = start + np.linspace(0.0, span, max(3, int(span / 0.3)))
    pts = [centre + radius * (np.cos(a) * n1 + np.sin(a) * n2) for a in angles]
    return np.stack([_cap(p, q, thick) for p, q in zip(pts[:-1], pts[1:])])


def _blob(centre: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """A nodule: a capsule in a random direction."""
    d = _unit(rng.normal(size=3)) * size * float(rng.uniform(0.0, 1.2))
    return _cap(centre - d, centre + d, size)[None]


def _surface_points(caps: np.ndarray) -> np.ndarray:
    out = []
    for cap in caps:
        a, b, r = cap[0:3], cap[3:6], cap[6]
        for d in np.eye(3):
            out += [a + r * d, a - r * d, b + r * d, b - r * d]
    return np.asarray(out)


def clear_of_coronaries(caps: np.ndarray, scene: Scene, plaques: list[Calcification]) -> bool:
    """Whether capsules keep their distance from every coronary lumen and plaque."""
    pts = _surface_points(caps)
    for artery in scene.arteries:
        dist, nearest = polyline_distance(pts, artery.points)
        if (dist - artery.radii[nearest]).min() < CORONARY_CLEARANCE_MM:
            return False
    return all(p.surface_distance(pts).min() >= PLAQUE_CLEARANCE_MM for p in plaques)


def place_distractors(scene: Scene, grid: Grid, plaques: list[Calcification]) -> list[Calcification]:
    """The case's non-coronary calcifications (``params.clutter`` of each kind, where they fit)."""
    p = scene.params
    rng = np.random.default_rng([p.seed, 0xB0B, 0xD15])
    gain = p.scan.calcium_gain
    z_lo, z_hi = float(grid.zs()[0]), float(grid.zs()[-1])
    makers: list[tuple[str, int, Callable[[np.random.Generator], np.ndarray | None]]] = [
        ("aortic root", p.clutter.aortic_root, lambda r: _aortic_root(scene, r)),
        ("aortic wall", p.clutter.aortic_wall, lambda r: _aortic_wall(scene, z_lo, z_hi, r)),
        ("aortic valve", p.clutter.aortic_valve, lambda r: _aortic_valve(scene, r)),
        ("mitral annulus", p.clutter.mitral, lambda r: _mitral(scene, r)),
        ("pericardium", p.clutter.pericardial, lambda r: _pericardial(scene, r)),
        ("costal cartilage", p.clutter.cartilage, lambda r: _cartilage(scene, z_lo, z_hi, r)),
        ("lymph node", p.clutter.lymph, lambda r: _lymph(scene, r)),
        ("granuloma", p.clutter.granuloma, lambda r: _granuloma(scene, z_lo, z_hi, r)),
    ]
    out: list[Calcification] = []
    for kind, count, make in makers:
        for _ in range(count):
            for _ in range(_TRIES):
                caps = make(rng)
                if caps is None or not clear_of_coronaries(caps, scene, plaques):
                    continue
                z_min, z_max = float(caps[:, [2, 5]].min()), float(caps[:, [2, 5]].max())
                if z_max < z_lo - 2.0 or z_min > z_hi + 2.0:  # outside the scan: try another place
                    continue
                out.append(Calcification(kind, 0, caps, float(rng.uniform(250.0, 1200.0)) * gain, np.zeros(3)))
                break
    return out


def _aortic_root(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    heart = scene.heart
    centre, radius = heart.root.center, float(heart.root.semi[0])
    ostia = [a.points[0] for a in scene.arteries if a.name in ("LM", "LAD", "LCX", "RCA")]
    ostium = ostia[int(rng.integers(len(ostia)))]
    base = np.arctan2(ostium[1] - centre[1], ostium[0] - centre[0])
    angle = base + np.radians(rng.uniform(15.0, 50.0)) * (1 if rng.random() < 0.5 else -1)
    z = ostium[2] + float(rng.uniform(-8.0, 5.0))
    rr = np.sqrt(max(radius**2 - (z - centre[2]) ** 2, (0.6 * radius) ** 2)) + 0.3
    point = np.array([centre[0] + rr * np.cos(angle), centre[1] + rr * np.sin(angle), z])
    size = float(rng.uniform(0.6, 2.0))
    if rng.random() < 0.5:
        return _blob(point, size, rng)
    return _arc(np.array([centre[0], centre[1], z]), np.array([0.0, 0.0, 1.0]), rr, float(angle),
                float(rng.uniform(0.2, 0.8)), 0.6 * size)


def _aortic_wall(scene: Scene, z_lo: float, z_hi: float, rng: np.random.Generator) -> np.ndarray | None:
    aorta = scene.mediastinum.aorta
    inside = np.flatnonzero((aorta.points[:, 2] > z_lo) & (aorta.points[:, 2] < z_hi))
    if inside.size < 3:
        return None
    i = int(np.clip(rng.choice(inside), 1, len(aorta.points) - 2))
    t = _unit(aorta.points[i + 1] - aorta.points[i - 1])
    n1, n2 = _perpendicular(t)
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    r = float(aorta.radii[i]) + 0.3
    size = float(rng.uniform(0.7, 2.5))
    if rng.random() < 0.5:
        return _blob(aorta.points[i] + r * (np.cos(angle) * n1 + np.sin(angle) * n2), size, rng)
    return _arc(aorta.points[i], t, r, angle, float(rng.uniform(0.3, 1.5)), 0.5 * size)


def _aortic_valve(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    heart = scene.heart
    centre, radius = heart.root.center, float(heart.root.semi[0])
    axis = _unit(scene.mediastinum.aorta.points[3] - scene.mediastinum.aorta.points[0])
    annulus = centre - float(rng.uniform(2.0, 7.0)) * axis
    return _arc(annulus, axis, float(rng.uniform(0.45, 0.8)) * radius, float(rng.uniform(0.0, 2.0 * np.pi)),
                float(rng.uniform(0.6, 1.8)), float(rng.uniform(0.6, 1.6)))


def _mitral(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    heart = scene.heart
    phi = float(rng.uniform(150.0, 300.0))
    span = float(rng.uniform(20.0, 90.0))
    phis = np.linspace(phi, phi + span, max(3, int(span / 8.0)))
    rho = heart.radius - 0.5 * heart.lv_wall
    pts = heart.point(np.full(phis.size, float(rng.uniform(0.0, 3.0))), phis, np.full(phis.size, rho))
    thick = float(rng.uniform(1.0, 2.5))
    return np.stack([_cap(a, b, thick) for a, b in zip(pts[:-1], pts[1:])])


def _pericardial(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    heart = scene.heart
    shell = shell_points(heart, 3.0)
    p = shell[int(rng.integers(len(shell)))]
    g = np.zeros(3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 0.5
        g[i] = float(heart.sac((p + e)[None])[0] - heart.sac((p - e)[None])[0])
    normal = _unit(g)
    # Onto the sac's surface, then a flat patch of capsules in its tangent plane.
    p = p - float(heart.sac(p[None])[0]) * normal
    t1, t2 = _perpendicular(normal)
    length = float(rng.uniform(3.0, 10.0))
    thick = float(rng.uniform(0.7, 1.5))
    rows = []
    for _ in range(int(rng.integers(1, 4))):
        d = np.cos(rng.uniform(0, np.pi)) * t1 + np.sin(rng.uniform(0, np.pi)) * t2
        c = p + rng.normal(0.0, 1.5) * t1 + rng.normal(0.0, 1.5) * t2 - 0.5 * heart.pericardium * normal
        rows.append(_cap(c - 0.5 * length * _unit(d), c + 0.5 * length * _unit(d), thick))
    return np.stack(rows)


def _cartilage(scene: Scene, z_lo: float, z_hi: float, rng: np.random.Generator) -> np.ndarray | None:
    pts = cartilage_points(scene.ribs, scene.params.body, scene.chest, z_lo, z_hi, rng, 1)
    if not pts:
        return None
    size = float(rng.uniform(0.8, 2.5))
    if rng.random() < 0.6:
        return _blob(pts[0], size, rng)
    d = _unit(np.array([rng.normal(), 0.3 * rng.normal(), 0.2 * rng.normal()]))
    return _cap(pts[0] - 4.0 * d, pts[0] + 4.0 * d, 0.6 * size)[None]


def _lymph(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    tx, ty, _ = scene.chest.trachea
    carina = np.array([tx, ty, scene.params.body.carina_z])
    right, left = scene.mediastinum.hila
    site = int(rng.integers(4))
    centre = [carina + np.array([0.0, 12.0, -18.0]), right + np.array([10.0, 6.0, -4.0]),
              left + np.array([-10.0, 6.0, -4.0]), carina + np.array([-16.0, -6.0, 20.0])][site]
    centre = centre + rng.normal(0.0, 3.0, 3)
    radius = float(rng.uniform(3.0, 7.0))
    if rng.random() < 0.35:  # eggshell: a ring round the node
        return _arc(centre, rng.normal(size=3), radius, 0.0, float(rng.uniform(3.5, 2.0 * np.pi)), 0.7)
    rows = [_cap(centre + d, centre + d, float(rng.uniform(1.0, 0.6 * radius)))
            for d in rng.normal(0.0, 0.35 * radius, (int(rng.integers(1, 5)), 3))]
    return np.stack(rows)


def _granuloma(scene: Scene, z_lo: float, z_hi: float, rng: np.random.Generator) -> np.ndarray | None:
    b, chest = scene.params.body, scene.chest
    side = 1.0 if rng.random() < 0.5 else -1.0
    inner_w = b.half_width - chest.inner_inset
    x = b.centre_x + side * float(rng.uniform(0.45, 0.85)) * inner_w
    y = b.centre_y + float(rng.uniform(-0.5, 0.5)) * (b.half_depth - chest.inner_inset)
    z = float(rng.uniform(z_lo, z_hi))
    point = np.array([x, y, z])
    if not chest.inside_thorax(np.array([x]), np.array([y]), 8.0)[0]:
        return None
    if scene.heart.sac(point[None])[0] < 15.0:
        return None
    return _cap(point, point, float(rng.uniform(1.5, 4.0)))[None]
