"""Implicit surfaces: approximate signed distances (mm, negative inside) and their blends.

Every primitive takes patient coordinates ``x, y, z`` that broadcast against
each other: a point cloud (three arrays of the same shape) or an axial plane
(``x`` of shape ``(1, nx)``, ``y`` of shape ``(ny, 1)``, ``z`` a float).  The
distances are radial (from the primitive's centre to its surface along the
ray through the point), exact for spheres and close enough for the smooth
organ shapes here; blends use the polynomial smooth minimum, which fills the
creases where two organs meet (the grooves of the heart come from there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def smin(a: Array, b: Array, k: float) -> Array:
    """Smooth union of two distances: ``min(a, b)`` rounded over a blend width ``k`` (mm)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: Array, b: Array, k: float) -> Array:
    """Smooth intersection (``max``) over a blend width ``k``; ``smax(a, -b, k)`` subtracts ``b``."""
    return -smin(-a, -b, k)


def coverage(d: Array, width: float) -> Array:
    """Fraction of a sample cell inside the surface at signed distance ``d``: a ramp one ``width`` wide."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


@dataclass(frozen=True)
class Egg:
    """A tapered ellipsoid, optionally cut by a plane across its long axis.

    ``axes`` rows are the long axis and the two cross axes.  Beyond the centre
    the cross-section shrinks linearly along the long axis, to ``1 - taper``
    at its far end: with the centre on the valve plane and the cut just above
    it, a ventricle is broad at its base and pointed at its apex.  With ``cut`` set, everything at long-axis coordinate
    below ``cut`` (mm from the centre) is removed, with a ``cut_blend`` mm
    rounded edge: the flat valve plane of a ventricle.
    """

    center: Array  # (3,)
    axes: Array  # (3, 3)
    semi: Array  # (3,)
    taper: float = 0.0
    cut: float | None = None
    cut_blend: float = 6.0

    def local(self, x: Array, y: Array, z: Array | float) -> tuple[Array, Array, Array]:
        """Coordinates along the three axes, relative to the centre."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        return tuple(a[0] * dx + a[1] * dy + a[2] * dz for a in self.axes)  # type: ignore[return-value]

    def distance(self, x: Array, y: Array, z: Array | float) -> Array:
        l0, l1, l2 = self.local(x, y, z)
        q0 = l0 / self.semi[0]
        scale = 1.0 - self.taper * np.clip(q0, 0.0, 1.0)
        q1 = l1 / (self.semi[1] * scale)
        q2 = l2 / (self.semi[2] * scale)
        g = np.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
        r = np.sqrt(l0 * l0 + l1 * l1 + l2 * l2)
        d = r - r / np.maximum(g, 1e-6)
        if self.cut is not None:
            d = smax(d, self.cut - l0, self.cut_blend)
        return d

    def extent(self) -> Array:
        """Half extents along patient x, y, z (of the uncut, untapered ellipsoid: an upper bound)."""
        return np.sqrt(((self.axes * self.semi[:, None]) ** 2).sum(axis=0))


@dataclass(frozen=True)
class Tube:
    """A tube of varying radius around a polyline: the union of tapered capsules."""

    points: Array  # (n, 3)
    radii: Array  # (n,)

    def distance(self, x: Array, y: Array, z: Array | float) -> Array:
        best = None
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
            d = segment_distance(x, y, z, a, b, float(ra), float(rb))
            best = d if best is None else np.minimum(best, d)
        assert best is not None
        return best

    def points_distance(self, points: Array) -> Array:
        """``distance`` of points given as one (n, 3) array."""
        return self.distance(points[:, 0], points[:, 1], points[:, 2])

    def extent_lo(self) -> Array:
        return (self.points - self.radii[:, None]).min(axis=0)

    def extent_hi(self) -> Array:
        return (self.points + self.radii[:, None]).max(axis=0)


def segment_distance(x: Array, y: Array, z: Array | float, a: Array, b: Array, ra: float, rb: float) -> Array:
    """Signed distance to the tapered capsule from ``a`` (radius ``ra``) to ``b`` (radius ``rb``)."""
    ab = b - a
    length2 = max(float(ab @ ab), 1e-12)
    dx, dy, dz = x - a[0], y - a[1], z - a[2]
    t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / length2, 0.0, 1.0)
    ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez) - (ra + t * (rb - ra))


def polyline_distance(points: Array, line: Array) -> tuple[Array, Array]:
    """Distance from each of ``points`` (n, 3) to the polyline ``line`` (m, 3), and the nearest vertex index."""
    a, b = line[:-1], line[1:]
    ab = b - a
    rel = points[:, None, :] - a[None]
    t = np.clip(np.einsum("psk,sk->ps", rel, ab) / np.maximum(np.einsum("sk,sk->s", ab, ab), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(rel - t[..., None] * ab[None], axis=2)
    seg = np.argmin(dist, axis=1)
    nearest = seg + np.round(t[np.arange(len(points)), seg]).astype(int)
    return dist[np.arange(len(points)), seg], nearest


def resample(points: Array, step: float) -> Array:
    """The polyline ``points`` (n, 3) resampled at equal arc-length steps of about ``step`` mm."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(cum[-1] / step)) + 1)
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, points[:, i]) for i in range(3)], axis=1)


def arc_length(points: Array) -> Array:
    """Cumulative arc length (mm) at each vertex of the polyline ``points``."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
