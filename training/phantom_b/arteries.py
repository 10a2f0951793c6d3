"""Coronary centrelines as curves on the epicardial surface, found through its grooves.

Every artery beyond its ostial segment is a curve in the heart's surface
coordinates (long-axis position ``s``, angle ``phi``: see ``heart``), cast onto
the offset surface ``myocardium = lumen radius + 0.6 mm`` along rays from the
long axis, so it lies in the epicardial fat against the muscle.  The grooves
are found on the surface, not placed: the interventricular grooves where the
distances to the two ventricles are equal, the atrioventricular groove where
the distances to ventricles and atria are.  Branches (diagonals, marginals,
ramus, acute marginal) are straight lines in ``(s, phi)`` with a wiggle:
geodesic-like paths over the free walls.

Labels (``pipeline.scoring.arteries``): LM 1; LAD and diagonals 2; LCX, obtuse
marginals and ramus intermedius 3; RCA and acute marginal 4; the posterior
descending and posterolateral arteries belong to the dominant artery (both
RCA in a right-dominant tree, both LCX in a left-dominant one; in a
co-dominant tree the PDA is the RCA's and the posterolateral branch the LCX's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.scoring.arteries import BY_NAME
from training.phantom_b.heart import HeartModel
from training.phantom_b.params import Tree
from training.phantom_b.sdf import Tube, arc_length, resample
from training.phantom_b.vessels import Mediastinum, TubeLayer

GAP_MM = 0.6  # fat between the muscle and a vessel's lumen
LM, LAD, LCX, RCA = (BY_NAME[n].label for n in ("LM", "LAD", "LCX", "RCA"))


@dataclass(frozen=True)
class Artery:
    """A coronary centreline (n, 3), 1 mm apart, with lumen radii; ``label`` is its scored parent's."""

    name: str
    label: int
    points: np.ndarray
    radii: np.ndarray
    moving: bool  # in the right or circumflex territory, which moves most in the cardiac cycle

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit tangent and two unit normals at vertex ``i``."""
        j0, j1 = max(i - 2, 0), min(i + 2, len(self.points) - 1)
        t = self.points[j1] - self.points[j0]
        t = t / max(np.linalg.norm(t), 1e-9)
        ref = np.array([0.0, 0.0, 1.0]) if abs(t[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        n1 = np.cross(t, ref)
        n1 /= np.linalg.norm(n1)
        return t, n1, np.cross(t, n1)

    def layer(self, blood_hu: float, fat_hu: float) -> TubeLayer:
        return TubeLayer(self.name, self.points, self.radii, blood_hu, 0.0, fat_hu)


def cast(heart: HeartModel, s: np.ndarray, phi: np.ndarray, level: np.ndarray | float) -> np.ndarray:
    """Points (n, 3) where rays from the long axis at ``(s, phi)`` leave the surface ``myocardium = level``.

    The outermost crossing is taken (rays are sampled from outside inwards); a
    ray that meets no surface (beyond the apex) gives the axis point.
    """
    s, phi = np.asarray(s, float), np.asarray(phi, float)
    level = np.broadcast_to(np.asarray(level, float), s.shape)
    rho = np.arange(110.0, -0.1, -2.0)
    pts = heart.point(s[:, None], phi[:, None], rho[None, :])  # (n, m, 3)
    d = heart.myocardium(pts.reshape(-1, 3)).reshape(pts.shape[:2]) - level[:, None]
    inside = d <= 0
    first = np.where(inside.any(axis=1), np.argmax(inside, axis=1), rho.size - 1)
    hi = rho[np.maximum(first - 1, 0)]
    lo = rho[first]
    for _ in range(10):  # bisection between the last outside and first inside sample
        mid = 0.5 * (lo + hi)
        dm = heart.myocardium(heart.point(s, phi, mid)) - level
        lo, hi = np.where(dm <= 0, mid, lo), np.where(dm <= 0, hi, mid)
    return heart.point(s, phi, 0.5 * (lo + hi))


def _crease(heart: HeartModel, s: np.ndarray, phis: np.ndarray, which: str) -> np.ndarray:
    """For each ``s``, the angle among ``phis`` where the surface is a crease between two chamber groups."""
    S, P = np.meshgrid(s, phis, indexing="ij")
    pts = cast(heart, S.ravel(), P.ravel(), 0.0)
    f = heart.fields(pts[:, 0], pts[:, 1], pts[:, 2])
    if which == "interventricular":
        metric = np.abs(f.lv - f.rv)
    else:
        metric = np.abs(f.ventricles - f.atria)
    return phis[np.argmin(metric.reshape(S.shape), axis=1)]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples, the ends repeated."""
    if values.size < 3:
        return values
    k = np.ones(width) / width
    padded = np.concatenate([np.full(width, values[0]), values, np.full(width, values[-1])])
    return np.convolve(padded, k, mode="same")[width:-width]


def _wiggle(n: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve of ``n`` samples (about two waves along it), zero at both ends."""
    t = np.linspace(0.0, 1.0, n)
    waves = sum(rng.normal() * np.sin(np.pi * k * t + rng.uniform(0, 0.3)) / k for k in (1, 2, 3, 4))
    return amplitude * waves * np.sin(np.pi * t)


@dataclass(frozen=True)
class _Grooves:
    """The atrioventricular groove as a height per angle; the interventricular grooves as an angle per height."""

    av_phi: np.ndarray  # angles 0..360
    av_s: np.ndarray  # groove height at each
    anterior_s: np.ndarray
    anterior_phi: np.ndarray
    posterior_s: np.ndarray
    posterior_phi: np.ndarray

    def av(self, phi: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(phi) % 360.0, self.av_phi, self.av_s, period=360.0)


def _grooves(heart: HeartModel, tree: Tree) -> _Grooves:
    """Find the grooves on the heart's surface (see the module docstring)."""
    L = heart.length
    s_iv = np.linspace(0.04 * L, 0.8 * L, 18)
    anterior = _smooth(_crease(heart, s_iv, np.arange(5.0, 115.0, 3.0), "interventricular"), 5)
    posterior = _smooth(_crease(heart, s_iv, np.arange(245.0, 355.0, 3.0), "interventricular"), 5)
    phis = np.arange(0.0, 360.0, 6.0)
    S, P = np.meshgrid(np.arange(-14.0, 9.0, 1.5), phis, indexing="ij")
    pts = cast(heart, S.ravel(), P.ravel(), 0.0)
    f = heart.fields(pts[:, 0], pts[:, 1], pts[:, 2])
    metric = np.abs(f.ventricles - f.atria).reshape(S.shape)
    best = S[np.argmin(metric, axis=0), np.arange(phis.size)]
    # Where no atrium is near (round the outflow tracts) the groove stays at its drawn level.
    s_av = np.where(metric.min(axis=0) < 6.0, best, tree.av_level)
    s_av = np.convolve(np.concatenate([s_av[-3:], s_av, s_av[:3]]), np.ones(7) / 7, mode="same")[3:-3]
    return _Grooves(phis, s_av, s_iv, anterior, s_iv, posterior)


def _surface_path(heart: HeartModel, s: np.ndarray, phi: np.ndarray, radius: np.ndarray, wiggle: np.ndarray,
                  ) -> np.ndarray:
    """Cast a curve given in surface coordinates (with a sideways wiggle in degrees) onto the vessel level."""
    return cast(heart, s, phi + wiggle, radius + GAP_MM)


def _free_path(a: np.ndarray, b: np.ndarray, heart: HeartModel, radius: float, avoid: list[tuple[TubeLayer, float]],
               ) -> np.ndarray:
    """A path from ``a`` to ``b`` off the surface (ostial segments): straight, pushed out of the heart and tubes."""
    pts = resample(np.stack([a, b]), 1.0)
    tubes = [(Tube(layer.points, layer.radii), clearance) for layer, clearance in avoid]
    for _ in range(3):
        d = heart.myocardium(pts)
        push = np.clip(radius + GAP_MM - d, 0.0, None)
        pts = pts + push[:, None] * _gradient(heart.myocardium, pts)
        for tube, clearance in tubes:
            dt = tube.points_distance(pts)
            pts = pts + np.clip(clearance - dt, 0.0, None)[:, None] * _gradient(tube.points_distance, pts)
        pts[0], pts[-1] = a, b
    return pts


def _gradient(fn: Callable[[np.ndarray], np.ndarray], pts: np.ndarray, h: float = 0.5,
              unit: bool = True) -> np.ndarray:
    """Gradient (unit length when ``unit``) of a distance function at points (n, 3), by central differences."""
    g = np.zeros_like(pts)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        g[:, i] = (fn(pts + e) - fn(pts - e)) / (2.0 * h)
    if not unit:
        return g
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)


def _taper(n: int, r0: float, r1: float, scale: float) -> np.ndarray:
    return scale * np.linspace(r0, r1, n)


def _finish(heart: HeartModel, name: str, label: int, free: np.ndarray | None, surface: np.ndarray | None,
            r0: float, r1: float, scale: float) -> Artery:
    """Join the free (ostial) and surface parts, resample at 1 mm, smooth, and settle onto the vessel level.

    Where casting jumped (a ray changing from one chamber to the next) the
    resampled chord cuts across a crease; settling moves every surface point
    back to ``myocardium = radius + GAP_MM`` along the distance's gradient,
    which lays the chord into the crease.  Free points are only pushed out of
    the heart, never pulled onto it, and the ostium stays where it is.
    """
    parts = [resample(p, 1.0) for p in (free, surface) if p is not None and len(p) > 1]
    n_free = len(parts[0]) if free is not None and len(free) > 1 else 0
    pts = np.vstack(parts) if len(parts) > 1 else parts[0]
    if len(pts) >= 5:  # take the corners off where pieces join
        smooth = pts.copy()
        for i in range(3):
            smooth[:, i] = _smooth(pts[:, i], 3)
        smooth[0], smooth[-1] = pts[0], pts[-1]
        pts = smooth
    radii = _taper(len(pts), r0, r1, scale)
    level = radii + GAP_MM
    surface_mask = np.arange(len(pts)) >= n_free
    for _ in range(5):  # Newton steps on the (approximate) distance, at most 3 mm each
        d = heart.myocardium(pts) - level
        step = np.where(surface_mask, d, np.minimum(d, 0.0))
        step[0] = 0.0
        g = _gradient(heart.myocardium, pts, unit=False)
        move = -step[:, None] * g / np.maximum((g * g).sum(axis=1, keepdims=True), 0.05)
        norm = np.linalg.norm(move, axis=1, keepdims=True)
        pts = pts + move * np.minimum(1.0, 3.0 / np.maximum(norm, 1e-9))
    return Artery(name, label, pts, radii, label in (LCX, RCA))


def coronary_tree(tree: Tree, heart: HeartModel, med: Mediastinum, rng: np.random.Generator) -> tuple[Artery, ...]:
    """All arteries of the case: main vessels first, then branches."""
    L, k = heart.length, tree.lumen_scale
    g = _grooves(heart, tree)
    root = heart.root.center
    r_root = heart.root.semi[0]
    avoid = [(med.pulmonary[0], med.pulmonary[0].radii.max() + 3.5)]
    amp = 4.0 + 10.0 * tree.tortuosity  # degrees of sideways wiggle

    # --- left coronary artery ------------------------------------------------------------------------
    lad_top_phi = float(g.anterior_phi[0])
    junction_phi = lad_top_phi + 35.0
    junction = cast(heart, np.array([g.av(junction_phi)]), np.array([junction_phi]), 2.2 * k + GAP_MM)[0]
    out_dir = junction - root
    out_dir[2] *= 0.3
    out_dir /= np.linalg.norm(out_dir)
    ostium_l = root + r_root * out_dir + np.array([0.0, 0.0, 2.0])
    trunk = _free_path(ostium_l, junction, heart, 2.2 * k, avoid)
    trunk_len = arc_length(trunk)[-1]
    arteries: list[Artery] = []
    if tree.lm_length > 0:
        cut = int(np.clip(tree.lm_length, 2.0, 0.85 * trunk_len))
        arteries.append(_finish(heart, "LM", LM, trunk[: cut + 1], None, 2.3, 2.1, k))
        lad_start, lcx_start = trunk[cut:], trunk[cut:]
    else:  # separate ostia, 4 mm apart on the left sinus
        side = np.cross(out_dir, [0.0, 0.0, 1.0])
        side /= np.linalg.norm(side)
        lad_start = _free_path(ostium_l + 2.0 * side, junction, heart, 1.9 * k, avoid)
        lcx_start = _free_path(ostium_l - 2.0 * side + np.array([0.0, 0.0, -1.0]), junction, heart, 1.7 * k, avoid)

    s_lad = np.linspace(g.anterior_s[0], 0.92 * L, 60)
    phi_lad = np.interp(s_lad, g.anterior_s, g.anterior_phi)
    r_lad = np.linspace(1.9, 1.0, s_lad.size) * k
    lad = _surface_path(heart, s_lad, phi_lad, r_lad, _wiggle(s_lad.size, amp, rng))
    if tree.lad_wrap:  # round the apex onto the inferior wall
        phi_tip = float(phi_lad[-1])
        s_back = np.linspace(0.93 * L, float(rng.uniform(0.7, 0.85)) * L, 12)
        wrap = cast(heart, s_back, np.full(s_back.size, phi_tip + 150.0), 0.9 * k + GAP_MM)
        lad = np.vstack([lad, wrap])
    lad_artery = _finish(heart, "LAD", LAD, lad_start, lad, 1.9, 0.8, k)
    arteries.append(lad_artery)

    dominance = tree.dominance
    crux_phi = float(g.posterior_phi[0]) % 360.0
    lcx_end = {"right": float(rng.uniform(190.0, 235.0)), "co": float(rng.uniform(245.0, 270.0)),
               "left": crux_phi}[dominance]
    phi_lcx = np.linspace(junction_phi + 10.0, lcx_end, max(8, int((lcx_end - junction_phi) / 4.0)))
    r_lcx = np.linspace(1.7, 1.0 if dominance == "left" else 0.8, phi_lcx.size) * k
    lcx = _surface_path(heart, g.av(phi_lcx) + 1.0, phi_lcx, r_lcx, np.zeros(phi_lcx.size))
    arteries.append(_finish(heart, "LCX", LCX, lcx_start, lcx, 1.7, 1.0 if dominance == "left" else 0.8, k))

    # --- right coronary artery -----------------------------------------------------------------------
    rca_stop = {"right": float(rng.uniform(250.0, 275.0)), "co": crux_phi + 5.0,
                "left": float(rng.uniform(315.0, 345.0))}[dominance]
    start_phi = float(rng.uniform(15.0, 30.0))
    phi_rca = np.linspace(start_phi + 360.0, rca_stop, max(8, int((start_phi + 360.0 - rca_stop) / 4.0)))
    r_rca = np.linspace(1.9, 1.0 if dominance != "left" else 0.8, phi_rca.size) * k
    rca = _surface_path(heart, g.av(phi_rca) + tree.rca_groove, phi_rca % 360.0, r_rca,
                        np.zeros(phi_rca.size))
    d = rca[0] - root
    d[2] = 0.0
    d /= np.linalg.norm(d)
    ostium_r = root + r_root * d + np.array([0.0, 0.0, tree.rca_takeoff])
    rca_prox = _free_path(ostium_r, rca[0], heart, 1.9 * k, [])
    arteries.append(_finish(heart, "RCA", RCA, rca_prox, rca, 1.9, 1.0 if dominance != "left" else 0.8, k))

    # --- posterior descending artery -----------------------------------------------------------------
    pda_label = LCX if dominance == "left" else RCA
    s_pda = np.linspace(g.posterior_s[0], float(rng.uniform(0.45, 0.8)) * L, 30)
    phi_pda = np.interp(s_pda, g.posterior_s, g.posterior_phi)
    pda = _surface_path(heart, s_pda, phi_pda, np.linspace(1.2, 0.7, s_pda.size) * k,
                        _wiggle(s_pda.size, 0.6 * amp, rng))
    crux = cast(heart, np.array([g.av(crux_phi)]), np.array([crux_phi]), 1.2 * k + GAP_MM)
    arteries.append(_finish(heart, "PDA", pda_label, None, np.vstack([crux, pda]), 1.2, 0.7, k))
    if dominance != "left":
        plb_label = LCX if dominance == "co" else RCA
        phi_plb = np.linspace(crux_phi - 8.0, crux_phi - 45.0, 10)
        plb = _surface_path(heart, g.av(phi_plb) + 4.0 + np.linspace(0, 0.25 * L, 10), phi_plb,
                            np.full(10, 0.9 * k), np.zeros(10))
        arteries.append(_finish(heart, "PLB", plb_label, None, np.vstack([crux, plb]), 1.0, 0.7, k))

    # --- branches over the free walls ----------------------------------------------------------------
    def branch(name: str, label: int, parent: Artery, at: float, s_to: float, phi_to: float, r0: float) -> None:
        i = int(np.clip(at * (len(parent.points) - 1), 1, len(parent.points) - 2))
        s0, phi0, _ = heart.local(parent.points[i : i + 1])
        n = 24
        s = np.linspace(float(s0[0]), s_to, n)
        phi0v = float(phi0[0])
        delta = ((phi_to - phi0v + 180.0) % 360.0) - 180.0
        phi = phi0v + np.linspace(0.0, delta, n)
        path = _surface_path(heart, s, phi, np.linspace(r0, 0.6, n) * k, _wiggle(n, 0.7 * amp, rng))
        arteries.append(_finish(heart, name, label, None, np.vstack([parent.points[i], path]), r0, 0.6, k))

    for j in range(tree.n_diagonals):
        at = float(rng.uniform(0.15, 0.55))
        i = int(at * (len(lad_artery.points) - 1))
        s0 = float(heart.local(lad_artery.points[i : i + 1])[0][0])
        branch(f"D{j + 1}", LAD, lad_artery, at, min(s0 + float(rng.uniform(0.25, 0.45)) * L, 0.9 * L),
               float(phi_lad.mean() + rng.uniform(45.0, 85.0)), 1.2)
    lcx_artery = next(a for a in arteries if a.name == "LCX")
    for j in range(tree.n_marginals):
        at = float(rng.uniform(0.3, 0.85))
        i = int(at * (len(lcx_artery.points) - 1))
        phi0 = float(heart.local(lcx_artery.points[i : i + 1])[1][0])
        branch(f"OM{j + 1}", LCX, lcx_artery, at, float(rng.uniform(0.5, 0.8)) * L, phi0 + float(rng.uniform(-8, 8)),
               1.2)
    if tree.ramus:
        lm_end = arteries[0] if tree.lm_length > 0 else lad_artery
        branch("RAMUS", LCX, lm_end, 0.97 if tree.lm_length > 0 else 0.05, float(rng.uniform(0.45, 0.7)) * L,
               junction_phi + float(rng.uniform(30.0, 55.0)), 1.4)
    rca_artery = next(a for a in arteries if a.name == "RCA")
    branch("AM", RCA, rca_artery, float(rng.uniform(0.35, 0.5)), float(rng.uniform(0.45, 0.7)) * L,
           float(rng.uniform(330.0, 360.0)), 1.0)
    return tuple(arteries)
