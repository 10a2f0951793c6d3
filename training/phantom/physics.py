"""Image formation: partial volume of the small dense objects, scanner blur, correlated noise, spikes.

The large organs are painted with an analytic edge ramp (``shapes``); the
calcifications, whose size is comparable to a voxel, are rendered exactly:
each is sampled on a fine grid inside a small box (3x3 in-plane subsamples per
pixel, 6 samples across the slice thickness, a rectangular slice sensitivity
profile), averaged, then blurred in-plane by the scanner's Gaussian point
spread function.  This is what makes a faint sub-millimetre plaque peak below
130 HU on one slice and above it on the next, as in real scans.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.phantom.coronary import Blob
from training.phantom.params import Grid

_SUB_XY = 3
_SUB_Z = 6
# A voxel belongs to a calcification when it raises the voxel by at least this much:
# the whole bright spot a reader would outline, not only its core.
LABEL_MIN_CONTRIBUTION_HU = 15.0


def blob_coverage(grid: Grid, blob: Blob, psf_sigma_mm: float) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """The blurred volume fraction of ``blob`` in each voxel of its box (slices, rows, cols)."""
    ext = np.sqrt(((blob.axes * blob.semi[:, None]) ** 2).sum(axis=0))
    s, t = grid.spacing_mm, grid.thickness_mm
    margin = 3.0 * psf_sigma_mm + s
    x0, y0, z0 = grid.origin_mm
    c = blob.center
    i0, i1 = int(np.floor((c[0] - ext[0] - margin - x0) / s)), int(np.ceil((c[0] + ext[0] + margin - x0) / s)) + 1
    j0, j1 = int(np.floor((c[1] - ext[1] - margin - y0) / s)), int(np.ceil((c[1] + ext[1] + margin - y0) / s)) + 1
    k0 = int(np.ceil((c[2] - ext[2] - 0.5 * t - z0) / grid.increment_mm))
    k1 = int(np.floor((c[2] + ext[2] + 0.5 * t - z0) / grid.increment_mm)) + 1
    i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
    i1, j1, k1 = min(i1, grid.cols), min(j1, grid.rows), min(k1, grid.n_slices)
    if i0 >= i1 or j0 >= j1 or k0 >= k1:
        return None
    sub_xy = ((np.arange(_SUB_XY) + 0.5) / _SUB_XY - 0.5) * s
    sub_z = ((np.arange(_SUB_Z) + 0.5) / _SUB_Z - 0.5) * t
    xs = (x0 + s * np.arange(i0, i1))[:, None] + sub_xy[None, :] - c[0]  # (nx, sx)
    ys = (y0 + s * np.arange(j0, j1))[:, None] + sub_xy[None, :] - c[1]
    zs = (z0 + grid.increment_mm * np.arange(k0, k1))[:, None] + sub_z[None, :] - c[2]
    q = np.zeros((zs.shape[0], _SUB_Z, ys.shape[0], _SUB_XY, xs.shape[0], _SUB_XY), np.float32)
    for a, semi in zip(blob.axes, blob.semi):
        proj = (a[2] * zs[:, :, None, None, None, None] + a[1] * ys[None, None, :, :, None, None]
                + a[0] * xs[None, None, None, None, :, :]) / semi
        q += (proj * proj).astype(np.float32)
    frac = (q <= 1.0).mean(axis=(1, 3, 5), dtype=np.float32)
    sigma_px = psf_sigma_mm / s
    frac = ndimage.gaussian_filter(frac, sigma=(0.0, sigma_px, sigma_px), mode="constant", truncate=3.0)
    return (slice(k0, k1), slice(j0, j1), slice(i0, i1)), frac


def render_blobs(hu: np.ndarray, labels: np.ndarray, distractor: np.ndarray, grid: Grid, blobs: list[Blob],
                 psf_sigma_mm: float) -> None:
    """Blend every blob into ``hu`` (in place), marking plaque labels and distractor voxels."""
    for blob in blobs:
        hit = blob_coverage(grid, blob, psf_sigma_mm)
        if hit is None:
            continue
        box, frac = hit
        region = hu[box]
        contribution = frac * (np.float32(blob.hu) - region)
        region += contribution
        mark = contribution >= LABEL_MIN_CONTRIBUTION_HU
        if blob.label:
            labels[box][mark] = blob.label
        else:
            distractor[box] |= mark


def correlated_noise(shape: tuple[int, int, int], sigma_hu: float, grain_px: float, z_corr: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with standard deviation ``sigma_hu`` (float32).

    ``grain_px`` is the in-plane correlation (Gaussian sigma in pixels, the
    kernel's noise texture); ``z_corr`` the sigma along z in slices, non-zero
    for overlapping reconstructions whose neighbouring slices share raw data.
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    gain = 1.0
    for axis, sigma in ((1, grain_px), (2, grain_px), (0, z_corr)):
        if sigma > 0.05:
            ndimage.gaussian_filter1d(noise, sigma, axis=axis, output=noise, mode="wrap", truncate=2.5)
            delta = np.zeros(int(8 * sigma) * 2 + 1)
            delta[delta.size // 2] = 1.0
            gain *= float(np.sqrt((ndimage.gaussian_filter1d(delta, sigma, truncate=2.5) ** 2).sum()))
    noise *= np.float32(sigma_hu / gain)
    return noise


def add_spikes(hu: np.ndarray, labels: np.ndarray, distractor: np.ndarray, centers_vox: list[tuple[int, int, int]],
               rng: np.random.Generator) -> None:
    """Isolated bright noise spikes of one to three pixels, never on or next to a plaque."""
    for k, j, i in centers_vox:
        if not (0 <= k < hu.shape[0] and 2 <= j < hu.shape[1] - 3 and 2 <= i < hu.shape[2] - 3):
            continue
        if labels[k, j - 2:j + 4, i - 2:i + 4].any():
            continue
        n = int(rng.integers(1, 4))
        pix = [(j, i), (j, i + 1), (j + 1, i)][:n]
        amp = np.float32(rng.uniform(250.0, 700.0))
        for jj, ii in pix:
            hu[k, jj, ii] += amp
            distractor[k, jj, ii] = True
