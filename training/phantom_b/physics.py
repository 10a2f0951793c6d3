"""Image formation: slice profile, reconstruction kernel, kernel-shaped noise, streaks.

* Slice sensitivity profile: a rectangle 0.84 x thickness wide smoothed by a
  Gaussian (sigma 0.18 x thickness), so its full width at half maximum is
  about the nominal thickness and it has tails, as helical reconstructions do.
  Every slice is the profile-weighted mean of thinner planes (``ssp_weights``):
  oblique edges step from slice to slice.
* Reconstruction kernel: a point spread function ``(1 + g) G(sigma) -
  g G(2.5 sigma)`` (``g`` > 0 for sharp kernels, whose edges overshoot),
  applied to whole slices in the frequency domain and, with the same discrete
  kernel, to the small boxes of each calcification (``Kernel.blur``): the
  label of a voxel is decided on exactly the blur the image gets.
* Noise: white noise, scaled by a map that grows towards the centre of the body
  (more attenuation, fewer photons), filtered by ``f ** a * MTF(f)`` (the
  ramp filter of back projection, softened for iterative reconstructions by
  ``a`` < 1, times the kernel): smooth kernels give coarse grain, sharp ones
  fine grain.  Overlapping slices share part of their noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.special import erf

_SSP_HALF = 0.42  # half width of the profile's flat part, in thicknesses
_SSP_SIGMA = 0.18
SSP_REACH = _SSP_HALF + 3.0 * _SSP_SIGMA  # beyond this (in thicknesses) a plane adds nothing


def ssp(dz: np.ndarray, thickness: float) -> np.ndarray:
    """Slice sensitivity at ``dz`` mm from the slice centre (unnormalised)."""
    c, s = _SSP_HALF * thickness, _SSP_SIGMA * thickness * np.sqrt(2.0)
    return 0.5 * (erf((dz + c) / s) - erf((dz - c) / s))


def ssp_weights(z_slices: np.ndarray, z_planes: np.ndarray, thickness: float) -> np.ndarray:
    """Weights (slices, planes): each slice as the profile-weighted mean of the planes."""
    w = ssp(z_planes[None, :] - z_slices[:, None], thickness)
    w[np.abs(z_planes[None, :] - z_slices[:, None]) > SSP_REACH * thickness] = 0.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _gauss(sigma_px: float, radius: int) -> np.ndarray:
    i = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (i / sigma_px) ** 2)
    return k / k.sum()


def _dft(kernel: np.ndarray, n: int) -> np.ndarray:
    """The n-point DFT of a centred symmetric kernel (real)."""
    radius = kernel.size // 2
    freq = np.arange(n)
    out = np.full(n, kernel[radius])
    for i in range(1, radius + 1):
        out += 2.0 * kernel[radius + i] * np.cos(2.0 * np.pi * freq * i / n)
    return out


@dataclass(frozen=True)
class Kernel:
    """The discrete in-plane point spread function of the reconstruction."""

    narrow: np.ndarray  # 1-D Gaussian taps
    wide: np.ndarray
    gain: float

    @property
    def radius(self) -> int:
        return self.narrow.size // 2

    def mtf(self, n: int) -> np.ndarray:
        """Transfer function on the ``rfft2`` grid of an n x n slice (float32)."""
        n1, w1 = _dft(self.narrow, n), _dft(self.wide, n)
        cols = n // 2 + 1
        return ((1.0 + self.gain) * n1[:, None] * n1[None, :cols]
                - self.gain * w1[:, None] * w1[None, :cols]).astype(np.float32)

    def blur(self, box: np.ndarray) -> np.ndarray:
        """The PSF applied in-plane to a (slices, rows, cols) box that is zero beyond its edges."""
        def sep(k: np.ndarray) -> np.ndarray:
            out = ndimage.convolve1d(box, k.astype(np.float32), axis=1, mode="constant")
            return ndimage.convolve1d(out, k.astype(np.float32), axis=2, mode="constant")

        if self.gain == 0.0:
            return sep(self.narrow)
        return np.float32(1.0 + self.gain) * sep(self.narrow) - np.float32(self.gain) * sep(self.wide)


def make_kernel(sigma_mm: float, gain: float, pixel_mm: float) -> Kernel:
    sigma = sigma_mm / pixel_mm
    radius = int(np.ceil(3.5 * 2.5 * sigma)) if gain > 0 else int(np.ceil(3.5 * sigma))
    return Kernel(_gauss(sigma, radius), _gauss(2.5 * sigma, radius), float(gain))


def noise_filter(n: int, pixel_mm: float, kernel: Kernel, exponent: float) -> np.ndarray:
    """Amplitude filter on the ``rfft2`` grid that turns unit white noise into unit-variance CT noise."""
    fy = np.fft.fftfreq(n, d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(n, d=pixel_mm)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    amplitude = (f ** (0.5 * exponent)) * np.abs(kernel.mtf(n))
    # Variance of the filtered noise = mean of |H|^2 over the full spectrum (Parseval); the half
    # spectrum holds the columns 1 .. n/2 - 1 twice.
    weight = np.full(fx.shape, 2.0)
    weight[0, 0] = 1.0
    if n % 2 == 0:
        weight[0, -1] = 1.0
    var = float((weight * amplitude**2).sum() / (n * n))
    return (amplitude / np.sqrt(var)).astype(np.float32)


def reconstruct(volume: np.ndarray, kernel: Kernel, noise_hu: float, noise_map: np.ndarray, nps_exponent: float,
                pixel_mm: float, z_correlation: float, rng: np.random.Generator) -> None:
    """Blur every slice by the kernel and add kernel-shaped noise (in place on float32 ``volume``).

    ``noise_map`` (rows, cols) scales the noise before filtering (1 in the
    mediastinum); ``z_correlation`` is the correlation of neighbouring slices'
    noise (overlapping reconstructions).
    """
    n = volume.shape[1]
    mtf = kernel.mtf(n)
    h = noise_filter(n, pixel_mm, kernel, nps_exponent) * np.float32(noise_hu)
    fresh = np.float32(np.sqrt(1.0 - z_correlation**2))
    white = None
    for k in range(volume.shape[0]):
        e = rng.standard_normal((n, n), dtype=np.float32)
        white = e if white is None else fresh * e + np.float32(z_correlation) * white
        spectrum = scipy.fft.rfft2(volume[k])
        spectrum *= mtf
        spectrum += scipy.fft.rfft2(white * noise_map) * h
        volume[k] = scipy.fft.irfft2(spectrum, s=(n, n))


@dataclass(frozen=True)
class Streak:
    """Thin lines through a dense object: a dark core between two fainter bright flanks."""

    center: np.ndarray  # (3,) mm
    z_half: float  # the object's half height: slices it spans carry the streaks
    angles: tuple[float, ...]  # radians
    amplitude: float  # HU of the dark core
    length_mm: float  # decay length along the line


def add_streaks(volume: np.ndarray, origin: tuple[float, float, float], pixel_mm: float, increment_mm: float,
                thickness_mm: float, streaks: list[Streak]) -> None:
    """Add every streak to the slices its object reaches (in place)."""
    x0, y0, z0 = origin
    n_slices, rows, cols = volume.shape
    for st in streaks:
        reach = 3.0 * st.length_mm
        c0 = max(0, int((st.center[0] - reach - x0) / pixel_mm))
        c1 = min(cols, int((st.center[0] + reach - x0) / pixel_mm) + 1)
        r0 = max(0, int((st.center[1] - reach - y0) / pixel_mm))
        r1 = min(rows, int((st.center[1] + reach - y0) / pixel_mm) + 1)
        k0 = max(0, int(np.ceil((st.center[2] - st.z_half - 0.5 * thickness_mm - z0) / increment_mm)))
        k1 = min(n_slices, int(np.floor((st.center[2] + st.z_half + 0.5 * thickness_mm - z0) / increment_mm)) + 1)
        if c0 >= c1 or r0 >= r1 or k0 >= k1:
            continue
        dx = (x0 + pixel_mm * np.arange(c0, c1) - st.center[0])[None, :]
        dy = (y0 + pixel_mm * np.arange(r0, r1) - st.center[1])[:, None]
        dist = np.sqrt(dx * dx + dy * dy)
        pattern = np.zeros((r1 - r0, c1 - c0), np.float32)
        w = 0.6 * pixel_mm + 0.2  # line width (mm)
        for a in st.angles:
            across = -np.sin(a) * dx + np.cos(a) * dy
            profile = -np.exp(-0.5 * (across / w) ** 2) + 0.45 * np.exp(-0.5 * ((np.abs(across) - 2.2 * w) / w) ** 2)
            pattern += (st.amplitude * profile * np.exp(-dist / st.length_mm)).astype(np.float32)
        # Not inside the object itself (a few mm): the streaks start at its edge.
        pattern *= np.clip((dist - 2.0) / 3.0, 0.0, 1.0).astype(np.float32)
        volume[k0:k1, r0:r1, c0:c1] += pattern[None]


def noise_map(body_depth_mm: np.ndarray, half_depth: float, heart_value: float) -> np.ndarray:
    """Noise scale per pixel from the depth inside the body (0 outside), normalised to 1 at the heart."""
    m = 0.55 + 0.45 * np.clip(body_depth_mm / (0.6 * half_depth), 0.0, 1.0)
    ref = 0.55 + 0.45 * np.clip(heart_value / (0.6 * half_depth), 0.0, 1.0)
    return (m / ref).astype(np.float32)
