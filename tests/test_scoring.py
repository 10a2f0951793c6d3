"""The scoring conventions of calcium-scoring.md, each checked against a hand computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scoring.agatston import ScoringProfile, cac_drs, risk_category, score_calcium

LM, LAD, LCX, RCA = 1, 2, 3, 4
DEFAULT = ScoringProfile()


def blank(shape=(3, 10, 10)) -> tuple[np.ndarray, np.ndarray]:
    return np.full(shape, -50.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8)


def score(hu, labels, spacing=(1.0, 1.0), increment=3.0, profile=DEFAULT):
    return score_calcium(hu, labels, spacing, increment, profile)


def test_single_lesion_area_times_weight():
    hu, labels = blank()
    hu[1, 2:5, 2:4] = 250.0  # 6 pixels of 0.5 x 0.6 mm = 1.8 mm2, peak 250 -> weight 2
    labels[1, 2:5, 2:4] = LAD
    s = score(hu, labels, spacing=(0.5, 0.6), increment=3.0)
    assert s.arteries["LAD"].agatston == pytest.approx(1.8 * 2)
    assert s.total.agatston == pytest.approx(3.6)
    assert s.arteries["LAD"].volume_mm3 == pytest.approx(6 * 0.5 * 0.6 * 3.0)
    assert s.arteries["LAD"].lesions == 1
    assert s.arteries["LM"].agatston == 0 and s.arteries["LM"].lesions == 0


@pytest.mark.parametrize(
    ("n_pixels", "kept"),
    [(3, False), (4, True)],  # at 0.5 mm: 3 px = 0.75 mm2 (dropped), 4 px = exactly 1.0 mm2 (kept)
)
def test_minimum_area_boundary_is_inclusive(n_pixels, kept):
    hu, labels = blank()
    cells = [(1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, 2)][:n_pixels]
    for c in cells:
        hu[c] = 150.0
        labels[c] = RCA
    s = score(hu, labels, spacing=(0.5, 0.5))
    assert s.arteries["RCA"].agatston == pytest.approx(1.0 if kept else 0.0)
    assert s.arteries["RCA"].volume_mm3 == pytest.approx(n_pixels * 0.25 * 3.0 if kept else 0.0)
    assert s.arteries["RCA"].lesions == (1 if kept else 0)


def test_area_at_limit_survives_float_rounding():
    # 100 px at 0.1 mm multiplies to 1.0000000000000002 or 0.9999999999999999 in floats.
    hu, labels = blank((1, 20, 20))
    hu[0, 0:10, 0:10] = 150.0
    labels[0, 0:10, 0:10] = LM
    s = score(hu, labels, spacing=(0.1, 0.1))
    assert s.arteries["LM"].agatston == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("peak", "weight"),
    [(129.9, 0), (130.0, 1), (199.0, 1), (200.0, 2), (299.0, 2), (300.0, 3), (399.0, 3), (400.0, 4), (1500.0, 4)],
)
def test_peak_density_weights_at_boundaries(peak, weight):
    hu, labels = blank()
    hu[1, 3:5, 3:5] = 135.0  # 4 mm2 of calcium
    hu[1, 3, 3] = peak  # the peak decides the weight of the whole component
    labels[1, 3:5, 3:5] = LCX
    s = score(hu, labels)
    area = 4.0 if peak >= 130 else 3.0  # a 129.9 voxel is not calcium: 3 px remain
    expected_weight = weight if peak >= 130 else 1
    assert s.arteries["LCX"].agatston == pytest.approx(area * expected_weight)


def test_threshold_is_inclusive_at_130():
    hu, labels = blank()
    hu[1, 3:5, 3:5] = 130.0
    labels[1, 3:5, 3:5] = LAD
    assert score(hu, labels).total.agatston == pytest.approx(4.0)
    hu[1, 3:5, 3:5] = 129.99
    assert score(hu, labels).total.agatston == 0.0


def test_eight_versus_four_connectivity():
    # Two pixels touching at a corner: one component with 8-connectivity, two with 4.
    hu, labels = blank()
    hu[1, 2, 2], hu[1, 3, 3] = 150.0, 450.0
    labels[1, 2, 2] = labels[1, 3, 3] = LAD
    eight = score(hu, labels)
    four = score(hu, labels, profile=dataclasses.replace(DEFAULT, connectivity=4))
    assert eight.total.agatston == pytest.approx(2.0 * 4)  # 2 mm2, peak 450 -> 4
    assert four.total.agatston == pytest.approx(1.0 * 1 + 1.0 * 4)  # each 1 mm2 with its own peak
    # In 3-D both are one lesion (26-connectivity) whatever the 2-D rule.
    assert eight.total.lesions == 1 and four.total.lesions == 1


def test_four_connectivity_drops_corner_fragments_below_minimum_area():
    hu, labels = blank()
    hu[1, 2, 2], hu[1, 3, 3] = 150.0, 450.0
    labels[1, 2, 2] = labels[1, 3, 3] = LAD
    four = score(hu, labels, spacing=(0.8, 0.8), profile=dataclasses.replace(DEFAULT, connectivity=4))
    assert four.total.agatston == 0.0  # each fragment is 0.64 mm2 < 1 mm2
    eight = score(hu, labels, spacing=(0.8, 0.8))
    assert eight.total.agatston == pytest.approx(1.28 * 4)


@pytest.mark.parametrize("increment", [3.0, 2.5, 1.5])
def test_increment_scaling(increment):
    hu, labels = blank((4, 10, 10))
    for k in (1, 2):  # the same 4 mm2, peak 320 lesion on two slices
        hu[k, 4:6, 4:6] = 320.0
        labels[k, 4:6, 4:6] = RCA
    s = score(hu, labels, increment=increment)
    assert s.total.agatston == pytest.approx(2 * 4.0 * 3 * increment / 3.0)
    assert s.total.volume_mm3 == pytest.approx(8 * 1.0 * increment)  # volume is not normalised
    no_norm = score(hu, labels, increment=increment, profile=dataclasses.replace(DEFAULT, normalise_increment=False))
    assert no_norm.total.agatston == pytest.approx(24.0)


def test_component_split_across_two_labels_scores_each_part_separately():
    hu, labels = blank()
    hu[1, 2:4, 2:6] = 250.0
    hu[1, 2, 5] = 410.0
    labels[1, 2:4, 2:4] = LM  # left half LM: 4 mm2, peak 250 -> 2
    labels[1, 2:4, 4:6] = LAD  # right half LAD: 4 mm2, peak 410 -> 4
    s = score(hu, labels)
    assert s.arteries["LM"].agatston == pytest.approx(8.0)
    assert s.arteries["LAD"].agatston == pytest.approx(16.0)
    assert s.total.agatston == pytest.approx(24.0)
    assert s.total.lesions == 2
    assert s.cac_drs == "A1/N2"


def test_unlabelled_calcium_is_not_scored():
    hu, labels = blank()
    hu[1, 2:6, 2:6] = 900.0  # bone or aortic calcium: no coronary label
    s = score(hu, labels)
    assert s.total.agatston == 0.0 and s.total.volume_mm3 == 0.0
    assert s.risk_category == "0" and s.cac_drs == "A0"


def test_zero_calcium():
    hu, labels = blank()
    s = score(hu, labels)
    assert s.total.agatston == 0.0 and s.total.lesions == 0
    assert s.risk_category == "0" and s.cac_drs == "A0"
    assert s.total.mass_mg is None


def test_lesion_count_uses_3d_26_connectivity():
    hu, labels = blank((5, 10, 10))
    hu[0, 1:3, 1:3] = 200.0
    hu[1, 3:5, 3:5] = 200.0  # touches the first only at a corner across slices: same lesion
    hu[3, 1:3, 1:3] = 200.0  # one slice gap: a second lesion
    labels[hu > 0] = LAD
    s = score(hu, labels)
    assert s.arteries["LAD"].lesions == 2
    assert s.arteries["LAD"].volume_mm3 == pytest.approx(12 * 3.0)


def test_volume_counts_only_kept_components():
    hu, labels = blank()
    hu[1, 1:3, 1:3] = 200.0  # 4 mm2 kept
    hu[1, 7, 7] = 500.0  # 0.25 mm2 at 0.5 mm... here 1 px of 1 mm2 at spacing 1 is kept; use 0.9 spacing
    labels[hu > 0] = LCX
    s = score(hu, labels, spacing=(0.9, 0.9))
    assert s.arteries["LCX"].volume_mm3 == pytest.approx(4 * 0.81 * 3.0)
    assert s.arteries["LCX"].lesions == 1


def test_mass_with_calibration_factor():
    hu, labels = blank()
    hu[1, 2:4, 2:4] = [[200.0, 300.0], [400.0, 500.0]]
    labels[1, 2:4, 2:4] = RCA
    profile = dataclasses.replace(DEFAULT, mass_calibration_mg_per_mm3_hu=0.001)
    s = score(hu, labels, spacing=(0.5, 0.5), increment=2.5, profile=profile)
    # c * volume * mean HU = 0.001 * (4 * 0.25 * 2.5) * 350
    assert s.arteries["RCA"].mass_mg == pytest.approx(0.001 * 2.5 * 350.0)
    assert s.total.mass_mg == pytest.approx(0.875)
    assert s.arteries["LM"].mass_mg == 0.0


def test_minimum_area_in_pixels():
    hu, labels = blank()
    hu[1, 2, 2:5] = 150.0  # 3 pixels
    labels[1, 2, 2:5] = LAD
    profile = dataclasses.replace(DEFAULT, min_area=3, min_area_unit="pixels")
    assert score(hu, labels, spacing=(0.3, 0.3), profile=profile).total.agatston == pytest.approx(3 * 0.09)
    profile = dataclasses.replace(DEFAULT, min_area=4, min_area_unit="pixels")
    assert score(hu, labels, spacing=(0.3, 0.3), profile=profile).total.agatston == 0.0


def test_low_kv_profile_uses_its_threshold_and_cutoffs():
    hu, labels = blank()
    hu[1, 2:4, 2:4] = 140.0  # below the 145 HU low-kV threshold
    hu[1, 6:8, 6:8] = 333.0  # peak 333: weight 2 with cut-offs 222/334/446
    labels[hu > 0] = LAD
    profile = ScoringProfile(name="100kv-grani-2018", threshold_hu=145.0, weight_cutoffs_hu=(222.0, 334.0, 446.0))
    assert score(hu, labels, profile=profile).total.agatston == pytest.approx(4.0 * 2)


@pytest.mark.parametrize(
    ("total", "category"),
    [(0.0, "0"), (1e-9, "1-10"), (10.0, "1-10"), (10.0001, "11-100"), (100.0, "11-100"),
     (100.0001, "101-400"), (400.0, "101-400"), (400.0001, ">400")],
)
def test_risk_category_boundaries(total, category):
    assert risk_category(total) == category


@pytest.mark.parametrize(
    ("total", "arteries", "drs"),
    [(0.0, [0, 0, 0, 0], "A0"), (0.5, [0, 0.5, 0, 0], "A1/N1"), (99.999, [50, 49.999, 0, 0], "A1/N2"),
     (100.0, [25, 25, 25, 25], "A2/N4"), (299.999, [0, 299.999, 0, 0], "A2/N1"), (300.0, [100, 100, 100, 0], "A3/N3")],
)
def test_cac_drs_boundaries_and_vessel_count(total, arteries, drs):
    assert cac_drs(total, arteries) == drs


def test_categories_use_the_unrounded_total():
    # 10.4 rounds to 10 but is above 10: category 11-100.
    hu, labels = blank((1, 10, 10))
    hu[0, 0:2, 0:2] = 150.0  # 4 px
    labels[0, 0:2, 0:2] = LAD
    s = score(hu, labels, spacing=(1.0, 1.0), increment=7.8)  # 4 * 7.8 / 3 = 10.4
    assert s.total.agatston == pytest.approx(10.4)
    assert s.risk_category == "11-100"


def test_rejects_mismatched_shapes_and_unknown_labels():
    hu, labels = blank()
    with pytest.raises(ValueError, match="same 3-D shape"):
        score_calcium(hu, labels[:2], (1.0, 1.0), 3.0, DEFAULT)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match="outside 0-4"):
        score_calcium(hu, labels, (1.0, 1.0), 3.0, DEFAULT)


def test_profile_validation():
    with pytest.raises(ValueError, match="connectivity"):
        ScoringProfile(connectivity=6)
    with pytest.raises(ValueError, match="ascending"):
        ScoringProfile(weight_cutoffs_hu=(300.0, 200.0, 400.0))


volumes = st.tuples(st.integers(1, 4), st.integers(3, 8), st.integers(3, 8)).flatmap(
    lambda shape: st.tuples(
        st.lists(st.sampled_from([-100.0, 135.0, 210.0, 330.0, 800.0]), min_size=int(np.prod(shape)),
                 max_size=int(np.prod(shape))).map(lambda v: np.asarray(v, dtype=np.float32).reshape(shape)),
        st.lists(st.integers(0, 4), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
            lambda v: np.asarray(v, dtype=np.uint8).reshape(shape)),
    )
)


@settings(max_examples=40, deadline=None)
@given(volumes, st.sampled_from([0.4, 0.7, 1.0]), st.sampled_from([1.5, 2.5, 3.0]))
def test_score_is_sum_over_slices_and_arteries(data, spacing, increment):
    """Agatston and volume are sums over slices; the total is the sum over arteries."""
    hu, labels = data
    whole = score(hu, labels, spacing=(spacing, spacing), increment=increment)
    per_slice = [score(hu[k:k + 1], labels[k:k + 1], spacing=(spacing, spacing), increment=increment)
                 for k in range(hu.shape[0])]
    assert whole.total.agatston == pytest.approx(sum(s.total.agatston for s in per_slice))
    assert whole.total.volume_mm3 == pytest.approx(sum(s.total.volume_mm3 for s in per_slice))
    assert whole.total.agatston == pytest.approx(sum(a.agatston for a in whole.arteries.values()))
    # Reversing the slice order (a scanner writing head to feet) changes nothing.
    flipped = score(hu[::-1], labels[::-1], spacing=(spacing, spacing), increment=increment)
    assert flipped == whole
