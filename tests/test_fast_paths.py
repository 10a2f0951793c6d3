"""The fast forms of whole-array operations used at inference give exactly the numbers of the plain ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.model.candidate_features import _object_features, _PerCandidate
from pipeline.model.heart import _SLICE_2D, _fill_holes_per_slice, _first_to_last
from pipeline.model.noise import noise_sd_hu
from pipeline.model.preprocess import adaptive_max
from pipeline.scoring.agatston import in_plane_structure
from pipeline.scoring.sparse import flat_nonzero


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.float32, bool])
def test_flat_nonzero_equals_numpy(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for shape in [(3, 7, 5), (4, 8, 8), (1, 1, 1), (2, 0, 3), (5, 9, 11)]:
        a = (rng.random(shape) < 0.1).astype(dtype)
        np.testing.assert_array_equal(flat_nonzero(a), np.flatnonzero(a))
        np.testing.assert_array_equal(flat_nonzero(a[:, ::2]), np.flatnonzero(a[:, ::2]))  # not contiguous
    empty = np.zeros((4, 6, 8), dtype=dtype)
    assert flat_nonzero(empty).size == 0


@pytest.mark.parametrize("size", [244, 168, 112, 57, 301])
def test_adaptive_max_equals_torch(size: int) -> None:
    x = np.random.default_rng(size).normal(0, 300, (3, size, size + 5)).astype(np.float32)
    expected = F.adaptive_max_pool2d(torch.from_numpy(x)[:, None], (112, 112))[:, 0].numpy()
    np.testing.assert_array_equal(adaptive_max(x, 112), expected)


def test_fill_holes_per_slice_equals_binary_fill_holes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 16, 3))) < rng.uniform(0.2, 0.9)
        np.testing.assert_array_equal(_fill_holes_per_slice(mask),
                                      ndimage.binary_fill_holes(mask, structure=_SLICE_2D))


def _assert_objects_as_a_3d_labelling(hu: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """``_object_features`` of the candidates of ``hu`` against ndimage's 3-D labelling; volumes, z extents."""
    ids, n = ndimage.label(hu >= 130.0, structure=in_plane_structure(connectivity))
    voxels = np.flatnonzero(ids)
    z, r, c = np.unravel_index(voxels, ids.shape)
    which = ids.reshape(-1)[voxels].astype(np.int64) - 1
    spacing, increment = (0.5, 0.7), 2.5
    per_candidate = _PerCandidate(which, np.bincount(which, minlength=n).astype(np.float64))
    ours, volume, z_extent, inplane = _object_features(ids, z, r, c, which, per_candidate, connectivity, spacing,
                                                       increment)
    objects, _ = ndimage.label(ids > 0, structure=np.ones((3, 3, 3), dtype=bool))
    boxes = ndimage.find_objects(objects)
    object_of = np.zeros(n, dtype=np.int64)
    object_of[which] = objects.reshape(-1)[voxels]
    counts = np.bincount(objects.ravel())
    # the same partition of the candidates into objects, numbered differently
    pairs = set(zip(ours.tolist(), object_of.tolist()))
    assert len(pairs) == len(set(ours.tolist())) == len(set(object_of.tolist()))
    for i in range(n):
        box = boxes[object_of[i] - 1]
        extent = [s.stop - s.start for s in box]
        assert volume[i] == counts[object_of[i]] * (spacing[0] * spacing[1] * increment)
        assert z_extent[i] == extent[0] * increment
        assert inplane[i] == np.hypot(extent[1] * spacing[0], extent[2] * spacing[1])
    return volume, z_extent


@pytest.mark.parametrize("connectivity", [4, 8])
def test_object_features_equal_a_whole_volume_labelling(connectivity: int) -> None:
    """Volumes and extents of the 26-connected objects, found by joining the candidates that touch and
    counted over the candidate voxels only, equal those of a 3-D labelling and ndimage.find_objects."""
    rng = np.random.default_rng(connectivity)
    hu = np.where(rng.random((9, 30, 40)) < 0.08, 400.0, 0.0).astype(np.float32)
    volume, z_extent = _assert_objects_as_a_3d_labelling(hu, connectivity)
    assert len(np.unique(volume)) > 3 and np.any(z_extent > 2.5)  # objects of several sizes, across slices


@pytest.mark.parametrize("connectivity", [4, 8])
def test_objects_joined_only_at_a_corner_or_at_the_crop_edge(connectivity: int) -> None:
    hu = np.zeros((3, 8, 8), dtype=np.float32)
    hu[0, 3, 3] = hu[1, 4, 4] = 400.0  # touching only at a corner, across slices
    hu[1, 2, 5] = hu[1, 3, 6] = 400.0  # diagonal within a slice: two candidates if 4-connected
    hu[2, 1, 6] = 400.0  # above the second of those, not above the first
    hu[0, 7, 7] = hu[1, 7, 6] = hu[2, 0, 0] = 400.0  # at the crop's edges and corner
    hu[2, 6, 0] = hu[2, 7, 1] = 400.0  # diagonal at the edge of the top slice
    volume, _ = _assert_objects_as_a_3d_labelling(hu, connectivity)
    # objects of 2, 3, 2, 1 and 2 voxels; per candidate (the diagonal pairs are one if 8-connected):
    assert sorted(volume / (0.5 * 0.7 * 2.5)) == ([1, 2, 2, 2, 2, 2, 2, 3, 3, 3] if connectivity == 4
                                                   else [1, 2, 2, 2, 2, 2, 3, 3])


@pytest.mark.parametrize("axis", [1, 2])
def test_first_to_last_equals_running_maxima_both_ways(axis: int) -> None:
    rng = np.random.default_rng(axis)
    mask = rng.random((5, 13, 11)) < 0.15
    mask[0] = False  # lines without any True stay False
    forward = np.maximum.accumulate(mask, axis=axis)
    backward = np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    np.testing.assert_array_equal(_first_to_last(mask, axis), forward & backward)


def test_pooling_with_torch_as_on_a_gpu_equals_the_cpu_grid() -> None:
    """``ToGrid`` pools with torch on a GPU; the same function on the CPU gives the CPU path's numbers."""
    from pipeline.model.preprocess import ToGrid, pool_with_torch

    crop = np.random.default_rng(5).normal(0, 300, (4, 150, 160)).astype(np.float32)
    on_cpu = ToGrid(48, 130.0)(crop)
    by_torch = pool_with_torch(crop, 48, 130.0, torch.device("cpu"))
    for expected, got in zip(on_cpu, by_torch):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("spacing", [(0.7, 0.6), (0.42, 0.42)])
def test_context_shares_equal_the_whole_crop_filter_bit_for_bit(spacing: tuple[float, float]) -> None:
    """The context columns, from column counts on blocks, equal ``ndimage.uniform_filter`` of the whole
    crop averaged over each candidate's voxels, exactly (candidates at the crop's edges included)."""
    from pipeline.scoring.arteries import N_CLASSES
    from pipeline.model.candidate_features import FEATURE_NAMES, candidate_features
    from pipeline.model.preprocess import CropBox

    rng = np.random.default_rng(7)
    hu = rng.choice([-600.0, -100.0, 40.0, 300.0], size=(5, 90, 80), p=[0.2, 0.35, 0.38, 0.07]).astype(np.float32)
    hu[1, 0:3, 0:4] = 600.0
    hu[3, 86:90, 40:43] = 500.0
    probabilities = rng.dirichlet(np.ones(N_CLASSES), size=(5, 20, 20)).transpose(3, 0, 1, 2).astype(np.float32)
    box = CropBox(0, 5, 0, 0, 90, 80, 45.0, 40.0, True)
    found = candidate_features(hu, probabilities, box, spacing, 2.5, 130.0, 8)
    voxels = np.flatnonzero(found.ids)
    which = found.ids.reshape(-1)[voxels] - 1
    size = np.bincount(which, minlength=found.count).astype(np.float64)
    air, fat, calcium = hu < -250.0, (hu >= -250.0) & (hu < -30.0), hu >= 130.0
    bands = {"fat": fat, "soft": ~(air | fat | calcium), "air": air, "calcium": calcium}
    for prefix, side_mm in (("near", 7.0), ("wide", 17.0)):
        window = (1, max(3, round(side_mm / spacing[0])) | 1, max(3, round(side_mm / spacing[1])) | 1)
        for name, band in bands.items():
            whole = ndimage.uniform_filter(band.astype(np.float32), size=window, mode="nearest")
            expected = np.bincount(which, weights=whole.reshape(-1)[voxels].astype(np.float64),
                                   minlength=found.count) / size
            got = found.features[:, FEATURE_NAMES.index(f"{prefix}_{name}")]
            np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert found.count > 40


def _noise_of_every_block(hu: np.ndarray) -> float:
    """``noise_sd_hu`` written plainly: every block cut out, its mean, minimum and maximum taken."""
    z, rows, cols = hu.shape
    r, c = rows // 8 * 8, cols // 8 * 8
    if not (z and r and c):
        return 0.0
    blocks = hu[:, :r, :c].astype(np.float32).reshape(z, r // 8, 8, c // 8, 8).transpose(0, 1, 3, 2, 4).reshape(-1, 64)
    mean = blocks.mean(axis=1)
    flat = (mean > -150.0) & (mean < 100.0) & (blocks.min(axis=1) > -400.0) & (blocks.max(axis=1) < 400.0)
    return float(np.median(blocks[flat].std(axis=1))) if flat.any() else 0.0


def test_noise_estimate_gathering_only_blocks_in_range_equals_every_block() -> None:
    rng = np.random.default_rng(7)
    volumes = [rng.normal(40, rng.uniform(5, 200), tuple(rng.integers(1, 40, 3))).astype(np.float32) for _ in range(40)]
    volumes += [np.full((2, 16, 24), 40.0, np.float32), np.full((2, 16, 16), -900.0, np.float32),
                np.zeros((0, 8, 8), np.float32), rng.normal(0, 250, (3, 50, 37)).astype(np.int16)]
    volumes += [np.asfortranarray(volumes[0]), volumes[1].transpose(0, 2, 1)]  # not in C order
    edges = rng.normal(40, 10, (1, 8, 24)).astype(np.float32)
    edges[0, 0, 0], edges[0, 7, 15] = -400.0, 400.0  # on the range's bounds: the first two blocks are out
    volumes.append(edges)
    for hu in volumes:
        assert noise_sd_hu(hu) == _noise_of_every_block(hu), hu.shape
    assert noise_sd_hu(edges) == pytest.approx(float(edges[0, :, 16:].std()))  # the third block alone
