"""Calcified coronary plaques: shapes on the vessel wall, placed until the case reaches its drawn score.

Shapes (each a union of capsules on the wall, at an angle round the vessel):

* ``spot``: a sphere of 0.3-0.9 mm radius, often faint after partial volume;
* ``nodule``: a short capsule along the vessel, 0.6-2.2 mm radius;
* ``streak``: calcium following the wall for 4-25 mm, drifting round it;
* ``arc``: a ring or arc (60-360 degrees) round the wall over 1-5 mm;
* ``cluster``: 2-6 small blobs within a few millimetres.

Lesions are added one by one.  Each is rendered (``calcium.deposit``) and
its noise-free Agatston estimated before it is kept: one that would carry
the case well past its target (or near the top of its risk category) is
dropped and lesions are drawn smaller, and placing stops once the estimate
reaches the drawn target.  So the category is a drawn parameter that the
rendered case honours, up to noise (which adds 10-30 % to the score).
"""

from __future__ import annotations

import numpy as np

from training.phantom_b.arteries import Artery
from training.phantom_b.calcium import LABEL_MIN_RAISE_HU, Calcification, Marks, agatston_estimate, deposit
from training.phantom_b.geometry import Grid
from training.phantom_b.physics import Kernel
from training.phantom_b.scene import Scene
from training.phantom_b.sdf import polyline_distance

MAX_LESIONS = 45
_UPPER = {"1-10": 10.0, "11-100": 100.0, "101-400": 400.0, ">400": np.inf}
BONE_CLEARANCE_MM = 6.0
AORTA_CLEARANCE_MM = 1.0


def _wall_point(artery: Artery, i: int, theta: float, offset: float) -> np.ndarray:
    """A point ``offset`` mm beyond the lumen at vertex ``i`` and angle ``theta`` round the vessel."""
    _, n1, n2 = artery.frame(i)
    return artery.points[i] + (artery.radii[i] + offset) * (np.cos(theta) * n1 + np.sin(theta) * n2)


def _capsule(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    return np.concatenate([a, b, [r]])


def shape(kind: str, artery: Artery, i: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Capsules (n, 7) of a plaque of ``kind`` and characteristic radius ``size`` at vertex ``i``."""
    n = len(artery.points)
    theta = float(rng.uniform(0.0, 2.0 * np.pi))
    if kind == "spot":
        c = _wall_point(artery, i, theta, 0.2 * size)
        return _capsule(c, c, size)[None]
    if kind == "nodule":
        t, _, _ = artery.frame(i)
        c = _wall_point(artery, i, theta, 0.35 * size)
        half = size * float(rng.uniform(0.2, 1.3))
        return _capsule(c - half * t, c + half * t, size)[None]
    if kind == "streak":
        length = int(np.clip(size * rng.uniform(6.0, 14.0), 4, 25))
        idx = np.arange(i, min(i + length, n - 1) + 1)
        drift = np.cumsum(rng.normal(0.0, 0.12, idx.size))
        radius = size * (0.8 + 0.4 * rng.random(idx.size))
        pts = [_wall_point(artery, int(j), theta + d, 0.3 * r) for j, d, r in zip(idx, drift, radius)]
        if len(pts) == 1:
            return _capsule(pts[0], pts[0], float(radius[0]))[None]
        return np.stack([_capsule(pts[j], pts[j + 1], float(0.5 * (radius[j] + radius[j + 1])))
                         for j in range(len(pts) - 1)])
    if kind == "arc":
        span = float(rng.uniform(np.pi / 3.0, 2.0 * np.pi))
        rows = []
        for j in range(i, min(i + int(rng.integers(1, 6)), n - 1) + 1):
            angles = theta + np.linspace(0.0, span, max(3, int(span / 0.35)))
            ring = [_wall_point(artery, j, float(a), 0.3 * size) for a in angles]
            rows += [_capsule(p, q, size) for p, q in zip(ring[:-1], ring[1:])]
        return np.stack(rows)
    if kind == "cluster":
        rows = []
        for _ in range(int(rng.integers(2, 7))):
            j = int(np.clip(i + rng.integers(-4, 5), 0, n - 1))
            r = size * float(rng.uniform(0.5, 1.0))
            c = _wall_point(artery, j, float(rng.uniform(0.0, 2.0 * np.pi)), 0.3 * r)
            rows.append(_capsule(c, c, r))
        return np.stack(rows)
    raise ValueError(f"unknown plaque kind {kind!r}")


# Per kind: the range of its characteristic size (mm): sphere radius, capsule radius or wall thickness.
_SIZES = {"spot": (0.3, 0.9), "nodule": (0.6, 2.2), "streak": (0.45, 1.3), "arc": (0.35, 0.8), "cluster": (0.4, 1.1)}


def _draw_kind(remaining: float, rng: np.random.Generator) -> str:
    if remaining < 6.0:
        options, w = ("spot", "nodule", "cluster"), (0.45, 0.45, 0.1)
    elif remaining < 60.0:
        options, w = ("spot", "nodule", "cluster", "streak", "arc"), (0.15, 0.4, 0.2, 0.15, 0.1)
    else:
        options, w = ("nodule", "cluster", "streak", "arc"), (0.3, 0.2, 0.3, 0.2)
    p = np.asarray(w) / np.sum(w)
    return options[int(rng.choice(len(options), p=p))]


def _density(kind: str, bias: float, gain: float, rng: np.random.Generator) -> float:
    """Material density: soft (130-400 HU) to dense (>1000 HU) calcium, shifted by the case's bias."""
    lo, hi = (250.0, 1300.0) if kind == "spot" else (160.0, 1150.0)
    u = float(np.clip(rng.beta(2.0, 2.0) + 0.25 * bias, 0.0, 1.0))
    return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))) * gain


def _pick_site(scene: Scene, weights: np.ndarray, rng: np.random.Generator) -> tuple[Artery, int]:
    """An artery (by label weights; the main vessel more often than its branches) and a vertex on it."""
    arteries = scene.arteries
    labels = np.array([a.label for a in arteries])
    present = np.array([weights[lab - 1] if (labels == lab).any() else 0.0 for lab in range(1, 5)])
    label = 1 + int(rng.choice(4, p=present / present.sum()))
    candidates = [a for a in arteries if a.label == label]
    main = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}[label]
    w = np.array([3.0 if a.name == main else 1.0 for a in candidates])
    artery = candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
    # Proximal segments calcify more; the first 2 mm (the ostium) is left to the aortic wall.
    n = len(artery.points)
    i = int(np.clip(2 + rng.beta(1.3, 2.4) * (n - 3), 2, n - 2))
    return artery, i


def _clear(calc: Calcification, scene: Scene, placed: list[Calcification]) -> bool:
    """Away from bone, the aortic lumen and earlier plaques."""
    pts = _surface_points(calc)
    chest = scene.chest
    if not chest.inside_thorax(pts[:, 0], pts[:, 1], BONE_CLEARANCE_MM).all():
        return False
    if chest.bone_distance(pts).min() < BONE_CLEARANCE_MM:
        return False
    aorta = scene.mediastinum.aorta
    dist, nearest = polyline_distance(pts, aorta.points)
    if (dist - aorta.radii[nearest]).min() < AORTA_CLEARANCE_MM:
        return False
    return all(other.surface_distance(pts).min() > 0.8 for other in placed)


def _surface_points(calc: Calcification) -> np.ndarray:
    """Points on every capsule's surface (ends and a ring round the middle), (n, 3)."""
    out = []
    for cap in calc.capsules:
        a, b, r = cap[0:3], cap[3:6], cap[6]
        for d in np.eye(3):
            out += [a + r * d, a - r * d, b + r * d, b - r * d]
    return np.asarray(out)


def place_plaques(scene: Scene, volume: np.ndarray, grid: Grid, kernel: Kernel, marks: Marks,
                  ) -> list[Calcification]:
    """Render the plaques of the case's burden into ``volume`` and ``marks`` (in place) and return them."""
    burden, scan = scene.params.burden, scene.params.scan
    if burden.category == "0":
        return []
    rng = np.random.default_rng([scene.params.seed, 0xB0B, 0x1E5])
    weights = np.asarray(burden.artery_weights)
    motion = scene.motion
    upper = _UPPER[burden.category]
    kept: list[Calcification] = []
    total = 0.0
    reach = 1.0  # how far up its size range a lesion may be drawn; shrinks after each lesion that was too big
    for _ in range(6 * MAX_LESIONS):
        if total >= burden.target or len(kept) >= MAX_LESIONS:
            break
        remaining = burden.target - total
        kind = _draw_kind(remaining, rng)
        artery, i = _pick_site(scene, weights, rng)
        lo, hi = _SIZES[kind]
        top = max(lo + (hi - lo) * reach, 1.01 * lo)
        size = float(np.exp(rng.uniform(np.log(lo), np.log(top))))
        calc = Calcification(kind, artery.label, shape(kind, artery, i, size, rng),
                             _density(kind, burden.density_bias, scan.calcium_gain, rng),
                             motion.get(artery.label, np.zeros(3)) if artery.moving else np.zeros(3), artery.name)
        if not _clear(calc, scene, kept):
            continue
        dep = deposit(calc, volume, grid, kernel)
        if dep is None:
            continue
        estimate = agatston_estimate(dep, kernel.blur(volume[dep.box]), grid)
        if estimate <= 0.0:
            continue
        # Not far past the target, and never past the category's top.
        if estimate > max(1.3 * remaining, remaining + 2.0) or total + estimate > 0.8 * upper:
            reach = max(0.1, 0.8 * reach)
            continue
        marks.commit(dep, volume, calc.label)
        kept.append(calc)
        total += estimate
    for _ in range(burden.n_faint):
        _add_faint(scene, volume, grid, kernel, marks, rng, kept, motion)
    return kept


def _add_faint(scene: Scene, volume: np.ndarray, grid: Grid, kernel: Kernel, marks: Marks, rng: np.random.Generator,
               kept: list[Calcification], motion: dict[int, np.ndarray]) -> None:
    """One spot that peaks below 115 HU after blur (labelled; scored only where noise lifts it past 130)."""
    for _ in range(8):
        artery, i = _pick_site(scene, np.asarray(scene.params.burden.artery_weights), rng)
        size = float(rng.uniform(0.3, 0.6))
        calc = Calcification("faint spot", artery.label, shape("spot", artery, i, size, rng),
                             float(rng.uniform(250.0, 600.0)) * scene.params.scan.calcium_gain,
                             motion.get(artery.label, np.zeros(3)) if artery.moving else np.zeros(3), artery.name)
        if not _clear(calc, scene, kept):
            continue
        dep = deposit(calc, volume, grid, kernel)
        if dep is None or not (dep.raised >= LABEL_MIN_RAISE_HU).any():
            continue
        peak = float((kernel.blur(volume[dep.box]) + dep.raised)[dep.raised >= LABEL_MIN_RAISE_HU].max())
        if peak >= 115.0:  # keep a margin below 130 before noise
            continue
        marks.commit(dep, volume, calc.label)
        kept.append(calc)
        return
