"""Calcifications rendered exactly: sub-voxel occupancy, slice profile, motion and the kernel's blur.

A calcification is a union of capsules (spheres when both ends meet) of one
material density.  Its occupancy is sampled 4 x 4 times per pixel on layers a
tenth of the slice thickness apart, averaged over the positions it takes
while it moves (RCA and LCX territory), and integrated over the slice
sensitivity profile.  It is composited into the unblurred volume, which the
reconstruction then blurs as a whole; the same discrete kernel applied to the
calcification's own contribution in its box tells which voxels it raises by
at least ``LABEL_MIN_RAISE_HU`` after blur: the bright spot a reader outlines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom_b.geometry import Grid
from training.phantom_b.physics import SSP_REACH, Kernel, ssp

LABEL_MIN_RAISE_HU = 15.0
_SUB = 4  # in-plane samples per pixel and axis
_LAYERS_PER_THICKNESS = 10
_MOTION_STEPS = 5


@dataclass(frozen=True)
class Calcification:
    """Dense material: a coronary plaque (``label`` 1-4) or a distractor (``label`` 0)."""

    kind: str
    label: int
    capsules: np.ndarray  # (n, 7): end a (3), end b (3), radius
    hu: float  # material density (HU at this kVp)
    motion: np.ndarray  # (3,) displacement during the acquisition window; zeros when still
    artery: str = ""  # the centreline a plaque sits on

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.capsules
        r = c[:, 6:7]
        lo = np.minimum(c[:, 0:3], c[:, 3:6]) - r
        hi = np.maximum(c[:, 0:3], c[:, 3:6]) + r
        half = 0.5 * np.abs(self.motion)
        return lo.min(axis=0) - half, hi.max(axis=0) + half

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance from points (n, 3) to the calcification (its still position)."""
        c = self.capsules
        a, b, r = c[:, 0:3], c[:, 3:6], c[:, 6]
        ab = b - a
        rel = points[:, None, :] - a[None]
        t = np.clip(np.einsum("psk,sk->ps", rel, ab) / np.maximum(np.einsum("sk,sk->s", ab, ab), 1e-12), 0.0, 1.0)
        d = np.linalg.norm(rel - t[..., None] * ab[None], axis=2) - r[None]
        return d.min(axis=1)

    @property
    def volume_mm3(self) -> float:
        """Material volume (capsules counted separately; overlaps make this an upper bound)."""
        c = self.capsules
        length = np.linalg.norm(c[:, 3:6] - c[:, 0:3], axis=1)
        r = c[:, 6]
        return float(np.sum(np.pi * r * r * length + 4.0 / 3.0 * np.pi * r**3))


@dataclass(frozen=True)
class Footprint:
    """A calcification's unblurred occupancy on its box of the volume (padded for the kernel)."""

    box: tuple[slice, slice, slice]
    fraction: np.ndarray  # (slices, rows, cols) float32, zero on the padding


def footprint(calc: Calcification, grid: Grid, pad: int) -> Footprint | None:
    """Occupancy of ``calc`` in the voxels of ``grid`` it reaches, or None when it lies outside the scan."""
    lo, hi = calc.bounds()
    x0, y0, z0 = grid.origin_mm
    px, t = grid.pixel_mm, grid.thickness_mm
    c0, c1 = int(np.floor((lo[0] - x0) / px)), int(np.ceil((hi[0] - x0) / px)) + 1
    r0, r1 = int(np.floor((lo[1] - y0) / px)), int(np.ceil((hi[1] - y0) / px)) + 1
    reach = SSP_REACH * t
    k0 = max(int(np.ceil((lo[2] - reach - z0) / grid.increment_mm)), 0)
    k1 = min(int(np.floor((hi[2] + reach - z0) / grid.increment_mm)) + 1, grid.n_slices)
    c0, r0 = max(c0, pad), max(r0, pad)
    c1, r1 = min(c1, grid.matrix - pad), min(r1, grid.matrix - pad)
    if c0 >= c1 or r0 >= r1 or k0 >= k1:
        return None
    dz = t / _LAYERS_PER_THICKNESS
    zl = np.arange(lo[2] + 0.5 * dz, hi[2], dz)
    if zl.size == 0:
        zl = np.array([0.5 * (lo[2] + hi[2])])
    sub = (np.arange(_SUB) + 0.5) / _SUB - 0.5
    xs = x0 + px * (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
    ys = y0 + px * (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
    motion = calc.motion
    steps = _MOTION_STEPS if np.linalg.norm(motion) > 0.2 else 1
    offsets = (np.linspace(0.0, 1.0, steps) - 0.5)[:, None] * motion[None, :] if steps > 1 else np.zeros((1, 3))
    count = np.zeros((zl.size, ys.size, xs.size), np.float32)
    for off in offsets:
        inside = np.zeros(count.shape, bool)
        for cap in calc.capsules:
            a, b, r = cap[0:3] + off, cap[3:6] + off, float(cap[6])
            clo, chi = np.minimum(a, b) - r, np.maximum(a, b) + r
            ix = np.flatnonzero((xs >= clo[0]) & (xs <= chi[0]))
            iy = np.flatnonzero((ys >= clo[1]) & (ys <= chi[1]))
            iz = np.flatnonzero((zl >= clo[2]) & (zl <= chi[2]))
            if ix.size == 0 or iy.size == 0 or iz.size == 0:
                continue
            sx, sy, sz = slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1), slice(iz[0], iz[-1] + 1)
            dx = (xs[sx] - a[0])[None, None, :]
            dy = (ys[sy] - a[1])[None, :, None]
            dzz = (zl[sz] - a[2])[:, None, None]
            ab = b - a
            length2 = max(float(ab @ ab), 1e-12)
            tt = np.clip((dx * ab[0] + dy * ab[1] + dzz * ab[2]) / length2, 0.0, 1.0)
            ex, ey, ez = dx - tt * ab[0], dy - tt * ab[1], dzz - tt * ab[2]
            inside[sz, sy, sx] |= ex * ex + ey * ey + ez * ez <= r * r
        count += inside
    ny, nx = r1 - r0, c1 - c0
    area = count.reshape(zl.size, ny, _SUB, nx, _SUB).mean(axis=(2, 4)) / np.float32(steps)
    # Slice profile: each slice's fraction is the profile-weighted sum of the layers (the profile's integral
    # over an object filling the whole slab is 1).
    z_slices = z0 + grid.increment_mm * np.arange(k0, k1)
    weights = ssp(zl[None, :] - z_slices[:, None], t) * dz / (2 * 0.42 * t)
    frac = (weights.astype(np.float32) @ area.reshape(zl.size, -1)).reshape(k1 - k0, ny, nx)
    out = np.zeros((k1 - k0, ny + 2 * pad, nx + 2 * pad), np.float32)
    out[:, pad:-pad, pad:-pad] = frac
    return Footprint((slice(k0, k1), slice(r0 - pad, r1 + pad), slice(c0 - pad, c1 + pad)), out)


@dataclass(frozen=True)
class Deposit:
    """What compositing one calcification does: its contribution before and after blur, on its box."""

    box: tuple[slice, slice, slice]
    contribution: np.ndarray  # HU added to the unblurred volume
    raised: np.ndarray  # HU it adds after the kernel's blur


def deposit(calc: Calcification, volume: np.ndarray, grid: Grid, kernel: Kernel) -> Deposit | None:
    """The contribution of ``calc`` to ``volume`` (not yet added): material replaces what is there."""
    fp = footprint(calc, grid, kernel.radius + 1)
    if fp is None:
        return None
    contribution = fp.fraction * (np.float32(calc.hu) - volume[fp.box])
    return Deposit(fp.box, contribution, kernel.blur(contribution))


@dataclass(frozen=True)
class Marks:
    """Per voxel: the coronary label, and which voxels a plaque or a distractor visibly raised."""

    labels: np.ndarray  # uint8
    by_plaque: np.ndarray  # bool
    by_distractor: np.ndarray  # bool

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> Marks:
        return cls(np.zeros(shape, np.uint8), np.zeros(shape, bool), np.zeros(shape, bool))

    def commit(self, dep: Deposit, volume: np.ndarray, label: int) -> None:
        """Add a deposit to the volume and mark the voxels it raises by ``LABEL_MIN_RAISE_HU`` (in place)."""
        volume[dep.box] += dep.contribution
        mark = dep.raised >= LABEL_MIN_RAISE_HU
        if label:
            self.labels[dep.box][mark] = label
            self.by_plaque[dep.box] |= mark
        else:
            self.by_distractor[dep.box] |= mark


def agatston_estimate(dep: Deposit, background: np.ndarray, grid: Grid) -> float:
    """Noise-free Agatston of one deposit alone, from the blurred background ``background`` on its box.

    Per slice: the raised voxels at or above 130 HU, if they cover 1 mm2, times
    the density weight of their peak, normalised to 3 mm increments (as the
    node scores).
    """
    hu = background + dep.raised
    counted = (dep.raised >= LABEL_MIN_RAISE_HU) & (hu >= 130.0)
    px2 = grid.pixel_mm**2
    total = 0.0
    for k in range(counted.shape[0]):
        n = int(counted[k].sum())
        if n * px2 < 1.0:
            continue
        peak = float(hu[k][counted[k]].max())
        weight = 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
        total += n * px2 * weight
    return total * grid.increment_mm / 3.0
