"""The phantom families behind one call, and how training takes its phantoms from them."""

from __future__ import annotations

import pytest

from training.cases import PhantomSource, phantoms
from training.config import TrainingConfig
from training.families import split_across

pytest.importorskip("pytorch_lightning")
from training.datamodule import classifier_phantom_sources, phantom_sources  # noqa: E402


def test_split_across_takes_families_in_turn_each_counting_its_own_seeds() -> None:
    assert split_across(("a", "b"), 100, 5) == [("a", 100), ("b", 100), ("a", 101), ("b", 101), ("a", 102)]
    assert split_across(("b",), 7, 2) == [("b", 7), ("b", 8)]


def test_family_is_part_of_the_cache_key_and_family_a_keeps_its_key() -> None:
    a, b = PhantomSource(5), PhantomSource(5, family="b")
    assert a.key.startswith("phantom-r") and a.key.endswith("-5")  # caches made before families stay valid
    assert b.key.startswith("phantom-b-r") and a.key != b.key
    assert PhantomSource(5, shifted=True).key != a.key


def test_training_phantoms_follow_the_configured_families() -> None:
    both = TrainingConfig(phantom_train=6, phantom_val=3, shifted_fraction=0.5)
    train, val = phantom_sources(both)
    assert [s.family for s in train] == ["a", "b"] * 3
    # half of family a's training phantoms (its first seeds) come from the shifted ranges; b has none
    assert [(s.seed, s.shifted) for s in train if s.family == "a"] == [(10000, True), (10001, True), (10002, False)]
    assert not any(s.shifted for s in train if s.family == "b")
    assert [s.family for s in val] == ["a", "b", "a"]
    only_b = TrainingConfig(families=("b",), phantom_train=4, classifier_phantoms=3, classifier_hard_ostia_phantoms=2)
    assert {s.family for s in phantom_sources(only_b)[0]} == {"b"}
    # the hard-ostia variant is family a's: a family-b-only run has none
    assert [(s.family, s.hard_ostia) for s in classifier_phantom_sources(only_b)] == [("b", False)] * 3
    with_a = TrainingConfig(classifier_phantoms=2, classifier_hard_ostia_phantoms=2)
    assert [(s.family, s.hard_ostia) for s in classifier_phantom_sources(with_a)] == [
        ("a", False), ("b", False), ("a", True), ("a", True)]


@pytest.mark.parametrize("families", [(), ("a", "a")])
def test_families_must_be_named_once_each(families: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="families"):
        TrainingConfig(families=families)  # type: ignore[arg-type]


def test_phantoms_default_to_family_a() -> None:
    assert {s.family for s in phantoms(0, 3)} == {"a"}


def test_export_writes_a_stopped_runs_network_under_its_uid(tmp_path) -> None:
    """A run stopped after its network stage: its checkpoint becomes a weights file the classifier step can finish."""
    import torch

    from pipeline.model.unet import UNet3D, UNetConfig
    from pipeline.model.weights import load_weights, save_weights
    from training.export import export_network

    net = UNet3D(UNetConfig(channels=(4, 8, 8)))
    checkpoint = tmp_path / "run-uid" / "best-epoch=3.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, checkpoint)
    config = tmp_path / "run.toml"
    config.write_text('[training]\nname = "n"\nversion = "9.9.9"\nfamilies = ["b"]\nchannels = [4, 8, 8]\n'
                      "grid = 32\npatch_cells = 24\npatch_slices = 8\n")
    weights = export_network(checkpoint, config, "2.25.1234")
    save_weights(weights, tmp_path / "w.pt")
    loaded = load_weights(tmp_path / "w.pt")
    assert (loaded.uid, loaded.version, loaded.model.channels, loaded.preprocess.grid) == ("2.25.1234", "9.9.9",
                                                                                          (4, 8, 8), 32)
    assert loaded.network_uid == "2.25.1234" and loaded.classifier is None
    assert loaded.training["epoch"] == 3 and loaded.training["families"] == ["b"]
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict[name], value), name
