"""The reconstructed voxel grid of a case: field of view, centre and z coverage, from the placed heart.

Positions are written as Decimal Strings, so every value here is chosen to
survive that exactly: the pixel spacing is a whole-millimetre field of view
over 512 (as scanners set it) rounded to 6 significant digits, the in-plane
origin is rounded to 0.01 mm, and the first slice lies on a 0.25 mm grid,
which every increment used (3, 2.5, 2, 1.5, 1.25 mm) keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom_b.chest import Chest
from training.phantom_b.heart import HeartModel, shell_points
from training.phantom_b.params import CaseParams

MATRIX = 512
MIN_SLICES = 40
MAX_SLICES = 120


def decimal_string_value(value: float) -> float:
    """``value`` as it reads back from the Decimal String the CT writer makes of it (6 significant digits)."""
    return float(f"{value:.6g}")


@dataclass(frozen=True)
class Grid:
    """The voxel grid of the reconstructed series, ascending z."""

    n_slices: int
    matrix: int
    pixel_mm: float  # square pixels, exactly the value written as Pixel Spacing
    thickness_mm: float
    increment_mm: float
    origin_mm: tuple[float, float, float]  # centre of the first pixel of the lowest slice

    def xs(self) -> np.ndarray:
        return (self.origin_mm[0] + self.pixel_mm * np.arange(self.matrix)).astype(np.float32)

    def ys(self) -> np.ndarray:
        return (self.origin_mm[1] + self.pixel_mm * np.arange(self.matrix)).astype(np.float32)

    def zs(self) -> np.ndarray:
        return self.origin_mm[2] + self.increment_mm * np.arange(self.n_slices)

    @property
    def fov_mm(self) -> float:
        return self.matrix * self.pixel_mm

    def index(self, point: np.ndarray) -> tuple[float, float, float]:
        """Fractional (slice, row, col) of a patient point."""
        x0, y0, z0 = self.origin_mm
        return ((point[2] - z0) / self.increment_mm, (point[1] - y0) / self.pixel_mm, (point[0] - x0) / self.pixel_mm)


def scan_grid(params: CaseParams, chest: Chest, heart: HeartModel) -> Grid:
    """Field of view, reconstruction centre and z coverage for the case's heart."""
    s, b = params.scan, params.body
    shell = shell_points(heart, 3.0)
    lo, hi = shell.min(axis=0), shell.max(axis=0)
    root_z = float(heart.root.center[2])
    top = root_z + 12.0 + s.top_margin if s.tight else b.carina_z + s.top_margin
    bottom = float(lo[2]) - s.bottom_margin
    inc = s.increment_mm
    n = int(np.floor((top - bottom) / inc)) + 1
    if n > MAX_SLICES:  # keep the bottom (below the apex); lower the top, but not below the root
        n = max(MAX_SLICES, int(np.floor((root_z + 15.0 - bottom) / inc)) + 1)
    if n < MIN_SLICES:
        bottom -= 0.5 * (MIN_SLICES - n) * inc
        n = MIN_SLICES
    z0 = float(np.round(bottom * 4.0) / 4.0)

    # The field of view holds the whole heart with at least 10 mm to spare.
    span = float(np.max(hi[:2] - lo[:2])) + 30.0
    fov = max(s.fov_mm, span * 1.15)
    pixel = decimal_string_value(round(fov) / MATRIX)
    fov = pixel * MATRIX
    heart_c = 0.5 * (lo[:2] + hi[:2])
    body_c = np.array([b.centre_x, b.centre_y])
    if fov < 2.0 * b.half_width * 0.9:  # a cardiac field of view: centred on the heart
        centre = heart_c + np.asarray(s.centre_jitter)
    else:
        centre = 0.5 * (heart_c + body_c) + np.asarray(s.centre_jitter)
    # Move towards the heart until all of it lies within the reconstruction circle.
    for _ in range(20):
        if np.max(np.hypot(shell[:, 0] - centre[0], shell[:, 1] - centre[1])) <= 0.5 * fov - 8.0:
            break
        centre = centre + 0.25 * (heart_c - centre)
    x0 = decimal_string_value(round(float(centre[0]) - 0.5 * fov + 0.5 * pixel, 2))
    y0 = decimal_string_value(round(float(centre[1]) - 0.5 * fov + 0.5 * pixel, 2))
    return Grid(n, MATRIX, pixel, s.thickness_mm, inc, (x0, y0, z0))
