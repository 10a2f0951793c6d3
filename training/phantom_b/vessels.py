"""Tubular structures outside the heart: great vessels, airways, oesophagus and lung vessels.

Each is a polyline with radii (a ``TubeLayer``) drawn through a few control
points with a Catmull-Rom spline: the aorta from the root up to an arch and
down beside the spine, the pulmonary trunk from the pulmonary valve to its
bifurcation at the carina and on to both hila, the superior vena cava into
the right atrium, the trachea dividing into the main bronchi.  Lung vessels
grow as random branching walks from the hila.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom_b.chest import AIR_HU, Chest
from training.phantom_b.heart import HeartModel
from training.phantom_b.params import Body, Heart
from training.phantom_b.sdf import resample

ESOPHAGUS_HU = 40.0


@dataclass(frozen=True)
class TubeLayer:
    """A tube: lumen of ``hu`` inside a sleeve ``sleeve_mm`` thick of ``sleeve_hu`` (fat, or an airway wall).

    ``envelope_mm``: how far the mediastinal fat reaches round it; the
    envelopes of neighbouring tubes merge into the fat that fills the
    mediastinum between the lungs.
    """

    name: str
    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)
    hu: float
    sleeve_mm: float
    sleeve_hu: float
    envelope_mm: float = 0.0


def spline(control: list[np.ndarray] | np.ndarray, step: float = 3.0) -> np.ndarray:
    """A Catmull-Rom curve through ``control`` points (k, 3), sampled about every ``step`` mm."""
    c = np.asarray(control, float)
    padded = np.vstack([2 * c[0] - c[1], c, 2 * c[-1] - c[-2]])
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(c[-1:])
    return resample(np.vstack(out), step)


def _radii(points: np.ndarray, knots: list[tuple[float, float]]) -> np.ndarray:
    """Radii interpolated along the arc length fraction from ``(fraction, radius)`` knots."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    f = cum / max(cum[-1], 1e-9)
    k = np.asarray(knots)
    return np.interp(f, k[:, 0], k[:, 1])


@dataclass(frozen=True)
class Mediastinum:
    """The tubes of the mediastinum and where the airways divide."""

    aorta: TubeLayer
    pulmonary: tuple[TubeLayer, ...]
    veins: tuple[TubeLayer, ...]
    airways: tuple[TubeLayer, ...]
    esophagus: TubeLayer
    thymic_fat: TubeLayer  # the anterior mediastinal fat in front of the great vessels
    hila: tuple[np.ndarray, np.ndarray]  # right, left

    def lumens(self) -> tuple[TubeLayer, ...]:
        """Blood-filled tubes painted over the heart (so they leave it through its sac)."""
        return (*self.veins, *self.pulmonary, self.aorta)

    def others(self) -> tuple[TubeLayer, ...]:
        return (self.thymic_fat, self.esophagus, *self.airways)

    def enveloped(self) -> tuple[TubeLayer, ...]:
        """The tubes with a fat envelope."""
        return tuple(t for t in (*self.lumens(), *self.others()) if t.envelope_mm > 0)


def build_mediastinum(chest: Chest, heart: HeartModel, h: Heart, body: Body, z_low: float, z_high: float,
                      rng: np.random.Generator) -> Mediastinum:
    """Great vessels, airways and oesophagus for a heart in place, spanning ``z_low``-``z_high`` and beyond."""
    root = heart.root.center
    dx, dy = chest.desc
    top = max(z_high + 40.0, root[2] + h.arch_rise + 20.0)
    bottom = z_low - 60.0
    arch_z = root[2] + h.arch_rise
    asc_top = root + np.array([-4.0, -6.0, 0.55 * h.arch_rise])
    arch = np.array([0.5 * (root[0] + dx) - 6.0, 0.5 * (root[1] + dy) - 4.0, arch_z])
    aorta_pts = spline([root, asc_top, arch, np.array([dx, dy, arch_z - 30.0]), np.array([dx, dy, arch_z - 70.0]),
                        np.array([dx - 3.0, dy - 2.0, bottom])], 5.0)
    aorta = TubeLayer("aorta", aorta_pts,
                      _radii(aorta_pts, [(0.0, h.root_radius), (0.12, h.asc_radius), (0.35, h.asc_radius * 0.9),
                                         (0.55, h.desc_radius), (1.0, h.desc_radius * 0.95)]),
                      body.blood_hu, 3.0, body.fat_hu, 12.0)

    tx, ty, tr = chest.trachea
    carina = np.array([tx, ty, body.carina_z])
    pv = heart.pulmonary_valve
    bif = np.array([carina[0] + 18.0, carina[1] - 22.0, carina[2] - 4.0])
    trunk = spline([pv, 0.5 * (pv + bif) + np.array([4.0, -4.0, 4.0]), bif], 4.0)
    right_hilum = np.array([chest.body.centre_x - 0.42 * (chest.body.half_width - chest.inner_inset), ty + 8.0,
                            body.carina_z - 18.0])
    left_hilum = np.array([chest.body.centre_x + 0.42 * (chest.body.half_width - chest.inner_inset), ty + 14.0,
                           body.carina_z - 10.0])
    # The right pulmonary artery passes behind the ascending aorta, in front of the carina.
    behind_aorta = np.array([asc_top[0], asc_top[1] + h.asc_radius + 0.7 * h.pa_radius + 3.0, bif[2] - 6.0])
    rpa = spline([bif, behind_aorta, right_hilum], 4.0)
    lpa = spline([bif, bif + np.array([18.0, 16.0, 4.0]), left_hilum], 4.0)
    pulmonary = (
        TubeLayer("pulmonary trunk", trunk, np.full(len(trunk), h.pa_radius), body.blood_hu, 2.5, body.fat_hu, 10.0),
        TubeLayer("right pulmonary artery", rpa, _radii(rpa, [(0.0, 0.75 * h.pa_radius), (1.0, 0.55 * h.pa_radius)]),
                  body.blood_hu, 2.0, body.fat_hu, 4.0),
        TubeLayer("left pulmonary artery", lpa, _radii(lpa, [(0.0, 0.75 * h.pa_radius), (1.0, 0.55 * h.pa_radius)]),
                  body.blood_hu, 2.0, body.fat_hu, 4.0),
    )
    ra = heart.ra.center
    svc_x = asc_top[0] - h.asc_radius - h.svc_radius - 3.0
    svc = spline([np.array([svc_x, asc_top[1] + 8.0, top]), np.array([svc_x, asc_top[1] + 6.0, arch_z - 10.0]),
                  ra + np.array([0.0, 0.0, 10.0])], 5.0)
    ivc = spline([ra - np.array([0.0, 0.0, 10.0]), ra + np.array([-4.0, 8.0, -45.0]),
                  ra + np.array([-6.0, 14.0, -120.0])], 5.0)
    veins = (TubeLayer("superior vena cava", svc, np.full(len(svc), h.svc_radius), body.blood_hu, 2.0, body.fat_hu,
                       10.0),
             TubeLayer("inferior vena cava", ivc, np.full(len(ivc), 1.15 * h.svc_radius), body.blood_hu, 1.0,
                       body.liver_hu))

    trachea = spline([np.array([tx, ty + 4.0, top]), carina], 5.0)
    right_b = spline([carina, right_hilum + np.array([6.0, 4.0, 4.0])], 4.0)
    left_b = spline([carina, 0.5 * (carina + left_hilum) + np.array([0.0, 4.0, 6.0]),
                     left_hilum + np.array([-6.0, 4.0, 2.0])], 4.0)
    wall = body.muscle_hu - 10.0
    airways = (
        TubeLayer("trachea", trachea, np.full(len(trachea), tr), AIR_HU, 2.0, wall, 10.0),
        TubeLayer("right main bronchus", right_b, _radii(right_b, [(0.0, 0.8 * tr), (1.0, 0.55 * tr)]), AIR_HU, 1.8,
                  wall),
        TubeLayer("left main bronchus", left_b, _radii(left_b, [(0.0, 0.75 * tr), (1.0, 0.5 * tr)]), AIR_HU, 1.8,
                  wall),
    )
    ex, ey, er = chest.esophagus
    eso = spline([np.array([ex, ey, top]), np.array([ex + 4.0, ey, root[2] - 30.0]),
                  np.array([ex + 14.0, ey - 10.0, bottom])], 6.0)
    esophagus = TubeLayer("oesophagus", eso, np.full(len(eso), er), ESOPHAGUS_HU, 2.5, body.fat_hu, 9.0)
    front = chest.sternum[1] + chest.sternum[3] + 12.0
    thymus = spline([np.array([root[0] + 2.0, front + 10.0, root[2] + 5.0]),
                     np.array([root[0] - 2.0, front + 12.0, top])], 8.0)
    thymic_fat = TubeLayer("anterior mediastinal fat", thymus, np.full(len(thymus), float(rng.uniform(20.0, 30.0))),
                           body.fat_hu, 0.0, body.fat_hu, 6.0)
    return Mediastinum(aorta, pulmonary, veins, airways, esophagus, thymic_fat, (right_hilum, left_hilum))


def lung_vessels(chest: Chest, mediastinum: Mediastinum, body: Body, rng: np.random.Generator) -> TubeLayer:
    """Pulmonary vessels branching out from both hila, 5 mm to 0.7 mm, kept inside the pleural cavity.

    Returned as one polyline set: consecutive points belong to one segment
    only where ``radii`` is positive at both ends (a zero radius breaks the line).
    """
    points: list[np.ndarray] = []
    radii: list[float] = []

    def grow(p: np.ndarray, d: np.ndarray, r: float, depth: int) -> None:
        chain = [p]
        rs = [r]
        for _ in range(int(rng.integers(4, 9))):
            d = d + rng.normal(0.0, 0.22, 3)
            d /= np.linalg.norm(d)
            q = chain[-1] + d * float(rng.uniform(7.0, 12.0))
            if not chest.point_inside_thorax(float(q[0]), float(q[1]), 6.0):
                break
            chain.append(q)
            r = max(0.7, r * 0.86)
            rs.append(r)
            if depth < 3 and rng.random() < 0.45:
                branch = d + rng.normal(0.0, 0.7, 3)
                grow(q, branch / np.linalg.norm(branch), r * 0.7, depth + 1)
        if len(chain) > 1:
            points.extend(chain)
            radii.extend(rs)
            points.append(chain[-1])
            radii.append(0.0)  # breaks the polyline

    for side, hilum in ((-1.0, mediastinum.hila[0]), (1.0, mediastinum.hila[1])):
        for _ in range(14):
            d = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-0.9, 0.9), rng.uniform(-1.0, 0.7)])
            grow(hilum + np.array([side * 8.0, 0.0, 0.0]), d / np.linalg.norm(d), float(rng.uniform(3.5, 5.0)), 0)
    return TubeLayer("lung vessels", np.asarray(points), np.asarray(radii), body.blood_hu, 0.0, body.blood_hu)
