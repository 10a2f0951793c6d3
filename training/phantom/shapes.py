"""Analytic shapes evaluated slice by slice: signed distances and partial-volume coverage.

The anatomy is painted one axial slice at a time on small crops, so temporary
arrays stay small (fast to allocate) and every shape touches only the pixels
near it.  Coverage is a ramp of the signed distance whose width combines the
scanner blur with the tilt of the surface across the slice thickness: the
analytic counterpart of integrating a sharp edge over the slice sensitivity
profile and the point spread function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom.params import Grid


@dataclass(frozen=True)
class SliceView:
    """One slice of the grid: its z and the x (columns) and y (rows) coordinates."""

    z: float
    x: np.ndarray  # (cols,) float32
    y: np.ndarray  # (rows,) float32
    spacing: float
    thickness: float
    edge: float  # ramp width of an edge normal to the slice (blur + pixel), mm

    def crop(self, xmin: float, xmax: float, ymin: float, ymax: float) -> tuple[slice, slice] | None:
        """Row and column slices of the pixels inside a world-space box, or None when empty."""
        x0, y0, s = float(self.x[0]), float(self.y[0]), self.spacing
        i0 = max(0, int(np.floor((xmin - x0) / s)))
        i1 = min(self.x.size, int(np.ceil((xmax - x0) / s)) + 1)
        j0 = max(0, int(np.floor((ymin - y0) / s)))
        j1 = min(self.y.size, int(np.ceil((ymax - y0) / s)) + 1)
        if i0 >= i1 or j0 >= j1:
            return None
        return slice(j0, j1), slice(i0, i1)


def slice_views(grid: Grid, psf_sigma_mm: float) -> list[SliceView]:
    """The views of every slice of ``grid`` in ascending z."""
    edge = float(np.hypot(2.5 * psf_sigma_mm, grid.spacing_mm))
    xs, ys = grid.xs(), grid.ys()
    return [SliceView(float(z), xs, ys, grid.spacing_mm, grid.thickness_mm, edge) for z in grid.zs()]


def coverage(d: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Fraction of a voxel inside a shape whose signed distance (mm, negative inside) is ``d``."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def paint(img: np.ndarray, alpha: np.ndarray, value: float | np.ndarray) -> None:
    """Blend ``value`` into ``img`` with partial coverage ``alpha`` (in place)."""
    img += alpha * (value - img)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with centre, orthonormal axes (rows of ``axes``) and semi-axes (mm)."""

    center: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3) rows are unit axis directions in patient space
    semi: np.ndarray  # (3,)

    def grown(self, margin: float) -> Ellipsoid:
        """The ellipsoid with every semi-axis longer by ``margin``."""
        return Ellipsoid(self.center, self.axes, self.semi + margin)

    def extent(self) -> np.ndarray:
        """Half extents along patient x, y, z."""
        return np.sqrt(((self.axes * self.semi[:, None]) ** 2).sum(axis=0))

    def coverage_on(self, view: SliceView, margin: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Partial-volume coverage of the (grown) ellipsoid on its crop of one slice."""
        semi = self.semi + margin
        ext = np.sqrt(((self.axes * semi[:, None]) ** 2).sum(axis=0))
        c = self.center
        if abs(view.z - c[2]) > ext[2] + view.thickness:
            return None
        box = view.crop(c[0] - ext[0] - 2, c[0] + ext[0] + 2, c[1] - ext[1] - 2, c[1] + ext[1] + 2)
        if box is None:
            return None
        dx = (view.x[box[1]] - np.float32(c[0]))[None, :]
        dy = (view.y[box[0]] - np.float32(c[1]))[:, None]
        dz = np.float32(view.z - c[2])
        k0 = np.zeros((dy.size, dx.size), np.float32)
        k1 = np.zeros_like(k0)
        nz = np.zeros_like(k0)
        for i in range(3):
            a = self.axes[i].astype(np.float32)
            li = a[0] * dx + a[1] * dy + a[2] * dz
            t = li / np.float32(semi[i])
            k0 += t * t
            t /= np.float32(semi[i])
            k1 += t * t
            nz += t * a[2]
        np.sqrt(k0, out=k0)
        np.sqrt(k1, out=k1)
        k1 += 1e-12
        d = k0 * (k0 - 1.0) / k1
        width = view.edge + view.thickness * np.abs(nz / k1)
        return box, coverage(d, width)


@dataclass(frozen=True)
class Capsule:
    """A tube of constant radius around the segment a-b (mm)."""

    a: np.ndarray  # (3,)
    b: np.ndarray  # (3,)
    radius: float

    def coverage_on(self, view: SliceView, margin: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Partial-volume coverage of the (grown) capsule on its crop of one slice."""
        r = self.radius + margin
        lo = np.minimum(self.a, self.b) - r
        hi = np.maximum(self.a, self.b) + r
        if view.z < lo[2] - view.thickness or view.z > hi[2] + view.thickness:
            return None
        axis = self.b - self.a
        length2 = float(axis @ axis)
        # Only the part of the segment near this slice matters for the crop.
        if abs(axis[2]) > 1e-6:
            t0 = np.clip((view.z - r - view.thickness - self.a[2]) / axis[2], 0, 1)
            t1 = np.clip((view.z + r + view.thickness - self.a[2]) / axis[2], 0, 1)
            p0, p1 = self.a + min(t0, t1) * axis, self.a + max(t0, t1) * axis
            lo = np.minimum(p0, p1) - r
            hi = np.maximum(p0, p1) + r
        box = view.crop(lo[0] - 2, hi[0] + 2, lo[1] - 2, hi[1] + 2)
        if box is None:
            return None
        dx = (view.x[box[1]] - np.float32(self.a[0]))[None, :]
        dy = (view.y[box[0]] - np.float32(self.a[1]))[:, None]
        dz = np.float32(view.z - self.a[2])
        ax = axis.astype(np.float32)
        t = np.clip((ax[0] * dx + ax[1] * dy + ax[2] * dz) / np.float32(length2), 0.0, 1.0)
        ex = dx - t * ax[0]
        ey = dy - t * ax[1]
        ez = dz - t * ax[2]
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        tilt = abs(float(axis[2])) / np.sqrt(length2)
        # Across the slab the wall of a tube is tilted by the complement of its axis tilt.
        width = view.edge + view.thickness * float(np.sqrt(max(0.0, 1.0 - tilt**2)))
        return box, coverage(dist - np.float32(r), width)


def paint_shape(img: np.ndarray, view: SliceView, shape: Ellipsoid | Capsule, value: float,
                margin: float = 0.0) -> None:
    """Paint ``shape`` (grown by ``margin``) with ``value`` into slice image ``img``."""
    hit = shape.coverage_on(view, margin)
    if hit is not None:
        box, alpha = hit
        paint(img[box], alpha, value)
