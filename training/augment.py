"""Training samples from a cached case: CT-specific augmentation, then a patch on the grid.

Augmentations (ranges in :class:`Augmentation`), chosen for what varies between
scanners and patients and never changing anatomy's handedness (no left-right
or antero-posterior flips: they would swap RCA and LCX territories):

- field of view / pixel spacing: the crop side is scaled, so a grid cell covers
  a different number of millimetres;
- heart localisation error: the crop centre is shifted by a few mm;
- intensity: HU gain and offset (calibration drift, kernels) and added
  noise (dose) whose grain is randomised too (white, or blurred in-plane as
  a smooth kernel's noise is), applied *before* the candidate threshold, so
  noise makes spurious candidates as a low-dose scan does;
- reconstruction kernel: an in-plane blur of random width (smooth kernels,
  motion) before the noise;
- rotations about the z axis (heart orientation varies between patients).

The ranges are wider than one scanner or one phantom generator varies: what
stays constant across training images becomes a feature the model relies on,
so everything that is not anatomy is randomised beyond realism (SynthSeg's
lesson; ``shared`` design notes on generalisation).

The position channels are left unrotated: they keep describing where a cell
is relative to the localised heart centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.preprocess import AIR_HU, Preprocess, Prepared, extract, labels_to_grid, local_box
from training.cases import CachedCase


@dataclass(frozen=True)
class Augmentation:
    scale: tuple[float, float] = (0.8, 1.25)
    shift_mm: float = 12.0  # standard deviation of the crop-centre shift (the localiser errs by this much)
    gain: tuple[float, float] = (0.92, 1.08)
    offset_hu: float = 30.0  # +- uniform
    noise_hu: tuple[float, float] = (0.0, 35.0)  # sigma of added noise, uniform
    p_noise_grain: float = 0.5  # share of samples whose added noise is blurred in-plane ...
    noise_grain_px: tuple[float, float] = (0.5, 1.5)  # ... by a Gaussian of this sigma (then rescaled to sigma)
    p_blur: float = 0.4  # share of samples blurred in-plane before the noise (a smoother kernel) ...
    blur_px: tuple[float, float] = (0.3, 1.0)  # ... by a Gaussian of this sigma
    rotate_deg: float = 25.0  # +- uniform about z
    p_lesion_centre: float = 0.6  # patch centred on a labelled cell
    p_candidate_centre: float = 0.3  # ... else on a candidate cell, else anywhere


@dataclass(frozen=True)
class FullCase:
    """A whole heart crop (no augmentation) for validation and scoring."""

    prepared: Prepared
    target: np.ndarray  # (z, grid, grid) uint8
    hu: np.ndarray  # the crop's HU on the original voxel grid
    labels: np.ndarray  # the crop's truth labels on the original voxel grid
    truth_total: float  # whole-volume truth Agatston


def full_case(case: CachedCase, preprocess: Preprocess) -> FullCase:
    """The crop inference would see (scale 1, no shift) with its grid target."""
    box = preprocess.crop(case.where, case.pixel_spacing_mm)
    hu = extract(case.hu, box, AIR_HU)
    labels = extract(case.labels, box, 0)
    prepared = preprocess.from_crop(hu, local_box(box), case.pixel_spacing_mm, case.increment_mm)
    target = labels_to_grid(labels, preprocess.config.grid, N_CLASSES)
    return FullCase(prepared, target, hu, labels, case.truth_agatston["total"])


def training_sample(
    case: CachedCase,
    preprocess: Preprocess,
    aug: Augmentation,
    patch: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented patch: image (C, pz, pc, pc) float32, target (pz, pc, pc) int64, valid mask bool."""
    scale = rng.uniform(*aug.scale)
    shift = tuple(rng.normal(0.0, aug.shift_mm, 2))
    box = preprocess.crop(case.where, case.pixel_spacing_mm, scale=scale, shift_mm=shift)
    hu = extract(case.hu, box, AIR_HU)
    labels = extract(case.labels, box, 0)
    if rng.uniform() < aug.p_blur:
        hu = ndimage.gaussian_filter(hu, (0.0, *[rng.uniform(*aug.blur_px)] * 2))
    hu = hu * rng.uniform(*aug.gain) + rng.uniform(-aug.offset_hu, aug.offset_hu)
    sigma = rng.uniform(*aug.noise_hu)
    if sigma > 0:
        noise = rng.normal(0.0, 1.0, hu.shape).astype(np.float32)
        if rng.uniform() < aug.p_noise_grain:
            noise = ndimage.gaussian_filter(noise, (0.0, *[rng.uniform(*aug.noise_grain_px)] * 2))
            noise /= max(float(noise.std()), 1e-6)
        hu = hu + sigma * noise
    prepared = preprocess.from_crop(hu.astype(np.float32), local_box(box), case.pixel_spacing_mm, case.increment_mm)
    image = prepared.image
    target = labels_to_grid(labels, preprocess.config.grid, N_CLASSES)
    image, target = _rotate(image, target, rng.uniform(-aug.rotate_deg, aug.rotate_deg))
    return _patch(image, target, patch, aug, rng)


def _rotate(image: np.ndarray, target: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the intensity channels (0-2) and the target about the grid centre, in-plane."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float32)
    z, g = image.shape[1], image.shape[2]
    grid = F.affine_grid(theta[None].expand(z, 2, 3), [z, 1, g, g], align_corners=False)
    intensity = torch.from_numpy(np.ascontiguousarray(image[:2].transpose(1, 0, 2, 3)))
    low = float(image[:2].min())
    rotated = F.grid_sample(intensity - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    nearest = torch.from_numpy(np.stack([image[2], target.astype(np.float32)], axis=1))
    rotated_nn = F.grid_sample(nearest, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = image.copy()
    out[:2] = rotated.numpy().transpose(1, 0, 2, 3)
    out[2] = rotated_nn[:, 0].numpy()
    return out, rotated_nn[:, 1].numpy().round().astype(np.uint8)


def _patch(image: np.ndarray, target: np.ndarray, patch: tuple[int, int], aug: Augmentation,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pz, pc = patch
    z, g = image.shape[1], image.shape[2]
    valid = np.ones(target.shape, dtype=bool)
    if z < pz:  # short slab: pad with repeated edge slices, masked out of the loss
        extra = pz - z
        image = np.concatenate([image, np.repeat(image[:, -1:], extra, axis=1)], axis=1)
        target = np.concatenate([target, np.zeros((extra, g, g), target.dtype)])
        valid = np.concatenate([valid, np.zeros((extra, g, g), bool)])
        z = pz
    u = rng.uniform()
    pool = None
    if u < aug.p_lesion_centre:
        pool = np.argwhere(target > 0)
    elif u < aug.p_lesion_centre + aug.p_candidate_centre:
        pool = np.argwhere(image[2] > 0.5)
    if pool is not None and len(pool):
        cz, cr, cc = pool[rng.integers(len(pool))]
    else:
        cz, cr, cc = rng.integers(z), rng.integers(g), rng.integers(g)
    z0 = int(np.clip(cz - pz // 2, 0, z - pz))
    r0 = int(np.clip(cr - pc // 2, 0, g - pc))
    c0 = int(np.clip(cc - pc // 2, 0, g - pc))
    sl = (slice(z0, z0 + pz), slice(r0, r0 + pc), slice(c0, c0 + pc))
    return (
        np.ascontiguousarray(image[(slice(None), *sl)]),
        target[sl].astype(np.int64),
        valid[sl],
    )
