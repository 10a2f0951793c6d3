"""Training: scored validation metrics, augmented samples, and a fast_dev_run of ``cacnode train`` on CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytorch_lightning")

from evaluation.metrics import case_outcome, icc_absolute, summarise, weighted_kappa  # noqa: E402
from pipeline.model.inference import Labeller, ModelConfig  # noqa: E402
from pipeline.model.preprocess import Preprocess, PreprocessConfig  # noqa: E402
from pipeline.scoring.agatston import ScoringProfile, score_calcium  # noqa: E402
from pipeline.model.weights import load_weights  # noqa: E402
from synthetic_chest import make_chest  # noqa: E402
from training.augment import Augmentation, full_case, training_sample  # noqa: E402
from training.cases import TrainingCase, cache_case, load_cached  # noqa: E402
from training.config import TrainingConfig  # noqa: E402
from training.train import run_train  # noqa: E402


@dataclass(frozen=True)
class ChestSource:
    """A synthetic chest as a training case source."""

    seed: int

    @property
    def key(self) -> str:
        return f"chest-{self.seed}"

    def load(self) -> TrainingCase:
        c = make_chest(n_slices=40, size=96, seed=self.seed)
        return TrainingCase(self.key, c.hu, c.labels, c.pixel_spacing_mm, c.increment_mm)


def test_icc_and_kappa_reach_one_only_on_agreement() -> None:
    truth = np.array([0.0, 5.0, 50.0, 200.0, 900.0])
    assert icc_absolute(truth, truth) == pytest.approx(1.0)
    # Absolute agreement penalises a constant offset d: ICC(2,1) = s^2 / (s^2 + d^2 / 2) for 2 raters.
    s2 = truth.var(ddof=1)
    assert icc_absolute(truth, truth + 100.0) == pytest.approx(s2 / (s2 + 100.0**2 / 2))
    assert weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5) == pytest.approx(1.0)
    assert weighted_kappa([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], 5) < 0


def test_case_outcome_counts_lesions_artery_and_false_positives() -> None:
    c = make_chest()
    profile = ScoringProfile()
    perfect = case_outcome(c.hu, c.labels, c.labels, c.pixel_spacing_mm, c.increment_mm, profile)
    total = score_calcium(c.hu, c.labels, c.pixel_spacing_mm, c.increment_mm, profile).total.agatston
    assert perfect.true_total == pytest.approx(total)
    assert perfect.pred_total == pytest.approx(total)
    assert (perfect.lesions, perfect.lesions_found, perfect.false_positives) == (3, 3, 0)
    assert perfect.right_artery == pytest.approx(perfect.detected)

    wrong = c.labels.copy()
    wrong[wrong == 1] = 4  # the LM lesion given to the RCA
    spine = np.zeros_like(wrong)
    spine[c.hu >= 600] = 2  # the spine called LAD: false positives
    out = case_outcome(c.hu, c.labels, np.maximum(wrong, spine), c.pixel_spacing_mm, c.increment_mm, profile)
    assert out.lesions_found == 3
    assert out.right_artery < out.detected
    assert out.false_positives >= 1
    figures = summarise([perfect, out])
    assert figures["lesion_sensitivity"] == 1.0
    assert figures["fp_per_scan"] == out.false_positives / 2
    assert math.isnan(figures["zero_to_zero"])  # no truth-zero case


def test_training_sample_shapes_and_lesion_targets(tmp_path: Path) -> None:
    preprocess = Preprocess(PreprocessConfig(grid=32))
    cached = load_cached(cache_case(ChestSource(1), preprocess, tmp_path))
    assert cached.labelled_outside == 0
    assert cached.truth_agatston["total"] > 0
    rng = np.random.default_rng(0)
    aug = Augmentation(p_lesion_centre=1.0, rotate_deg=0.0)
    image, target, valid = training_sample(cached, preprocess, aug, (8, 24), rng)
    assert image.shape == (6, 8, 24, 24) and image.dtype == np.float32
    assert target.shape == valid.shape == (8, 24, 24)
    assert target.max() > 0  # centred on a lesion
    # every labelled cell is a candidate cell, so the loss sees it
    assert np.all(image[2][target > 0] > 0.5)
    whole = full_case(cached, preprocess)
    assert set(np.unique(whole.target)) == {0, 1, 2, 3}


def tiny_config(tmp_path: Path, **overrides: object) -> TrainingConfig:
    """A training configuration small enough for one CPU in seconds."""
    settings: dict[str, object] = dict(
        output=tmp_path / "model.pt", work_dir=tmp_path / "work", channels=(4, 8, 8), grid=32,
        patch_slices=8, patch_cells=24, max_epochs=1, cpu_threads=1, prepare_workers=1,
    )
    return TrainingConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def test_fast_dev_run_trains_and_exports_loadable_weights(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, batch_size=1, samples_per_epoch=2)
    sources = ([ChestSource(1), ChestSource(2)], [ChestSource(3)])
    assert run_train(config, output=None, fast_dev_run=True, sources=sources) == 0
    weights = load_weights(tmp_path / "model.pt")
    assert weights.name == config.name and weights.uid.startswith("2.25.")
    assert weights.training["fast_dev_run"] is True
    assert weights.training["data"]["phantom_train"] == config.phantom_train
    assert weights.preprocess.grid == 32
    assert "lesion_sensitivity" in weights.validation["phantom_validation_set"]
    # the exported file is what inference loads
    labeller = Labeller.load(ModelConfig(weights=tmp_path / "model.pt"), device="cpu")
    assert labeller.identity.uid == weights.uid


def test_one_epoch_run_exports_the_best_checkpoint(tmp_path: Path) -> None:
    """Without fast_dev_run: checkpointing, reloading the best checkpoint and the scored validation."""
    config = tiny_config(tmp_path, batch_size=2, samples_per_epoch=4, check_val_every_n_epoch=1)
    sources = ([ChestSource(1)], [ChestSource(2), ChestSource(3)])
    assert run_train(config, output=tmp_path / "other.pt", fast_dev_run=False, sources=sources) == 0
    assert not (tmp_path / "model.pt").exists()  # --output wins over [training] output
    weights = load_weights(tmp_path / "other.pt")
    assert weights.training["fast_dev_run"] is False and weights.training["epochs"] == 1
    assert list((tmp_path / "work" / "checkpoints" / weights.uid).glob("best-*.ckpt"))
    assert weights.validation["phantom_validation_set"]["cases"] == 2.0


def test_training_fits_the_lesion_classifier_after_the_network(tmp_path: Path) -> None:
    """[training] classifier cases: the exported file carries a fitted classifier that inference uses."""
    from pipeline.model.candidate_classifier import ClassifierConfig
    from training.calibrate import CLASSIFIER_BIASES, FAINT_BIASES

    config = tiny_config(tmp_path, batch_size=2, samples_per_epoch=4, classifier_epochs=2,
                         calibration_min_background_bias=2.0)
    sources = ([ChestSource(1)], [ChestSource(2)])
    small = ClassifierConfig(hidden=(8,), conv_channels=(4, 8), gate=0.0)  # an untrained network gates nothing out
    assert run_train(config, output=None, fast_dev_run=False, sources=sources,
                     classifier_sources=[ChestSource(4), ChestSource(5)], classifier_config=small,
                     calibration_sources=[ChestSource(2), ChestSource(3)]) == 0
    weights = load_weights(tmp_path / "model.pt")
    assert weights.classifier is not None and weights.classifier.config == small
    # its background bias was chosen on the calibration cases and recorded with their figures
    calibration = weights.validation["calibration_set"]
    assert calibration["cases"] == 2.0 and weights.classifier.background_bias == calibration["background_bias"]
    assert calibration["background_bias"] in CLASSIFIER_BIASES and calibration["background_bias"] >= 2.0
    assert calibration["faint_bias"] in FAINT_BIASES and weights.classifier.faint_bias == calibration["faint_bias"]
    assert weights.classifier.training["cases"] == 2 and weights.classifier.training["coronary_candidates"] >= 6
    assert weights.classifier.training["network_uid"] != weights.uid  # a new model, a new UID
    assert list((tmp_path / "work" / "candidates").glob("chest-4-*.npz"))
    labeller = Labeller.load(ModelConfig(weights=tmp_path / "model.pt"), device="cpu")
    c = make_chest(seed=6)
    labels = labeller.predict_volume(c.hu, c.pixel_spacing_mm, c.increment_mm)
    assert labels.shape == c.hu.shape and np.all(c.hu[labels > 0] >= 130.0)
    # calibration spread over worker processes gives the figures of one process
    from training.calibrate import calibrate

    cases = [ChestSource(2), ChestSource(3)]
    alone, spread = calibrate(labeller, cases), calibrate(labeller, cases, workers=2)
    assert alone.keys() == spread.keys() and len(alone) == len(CLASSIFIER_BIASES) * len(FAINT_BIASES)
    for bias, figures in alone.items():
        assert figures["cases"] == 2.0
        assert all(v == spread[bias][k] or (math.isnan(v) and math.isnan(spread[bias][k])) for k, v in figures.items())


def test_the_classifier_phantoms_are_the_plain_then_the_hard_ostia_seeds_of_the_config(tmp_path: Path) -> None:
    from training.datamodule import classifier_phantom_sources

    config = tiny_config(tmp_path, classifier_phantoms=3, classifier_seed=500, classifier_hard_ostia_phantoms=2,
                         classifier_hard_ostia_seed=900, families=("a",))
    sources = classifier_phantom_sources(config)
    assert [(s.seed, s.hard_ostia) for s in sources] == [(500, False), (501, False), (502, False),
                                                         (900, True), (901, True)]
    assert len({s.key for s in sources}) == 5 and "hard-ostia-900" in sources[3].key  # cached apart
    assert classifier_phantom_sources(tiny_config(tmp_path)) == []  # the defaults: no classifier phantoms
    with pytest.raises(ValueError, match="classifier_hard_ostia_phantoms"):
        tiny_config(tmp_path, classifier_hard_ostia_phantoms=-1)
    with pytest.raises(ValueError, match="classifier_max_minutes"):
        tiny_config(tmp_path, classifier_max_minutes=0.0)


def test_cached_candidate_rows_are_not_reused_after_the_heart_localiser_changes(tmp_path: Path) -> None:
    # The rows come from the heart crop: rows cached with another localiser (the network unchanged,
    # as from 1.3.0 to 1.3.1) are other rows.
    import dataclasses

    from training.candidate_data import _cache_path

    weights = load_weights(Path(__file__).resolve().parents[1] / "models" / "cacnode-v1.pt")
    heart = dataclasses.replace(weights.preprocess.heart, min_lung_ml=100.0)
    before = dataclasses.replace(weights, preprocess=dataclasses.replace(weights.preprocess, heart=heart))
    assert before.network_uid == weights.network_uid
    source = ChestSource(1)
    assert _cache_path(source, before, tmp_path, 0.1) != _cache_path(source, weights, tmp_path, 0.1)
    assert _cache_path(source, weights, tmp_path, 0.1) == _cache_path(source, weights, tmp_path, 0.1)
