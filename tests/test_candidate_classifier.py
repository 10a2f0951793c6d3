"""The lesion classifier: candidate features, candidate truth, the stored classifier and its fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.candidate_classifier import FAINT_PEAK_SLOPE, CandidateClassifier, ClassifierConfig, decide, faint
from pipeline.model.candidate_features import (FEATURE_NAMES, N_FEATURES, PATCH_CHANNELS, PATCH_MM, PATCH_SIDE,
                                         PATCH_SLICES, WIDE_CHANNELS, WIDE_MM, WIDE_SIDE, Candidates,
                                         candidate_features, candidate_patches, gated, wide_patches)
from pipeline.model.candidates import majority_classes
from pipeline.model.inference import CandidateDecisions, Labeller, ModelConfig
from pipeline.model.unet import UNet3D, UNetConfig
from pipeline.model.preprocess import AIR_HU, CropBox, PreprocessConfig, extract, local_box
from pipeline.model.weights import ClassifierWeights, WeightsFile, load_weights, new_uid, save_weights
from synthetic_chest import make_chest

FAT, TISSUE = -100.0, 40.0


def _feature(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, FEATURE_NAMES.index(name)]


def _uniform_probabilities(shape: tuple[int, int, int], grid: int) -> np.ndarray:
    p = np.zeros((N_CLASSES, shape[0], grid, grid), dtype=np.float32)
    p[0] = 1.0
    return p


def test_features_tell_fat_from_soft_tissue_and_a_3d_object_from_a_flat_one() -> None:
    """Two plaques of the same area: one in fat spanning 3 slices, one in soft tissue on one slice."""
    hu = np.full((9, 60, 60), FAT, dtype=np.float32)
    hu[:, :, 30:] = TISSUE
    hu[3:6, 20:23, 10:13] = 500.0  # in fat, 3 slices
    hu[4, 30:33, 45:48] = 300.0  # in soft tissue, 1 slice
    box = CropBox(0, 9, 0, 0, 60, 60, centre_row=30.0, centre_col=30.0, found=True)
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 16), box, (1.0, 1.0), 2.0, 130.0, 8)
    assert found.count == 4 and found.features.shape == (4, N_FEATURES)
    assert np.all(np.isfinite(found.features))
    in_fat = np.unique(found.ids[3:6, 20:23, 10:13]) - 1
    in_tissue = int(found.ids[4, 31, 46]) - 1
    near_fat = _feature(found.features, "near_fat")
    assert np.all(near_fat[in_fat] > 0.8) and near_fat[in_tissue] < 0.1
    volume = np.exp(_feature(found.features, "log_object_volume_mm3"))
    assert volume[in_fat] == pytest.approx([27 * 2.0] * 3)  # 3 x 3 pixels x 3 slices x 2 mm
    assert volume[in_tissue] == pytest.approx(9 * 2.0)
    assert _feature(found.features, "object_z_extent_mm")[in_tissue] == pytest.approx(0.2)  # 2 mm / 10
    assert np.exp(_feature(found.features, "log_area_mm2"))[in_tissue] == pytest.approx(9.0)
    assert _feature(found.features, "peak_hu")[in_tissue] == pytest.approx(0.3)
    # position from the heart centre: the soft-tissue plaque is 1.5 px below and 16.5 px right of it
    assert _feature(found.features, "row_mm")[in_tissue] == pytest.approx(0.015)
    assert _feature(found.features, "col_mm")[in_tissue] == pytest.approx(0.165)
    # the picture: left of the fat plaque is fat, the centre box holds the calcium (clipped at 300)
    assert _feature(found.features, "slice_hu_2_0")[in_fat[0]] == pytest.approx(FAT / 300.0, abs=0.01)
    assert _feature(found.features, "slice_hu_2_4")[in_tissue] == pytest.approx(TISSUE / 300.0, abs=0.01)


def test_features_carry_the_network_probabilities_of_the_candidate_cells() -> None:
    hu = np.full((4, 32, 32), FAT, dtype=np.float32)
    hu[1, 4:6, 4:6] = 400.0
    probabilities = _uniform_probabilities(hu.shape, 8)
    probabilities[:, 1, 1, 1] = [0.1, 0.0, 0.9, 0.0, 0.0]  # the cell of rows/cols 4-7
    box = CropBox(0, 4, 0, 0, 32, 32, 16.0, 16.0, True)
    found = candidate_features(hu, probabilities, box, (1.0, 1.0), 3.0, 130.0, 8)
    assert found.count == 1
    assert _feature(found.features, "p_lad")[0] == pytest.approx(0.9)
    assert _feature(found.features, "p_coronary_max")[0] == pytest.approx(0.9)


def test_patches_show_the_candidate_and_its_surroundings_at_a_fixed_field_of_view() -> None:
    hu = np.full((7, 80, 80), FAT, dtype=np.float32)
    hu[:, :, 40:] = TISSUE  # soft tissue on the right half
    hu[3, 20:22, 20:22] = 500.0  # candidate 1 in fat, 2 x 2 pixels
    hu[0, 60:62, 70:72] = 300.0  # candidate 2 on the first slice, near the right edge
    box = CropBox(0, 7, 0, 0, 80, 80, 40.0, 40.0, True)
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 16), box, (0.5, 0.5), 2.5, 130.0, 8)
    assert found.count == 2
    in_fat, at_edge = int(found.ids[3, 20, 20]) - 1, int(found.ids[0, 60, 70]) - 1
    patches = candidate_patches(hu, found, np.array([in_fat, at_edge]), (0.5, 0.5), 2.5)
    assert patches.shape == (2, PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE) and patches.dtype == np.float32
    centre = PATCH_SLICES // 2
    # candidate 1 (2 x 2 voxels of 0.5 mm): its peak at full height, its mean diluted by fat around it,
    # the slices above and below only fat
    assert patches[0, PATCH_SLICES].max() == pytest.approx((500.0 - 40.0) / 300.0)
    middle = slice(PATCH_SIDE // 2 - 2, PATCH_SIDE // 2 + 2)
    assert (FAT - 40.0) / 300.0 < patches[0, centre, middle, middle].max() < (500.0 - 40.0) / 300.0
    assert patches[0, centre + 1, middle, middle].max() == pytest.approx((FAT - 40.0) / 300.0)
    # the mask channel marks the candidate's own pixels at 1.25 mm per patch pixel, at the patch centre
    mask = patches[0, PATCH_SLICES + 1]
    assert 1 <= mask.sum() <= 4 and mask[PATCH_SIDE // 2 - 1 : PATCH_SIDE // 2 + 1,
                                          PATCH_SIDE // 2 - 1 : PATCH_SIDE // 2 + 1].all()
    # 40 mm at 0.5 mm is 80 pixels: candidate 2's patch runs past the image edge and is air there
    air = (-300.0 - 40.0) / 300.0
    assert patches[1, centre, :, -1].max() == pytest.approx(air)
    assert patches[1, centre, PATCH_SIDE // 2, PATCH_SIDE // 2 - 4] == pytest.approx((TISSUE - 40.0) / 300.0)
    assert PATCH_MM / PATCH_SIDE == 1.25


def test_wide_view_shows_what_lies_beyond_the_fine_patch() -> None:
    """A round 'aortic root' 26 mm from the candidate: out of the 40 mm patch, inside the 60 mm wide view."""
    hu = np.full((9, 160, 160), FAT, dtype=np.float32)
    rr, cc = np.mgrid[:160, :160]
    root = (rr - 80) ** 2 + (cc - 132) ** 2 < 10**2  # 5 mm radius at 0.5 mm, centre 26 mm right of the candidate
    hu[2:7, root] = TISSUE
    hu[4, 79:81, 79:81] = 500.0  # the candidate, one slice
    box = CropBox(0, 9, 0, 0, 160, 160, 80.0, 80.0, True)
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 16), box, (0.5, 0.5), 3.0, 130.0, 8)
    assert found.count == 1
    fine = candidate_patches(hu, found, np.array([0]), (0.5, 0.5), 3.0)
    wide = wide_patches(hu, found, np.array([0]), (0.5, 0.5), 3.0)
    assert wide.shape == (1, WIDE_CHANNELS, WIDE_SIDE, WIDE_SIDE) and wide.dtype == np.float32
    fat, tissue = (FAT - 40.0) / 300.0, (TISSUE - 40.0) / 300.0
    assert fine[0, PATCH_SLICES // 2].max() < tissue  # the fine patch never reaches the root
    pixel_mm = WIDE_MM / WIDE_SIDE
    root_col = int(round(WIDE_SIDE / 2 - 0.5 + 26.0 / pixel_mm))
    middle = WIDE_SIDE // 2
    # the root's centre on the candidate's slice and 6 mm (2 slices) above and below
    assert wide[0, :, middle, root_col] == pytest.approx([tissue] * 3, abs=1e-6)
    assert wide[0, 1, middle, 2] == pytest.approx(fat)  # fat left of the candidate
    # the calcium shows (diluted) on its own slice only
    assert wide[0, 0, middle, middle] == pytest.approx(fat)
    assert wide[0, 1, middle - 1 : middle + 1, middle - 1 : middle + 1].max() > fat


def test_no_candidate_gives_no_rows() -> None:
    hu = np.full((4, 16, 16), FAT, dtype=np.float32)
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 8), CropBox(0, 4, 0, 0, 16, 16, 8, 8, True),
                               (1.0, 1.0), 3.0, 130.0, 8)
    assert found.count == 0 and found.features.shape == (0, N_FEATURES) and not found.ids.any()


def test_candidate_truth_is_the_strict_majority_artery() -> None:
    """The majority rule on truth labels gives the training truth of a candidate."""
    ids = np.array([[[1, 1, 1, 0, 2, 2, 0, 3, 3, 3]]], dtype=np.int32)
    labels = np.array([[[2, 2, 0, 0, 4, 0, 0, 1, 3, 3]]], dtype=np.uint8)
    # candidate 1: 2 of 3 LAD -> LAD; candidate 2: half RCA -> no majority; candidate 3: LCX 2, LM 1 -> LCX
    assert majority_classes(ids, 3, labels)[1:].tolist() == [2, 0, 3]


def test_decide_with_background_bias() -> None:
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0, 0.0]])
    assert decide(logits, 0.0).tolist() == [1, 3]
    assert decide(logits, 2.0).tolist() == [0, 3]
    assert decide(torch.zeros((0, N_CLASSES)), 1.0).tolist() == []
    # the faint bias comes on top, for the marked candidates only
    assert decide(logits, 0.0, torch.tensor([False, True]), 3.5).tolist() == [1, 0]
    assert decide(logits, 0.0, torch.tensor([True, False]), 0.5).tolist() == [1, 3]  # 0.5 < 1: still LM
    assert decide(logits, 2.0, torch.tensor([False, True]), 1.5).tolist() == [0, 0]  # 2 + 1.5 > 3


def test_faint_candidates_are_small_and_under_170_hu_in_a_noisy_series() -> None:
    """Under 3 mm^2 and peaking under 170 HU, read back from the feature rows, in a series with noise SD >= 27 HU."""
    hu = np.full((3, 24, 24), FAT, dtype=np.float32)
    hu[1, 2, 2:4] = 150.0  # 2 mm^2, 150 HU: faint
    hu[1, 6, 2:4] = [150.0, 300.0]  # 2 mm^2 peaking at 300 HU
    hu[1, 10:12, 2:4] = 160.0  # 4 mm^2 at 160 HU
    hu[1, 14, 2:4] = 170.0  # 2 mm^2 at exactly 170 HU: not under it
    hu[1, 18, 2] = 169.0  # 1 mm^2 at 169 HU: faint
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 8), CropBox(0, 3, 0, 0, 24, 24, 12, 12, True),
                               (1.0, 1.0), 3.0, 130.0, 8)
    assert found.count == 5
    rows = found.centres[:, 1].round().astype(int)  # the candidates are numbered in raster order
    assert dict(zip(rows.tolist(), faint(found.features, 27.0).tolist())) == {2: True, 6: False, 10: False,
                                                                              14: False, 18: True}
    assert not faint(found.features, 26.9).any()  # a quieter series: none is faint


def test_the_faint_peak_limit_rises_with_the_noise_when_the_weights_say_so() -> None:
    """1.3.2: 170 HU at the 27 HU gate, 4.8 HU more per HU of noise SD over it (232.4 HU at 40 HU)."""
    hu = np.full((3, 24, 24), FAT, dtype=np.float32)
    hu[1, 2, 2:4] = 200.0  # 2 mm^2 at 200 HU
    hu[1, 6, 2:4] = 232.0  # 2 mm^2 at 232 HU: under 232.4
    hu[1, 10, 2:4] = 233.0  # over it
    hu[1, 14:16, 2:4] = 200.0  # 4 mm^2: too large at any noise
    found = candidate_features(hu, _uniform_probabilities(hu.shape, 8), CropBox(0, 3, 0, 0, 24, 24, 12, 12, True),
                               (1.0, 1.0), 3.0, 130.0, 8)
    rows = found.centres[:, 1].round().astype(int)
    def marked(noise: float, slope: float) -> dict[int, bool]:
        return dict(zip(rows.tolist(), faint(found.features, noise, slope).tolist()))
    assert marked(40.0, 4.8) == {2: True, 6: True, 10: False, 14: False}
    assert marked(40.0, 0.0) == {2: False, 6: False, 10: False, 14: False}  # before 1.3.2: 170 HU
    assert marked(27.0, 4.8) == {2: False, 6: False, 10: False, 14: False}  # at the gate: 170 HU
    assert not any(marked(26.9, 4.8).values())


def _weights_with_classifier(tmp_path: Path) -> WeightsFile:
    torch.manual_seed(0)
    small = UNetConfig(channels=(4, 8, 8))
    config = ClassifierConfig(hidden=(8,), conv_channels=(4, 8), wide_channels=WIDE_CHANNELS,
                              wide_conv_channels=(4,), gate=0.0)
    classifier = CandidateClassifier(config)
    classifier.set_standardisation(torch.randn(50, N_FEATURES) * 3 + 1)
    weights = WeightsFile(
        name="test-unet", version="0.0.1", uid=new_uid(), model=small, preprocess=PreprocessConfig(grid=32),
        state_dict=UNet3D(small).state_dict(),
        classifier=ClassifierWeights(config, classifier.state_dict(), background_bias=1.5,
                                     training={"cases": 0}, faint_bias=2.0),
    )
    save_weights(weights, tmp_path / "w.pt")
    return weights


def test_classifier_round_trips_through_the_weights_file(tmp_path: Path) -> None:
    saved = _weights_with_classifier(tmp_path)
    loaded = load_weights(tmp_path / "w.pt")
    assert loaded.classifier is not None and saved.classifier is not None
    assert loaded.classifier.background_bias == 1.5 and loaded.classifier.config.hidden == (8,)
    assert loaded.classifier.faint_bias == 2.0
    assert loaded.classifier.faint_peak_slope == saved.classifier.faint_peak_slope == FAINT_PEAK_SLOPE
    x = torch.randn(7, N_FEATURES)
    patches = torch.randn(7, PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE)
    wide = torch.randn(7, WIDE_CHANNELS, WIDE_SIDE, WIDE_SIDE)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.classifier.build()(x, patches, wide),
                                   saved.classifier.build()(x, patches, wide))
        with pytest.raises(ValueError, match="wide view"):
            loaded.classifier.build()(x, patches)
    # a classifier whose shapes contradict its config is refused like a bad network
    broken = dataclasses.replace(saved.classifier, config=ClassifierConfig(hidden=(16,), conv_channels=(4, 8)))
    save_weights(dataclasses.replace(saved, classifier=broken), tmp_path / "bad.pt")
    with pytest.raises(Exception, match="inconsistent"):
        load_weights(tmp_path / "bad.pt")


def test_a_classifier_stored_before_the_wide_view_still_loads(tmp_path: Path) -> None:
    """Files before the wide view store no ``wide_channels``: they mean a classifier without the wide branch."""
    saved = _weights_with_classifier(tmp_path)
    assert saved.classifier is not None
    config = dataclasses.replace(saved.classifier.config, wide_channels=0)
    old = CandidateClassifier(config).state_dict()
    payload = torch.load(tmp_path / "w.pt", weights_only=False)
    payload["classifier"]["config"].pop("wide_channels")
    payload["classifier"].pop("faint_bias")  # nor a faint bias: none (1.2.0 and before)
    payload["classifier"].pop("faint_peak_slope")  # nor a rising faint limit: a fixed 170 HU (before 1.3.2)
    payload["classifier"]["state_dict"] = old
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_weights(tmp_path / "old.pt")
    assert loaded.classifier is not None and loaded.classifier.config.wide_channels == 0
    assert loaded.classifier.faint_bias == 0.0 and loaded.classifier.faint_peak_slope == 0.0
    with torch.inference_mode():
        assert loaded.classifier.build()(torch.randn(3, N_FEATURES),
                                         torch.randn(3, PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE)).shape == (3, N_CLASSES)


def test_refitting_the_classifier_keeps_the_network_uid_that_keys_the_candidate_cache(tmp_path: Path) -> None:
    weights = _weights_with_classifier(tmp_path)
    assert weights.classifier is not None
    plain = dataclasses.replace(weights, classifier=None)
    assert plain.network_uid == plain.uid  # no classifier: the file's UID is the network's
    fitted = dataclasses.replace(weights, uid=new_uid(), classifier=dataclasses.replace(
        weights.classifier, training={"network_uid": plain.uid}))
    assert fitted.network_uid == plain.uid != fitted.uid


def test_labeller_with_classifier_labels_whole_candidates_only(tmp_path: Path) -> None:
    _weights_with_classifier(tmp_path)
    labeller = Labeller.load(ModelConfig(weights=tmp_path / "w.pt"), device="cpu")
    assert labeller.classifier is not None
    c = make_chest(n_slices=45)
    prepared = labeller.preprocess(c.hu, c.pixel_spacing_mm, c.increment_mm)
    logits = labeller.logits(prepared)
    everything = labeller.to_labels(c.hu, prepared, logits, classifier_bias=-1e6)  # every candidate coronary
    nothing = labeller.to_labels(c.hu, prepared, logits, classifier_bias=1e6)
    assert not nothing.any()
    # exactly the candidate voxels inside the heart crop are labelled, never a voxel below the threshold
    inside = np.zeros(c.hu.shape, dtype=bool)
    box = prepared.box
    inside[box.z0:box.z1, max(box.row0, 0):box.row0 + box.rows, max(box.col0, 0):box.col0 + box.cols] = True
    np.testing.assert_array_equal(everything > 0, (c.hu >= 130.0) & inside)
    hu_crop = extract(c.hu, box, AIR_HU)
    assert local_box(box).rows == hu_crop.shape[1]
    # at 2 mm pixels no candidate is under 3 mm^2: a huge faint bias changes nothing
    strict = labeller.to_labels(c.hu, prepared, logits, classifier_bias=-1e6, faint_bias=2e6)
    np.testing.assert_array_equal(strict > 0, everything > 0)


def test_the_faint_bias_drops_only_the_faint_candidates() -> None:
    """Candidate 1: 2 mm^2 at 150 HU (faint); 2: 2 mm^2 at 400 HU; 3: 8 mm^2 at 150 HU."""
    ids = np.zeros((1, 4, 8), dtype=np.int32)
    ids[0, 0, :2], ids[0, 2, :2], ids[0, 2, 4:8] = 1, 2, 3
    features = np.zeros((3, N_FEATURES), dtype=np.float32)
    features[:, FEATURE_NAMES.index("log_area_mm2")] = np.log([2.0, 2.0, 8.0])
    features[:, FEATURE_NAMES.index("peak_hu")] = np.array([150.0, 400.0, 150.0]) / 1000.0
    logits = torch.zeros((3, N_CLASSES))
    logits[:, 2] = 2.0  # each one LAD by 2 logits
    voxels = np.flatnonzero(ids)
    found = Candidates(ids, features, np.zeros((3, 3)), voxels, ids.reshape(-1)[voxels] - 1)
    decisions = CandidateDecisions(found, np.arange(3), logits, 30.0)
    quiet = CandidateDecisions(decisions.candidates, decisions.looked_at, logits, 20.0)
    assert quiet.classes(0.0, 3.0).tolist() == [2, 2, 2]  # in a quiet series nothing is faint
    assert decisions.classes(0.0).tolist() == [2, 2, 2]
    assert decisions.classes(0.0, 3.0).tolist() == [0, 2, 2]
    assert decisions.classes(1.5, 0.5).tolist() == [0, 2, 2]  # the faint bias adds to the background bias
    assert decisions.classes(2.5, 0.0).tolist() == [0, 0, 0]
    np.testing.assert_array_equal(decisions.labels(0.0, 3.0), np.where(ids >= 2, 2, 0))
    # With the weights' rising limit (1.3.2), 400 HU is faint in a series with noise SD 90 HU (limit 472 HU).
    assert CandidateDecisions(found, np.arange(3), logits, 90.0, 4.8).classes(0.0, 3.0).tolist() == [0, 0, 2]
    assert CandidateDecisions(found, np.arange(3), logits, 90.0).classes(0.0, 3.0).tolist() == [0, 2, 2]


def test_gate_keeps_candidates_the_network_finds_likely() -> None:
    features = np.zeros((3, N_FEATURES), dtype=np.float32)
    features[:, FEATURE_NAMES.index("p_coronary_max")] = [0.05, 0.1, 0.9]
    assert gated(features, 0.1).tolist() == [False, True, True]


def test_fit_learns_a_separable_rule() -> None:
    pytest.importorskip("pytorch_lightning")
    from training.candidate_data import CandidateRows
    from training.candidate_module import fit_classifier

    rng = np.random.default_rng(0)
    n = 600
    features = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    # background when feature 0 < 0.5 or the wide view is dark (each input matters);
    # else the artery is LAD when the patch is bright, RCA when dark
    def views(on: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        v = np.where(on[:, None, None, None], 1.0, -1.0) * np.ones((n, *shape))
        return (v + rng.normal(0, 0.3, v.shape)).astype(np.float16)

    bright, open_wide = rng.random(n) < 0.5, rng.random(n) < 0.7
    patches = views(bright, (PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE))
    wide = views(open_wide, (WIDE_CHANNELS, WIDE_SIDE, WIDE_SIDE))
    truth = np.where((features[:, 0] > 0.5) & open_wide, np.where(bright, 2, 4), 0).astype(np.int64)
    rows = CandidateRows(features, patches, wide, truth, np.arange(n) // 50, np.full(n, 4.0, np.float32))
    fitted = fit_classifier(rows, epochs=30, batch_size=64, learning_rate=1e-2, easy_keep=1.0,
                            config=ClassifierConfig(hidden=(16,), conv_channels=(4, 8), wide_channels=WIDE_CHANNELS,
                                                    wide_conv_channels=(4, 8), dropout=0.0))
    with torch.inference_mode():
        predicted = decide(fitted.build()(torch.from_numpy(features), torch.from_numpy(patches).float(),
                                          torch.from_numpy(wide).float()), 0.0).numpy()
    assert np.mean(predicted == truth) > 0.9
    assert fitted.training["coronary_candidates"] == int(np.count_nonzero(truth))
    assert fitted.training["epochs"] == 30
    # a time box stops the fit sooner, and the record says how many epochs ran
    boxed = fit_classifier(rows, epochs=30, batch_size=64, max_minutes=1e-6,
                           config=ClassifierConfig(hidden=(8,), conv_channels=(4, 8)))
    assert boxed.training["epochs"] < 30
    with pytest.raises(ValueError, match="no coronary"):
        fit_classifier(dataclasses.replace(rows, truth=np.zeros(n, np.int64)), epochs=1)


def test_easy_background_is_subsampled_and_reweighted() -> None:
    from training.candidate_data import CandidateRows
    from training.candidate_module import subsample_easy

    n = 4000
    features = np.zeros((n, N_FEATURES), np.float32)
    p = FEATURE_NAMES.index("p_coronary_max")
    features[: n // 2, p] = 0.2  # easy background
    features[n // 2 :, p] = 0.9  # hard background and coronary
    truth = np.zeros(n, np.int64)
    truth[-100:] = 2
    empty = CandidateRows.empty(n)
    rows = dataclasses.replace(empty, features=features, truth=truth, area_mm2=np.ones(n, np.float32))
    picked, factor = subsample_easy(rows, 0.25, seed=0)
    easy = picked.features[:, p] < 0.5
    assert np.count_nonzero(~easy) == n // 2  # every hard and coronary row stays
    assert 400 < np.count_nonzero(easy) < 600 and np.all(factor[easy] == 4.0) and np.all(factor[~easy] == 1.0)
    assert np.count_nonzero(picked.truth) == 100


def _whole_crop_box_mean(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return ndimage.uniform_filter(image.astype(np.float32), size=(1, *size), mode="nearest")


def test_block_wise_features_equal_whole_crop_filters_and_the_gate_skips_only_rows_never_looked_at() -> None:
    """Context shares and the picture are filtered per candidate on small blocks; they must equal the
    whole-crop filters, also for candidates at the crop's edges.  With a gate, rows past it are unchanged
    and the others hold only the coronary probability that the gate reads."""
    rng = np.random.default_rng(3)
    hu = rng.choice([-600.0, -100.0, 40.0, 300.0], size=(6, 70, 64), p=[0.2, 0.35, 0.35, 0.1]).astype(np.float32)
    hu[2, 0:3, 0:4] = 600.0  # candidates touching the crop's corner and edges
    hu[5, 66:70, 30:33] = 500.0
    probabilities = rng.dirichlet(np.ones(N_CLASSES), size=(6, 16, 16)).transpose(3, 0, 1, 2).astype(np.float32)
    box = CropBox(0, 6, 0, 0, 70, 64, 35.0, 32.0, True)
    spacing, increment = (0.7, 0.6), 2.5
    found = candidate_features(hu, probabilities, box, spacing, increment, 130.0, 8)
    assert found.count > 50 and np.all(np.isfinite(found.features))
    n = found.count
    labels = np.arange(1, n + 1)
    for prefix, side_mm in (("near", 7.0), ("wide", 17.0)):
        size = (max(3, round(side_mm / spacing[0])) | 1, max(3, round(side_mm / spacing[1])) | 1)
        air = hu < -250.0
        fat = (hu >= -250.0) & (hu < -30.0)
        calcium = hu >= 130.0
        for name, band in (("fat", fat), ("soft", ~(air | fat | calcium)), ("air", air), ("calcium", calcium)):
            expected = ndimage.mean(_whole_crop_box_mean(band, size), found.ids, labels)
            np.testing.assert_allclose(_feature(found.features, f"{prefix}_{name}"), expected, rtol=1e-5, atol=1e-6)
    # the picture's centre box on the candidate's slice (4 mm boxes) and the 8 mm box 6 mm above, centre
    clipped = np.clip(hu, -300.0, 300.0)
    z, r, c = (np.round(found.centres[:, k]).astype(int) for k in range(3))
    slice_means = _whole_crop_box_mean(clipped, (round(4.0 / spacing[0]), round(4.0 / spacing[1])))
    np.testing.assert_allclose(_feature(found.features, "slice_hu_2_2"), slice_means[z, r, c] / 300.0, rtol=1e-6)
    above = np.clip(z + round(6.0 / increment), 0, hu.shape[0] - 1)
    above_means = _whole_crop_box_mean(clipped, (round(8.0 / spacing[0]), round(8.0 / spacing[1])))
    np.testing.assert_allclose(_feature(found.features, "above_hu_1_1"), above_means[above, r, c] / 300.0,
                               rtol=1e-6)

    gate = float(np.median(_feature(found.features, "p_coronary_max")))
    gated_found = candidate_features(hu, probabilities, box, spacing, increment, 130.0, 8, gate)
    past = gated(found.features, gate)
    assert 0 < past.sum() < n
    np.testing.assert_array_equal(gated_found.features[past], found.features[past])
    coronary_max = FEATURE_NAMES.index("p_coronary_max")
    np.testing.assert_array_equal(gated_found.features[~past, coronary_max], found.features[~past, coronary_max])
    others = np.ones(N_FEATURES, dtype=bool)
    others[coronary_max] = False
    assert np.isnan(gated_found.features[~past][:, others]).all()


def test_the_best_bias_pair_is_written_into_the_classifier_and_ties_go_to_the_first(tmp_path: Path) -> None:
    from training.calibrate import with_best_bias

    weights = _weights_with_classifier(tmp_path)
    figures = lambda zero, sens: {"icc": 0.99, "kappa": 0.95, "right_artery": 0.98, "lesion_sensitivity": sens,
                                  "zero_to_zero": zero, "fp_per_scan": 0.1, "cases": 10.0}
    table = {(1.0, 0.0): figures(0.80, 0.95), (1.0, 2.0): figures(0.90, 0.95), (2.0, 0.0): figures(0.90, 0.95),
             (2.0, 2.0): figures(0.95, 0.80)}
    chosen = with_best_bias(weights, table, "calibration_set")
    assert chosen.classifier is not None
    assert (chosen.classifier.background_bias, chosen.classifier.faint_bias) == (1.0, 2.0)  # tie with (2, 0): first
    assert chosen.uid == weights.uid and chosen.classifier.state_dict is weights.classifier.state_dict
    record = chosen.validation["calibration_set"]
    assert record["background_bias"] == 1.0 and record["faint_bias"] == 2.0 and record["zero_to_zero"] == 0.90
    # without a classifier only the network's bias is chosen; no faint bias is recorded
    plain = with_best_bias(dataclasses.replace(weights, classifier=None), {(3.0, 0.0): figures(0.9, 0.9),
                                                                           (4.0, 0.0): figures(0.8, 0.9)}, "c")
    assert plain.background_bias == 3.0 and "faint_bias" not in plain.validation["c"]
    # a floor on the background bias: the best pair at or above it, even if a lower one scores better
    floored = with_best_bias(weights, table, "c", min_background=2.0)
    assert floored.classifier is not None
    assert (floored.classifier.background_bias, floored.classifier.faint_bias) == (2.0, 0.0)
    with pytest.raises(ValueError, match="at least 3"):
        with_best_bias(weights, table, "c", min_background=3.0)
