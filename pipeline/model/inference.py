"""Model inference: CT series in, artery label map out (config section ``[model]``).

``Labeller.load`` reads the self-describing weights file (``pipeline.model.weights``)
and rebuilds the exact preprocessing the model was trained with
(``pipeline.model.preprocess``); ``predict`` runs preprocessing and the network on the
heart crop, then decides each candidate lesion (2-D component of
``hu >= candidate_threshold_hu``, calcium-scoring.md; the candidates are found
from the HU in a thread while the network runs, ``survey_crop``):

- with a lesion classifier in the weights file (the bundled one has it), from
  the candidate's features (``pipeline.model.candidate_features``: the network's
  probabilities, size, density, position and surroundings) by
  ``pipeline.model.candidate_classifier``;
- without one, by the majority rule of ``pipeline.model.candidates`` on the
  network's cell classes.

Runs on the GPU when one is present (``device = "auto"``), otherwise on the CPU.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.model.candidate_classifier import CandidateClassifier, decide, faint
from pipeline.model.candidate_features import (CandidateMap, Candidates, candidate_patches, describe_candidates,
                                         map_candidates, network_opinion, past_the_gate, wide_patches)
from pipeline.model.candidates import labels_from_predictions
from pipeline.errors import ModelError
from pipeline.model.identity import AlgorithmIdentity
from pipeline.model.unet import UNet3D
from pipeline.model.noise import noise_sd_hu
from pipeline.model.object_consensus import ConsensusRule, agree_within_objects
from pipeline.model.preprocess import AIR_HU, CropBox, Prepared, Preprocess, cell_index, extract, insert, local_box
from pipeline.reading.series import CTSeries
from pipeline.model.weights import WeightsFile, load_weights

log = logging.getLogger(__name__)


# The weights that ship with the code (models/ beside the packages): the default of
# ``[model] weights`` wherever the config file lives, so a minimal config works anywhere.
BUNDLED_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "cacnode-v1.pt"


@dataclass(frozen=True)
class ModelConfig:
    """Config section ``[model]``."""

    weights: Path = BUNDLED_WEIGHTS  # a relative path in a config file is taken from the file's folder
    device: Literal["auto", "cuda", "cpu"] = "auto"  # "auto": the GPU when torch sees one
    # Candidate lesions are formed at this HU (calcium-scoring.md, "From model
    # output to labels"); keep it equal to, or below, [scoring] threshold_hu.
    candidate_threshold_hu: float = 130.0
    candidate_connectivity: Literal[4, 8] = 8  # as [scoring] connectivity
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default (one per core)

    def __post_init__(self) -> None:
        if self.cpu_threads < 0:
            raise ValueError(f"model.cpu_threads must be >= 0, got {self.cpu_threads}")


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable ``cuda`` is a ModelError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but torch sees no CUDA GPU (use --device cpu)")
    if requested not in ("cuda", "cpu"):
        raise ModelError(f"unknown device {requested!r}; expected auto, cuda or cpu")
    return torch.device(requested)


class Labeller:
    """The trained model with its preprocessing, ready to label series."""

    def __init__(self, weights: WeightsFile, config: ModelConfig, device: torch.device) -> None:
        self.weights = weights
        self.config = config
        self.device = device
        self.preprocess = Preprocess(weights.preprocess, device)
        self.model: UNet3D = weights.build_model().to(device)
        self.classifier: CandidateClassifier | None = (
            weights.classifier.build().to(device) if weights.classifier is not None else None
        )

    @classmethod
    def load(cls, config: ModelConfig, device: str | None = None) -> Labeller:
        """Load the weights named by ``config``; ``device`` overrides ``config.device``."""
        target = resolve_device(device or config.device)
        if target.type == "cpu" and config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        weights = load_weights(Path(config.weights))
        log.info("model %s %s (uid %s) on %s", weights.name, weights.version, weights.uid, target)
        return cls(weights, config, target)

    @property
    def identity(self) -> AlgorithmIdentity:
        return self.weights.identity()

    def predict(self, series: CTSeries) -> np.ndarray:
        """uint8 labels (0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA), same shape as ``series.hu``."""
        g = series.geometry
        return self.predict_volume(series.hu, g.pixel_spacing_mm, g.increment_mm, series.series_uid)

    def heart_box(self, series: CTSeries) -> CropBox:
        """The heart crop :meth:`predict` labels ``series`` in (the localiser again: a pure function of the HU,
        about 0.05 s), for ``pipeline.scoring.uncounted``."""
        g = series.geometry
        return self.preprocess.crop_box(series.hu, g.pixel_spacing_mm, g.increment_mm)

    def predict_volume(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
                       name: str = "volume") -> np.ndarray:
        """As :meth:`predict` on a bare HU volume (ascending slices); ``name`` identifies it in logs."""
        box = self.preprocess.crop_box(hu, pixel_spacing_mm, increment_mm)
        if not box.found:
            log.warning("series %s: no lungs found; heart crop centred on the body, all slices kept", name)
        hu_crop = extract(hu, box, AIR_HU)
        if self.classifier is None:
            prepared = self.preprocess.from_crop(hu_crop, box, pixel_spacing_mm, increment_mm)
            return self.to_labels(hu, prepared, self.logits(prepared))
        with ThreadPoolExecutor(max_workers=1) as beside:
            # The candidates need the HU alone: they are found while the network runs (on a GPU the
            # CPU would otherwise wait).  The same numbers as in turn (``look_closer``).
            survey = beside.submit(survey_crop, hu_crop, pixel_spacing_mm, increment_mm,
                                   self.config.candidate_threshold_hu, self.config.candidate_connectivity)
            prepared = self.preprocess.from_crop(hu_crop, box, pixel_spacing_mm, increment_mm)
            logits = self.logits(prepared, on_device=True)  # the softmax runs where they are
            return self.to_labels(hu, prepared, logits, survey=survey.result())

    def logits(self, prepared: Prepared, on_device: bool = False) -> torch.Tensor:
        """Network output for one prepared image, (n_classes, z, grid, grid) float32 on the CPU
        (``on_device``: left where the network ran)."""
        return run_network(self.model, prepared.image, self.weights.model.z_multiple, self.device, on_device)

    def to_labels(self, hu: np.ndarray, prepared: Prepared, logits: torch.Tensor,
                  classifier_bias: float | None = None, faint_bias: float | None = None,
                  survey: CropSurvey | None = None) -> np.ndarray:
        """Labels on the original voxels from the network output, on the CPU or where it ran
        (``classifier_bias`` and ``faint_bias`` override the stored ones; ``survey``: the crop's
        candidates, when already found)."""
        if self.classifier is None or self.weights.classifier is None:
            return grid_to_labels(hu, prepared.box, classify(logits, self.weights.background_bias),
                                  self.config.candidate_threshold_hu, self.config.candidate_connectivity)
        stored = self.weights.classifier
        bias = stored.background_bias if classifier_bias is None else classifier_bias
        extra = stored.faint_bias if faint_bias is None else faint_bias
        decisions = self.decide_candidates(hu, prepared, logits, survey)
        return self.place(hu, prepared, decisions.labels(bias, extra))

    def decide_candidates(self, hu: np.ndarray, prepared: Prepared, logits: torch.Tensor,
                          survey: CropSurvey | None = None) -> CandidateDecisions:
        """The lesion classifier's logits for every candidate of the heart crop (needs a classifier)."""
        assert self.classifier is not None, "the weights file has no lesion classifier"
        looked = look_closer(hu, prepared, logits, self.config.candidate_threshold_hu,
                             self.config.candidate_connectivity, self.classifier.config.gate,
                             wide=self.classifier.config.wide_channels > 0, survey=survey)
        stored = self.weights.classifier
        return decide_candidates(self.classifier, looked, stored.faint_peak_slope, stored.object_consensus)

    @staticmethod
    def place(hu: np.ndarray, prepared: Prepared, crop_labels: np.ndarray) -> np.ndarray:
        """Labels of the heart crop back on the whole volume (0 outside the crop)."""
        labels = np.zeros(hu.shape, dtype=np.uint8)
        insert(labels, crop_labels, prepared.box)
        return labels


@dataclass(frozen=True)
class CandidateDecisions:
    """The candidates of a heart crop and the classifier's logits for those past the gate."""

    candidates: Candidates
    looked_at: np.ndarray  # 0-based indices of the candidates past the gate
    logits: torch.Tensor  # (len(looked_at), n_classes)
    noise_sd_hu: float  # of the heart crop (``pipeline.model.noise``)
    faint_peak_slope: float = 0.0  # the weights file's (``candidate_classifier.faint``)
    consensus: ConsensusRule | None = None  # the weights file's vote within objects; None: each candidate alone

    def classes(self, background_bias: float, faint_bias: float = 0.0) -> np.ndarray:
        """uint8 class of each candidate looked at (``faint_bias`` more for the faint ones)."""
        is_faint = torch.from_numpy(faint(self.candidates.features[self.looked_at], self.noise_sd_hu,
                                          self.faint_peak_slope))
        return decide(self.logits, background_bias, is_faint, faint_bias).numpy().astype(np.uint8)

    def labels(self, background_bias: float, faint_bias: float = 0.0) -> np.ndarray:
        """uint8 labels of the crop: each candidate looked at takes its class, every other voxel 0."""
        return self.labels_of(self.classes(background_bias, faint_bias))

    def labels_of(self, classes: np.ndarray) -> np.ndarray:
        """uint8 labels of the crop, given the class of each candidate looked at (then the vote within
        calcified objects, when the weights file has one)."""
        per_candidate = np.zeros(self.candidates.count, dtype=np.uint8)
        per_candidate[self.looked_at] = classes
        found = self.candidates
        if self.consensus is not None and found.object_of is not None:
            per_candidate = agree_within_objects(per_candidate, found.weight, found.object_of, found.object_mm3,
                                                 self.consensus)
        per_voxel = per_candidate[self.candidates.which]
        labelled = np.flatnonzero(per_voxel)  # few: written at their voxels, not mapped over the whole crop
        labels = np.zeros(self.candidates.ids.shape, dtype=np.uint8)
        labels.reshape(-1)[self.candidates.voxels[labelled]] = per_voxel[labelled]
        return labels


def decide_candidates(classifier: CandidateClassifier, looked: LookedAt, faint_peak_slope: float,
                      consensus: ConsensusRule | None = None) -> CandidateDecisions:
    """The classifier's logits (on the CPU) for the candidates past the gate; it runs where its weights are
    (``faint_peak_slope`` and ``consensus``: the weights file's)."""
    scores = torch.zeros((0, classifier.config.n_classes))
    if looked.indices.size:
        device = classifier.feature_mean.device
        inputs = [None if a is None else torch.from_numpy(a).to(device)
                  for a in (looked.candidates.features[looked.indices], looked.patches, looked.wide)]
        with torch.inference_mode():
            scores = classifier(*inputs).cpu()
    return CandidateDecisions(looked.candidates, looked.indices, scores, looked.noise_sd_hu, faint_peak_slope,
                              consensus)


@dataclass(frozen=True)
class LookedAt:
    """The candidates of a heart crop, those past the gate and their image patches."""

    candidates: Candidates
    indices: np.ndarray  # 0-based indices of the candidates past the gate
    patches: np.ndarray  # float32 (len(indices), PATCH_CHANNELS, side, side)
    wide: np.ndarray | None  # float32 (len(indices), WIDE_CHANNELS, wide side, wide side), None when not asked for
    noise_sd_hu: float  # of the heart crop (``pipeline.model.noise``)


@dataclass(frozen=True)
class CropSurvey:
    """What the lesion classifier needs of a heart crop that its HU alone gives (``survey_crop``)."""

    hu_crop: np.ndarray  # ``extract`` of the volume with the prepared box (air outside the image)
    candidates: CandidateMap
    noise_sd_hu: float  # ``pipeline.model.noise``


def survey_crop(hu_crop: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float,
                threshold_hu: float, connectivity: int) -> CropSurvey:
    """The candidates of a heart crop and its noise level: no network needed."""
    with ThreadPoolExecutor(max_workers=1) as beside:
        noise = beside.submit(noise_sd_hu, hu_crop)  # numpy work that lets go of the GIL, beside the labelling
        found = map_candidates(hu_crop, pixel_spacing_mm, increment_mm, threshold_hu, connectivity)
        return CropSurvey(hu_crop, found, noise.result())


def look_closer(hu: np.ndarray, prepared: Prepared, logits: torch.Tensor, threshold_hu: float, connectivity: int,
                gate: float, wide: bool = True, survey: CropSurvey | None = None) -> LookedAt:
    """What the lesion classifier sees of a volume's heart crop: every candidate's features, the gate, the patches.

    ``hu`` is the whole volume that ``prepared`` and ``logits`` came from;
    ``survey``, when given, is ``survey_crop`` of its crop with the same
    threshold and connectivity (inference makes it while the network runs).
    One function for inference and for the classifier's training rows
    (``training.candidate_data``), so the two cannot drift.
    """
    spacing, increment = prepared.pixel_spacing_mm, prepared.increment_mm
    if survey is None:
        survey = survey_crop(extract(hu, prepared.box, AIR_HU), spacing, increment, threshold_hu, connectivity)
    hu_crop, found, box = survey.hu_crop, survey.candidates, local_box(prepared.box)
    probabilities = torch.softmax(logits.float(), dim=0).cpu().numpy()  # on the GPU when the logits are there
    opinion = network_opinion(found, probabilities, box, gate)
    look = np.flatnonzero(past_the_gate(opinion))
    with ThreadPoolExecutor(max_workers=1) as beside:
        # The patches need only the candidates' centres: gathered beside the features of those past the gate.
        patches = beside.submit(candidate_patches, hu_crop, found, look, spacing, increment)
        described = describe_candidates(hu_crop, found, opinion, box, spacing, increment)
        # The wide view costs about 0.05 s a series: only for a classifier that uses it.
        views = wide_patches(hu_crop, found, look, spacing, increment) if wide else None
        return LookedAt(described, look, patches.result(), views, survey.noise_sd_hu)


def run_network(model: torch.nn.Module, image: np.ndarray, z_multiple: int, device: torch.device,
                on_device: bool = False) -> torch.Tensor:
    """Logits of one prepared image: (C, z, grid, grid) -> (n_classes, z, grid, grid) float32 on the CPU
    (``on_device``: on ``device``)."""
    n = image.shape[1]
    padded = int(np.ceil(max(n, 1) / z_multiple) * z_multiple)
    if padded != n:  # repeat the last slice; its predictions are discarded
        image = np.concatenate([image, np.repeat(image[:, -1:], padded - n, axis=1)], axis=1)
    x = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                logits = model(x)
        else:
            logits = model(x)
    logits = logits[0, :, :n].float()
    return logits if on_device else logits.cpu()


def classify(logits: torch.Tensor, background_bias: float = 0.0) -> np.ndarray:
    """Class per grid cell (z, grid, grid) uint8: argmax after adding ``background_bias`` to class 0."""
    if background_bias:
        logits = logits.clone()
        logits[0] += background_bias
    return logits.argmax(dim=0).to(torch.uint8).numpy()


def grid_to_labels(
    hu: np.ndarray,
    box: CropBox,
    grid_classes: np.ndarray,
    threshold_hu: float,
    connectivity: int,
) -> np.ndarray:
    """Grid predictions back on the original voxels (nearest cell), then the candidate majority rule.

    Voxels outside the crop (removed slices, outside the heart square) are 0.
    """
    rows, cols = cell_index(box, grid_classes.shape[1])
    r0, c0 = max(box.row0, 0), max(box.col0, 0)
    r1, c1 = min(box.row0 + box.rows, hu.shape[1]), min(box.col0 + box.cols, hu.shape[2])
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if r1 <= r0 or c1 <= c0 or box.z1 <= box.z0:
        return labels
    predicted = grid_classes[:, rows[r0 - box.row0 : r1 - box.row0]][:, :, cols[c0 - box.col0 : c1 - box.col0]]
    labels[box.z0 : box.z1, r0:r1, c0:c1] = labels_from_predictions(
        hu[box.z0 : box.z1, r0:r1, c0:c1], predicted, threshold_hu, connectivity
    )
    return labels
