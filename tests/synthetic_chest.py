"""A tiny analytic chest for the model tests: body, two lungs, a heart between them, labelled calcium.

Not the phantom generator (``training.phantom``): just enough anatomy for the
heart localiser to work on, with a few calcified spots whose artery labels are
known, so preprocessing, inference and the training loop can be tested without
generating full phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chest:
    hu: np.ndarray  # float32 (slices, rows, cols), ascending z
    labels: np.ndarray  # uint8, same shape
    pixel_spacing_mm: tuple[float, float]
    increment_mm: float
    heart_centre: tuple[float, float]  # (row, col) in pixels
    heart_slices: tuple[int, int]  # slices the heart spans (z0, z1)


def make_chest(n_slices: int = 60, size: int = 128, spacing: float = 2.0, increment: float = 3.0,
               heart_offset: tuple[int, int] = (4, 6), seed: int = 0) -> Chest:
    """An elliptical body with lungs left and right of a heart ellipsoid, three labelled calcium spots.

    ``heart_offset`` moves the heart off the image centre (rows, cols in pixels),
    so a fixed centre crop would miss the tested centre.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:n_slices, :size, :size].astype(np.float32)
    cy, cx = size / 2.0, size / 2.0
    hu = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    body = ((yy - cy) / (0.38 * size)) ** 2 + ((xx - cx) / (0.45 * size)) ** 2 < 1.0
    hu[body] = 40.0
    # Lungs fill the upper two thirds of the scan; the liver dome (soft tissue) the rest.
    chest_z = zz > n_slices / 3.0
    for side in (-1.0, 1.0):
        lung = ((yy - cy) / (0.28 * size)) ** 2 + ((xx - cx - side * 0.24 * size) / (0.16 * size)) ** 2 < 1.0
        hu[lung & chest_z] = -850.0
    hy, hx = cy + heart_offset[0], cx + heart_offset[1]
    hz = n_slices * 0.6
    heart = (((zz - hz) * increment / 55.0) ** 2 + ((yy - hy) * spacing / 45.0) ** 2
             + ((xx - hx) * spacing / 42.0) ** 2) < 1.0
    hu[heart] = 45.0
    hu[:, int(cy + 0.3 * size) : int(cy + 0.3 * size) + 6, int(cx) - 4 : int(cx) + 4] = 700.0  # spine (not coronary)
    hu += rng.normal(0.0, 8.0, hu.shape).astype(np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    # Calcium spots of 3x3 pixels on the heart surface, one per artery 1-3 (RCA left empty).
    for artery, (dz, dy, dx) in zip((1, 2, 3), ((4, -10, 2), (0, -14, -8), (-4, -6, 14))):
        z, y, x = int(hz + dz), int(hy + dy), int(hx + dx)
        hu[z, y - 1 : y + 2, x - 1 : x + 2] = 420.0
        labels[z, y - 1 : y + 2, x - 1 : x + 2] = artery
    heart_z = np.nonzero(heart.any(axis=(1, 2)))[0]
    return Chest(hu=hu, labels=labels, pixel_spacing_mm=(spacing, spacing), increment_mm=increment,
                 heart_centre=(hy, hx), heart_slices=(int(heart_z.min()), int(heart_z.max()) + 1))
