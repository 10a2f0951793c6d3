"""Preprocessing: heart localisation, crop, grid, normalisation and the candidate majority rule."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.candidates import labels_from_predictions
from pipeline.model.heart import HeartLocatorSettings, locate_heart
from pipeline.model.preprocess import (AIR_HU, N_INPUT_CHANNELS, CropBox, NormaliseIntensity, Preprocess,
                                 PreprocessConfig, extract, labels_to_grid)
from synthetic_chest import make_chest


def test_heart_is_found_between_the_lungs_not_at_the_image_centre() -> None:
    c = make_chest(heart_offset=(2, 10))
    where = locate_heart(c.hu, c.pixel_spacing_mm, c.increment_mm, HeartLocatorSettings())
    assert where.found
    mm = c.pixel_spacing_mm[0]
    assert abs(where.centre_col - c.heart_centre[1]) * mm <= 10.0
    assert abs(where.centre_row - c.heart_centre[0]) * mm <= 10.0
    # The kept slab holds the whole heart but drops slices far from it (the liver dome below).
    assert where.z0 <= c.heart_slices[0] and where.z1 >= c.heart_slices[1]
    assert where.z0 > 0


def test_volume_without_lungs_falls_back_to_body_centre_and_all_slices() -> None:
    hu = np.full((20, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 10:50, 20:60] = 40.0
    where = locate_heart(hu, (2.0, 2.0), 3.0, HeartLocatorSettings())
    assert not where.found
    assert (where.z0, where.z1) == (0, 20)
    assert where.centre_col == pytest.approx(39.0, abs=3.0)


def test_preprocess_output_channels_and_candidate_cells() -> None:
    c = make_chest()
    config = PreprocessConfig(grid=32, crop_mm=160.0)
    prepared = Preprocess(config)(c.hu, c.pixel_spacing_mm, c.increment_mm)
    box = prepared.box
    assert prepared.image.shape == (N_INPUT_CHANNELS, box.z1 - box.z0, 32, 32)
    assert prepared.image.dtype == np.float32
    assert box.rows == box.cols == 80  # 160 mm at 2 mm pixels
    assert np.isin(prepared.image[2], (0.0, 1.0)).all()
    # Every labelled calcium voxel lies in a candidate cell.
    crop_labels = extract(c.labels, box, 0)
    target = labels_to_grid(crop_labels, 32, N_CLASSES)
    assert target.max() == 3
    assert np.all(prepared.image[2][target > 0] == 1.0)
    lo, hi = config.clip
    assert prepared.image[:2].min() >= lo and prepared.image[:2].max() <= hi


def test_intensity_normalisation_removes_a_scanner_offset() -> None:
    c = make_chest()
    pre = Preprocess(PreprocessConfig(grid=32))
    a = pre(c.hu, c.pixel_spacing_mm, c.increment_mm).image
    b = pre(c.hu + 30.0, c.pixel_spacing_mm, c.increment_mm).image
    # Soft tissue (the mean channel near 0) moves by far less than 30 HU / scale.
    tissue = np.abs(a[0]) < 0.5
    assert np.median(np.abs(a[0][tissue] - b[0][tissue])) < 0.05
    peak = NormaliseIntensity((-100.0, 200.0), 200.0, (-5.0, 8.0)).tissue_peak(c.hu)
    assert peak == pytest.approx(45.0, abs=10.0)


def test_extract_pads_outside_the_image_with_air() -> None:
    volume = np.zeros((2, 10, 10), dtype=np.float32)
    box = CropBox(z0=0, z1=2, row0=-3, col0=5, rows=8, cols=8, centre_row=1.0, centre_col=9.0, found=True)
    out = extract(volume, box, AIR_HU)
    assert out.shape == (2, 8, 8)
    assert (out[:, :3] == AIR_HU).all() and (out[:, :, 5:] == AIR_HU).all()
    assert (out[:, 3:, :5] == 0.0).all()


def test_labels_to_grid_keeps_a_one_voxel_lesion() -> None:
    labels = np.zeros((1, 64, 64), dtype=np.uint8)
    labels[0, 10, 20] = 4
    target = labels_to_grid(labels, 16, N_CLASSES)
    assert target[0, 10 // 4, 20 // 4] == 4 and np.count_nonzero(target) == 1


def test_candidate_majority_rule() -> None:
    hu = np.zeros((1, 8, 12), dtype=np.float32)
    hu[0, 1:3, 1:3] = 300.0  # candidate A, 4 voxels
    hu[0, 5:7, 1:3] = 300.0  # candidate B, 4 voxels
    hu[0, 1:4, 6:9] = 300.0  # candidate C, 9 voxels
    predicted = np.zeros_like(hu, dtype=np.uint8)
    predicted[0, 1:3, 1:3] = [[2, 2], [2, 0]]  # A: 3 of 4 coronary -> whole candidate LAD
    predicted[0, 5, 1:3] = 3  # B: 2 of 4, a tie: not a majority -> dropped
    predicted[0, 1:4, 6:9] = [[1, 1, 4], [4, 4, 1], [0, 0, 0]]  # C: 6 of 9 coronary, LM 3 vs RCA 3 -> LM
    predicted[0, 0, 11] = 2  # predicted coronary below the threshold: never labelled
    labels = labels_from_predictions(hu, predicted, 130.0, 8)
    assert (labels[0, 1:3, 1:3] == 2).all()
    assert (labels[0, 5:7, 1:3] == 0).all()
    assert (labels[0, 1:4, 6:9] == 1).all()
    assert labels[0, 0, 11] == 0
    assert np.count_nonzero(labels) == 4 + 9


@pytest.mark.parametrize("seed", range(4))
def test_distances_within_the_grown_box_equal_those_over_the_whole_volume(seed: int) -> None:
    """The heart locator measures depth only inside the mask's box (one voxel larger where it can be)."""
    from scipy import ndimage

    from pipeline.model.heart import _grown_box

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((12, 30, 26)) < 0.55, iterations=1)
    mask[:, :, :3] = False  # some sides leave room for the grown voxel, others (rows) touch the edge
    mask[:2] = False
    sampling = (3.0, 1.7, 2.3)
    box = _grown_box(mask)
    assert box[0].start == 1 and box[2].start == 2
    boxed = np.zeros(mask.shape)
    boxed[box] = ndimage.distance_transform_edt(mask[box], sampling=sampling)
    np.testing.assert_allclose(boxed, ndimage.distance_transform_edt(mask, sampling=sampling), rtol=1e-12)
    cores = boxed >= 0.5 * boxed.max()
    near = ndimage.distance_transform_edt(~cores[box], sampling=sampling)
    np.testing.assert_allclose(near, ndimage.distance_transform_edt(~cores, sampling=sampling)[box], rtol=1e-12)
