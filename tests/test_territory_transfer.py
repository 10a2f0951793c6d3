"""The territory-transfer study: its k-NN vote and its placing of lesions round the true aortic root."""

from __future__ import annotations

import numpy as np
import pytest

from training.territory_transfer import (
    LesionPositions,
    lesion_positions,
    nearest_artery,
    share_right,
    transfer_table,
)


def test_nearest_artery_takes_the_majority_of_the_nearest_and_breaks_ties_by_distance() -> None:
    known = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [50, 0, 0], [51, 0, 0]])
    artery = np.array([1, 1, 2, 4, 4])
    asked = np.array([[0.5, 0, 0], [49.0, 0, 0], [1.9, 0, 0]])
    assert nearest_artery(known, artery, asked, k=3).tolist() == [1, 4, 1]
    # k = 2 at x = 1.9: LAD (2) at 0.1 mm and LM (1) at 0.9 mm tie; the nearer wins.
    assert nearest_artery(known, artery, asked[2:], k=2).tolist() == [2]


def test_share_right_weighs_by_volume() -> None:
    assert share_right(np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([1, 1, 2])) == pytest.approx(0.5)


def test_transfer_table_is_perfect_for_identical_well_separated_layouts() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0], [40, 0, 0], [0, 40, 0], [0, 0, 40]])
    artery = np.repeat(np.arange(1, 5), 10)
    points = centres[artery - 1] + rng.normal(0, 2, (40, 3))
    same = LesionPositions(artery, np.ones(40, np.int64), points, points)
    shifted = LesionPositions(artery, np.ones(40, np.int64), points, points + [0, 30.0, 0])  # b's root frame moved
    table = transfer_table({"a": same, "b": shifted}, k=3)
    assert table[("centre", "a", "b")] == 1.0
    assert table[("root", "a", "b")] < 0.8


@pytest.mark.parametrize("family", ["a", "b"])
def test_left_main_lesions_lie_next_to_the_true_aortic_root(family: str) -> None:
    # Seed 60001 has left-main calcium in both families: a left main is about 1 cm long from an ostium on the
    # root (radius about 15 mm), so its lesions lie within 30 mm of the root's centre.  A wrong mapping from
    # generator to voxel coordinates would put them anywhere in the chest.
    found = lesion_positions(family, 60001)  # type: ignore[arg-type]
    left_main = found.from_root[found.artery == 1]
    assert len(left_main) >= 1
    assert np.all(np.linalg.norm(left_main, axis=1) < 30.0)
    assert len(found.artery) == len(found.voxels) == len(found.from_centre)
