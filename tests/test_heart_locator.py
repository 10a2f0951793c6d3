"""The heart localiser on the chests that broke it in the shifted phantoms (sessions 13 and 14).

Each chest is the analytic one of ``synthetic_chest`` with one change: a
table joined to the back, a small left lung, or a small field of view that
cuts the lungs open.  The localiser must still put the heart between the
lungs.  The session-12 localiser put it 21.5 mm off in the first and found no
lungs in the second; the session-13 one put it 20.4 mm off in the third, and
dropped a third of the heart's slices.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.model.heart import HeartLocatorSettings, _body_mask, _open_in_plane, locate_heart
from synthetic_chest import Chest, make_chest


def _centre_error_mm(chest: Chest) -> float:
    """How far the found heart centre is from the true one (the crop is 160 mm wide)."""
    where = locate_heart(chest.hu, chest.pixel_spacing_mm, chest.increment_mm, HeartLocatorSettings())
    assert where.found
    row, col = chest.heart_centre
    return float(np.hypot(where.centre_row - row, where.centre_col - col)) * chest.pixel_spacing_mm[0]


def test_a_table_joined_to_the_back_is_not_body() -> None:
    chest = make_chest(heart_offset=(2, 10))
    hu = chest.hu.copy()
    size = hu.shape[1]
    back = int(size / 2 + 0.38 * size)  # the last row of the body's ellipse
    # Two 4 mm carbon shells round a foam core, wider than the body, the upper one touching
    # the back: the air beside the body above the table must not pass for lung.
    hu[:, back : back + 2, 4:-4] = 250.0
    hu[:, back + 2 : back + 14, 4:-4] = -850.0
    hu[:, back + 14 : back + 16, 4:-4] = 250.0
    assert _centre_error_mm(Chest(hu, chest.labels, chest.pixel_spacing_mm, chest.increment_mm,
                                  chest.heart_centre, chest.heart_slices)) <= 15.0


def test_a_small_left_lung_still_counts() -> None:
    # A heart turned into the left chest leaves a thin, short lung there (under 100 mL in the
    # slab): it is a lung all the same, and without it the heart is looked for inside the right one.
    chest = make_chest(heart_offset=(2, 10))
    hu = chest.hu.copy()
    n, size = hu.shape[0], hu.shape[1]
    zz, yy, xx = np.mgrid[:n, :size, :size]
    cy, cx = size / 2.0, size / 2.0
    left = ((yy - cy) / (0.28 * size)) ** 2 + ((xx - cx - 0.24 * size) / (0.16 * size)) ** 2 < 1.0
    hu[left & (hu < -500)] = 40.0
    small = ((yy - cy) / 14.0) ** 2 + ((xx - cx - 0.36 * size) / 4.0) ** 2 < 1.0
    small &= zz > n / 3.0  # the slices of the chest, as the other lung
    hu[small] = -850.0
    ml = small.sum() * chest.pixel_spacing_mm[0] ** 2 * chest.increment_mm / 1000.0
    assert 20.0 < ml < 100.0
    assert _centre_error_mm(Chest(hu, chest.labels, chest.pixel_spacing_mm, chest.increment_mm,
                                  chest.heart_centre, chest.heart_slices)) <= 15.0


def _small_field(chest: Chest, radius: int) -> Chest:
    """``chest`` reconstructed in a circle of ``radius`` pixels on the heart, padded outside with -3024 HU
    as scanners pad."""
    size = chest.hu.shape[1]
    yy, xx = np.mgrid[:size, :size]
    hu = chest.hu.copy()
    hu[:, (yy - chest.heart_centre[0]) ** 2 + (xx - chest.heart_centre[1]) ** 2 > radius**2] = -3024.0
    return Chest(hu, chest.labels, chest.pixel_spacing_mm, chest.increment_mm, chest.heart_centre,
                 chest.heart_slices)


def test_lungs_cut_open_by_a_small_field_are_lung() -> None:
    # A 128 mm field on the heart of a 230 mm wide chest (shifted phantoms 950025, 1060041, 1070002:
    # 227-238 mm on larger chests): each lung reaches the field's edge above, below and beside, so it
    # is no hole in the body.  It reads as lung (-850 HU), not outside air, and lies within the body.
    assert _centre_error_mm(_small_field(make_chest(heart_offset=(2, 10)), radius=32)) <= 15.0


def test_outside_air_within_the_field_is_not_body() -> None:
    # A field wider than the body: the air around it reaches the padding too, but reads as air.
    chest = make_chest(heart_offset=(2, 10))
    size = chest.hu.shape[1]
    yy, xx = np.mgrid[:size, :size]
    ellipse = ((yy - size / 2.0) / (0.38 * size)) ** 2 + ((xx - size / 2.0) / (0.45 * size)) ** 2
    hu = chest.hu.copy()
    hu[:, (yy - size / 2.0) ** 2 + (xx - size / 2.0) ** 2 > (0.49 * size) ** 2] = -3024.0
    body = _body_mask(hu, HeartLocatorSettings())
    assert body[:, ellipse < 0.95].all()  # the lungs within are body
    assert not body[:, (ellipse > 1.05) & (hu[0] > -1500.0)].any()
    # Lungs cut open by a small field are filled as body when they read as lung.  The same gaps
    # reading as outside air (-1000 HU) are not: only the 16 % that lie between body pixels along a
    # row or a column, as without the fill.
    small = _small_field(chest, radius=32)
    lungs = (small.hu < -500.0) & (small.hu > -1500.0)
    assert _body_mask(small.hu, HeartLocatorSettings())[lungs].all()
    as_air = np.where(lungs, -1000.0, small.hu)
    assert _body_mask(as_air, HeartLocatorSettings())[lungs].mean() < 0.2


def test_a_table_beyond_a_back_cut_by_the_image_is_not_lung() -> None:
    # A body wider than the image (cut at its left and right edges) on a table whose foam core
    # (-850 HU) reaches the image's edges below the back: it reads as lung, but lies past the back.
    chest = make_chest(heart_offset=(2, 10))
    hu = chest.hu[:, :, 12:-12].copy()
    back = int(hu.shape[1] / 2 + 0.38 * hu.shape[1])
    hu[:, back + 2 : back + 4] = 250.0
    hu[:, back + 4 : back + 20] = -850.0
    hu[:, back + 20 : back + 22] = 250.0
    body = _body_mask(hu, HeartLocatorSettings())
    assert not body[:, back + 4 :].any()
    cut = Chest(hu, chest.labels[:, :, 12:-12], chest.pixel_spacing_mm, chest.increment_mm,
                (chest.heart_centre[0], chest.heart_centre[1] - 12), chest.heart_slices)
    assert _centre_error_mm(cut) <= 15.0


@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_in_plane_opening_is_scipys_with_the_edge_and_unknown_pixels_inside(p: float) -> None:
    rng = np.random.default_rng(int(p * 10))
    mask = rng.random((4, 23, 31)) < p
    unknown = ~mask & (rng.random(mask.shape) < 0.2)
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(mask | unknown, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    expected = ndimage.binary_opening(padded, structure=cross)[:, 1:-1, 1:-1] & mask
    assert np.array_equal(_open_in_plane(mask, unknown), expected)
    # Without the edge and the unknown pixels counted inside it is scipy's plain opening.
    plain = ndimage.binary_opening(np.pad(mask, ((0, 0), (1, 1), (1, 1))), structure=cross)[:, 1:-1, 1:-1]
    assert np.array_equal(_open_in_plane(np.pad(mask, ((0, 0), (1, 1), (1, 1))),
                                         np.zeros((4, 25, 33), dtype=bool))[:, 1:-1, 1:-1], plain)
