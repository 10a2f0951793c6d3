"""The heart as blended implicit surfaces, and where it sits in the chest.

Chambers are tapered ellipsoids (``sdf.Egg``) in a heart frame: ``u`` the long
axis from the valve plane to the apex, ``h`` across it towards the right
ventricle, ``e3 = u x h`` towards the inferior wall.  Angles ``phi`` round the
long axis start at ``h`` (the septum) and turn towards ``-e3`` (the anterior
wall): the anterior interventricular groove lies near 30-70 degrees, the
lateral wall at 180, the inferior wall at 270 and the posterior
interventricular groove near 300-340.

* ventricles: the left one cut flat at the valve plane, the right one a
  crescent (its ellipsoid less the left ventricle) with an outflow tract up to
  the pulmonary valve; the myocardial surface is their smooth union with a
  small blend, so the interventricular and atrioventricular grooves stay as
  creases;
* atria and aortic root: ellipsoids placed from offsets given in patient axes
  for a reference pose (azimuth 45, elevation 30) and turned with the heart;
* epicardial fat: the smooth union of all chambers with a wide blend
  (10-22 mm), which fills the grooves, moved outwards by the fat thickness;
  the pericardium is a 1-2.5 mm shell on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from training.phantom_b.chest import Chest, paint
from training.phantom_b.params import Body, Heart
from training.phantom_b.sdf import Egg, Tube, coverage, smax, smin

_REFERENCE_POSE = (45.0, 30.0, 0.0)
# Centres relative to the left-ventricular base centre in the reference pose, patient axes (x left,
# y posterior, z head), mm before scaling.
_ROOT = (-8.0, -8.0, 12.0)
_LA = (6.0, 21.0, 8.0)
_RA = (-36.0, 6.0, -2.0)
_PULMONARY_VALVE = (6.0, -28.0, 24.0)
_LA_SEMI = (32.0, 15.0, 21.0)  # patient x, y, z in the reference pose
_RA_SEMI = (23.0, 20.0, 28.0)


def pose_axes(azimuth: float, elevation: float, roll: float) -> np.ndarray:
    """Rows ``u`` (long axis), ``h`` (towards the right ventricle) and ``e3`` (inferior wall)."""
    az, el, rl = np.radians([azimuth, elevation, roll])
    u = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), -np.sin(el)])
    h0 = np.cross(u, [0.0, 0.0, 1.0])
    h0 /= np.linalg.norm(h0)
    e0 = np.cross(u, h0)
    h = np.cos(rl) * h0 + np.sin(rl) * e0
    e3 = -np.sin(rl) * h0 + np.cos(rl) * e0
    return np.stack([u, h, e3])


@dataclass(frozen=True)
class HeartFields:
    """The distance of one set of points to every chamber (see ``HeartModel.fields``)."""

    lv: np.ndarray
    rv: np.ndarray
    rvot: np.ndarray
    la: np.ndarray
    ra: np.ndarray
    root: np.ndarray

    @property
    def ventricles(self) -> np.ndarray:
        return smin(smin(self.lv, self.rv, 3.0), self.rvot, 5.0)

    @property
    def atria(self) -> np.ndarray:
        return np.minimum(self.la, self.ra)

    @property
    def myocardium(self) -> np.ndarray:
        """The heart's outer (epicardial) surface, grooves kept as creases."""
        return smin(smin(self.ventricles, self.atria, 4.0), self.root, 3.0)


@dataclass(frozen=True)
class HeartModel:
    axes: np.ndarray  # rows u, h, e3
    base: np.ndarray  # left-ventricular base centre (on the valve plane)
    length: float  # base to apex
    radius: float  # left-ventricular outer radius at the base
    lv: Egg
    rv: Egg
    la: Egg
    ra: Egg
    root: Egg
    rvot: Tube
    pulmonary_valve: np.ndarray
    lv_wall: float
    rv_wall: float
    fat: float
    fat_blend: float
    pericardium: float
    pericardium_hu: float

    def point(self, s: np.ndarray | float, phi_deg: np.ndarray | float, rho: np.ndarray | float) -> np.ndarray:
        """World points at long-axis position ``s``, angle ``phi`` and distance ``rho`` from the axis (..., 3)."""
        phi = np.radians(phi_deg)
        s, c, sn, rho = np.broadcast_arrays(np.asarray(s, float), np.cos(phi), np.sin(phi), np.asarray(rho, float))
        u, h, e3 = self.axes
        return (self.base + s[..., None] * u + rho[..., None] * (c[..., None] * h - sn[..., None] * e3))

    def local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Long-axis position, angle (degrees, 0-360) and distance from the axis of world points (n, 3)."""
        rel = points - self.base
        s = rel @ self.axes[0]
        a, b = rel @ self.axes[1], rel @ self.axes[2]
        return s, np.degrees(np.arctan2(-b, a)) % 360.0, np.hypot(a, b)

    def fields(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> HeartFields:
        """Distances to every chamber at broadcastable coordinates (see ``sdf``)."""
        return HeartFields(self.lv.distance(x, y, z), self.rv.distance(x, y, z), self.rvot.distance(x, y, z),
                           self.la.distance(x, y, z), self.ra.distance(x, y, z), self.root.distance(x, y, z))

    def fat_surface(self, f: HeartFields) -> np.ndarray:
        """Signed distance to the outer surface of the epicardial fat."""
        k = self.fat_blend
        return smin(smin(smin(f.ventricles, f.la, k), f.ra, k), f.root, k) - self.fat

    def sac(self, points: np.ndarray) -> np.ndarray:
        """Signed distance of world points (n, 3) to the outside of the pericardium."""
        f = self.fields(points[:, 0], points[:, 1], points[:, 2])
        return self.fat_surface(f) - self.pericardium

    def myocardium(self, points: np.ndarray) -> np.ndarray:
        f = self.fields(points[:, 0], points[:, 1], points[:, 2])
        return f.myocardium

    def bounds(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """A box (lo, hi) holding the whole pericardial sac, grown by ``margin``."""
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for egg in (self.lv, self.rv, self.la, self.ra, self.root):
            ext = egg.extent()
            lo, hi = np.minimum(lo, egg.center - ext), np.maximum(hi, egg.center + ext)
        lo = np.minimum(lo, self.rvot.extent_lo())
        hi = np.maximum(hi, self.rvot.extent_hi())
        grow = self.fat + self.pericardium + margin
        return lo - grow, hi + grow

    def paint(self, img: np.ndarray, X: np.ndarray, Y: np.ndarray, z: float, body: Body, width: float) -> None:
        """Pericardium, epicardial fat, myocardium and blood pools on one plane crop (in place)."""
        f = self.fields(X, Y, z)
        fat = self.fat_surface(f)
        if float(fat.min()) > self.pericardium + width:
            return
        paint(img, coverage(fat - self.pericardium, width), self.pericardium_hu)
        paint(img, coverage(fat, width), body.fat_hu)
        paint(img, coverage(f.myocardium, width), body.myocardium_hu)
        blood = body.blood_hu
        paint(img, coverage(f.lv + self.lv_wall, width), blood)
        paint(img, coverage(smax(f.rv + self.rv_wall, -f.lv, 2.0), width), blood)
        paint(img, coverage(f.rvot + self.rv_wall, width), blood)
        paint(img, coverage(f.la + 2.5, width), blood)
        paint(img, coverage(f.ra + 2.5, width), blood)
        paint(img, coverage(f.root + 2.0, width), blood)


def build_heart(h: Heart, base: np.ndarray, scale: float) -> HeartModel:
    """The chambers for pose ``h`` with the left-ventricular base centre at ``base``."""
    axes = pose_axes(h.azimuth, h.elevation, h.roll)
    ref = pose_axes(*_REFERENCE_POSE)
    turn = axes.T @ ref  # patient-axis offsets of the reference pose -> this pose

    def at(offset: tuple[float, float, float]) -> np.ndarray:
        return base + scale * (turn @ np.asarray(offset))

    u, hh, e3 = axes
    length, radius = h.lv_length * scale, h.lv_radius * scale
    lv = Egg(base.copy(), axes, np.array([length, radius, 0.95 * radius]), h.taper, cut=-2.0)
    rv_off = 0.55 * radius + 7.0 * h.rv_scale
    rv = Egg(base + 0.05 * length * u + rv_off * hh + 2.0 * e3, axes,
             np.array([0.8 * length, 0.62 * radius * h.rv_scale, 1.12 * radius * h.rv_scale]), 0.3 * h.taper + 0.1,
             cut=-0.05 * length - 2.0)
    atrial_axes = turn.T  # rows: the patient axes of the reference pose, turned
    la = Egg(at(_LA), atrial_axes, scale * h.la_scale * np.asarray(_LA_SEMI))
    ra = Egg(at(_RA), atrial_axes, scale * h.ra_scale * np.asarray(_RA_SEMI))
    root = Egg(at(_ROOT), np.eye(3), np.full(3, h.root_radius))
    pv = at(_PULMONARY_VALVE)
    rvot_start = base + 0.15 * length * u + rv_off * hh - 0.45 * radius * e3
    rvot = Tube(np.stack([rvot_start, 0.5 * (rvot_start + pv) - 4.0 * e3, pv]),
                np.array([15.0, 14.0, 12.5]) * min(scale, 1.1))
    # Over the free walls the fat is thinner than the drawn thickness (but deep enough to hold the coronary
    # arteries); the wide blend fills the grooves.
    return HeartModel(axes, base, length, radius, lv, rv, la, ra, root, rvot, pv, h.lv_wall * scale ** 0.5,
                      4.0, max(0.5 * h.epicardial_fat, 3.2), h.fat_blend + h.epicardial_fat, h.pericardium_mm,
                      h.pericardium_hu)


def shell_points(model: HeartModel, step: float = 4.0) -> np.ndarray:
    """Points within ``step`` inside the pericardial sac's surface (n, 3)."""
    lo, hi = model.bounds(2.0)
    axes = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    d = model.sac(grid)
    return grid[(d < 0) & (d > -step)]


def place_heart(h: Heart, chest: Chest) -> HeartModel:
    """The heart at its drawn position, moved as little as needed to fit the chest.

    The aortic root goes ``shift_x`` from the body's midline and
    ``root_below_carina`` below the carina; the heart is then put as far
    forward as the chest wall allows (2 mm inside the pleural cavity), and
    kept clear of the spine, the oesophagus and the descending aorta behind
    it.  Where no position fits (a shallow chest), the heart turns further
    to the left, moves left, and only then is made smaller, as hearts in
    shallow chests do.
    """
    b = chest.body
    root_target = np.array([b.centre_x + h.shift_x, b.centre_y, b.carina_z - h.root_below_carina])
    sx, sy, sr = chest.spine
    (dx_a, dy_a), (ex, ey, er) = chest.desc, chest.esophagus
    dys = np.arange(-90.0, 90.0, 2.5)
    best: tuple[int, Heart, np.ndarray, float] | None = None
    for turn, shrink in _ATTEMPTS:
        pose = replace(h, azimuth=min(h.azimuth + turn, 75.0))
        turn_axes = pose_axes(pose.azimuth, pose.elevation, pose.roll).T @ pose_axes(*_REFERENCE_POSE)
        ref_root = turn_axes @ np.asarray(_ROOT)
        scale = h.scale * shrink
        base = root_target - scale * ref_root
        pts = shell_points(build_heart(pose, base, scale), 5.0)
        for dx in (0.0, 6.0, 12.0, -6.0, 18.0, 24.0, 30.0):
            x = pts[None, :, 0] + dx
            y = pts[None, :, 1] + dys[:, None]
            bad = ~chest.inside_thorax(x, y, 2.0)
            bad |= np.hypot(x - sx, y - sy) <= sr + 6.0
            bad |= np.hypot(x - dx_a, y - dy_a) <= h.desc_radius + 6.0
            bad |= np.hypot(x - ex, y - ey) <= er + 1.0
            count = bad.sum(axis=1)
            i = int(np.argmin(count))  # the most anterior of the best positions
            if best is None or count[i] < best[0]:
                best = (int(count[i]), pose, base + np.array([dx, float(dys[i]), 0.0]), scale)
            if count[i] == 0:
                return build_heart(pose, base + np.array([dx, float(dys[i]), 0.0]), scale)
    assert best is not None  # no position fits: the one with fewest points outside their room
    return build_heart(best[1], best[2], best[3])


# (extra azimuth in degrees, size factor) tried in order until the heart fits.
_ATTEMPTS = ((0.0, 1.0), (8.0, 1.0), (16.0, 1.0), (16.0, 0.94), (24.0, 0.94), (24.0, 0.88), (24.0, 0.83),
             (24.0, 0.78), (24.0, 0.73), (24.0, 0.69))
