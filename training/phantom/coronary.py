"""Coronary artery centrelines on the heart surface, and the plaques and distractors placed around them.

The four scored arteries (``pipeline.scoring.arteries``) run in epicardial fat just
outside the ventricle ellipsoid: the left main from the left ostium to its
bifurcation, the LAD down the anterior interventricular groove to the apex,
the LCX round the left atrioventricular groove, the RCA round the right
atrioventricular groove to the posterior descending artery.  Each plaque is a
small ellipsoid on the vessel wall with its artery's label; distractors are
ellipsoids with label 0 on the aortic wall, aortic valve and mitral annulus,
none reaching a coronary artery's wall (generator revision 2).  No plaque
comes near bone or into the descending aorta (revision 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.scoring.arteries import BY_NAME
from training.phantom.anatomy import STERNUM_SEMI_MM, VERTEBRA_WIDTH, HeartFrame, Thorax, sternum_y
from training.phantom.params import BodyParams, HeartParams, PhantomParams


@dataclass(frozen=True)
class Vessel:
    """A centreline (n, 3) in mm with the lumen radius at each point."""

    name: str
    points: np.ndarray
    radii: np.ndarray

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Point, unit tangent and radius at arc-length fraction ``t`` in [0, 1]."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        s = t * cum[-1]
        i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
        w = (s - cum[i]) / max(seg[i], 1e-9)
        point = (1 - w) * self.points[i] + w * self.points[i + 1]
        tangent = (self.points[i + 1] - self.points[i]) / max(seg[i], 1e-9)
        return point, tangent, float((1 - w) * self.radii[i] + w * self.radii[i + 1])


@dataclass(frozen=True)
class Blob:
    """A small ellipsoid of dense material: a plaque (label 1-4) or a distractor (label 0)."""

    center: np.ndarray  # (3,) mm
    axes: np.ndarray  # (3, 3) rows are unit axes
    semi: np.ndarray  # (3,) mm
    hu: float  # material density before partial volume
    label: int
    kind: str  # "plaque", "aortic wall", "aortic valve", "mitral annulus"

    def surface(self) -> np.ndarray:
        """Points spread over the ellipsoid's surface (``_SPHERE`` mapped onto it), (n, 3) mm."""
        return self.center + (_SPHERE * self.semi) @ self.axes


def _ring(frame: HeartFrame, s: float, phis: np.ndarray, margin: float) -> list[np.ndarray]:
    return [frame.surface(s, float(phi), margin) for phi in phis]


def coronary_tree(params: PhantomParams, thorax: Thorax) -> tuple[Vessel, ...]:
    """The LM, LAD, LCX and RCA centrelines of this case."""
    h, f = params.heart, thorax.frame
    m = 0.5 * h.epicardial_fat + 1.0
    k = h.lumen_scale
    lad_phi = h.ant_groove_angle - 40.0
    bif = f.surface(-0.93, lad_phi + 35.0, m + 2.0)
    ostium_dir = bif - f.root
    ostium_dir[2] = 0.0
    ostium_l = f.root + h.root_radius * ostium_dir / np.linalg.norm(ostium_dir) + np.array([0.0, 0.0, 5.0])
    lm_pts = np.linspace(ostium_l, bif, 6)
    lad_s = np.linspace(-0.85, 0.97, 22)
    lad_pts = np.array([bif] + [f.surface(float(s), lad_phi + 30.0 * (1 - (s + 1) / 2) ** 2, m) for s in lad_s])
    lcx_phis = np.linspace(lad_phi + 60.0, h.lcx_end_angle, 16)
    lcx_pts = np.array([bif] + _ring(f, -0.8, lcx_phis, m + 1.0))
    rca_phis = np.linspace(-45.0, -190.0, 16)
    # The proximal RCA runs round the right ventricle (beyond the ventricle ellipsoid), the distal part
    # in the posterior atrioventricular groove close to it.
    rca_margin = m + 10.0 - 8.0 * np.linspace(0.0, 1.0, len(rca_phis))
    rca_ring = [f.surface(-0.82, float(phi), float(mm)) for phi, mm in zip(rca_phis, rca_margin)]
    rca_start = rca_ring[0]
    d = rca_start - f.root
    d[2] = 0.0
    ostium_r = f.root + h.root_radius * d / np.linalg.norm(d) + np.array([0.0, 0.0, 5.0])
    pda_s = np.linspace(-0.75, -0.75 + 1.6 * h.pda_fraction, 8)
    pda = [f.surface(float(s), -190.0, m + 2.0) for s in pda_s]
    rca_pts = np.array([ostium_r, 0.5 * (ostium_r + rca_start) + np.array([0.0, -4.0, 0.0])] + rca_ring + pda)

    def taper(n: int, r0: float, r1: float) -> np.ndarray:
        return k * np.linspace(r0, r1, n)

    return (
        Vessel("LM", lm_pts, taper(len(lm_pts), 2.1, 1.9)),
        Vessel("LAD", lad_pts, taper(len(lad_pts), 1.7, 0.7)),
        Vessel("LCX", lcx_pts, taper(len(lcx_pts), 1.5, 0.8)),
        Vessel("RCA", rca_pts, taper(len(rca_pts), 1.8, 0.9)),
    )


def _frame_at(tangent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = tangent / np.linalg.norm(tangent)
    r = rng.normal(size=3)
    n = r - (r @ t) * t
    n /= np.linalg.norm(n)
    return np.stack([t, n, np.cross(t, n)])


# Plaque size (mm, the middle semi-axis before shape factors) and material density (HU at 120 kVp).
_SIZES = {"mild": (0.6, 1.6), "moderate": (1.0, 2.6), "severe": (1.1, 3.4)}
_DENSITY = {"mild": (250.0, 800.0), "moderate": (250.0, 1100.0), "severe": (300.0, 1450.0)}
# Some plaques are tiny and faint: after partial volume they peak near 130 HU.
_FAINT_SHARE = {"mild": 0.3, "moderate": 0.15, "severe": 0.15}
_FAINT_SIZE = (0.65, 1.0)
_FAINT_DENSITY = (220.0, 480.0)
_ARTERY_SHARE = {"LM": 0.12, "LAD": 0.4, "LCX": 0.2, "RCA": 0.28}


def _clear_of_aorta_and_spine(center: np.ndarray, reach: float, thorax: Thorax, spine_radius: float) -> bool:
    """Whether a plaque of radius ``reach`` at ``center`` stays out of the descending aorta and the spine.

    Where the heart's posterior surface meets them the coronary vessel is
    painted over (they are drawn after it), so a plaque there would sit in
    the aorta or in bone.
    """
    dx, dy, dr = thorax.aorta_desc
    sx, sy = thorax.spine_center
    return (np.hypot(center[0] - dx, center[1] - dy) > dr + 2.5 + reach
            and np.hypot(center[0] - sx, center[1] - sy) > spine_radius * 1.1 + 4.0 + reach)


# Generator revision 3: no plaque comes within this of bone or the descending aorta's lumen.  Where the
# heart's back meets the spine the vessel is painted over, so such a plaque sat in bone or in the aorta:
# no reader would score it as coronary calcium, and in bone its truth was not separable (seed 970053).
_BONE_AND_AORTA_CLEARANCE_MM = 3.0
_PLAQUE_REDRAWS = 30


def plaques(params: PhantomParams, vessels: tuple[Vessel, ...], thorax: Thorax) -> list[Blob]:
    """The calcified plaques of this case (none for severity "none").

    A plaque that would come near bone or the descending aorta
    (``clear_of_bone_and_aorta``) is drawn again from a spare random stream,
    so the case's other plaques stay where they were; after
    ``_PLAQUE_REDRAWS`` failures it is left out.
    """
    c = params.calcium
    if c.severity == "none":
        return []
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0xCA1C])
    spare = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0xCA1C, 3])
    out = []
    for _ in range(c.n_plaques):
        for attempt in range(1 + _PLAQUE_REDRAWS):
            blob = _draw_plaque(params, vessels, thorax, rng if attempt == 0 else spare)
            if clear_of_bone_and_aorta(blob.surface(), thorax, params.body):
                out.append(blob)
                break
    return out


def _draw_plaque(params: PhantomParams, vessels: tuple[Vessel, ...], thorax: Thorax,
                 rng: np.random.Generator) -> Blob:
    """One plaque on the wall of an artery drawn by ``_ARTERY_SHARE``."""
    c = params.calcium
    names = list(_ARTERY_SHARE)
    share = np.array([_ARTERY_SHARE[n] for n in names])
    lo, hi = _SIZES[c.severity]
    dlo, dhi = _DENSITY[c.severity]
    name = names[int(rng.choice(len(names), p=share / share.sum()))]
    vessel = next(v for v in vessels if v.name == name)
    # Steers the draw along the vessel (a coarse check, kept so that revision-2 draws stay as they were);
    # ``plaques`` then checks the plaque itself with ``clear_of_bone_and_aorta``.
    for _ in range(20):  # draw again where the vessel runs next to the aorta or the spine
        t = float(rng.beta(1.3, 2.2)) if name != "LM" else float(rng.uniform(0.1, 0.9))
        point, tangent, radius = vessel.at(t)
        if _clear_of_aorta_and_spine(point, 10.0, thorax, params.body.spine_radius):
            break
    axes = _frame_at(tangent, rng)
    faint = rng.random() < _FAINT_SHARE[c.severity]
    s_lo, s_hi = _FAINT_SIZE if faint else (lo, hi)
    size = float(np.exp(rng.uniform(np.log(s_lo), np.log(s_hi)))) * c.size_scale
    semi = np.array([size * rng.uniform(1.0, 2.5), size * rng.uniform(0.6, 0.9), size * rng.uniform(0.8, 1.0)])
    center = point + axes[1] * (radius + 0.3 * semi[1])  # on the wall, bulging outwards
    d_lo, d_hi = _FAINT_DENSITY if faint else (dlo, dhi)
    density = float(np.clip(rng.uniform(d_lo, d_hi) * c.density_scale * params.scan.calcium_gain, 140.0, 1450.0))
    return Blob(center, axes, semi, density, BY_NAME[name].label, "plaque")


def clear_of_bone_and_aorta(points: np.ndarray, thorax: Thorax, body: BodyParams) -> bool:
    """Whether all ``points`` (n, 3) mm lie ``_BONE_AND_AORTA_CLEARANCE_MM`` outside the vertebral body,
    the sternum, the ribs' cortex and the descending aorta's lumen (each grown by that margin)."""
    m = _BONE_AND_AORTA_CLEARANCE_MM
    x, y = points[:, 0], points[:, 1]

    def outside_ellipse(cx: float, cy: float, a: float, b: float) -> bool:
        return bool(np.all(((x - cx) / (a + m)) ** 2 + ((y - cy) / (b + m)) ** 2 >= 1.0))

    sx, sy = thorax.spine_center
    dx, dy, dr = thorax.aorta_desc
    st_a, st_b = STERNUM_SEMI_MM
    if not (outside_ellipse(sx, sy, body.spine_radius * VERTEBRA_WIDTH, body.spine_radius)
            and outside_ellipse(dx, dy, dr, dr) and outside_ellipse(0.0, sternum_y(body), st_a, st_b)):
        return False
    cortex = [rib for rib, _ in thorax.ribs[::2]]  # cortex capsules (each followed by its marrow)
    a = np.array([rib.a for rib in cortex])
    distance, _ = _to_segments(points, a, np.array([rib.b for rib in cortex]) - a)
    return bool(np.all(distance >= np.array([rib.radius for rib in cortex]) + m))


_CORONARY_WALL_MM = 1.0


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` points spread evenly over the unit sphere (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5.0**0.5) * k
    ring = np.sqrt(1.0 - z * z)
    return np.column_stack([ring * np.cos(phi), ring * np.sin(phi), z])


_SPHERE = _fibonacci_sphere(96)  # where a blob's surface is checked (``Blob.surface``): distractors, plaques


def _to_segments(points: np.ndarray, a: np.ndarray, ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (points, segments) from each of ``points`` (n, 3) to each segment a -> a + ab (s, 3),
    and where along the segment the nearest point lies (0-1)."""
    to_point = points[:, None, :] - a[None]  # (points, segments, 3)
    t = np.clip(np.einsum("psk,sk->ps", to_point, ab) / np.maximum(np.einsum("sk,sk->s", ab, ab), 1e-12), 0, 1)
    return np.linalg.norm(to_point - t[..., None] * ab[None], axis=2), t


def _lumen_clearance(points: np.ndarray, vessels: tuple[Vessel, ...]) -> float:
    """Smallest distance (mm) from any of ``points`` (n, 3) to a coronary lumen (inf without vessels)."""
    best = np.inf
    for v in vessels:
        distance, t = _to_segments(points, v.points[:-1], np.diff(v.points, axis=0))
        radius = v.radii[:-1] + t * np.diff(v.radii)
        best = min(best, float((distance - radius).min()))
    return best


def _ascending_wall(thorax: Thorax, heart: HeartParams, z: float, angle: float) -> np.ndarray:
    """A point on the wall of the aortic root (up to z = 3) or the ascending aorta, at height ``z``.

    Below the root's centre the point stays at the centre's height (the axis starts there).
    """
    axis = thorax.ascending
    t = np.clip((z - axis.a[2]) / max(axis.b[2] - axis.a[2], 1e-6), 0, 1)
    centre = axis.a + t * (axis.b - axis.a)
    r = heart.asc_radius if z > 3 else heart.root_radius
    return centre + r * np.array([np.cos(angle), np.sin(angle), 0.0])


def distractors(params: PhantomParams, thorax: Thorax, avoid: list[Blob],
                vessels: tuple[Vessel, ...] = ()) -> list[Blob]:
    """Aortic wall, aortic valve and mitral annulus calcifications, kept clear of every plaque.

    None reaches a coronary artery's wall (``vessels``; without them, as in
    some tests, nothing is checked against the arteries and no ostial
    calcification is placed); the extra ostial aortic-wall calcifications
    (``CalciumParams.n_ostial_wall``) are placed beside the LM and RCA ostia.
    """
    c, h, f = params.calcium, params.heart, thorax.frame
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0xD157])
    out: list[Blob] = []

    def add(center: np.ndarray, size: float, kind: str) -> None:
        for blob in avoid:
            if np.linalg.norm(center - blob.center) < size * 2.5 + blob.semi.max() + 4.0:
                return
        axes = _frame_at(rng.normal(size=3), rng)
        semi = size * np.array([rng.uniform(1.0, 2.2), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)])
        blob = Blob(center, axes, semi, float(rng.uniform(250.0, 1200.0)), 0, kind)
        # Calcium reaching a coronary artery's wall (lumen + 1 mm) is that artery's calcium for a reader,
        # whatever it grew from: such a spot cannot be a distractor.  Checked after the draws, so a
        # rejected spot leaves the other distractors of the case as they were.
        if _lumen_clearance(blob.surface(), vessels) < _CORONARY_WALL_MM:
            return
        out.append(blob)

    top = params.grid.origin_mm[2] + params.grid.increment_mm * params.grid.n_slices
    for _ in range(c.n_aortic_wall):
        ang = rng.uniform(0, 2 * np.pi)
        if rng.random() < 0.5:  # ascending aorta and root, some next to the ostia
            point = _ascending_wall(thorax, h, float(rng.uniform(-6.0, min(top, 40.0))), ang)
        else:  # descending aorta
            dx, dy, r = thorax.aorta_desc
            centre = np.array([dx, dy, float(rng.uniform(params.grid.origin_mm[2], top))])
            point = centre + r * np.array([np.cos(ang), np.sin(ang), 0.0])
        add(point, float(rng.uniform(0.6, 2.5)), "aortic wall")
    for _ in range(c.n_aortic_valve):
        ang = rng.uniform(0, 2 * np.pi)
        point = f.root + np.array([0.0, 0.0, -3.0]) + 0.6 * h.root_radius * np.array([np.cos(ang), np.sin(ang), 0.0])
        add(point, float(rng.uniform(0.8, 2.5)), "aortic valve")
    for _ in range(c.n_mitral):
        phi = rng.uniform(60.0, 200.0)
        add(f.surface(-0.75, float(phi), -h.radius_q * 0.15), float(rng.uniform(1.0, 3.0)), "mitral annulus")
    ostia = [v.points[0] for v in vessels if v.name in ("LM", "RCA")]
    if c.n_ostial_wall and ostia:
        rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0x0571, 1])
        for _ in range(c.n_ostial_wall):
            # On the root's wall (as above) from below the ostia to just above them, within 45 degrees of one.
            ostium = ostia[int(rng.integers(len(ostia)))] - f.root
            ang = np.arctan2(ostium[1], ostium[0]) + np.radians(rng.uniform(-45.0, 45.0))
            z = float(rng.uniform(-9.0, 4.0))
            point = _ascending_wall(thorax, h, z, float(ang))
            point[2] = z  # the root reaches below its centre (z = -5), where the axis above stops
            add(point, float(rng.uniform(0.6, 2.5)), "aortic wall")
    return out
