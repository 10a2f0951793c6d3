"""The self-describing weights file: everything needed to rebuild and identify the model.

One ``torch.save`` of a plain dictionary (loadable with ``weights_only=True``,
so opening a file never runs code from it):

- ``format``: :data:`FORMAT`, checked at load;
- ``name``, ``version``, ``uid``: the algorithm identity written into reports
  (TID 4019 Algorithm Identification); the UID is a fresh ``2.25`` UUID-derived
  UID (PS3.5 B.2) for every training run, so two trainings never share one;
- ``model``: the :class:`~pipeline.model.unet.UNetConfig` arguments;
- ``preprocess``: the :class:`~pipeline.model.preprocess.PreprocessConfig` arguments;
- ``state_dict``: the weights (float32);
- ``background_bias``: added to the background logit before the argmax at
  inference (0 = plain argmax); chosen on validation phantoms after training
  (``training.calibrate``) to trade lesion sensitivity against false positives;
- ``training``: what the model was trained on and how (free-form, JSON-like);
- ``validation``: the figures measured on held-out data (JSON-like);
- ``classifier`` (optional): the second stage, the lesion classifier of
  ``pipeline.model.candidate_classifier`` -- its arguments, weights (with the
  feature standardisation), its own background bias (and the extra one for
  faint candidates, ``faint_bias``), the vote within calcified objects that
  follows it (``object_consensus``, optional) and how it was fitted.
  Without it, inference uses the plain candidate majority rule.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.model.candidate_classifier import FAINT_PEAK_SLOPE, CandidateClassifier, ClassifierConfig
from pipeline.errors import ModelError
from pipeline.model.heart import HeartLocatorSettings
from pipeline.model.identity import AlgorithmIdentity
from pipeline.model.object_consensus import ConsensusRule
from pipeline.model.unet import UNet3D, UNetConfig
from pipeline.model.preprocess import PreprocessConfig

FORMAT = "cacnode-weights/1"


def new_uid() -> str:
    """A UID of the 2.25 form derived from a random UUID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class ClassifierWeights:
    """The lesion classifier stored in a weights file."""

    config: ClassifierConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    background_bias: float = 0.0  # added to its background logit before the argmax
    training: dict[str, Any] = field(default_factory=dict)
    faint_bias: float = 0.0  # more for faint candidates (``candidate_classifier.faint``); 0: none (1.2.0)
    # HU the faint peak limit rises per HU of noise SD over the gate; files before 1.3.2 have none: 0.
    faint_peak_slope: float = FAINT_PEAK_SLOPE
    # The vote within calcified objects after the classifier (``pipeline.model.object_consensus``);
    # files before 2.2.0 have none: each candidate is decided alone.
    object_consensus: ConsensusRule | None = None

    def build(self) -> CandidateClassifier:
        """The classifier with these weights, in eval mode."""
        model = CandidateClassifier(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()


@dataclass(frozen=True)
class WeightsFile:
    """The content of a weights file."""

    name: str
    version: str
    uid: str
    model: UNetConfig
    preprocess: PreprocessConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    background_bias: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierWeights | None = None

    def identity(self) -> AlgorithmIdentity:
        return AlgorithmIdentity(name=self.name, version=self.version, uid=self.uid)

    @property
    def network_uid(self) -> str:
        """UID of the network alone: the file's own until a classifier was fitted onto it, which records it."""
        if self.classifier is not None:
            return str(self.classifier.training.get("network_uid", self.uid))
        return self.uid

    def build_model(self) -> UNet3D:
        """The network with these weights, in eval mode."""
        model = UNet3D(self.model)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_weights(weights: WeightsFile, path: Path) -> None:
    """Write ``weights`` to ``path`` (parent folders are created)."""
    payload = {
        "format": FORMAT,
        "name": weights.name,
        "version": weights.version,
        "uid": weights.uid,
        "model": _plain(dataclasses.asdict(weights.model)),
        "preprocess": _plain(dataclasses.asdict(weights.preprocess)),
        "state_dict": _float32(weights.state_dict),
        "background_bias": float(weights.background_bias),
        "training": _plain(weights.training),
        "validation": _plain(weights.validation),
    }
    if weights.classifier is not None:
        c = weights.classifier
        payload["classifier"] = {
            "config": _plain(dataclasses.asdict(c.config)),
            "state_dict": _float32(c.state_dict),
            "background_bias": float(c.background_bias),
            "faint_bias": float(c.faint_bias),
            "faint_peak_slope": float(c.faint_peak_slope),
            "training": _plain(c.training),
        }
        if c.object_consensus is not None:
            payload["classifier"]["object_consensus"] = _plain(dataclasses.asdict(c.object_consensus))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written weights file behind


def load_weights(path: Path) -> WeightsFile:
    """Read a weights file; any problem is a :class:`ModelError` naming the file."""
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file (pickle, zip, runtime)
        raise ModelError(f"weights file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelError(f"weights file {path}: not a {FORMAT} file (format {found!r})")
    try:
        pre = dict(payload["preprocess"])
        pre["heart"] = HeartLocatorSettings(**_tuples(pre["heart"]))
        weights = WeightsFile(
            name=str(payload["name"]),
            version=str(payload["version"]),
            uid=str(payload["uid"]),
            model=UNetConfig(**_tuples(payload["model"])),
            preprocess=PreprocessConfig(**_tuples(pre)),
            state_dict=dict(payload["state_dict"]),
            background_bias=float(payload.get("background_bias", 0.0)),
            training=dict(payload.get("training", {})),
            validation=dict(payload.get("validation", {})),
            classifier=_classifier(payload.get("classifier")),
        )
        weights.build_model()  # shapes must match the stated architecture
        if weights.classifier is not None:
            weights.classifier.build()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"weights file {path}: inconsistent content ({type(exc).__name__}: {exc})") from None
    return weights


def _classifier(stored: Any) -> ClassifierWeights | None:
    if stored is None:
        return None
    return ClassifierWeights(
        config=ClassifierConfig(**_tuples(stored["config"])),
        state_dict=dict(stored["state_dict"]),
        background_bias=float(stored.get("background_bias", 0.0)),
        training=dict(stored.get("training", {})),
        faint_bias=float(stored.get("faint_bias", 0.0)),
        faint_peak_slope=float(stored.get("faint_peak_slope", 0.0)),
        object_consensus=(None if stored.get("object_consensus") is None
                          else ConsensusRule(**stored["object_consensus"])),
    )


def _float32(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 on the CPU; integer buffers (batch-norm counters) as they are."""
    return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state_dict.items()}


def _plain(obj: Any) -> Any:
    """Dataclass dicts and tuples as plain dicts and lists (safe for ``weights_only`` loading)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    # Exact builtin types: subclasses (torch's TorchVersion, numpy's float64) would be
    # pickled by class name and refused by ``weights_only`` loading.
    if obj is None:
        return None
    for kind in (bool, str, int, float):
        if isinstance(obj, kind):
            return kind(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a weights file")


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """Lists back to tuples (the config dataclasses use tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
