"""The series noise estimate (``pipeline.model.noise``) on volumes with known noise."""

from __future__ import annotations

import numpy as np

from pipeline.model.noise import noise_sd_hu


def _chest_like(sd: float, seed: int = 0) -> np.ndarray:
    """Soft tissue (40 HU) with a fat band, a bone block, lung and air outside, plus white noise of SD ``sd``."""
    rng = np.random.default_rng(seed)
    hu = np.full((12, 96, 96), 40.0, dtype=np.float32)
    hu[:, 30:50, :] = -100.0  # fat
    hu[:, 60:80, 10:40] = 900.0  # bone
    hu[:, :, 80:] = -850.0  # lung
    hu[:, :8, :] = -1000.0  # air
    return hu + rng.normal(0.0, sd, hu.shape).astype(np.float32)


def test_the_estimate_is_the_noise_of_the_flat_tissue() -> None:
    for sd in (10.0, 25.0, 40.0):
        estimate = noise_sd_hu(_chest_like(sd))
        # Block SDs of 64 samples are a little under the population SD; edges, bone and lung are left out.
        assert 0.95 * sd < estimate < 1.05 * sd, (sd, estimate)


def test_edges_and_bone_do_not_raise_it() -> None:
    quiet = _chest_like(10.0)
    assert noise_sd_hu(quiet) < 10.5
    # Without noise every flat block has SD 0: only blocks across edges would say otherwise.
    assert noise_sd_hu(_chest_like(0.0)) == 0.0


def test_nothing_flat_means_zero() -> None:
    assert noise_sd_hu(np.full((3, 40, 40), -1000.0, dtype=np.float32)) == 0.0
    assert noise_sd_hu(np.zeros((0, 40, 40), dtype=np.float32)) == 0.0
    assert noise_sd_hu(np.zeros((2, 5, 5), dtype=np.float32)) == 0.0  # smaller than one block
