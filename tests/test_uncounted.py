"""Calcium the score does not count but the heart crop holds: found, measured, flagged, bone left out.

Volumes with analytically known answers: a QRM-like calcification phantom (cylindrical
inserts of 200-800 HU in a water-like body, no arteries, no lungs: the heart localiser
falls back to the body centre), and the small analytic chest of ``synthetic_chest``
(lungs, heart, spine, labelled calcium).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage
from synthetic_chest import make_chest

from pipeline.model.preprocess import CropBox, Preprocess, PreprocessConfig
from pipeline.scoring.agatston import ScoringProfile, score_calcium
from pipeline.scoring import uncounted
from pipeline.scoring.uncounted import BONE_MIN_OBJECT_MM3, find_uncounted, needs_review

QRM_SPACING = (0.8, 0.8)
QRM_INCREMENT = 3.0


@dataclass(frozen=True)
class Insert:
    row_mm: float  # from the body centre
    col_mm: float
    diameter_mm: float
    slices: int
    hu: float


# QRM-like: diameters 1, 3, 5 mm at 200, 400 and 800 HU, 20 mm apart around the centre.
QRM_INSERTS = tuple(
    Insert(row_mm=-20.0 + 20.0 * i, col_mm=-20.0 + 20.0 * j, diameter_mm=d, slices=2 if d == 5.0 else 1, hu=hu)
    for i, hu in enumerate((200.0, 400.0, 800.0))
    for j, d in enumerate((1.0, 3.0, 5.0))
)


def qrm_like(inserts: tuple[Insert, ...] = QRM_INSERTS, noise_sd: float = 0.0, size: int = 256,
             n_slices: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """HU of a water-like cylinder (35 HU, radius 90 mm) in air with ``inserts`` on the middle slices,
    and the boolean mask of the insert voxels."""
    hu = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2.0) * QRM_SPACING[0]
    hu[:, yy**2 + xx**2 < 90.0**2] = 35.0
    mask = np.zeros(hu.shape, dtype=bool)
    mid = n_slices // 2
    for ins in inserts:
        disc = (yy - ins.row_mm) ** 2 + (xx - ins.col_mm) ** 2 <= (ins.diameter_mm / 2.0) ** 2
        mask[mid : mid + ins.slices, disc] = True
        hu[mid : mid + ins.slices, disc] = ins.hu
    if noise_sd:
        # Grainy, as CT noise is: white noise blurred in-plane, scaled back to ``noise_sd``.
        grain = ndimage.gaussian_filter(np.random.default_rng(0).normal(0.0, 1.0, hu.shape), sigma=(0, 1.0, 1.0))
        hu += (grain * (noise_sd / grain.std())).astype(np.float32)
    return hu, mask


def expected_counted(inserts: tuple[Insert, ...], size: int = 256) -> tuple[float, float, int]:
    """Volume (mm3), Agatston and count of the inserts of at least 1 mm2 (by hand, not by the scoring code)."""
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2.0) * QRM_SPACING[0]
    pixel = QRM_SPACING[0] * QRM_SPACING[1]
    volume = agatston = 0.0
    n = 0
    for ins in inserts:
        area = np.count_nonzero((yy - ins.row_mm) ** 2 + (xx - ins.col_mm) ** 2 <= (ins.diameter_mm / 2.0) ** 2) * pixel
        if area < 1.0:
            continue  # under the profile's minimum area: not counted, not shown
        weight = 1 if ins.hu < 200 else 2 if ins.hu < 300 else 3 if ins.hu < 400 else 4
        volume += area * ins.slices * QRM_INCREMENT
        agatston += area * weight * ins.slices * (QRM_INCREMENT / 3.0)
        n += 1
    return volume, agatston, n


def heart_box(hu: np.ndarray, spacing: tuple[float, float], increment: float) -> CropBox:
    """The box ``cacnode score --labels`` uses: the heart localiser with the default preprocessing."""
    return Preprocess(PreprocessConfig()).crop_box(hu, spacing, increment)


def test_qrm_like_phantom_scores_zero_but_its_calcium_is_shown_and_flagged() -> None:
    hu, _ = qrm_like()
    labels = np.zeros(hu.shape, dtype=np.uint8)  # no arteries
    profile = ScoringProfile()
    score = score_calcium(hu, labels, QRM_SPACING, QRM_INCREMENT, profile)
    assert score.total.agatston == 0.0 and score.risk_category == "0"
    box = heart_box(hu, QRM_SPACING, QRM_INCREMENT)
    assert not box.found  # no lungs: body centre, every slice
    u = find_uncounted(hu, labels, box, QRM_SPACING, QRM_INCREMENT, profile, score.total.volume_mm3)
    volume, agatston, n = expected_counted(QRM_INSERTS)
    assert n == 6  # the 1 mm inserts are under 1 mm2
    assert u.volume_mm3 == pytest.approx(volume, rel=1e-12)
    assert u.agatston == pytest.approx(agatston, rel=1e-12)
    assert u.components == n and u.bone_objects == 0
    assert u.review and u.review_text is not None and "not attributed" in u.review_text
    assert np.count_nonzero(u.mask()) * QRM_SPACING[0] * QRM_SPACING[1] * QRM_INCREMENT == pytest.approx(volume)


def test_noise_specks_are_not_calcium_but_the_inserts_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 30 HU of grainy noise the 130 HU threshold admits specks of 1 mm2; NOISE_PEAK_SD keeps them out."""
    dense = tuple(ins for ins in QRM_INSERTS if ins.hu >= 400.0)  # 200 HU is within the noise's reach
    hu, _ = qrm_like(inserts=dense, noise_sd=30.0)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    profile = ScoringProfile()
    box = heart_box(hu, QRM_SPACING, QRM_INCREMENT)
    assert find_uncounted(hu, labels, box, QRM_SPACING, QRM_INCREMENT, profile, 0.0).components == 4
    plain, _ = qrm_like(inserts=(), noise_sd=30.0)
    assert find_uncounted(plain, labels, box, QRM_SPACING, QRM_INCREMENT, profile, 0.0).volume_mm3 == 0.0
    # Without the noise rule the same noise is "calcium": the rule is what removes it.
    monkeypatch.setattr(uncounted, "NOISE_PEAK_SD", 0.0)
    assert find_uncounted(plain, labels, box, QRM_SPACING, QRM_INCREMENT, profile, 0.0).components > 10


def test_calcium_outside_the_heart_crop_is_not_shown() -> None:
    far = Insert(row_mm=85.0, col_mm=0.0, diameter_mm=5.0, slices=2, hu=800.0)  # in the body, past the 160 mm crop
    hu, _ = qrm_like(inserts=(far,))
    labels = np.zeros(hu.shape, dtype=np.uint8)
    box = heart_box(hu, QRM_SPACING, QRM_INCREMENT)
    u = find_uncounted(hu, labels, box, QRM_SPACING, QRM_INCREMENT, ScoringProfile(), 0.0)
    assert u.volume_mm3 == 0.0 and not u.review
    whole = CropBox(0, hu.shape[0], 0, 0, hu.shape[1], hu.shape[2], 128.0, 128.0, False)
    assert find_uncounted(hu, labels, whole, QRM_SPACING, QRM_INCREMENT, ScoringProfile(), 0.0).components == 1


def test_a_vertebra_like_object_is_bone_and_left_out() -> None:
    hu, _ = qrm_like()
    # A vertebral body: 30 x 30 mm of 700 HU through every slice, inside the heart crop.
    hu[:, 178:216, 110:148] = 700.0
    labels = np.zeros(hu.shape, dtype=np.uint8)
    box = heart_box(hu, QRM_SPACING, QRM_INCREMENT)
    u = find_uncounted(hu, labels, box, QRM_SPACING, QRM_INCREMENT, ScoringProfile(), 0.0)
    volume, _, n = expected_counted(QRM_INSERTS)
    assert u.bone_objects == 1
    assert u.volume_mm3 == pytest.approx(volume, rel=1e-12) and u.components == n
    assert not u.mask()[:, 178:216, 110:148].any()


@pytest.mark.parametrize("fraction, is_bone", [(0.9, False), (1.1, True)])
def test_bone_is_decided_by_the_object_volume(fraction: float, is_bone: bool) -> None:
    """An object just under BONE_MIN_OBJECT_MM3 is shown, just over it is left out."""
    hu, _ = qrm_like(inserts=())
    pixel = QRM_SPACING[0] * QRM_SPACING[1]
    slices = 6
    side = round(float(np.sqrt(fraction * BONE_MIN_OBJECT_MM3 / (slices * QRM_INCREMENT * pixel))))
    assert (side * side * slices * QRM_INCREMENT * pixel < BONE_MIN_OBJECT_MM3) == (not is_bone)
    hu[10 : 10 + slices, 120 : 120 + side, 120 : 120 + side] = 500.0
    labels = np.zeros(hu.shape, dtype=np.uint8)
    u = find_uncounted(hu, labels, heart_box(hu, QRM_SPACING, QRM_INCREMENT), QRM_SPACING, QRM_INCREMENT,
                       ScoringProfile(), 0.0)  # fmt: skip
    assert (u.bone_objects == 1) == is_bone
    assert (u.volume_mm3 == 0.0) == is_bone


def test_normal_chest_with_every_calcium_labelled_has_no_flag() -> None:
    chest = make_chest()
    profile = ScoringProfile()
    score = score_calcium(chest.hu, chest.labels, chest.pixel_spacing_mm, chest.increment_mm, profile)
    assert score.total.agatston > 0
    box = heart_box(chest.hu, chest.pixel_spacing_mm, chest.increment_mm)
    assert box.found
    u = find_uncounted(chest.hu, chest.labels, box, chest.pixel_spacing_mm, chest.increment_mm, profile,
                       score.total.volume_mm3)  # fmt: skip
    assert u.volume_mm3 == 0.0 and u.components == 0 and not u.review and u.review_text is None
    assert u.bone_objects == 1  # the spine reaches the crop and is left out


def test_the_same_chest_without_labels_shows_each_spot() -> None:
    chest = make_chest()
    labels = np.zeros(chest.labels.shape, dtype=np.uint8)
    box = heart_box(chest.hu, chest.pixel_spacing_mm, chest.increment_mm)
    u = find_uncounted(chest.hu, labels, box, chest.pixel_spacing_mm, chest.increment_mm, ScoringProfile(), 0.0)
    spot_mm3 = 9 * chest.pixel_spacing_mm[0] * chest.pixel_spacing_mm[1] * chest.increment_mm
    assert u.components == 3 and u.volume_mm3 == pytest.approx(3 * spot_mm3)
    assert np.array_equal(u.mask(), chest.labels > 0)
    assert u.review


def test_review_rule_is_the_larger_of_the_minimum_and_the_ratio() -> None:
    profile = ScoringProfile(uncounted_review_min_mm3=10.0, uncounted_review_ratio=0.5)
    assert not needs_review(0.0, 0.0, profile)
    assert not needs_review(9.9, 0.0, profile)
    assert needs_review(10.0, 0.0, profile)
    assert not needs_review(40.0, 100.0, profile)  # under half the counted volume
    assert needs_review(50.0, 100.0, profile)
    with pytest.raises(ValueError, match="uncounted_review"):
        ScoringProfile(uncounted_review_min_mm3=0.0)
