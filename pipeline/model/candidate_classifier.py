"""The lesion classifier: a candidate's features and image patch -> background or one of the four arteries.

The second stage of the model (the first is ``pipeline.model.unet.UNet3D``), the
classic two-stage design of automatic calcium scoring: the network marks
where coronary calcium may be on its 1.4 mm grid, then each candidate lesion
gets a closer look at native resolution.  These branches are joined:

- a small MLP over the feature rows of ``pipeline.model.candidate_features``
  (network probabilities, size, density, position, surroundings); the
  standardisation of the features is part of the module (buffers), so the
  weights file alone rebuilds it;
- a small 2-D CNN over the candidate's image patch (``candidate_patches``:
  neighbouring slices as channels plus the candidate's mask), which sees what
  a reader sees -- whether the calcium sits on the wall of the aorta or of a
  coronary artery in epicardial fat;
- optionally (``wide_channels``), a smaller CNN over a coarse, wider view
  (``wide_patches``, 60 mm) that shows the whole aortic root beside a
  calcification near the ostia.  Measured neutral so far (model card), so off
  by default.

Faint candidates (under ``FAINT_AREA_MM2`` and peaking under ``FAINT_PEAK_HU``,
a limit that rises with the series' noise since 1.3.2, in a series whose
noise SD is at least ``FAINT_NOISE_SD_HU``) can be held to
a stricter bias (``faint_bias``, on top of the background bias): that is
where noise specks and the faintest plaques look alike, and a false one turns
a zero-calcium scan into a positive one while a missed one costs under 3
Agatston (under 6 where the risen limit passes 200 HU; model card).  In a
quieter series such a spot is rarely noise.

Candidates whose highest network coronary probability is below ``gate`` are
background without a closer look: that keeps the CPU cost per series small
(bone makes thousands of candidates) and was measured to drop almost no
coronary candidate (model card).  A plain ``nn.Module``, trained by
``training.candidate_module``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.candidate_features import N_FEATURES, PATCH_CHANNELS, area_and_peak

# Faint candidates: under 3 mm^2 and peaking under 170 HU (density weight 1, so at most 3 Agatston
# each), in a noisy series (``pipeline.model.noise``; chosen on development phantoms 62000-62399, model card).
FAINT_AREA_MM2 = 3.0
FAINT_PEAK_HU = 170.0
FAINT_NOISE_SD_HU = 27.0
# Noise specks peak higher the noisier the series: since 1.3.2 the peak limit rises by this many HU
# per HU of noise SD over FAINT_NOISE_SD_HU (232 HU at 40 HU of noise).  A newly fitted classifier
# takes it; a weights file without it keeps the fixed 170 HU (``ClassifierWeights.faint_peak_slope``).
FAINT_PEAK_SLOPE = 4.8


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture arguments; saved in the weights file."""

    n_features: int = N_FEATURES
    n_classes: int = N_CLASSES
    hidden: tuple[int, ...] = (64, 64)  # MLP branch
    conv_channels: tuple[int, ...] = (16, 32, 64)  # CNN branch, one 2x pooling after each but the last
    patch_channels: int = PATCH_CHANNELS
    wide_channels: int = 0  # WIDE_CHANNELS for the wide branch; 0 (files without it): none
    wide_conv_channels: tuple[int, ...] = (16, 32)
    dropout: float = 0.1
    gate: float = 0.1  # candidates with a network coronary probability below this are background


class CandidateClassifier(nn.Module):
    """(features (n, n_features), patches (n, patch_channels, side, side), wide (n, wide_channels, wide side,
    wide side)) -> logits (n, n_classes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        layers: list[nn.Module] = []
        width = config.n_features
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.01), nn.Dropout(config.dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.cnn = _conv_branch(config.patch_channels, config.conv_channels)
        width += config.conv_channels[-1]
        self.wide = None
        if config.wide_channels:
            self.wide = _conv_branch(config.wide_channels, config.wide_conv_channels)
            width += config.wide_conv_channels[-1]
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.n_classes))

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Centre and scale the inputs by these training rows' statistics."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-3))

    def forward(self, features: torch.Tensor, patches: torch.Tensor, wide: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.mlp((features - self.feature_mean) / self.feature_std), self.cnn(patches)]
        if self.wide is not None:
            if wide is None:
                raise ValueError("this classifier needs the wide view of each candidate")
            parts.append(self.wide(wide))
        return self.head(torch.cat(parts, dim=1))


def _conv_branch(channels_in: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Conv-BN-LeakyReLU blocks, a 2x pooling after each but the last, then global average pooling."""
    layers: list[nn.Module] = []
    c_in = channels_in
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.01)]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def decide(logits: torch.Tensor, background_bias: float, faint: torch.Tensor | None = None,
           faint_bias: float = 0.0) -> torch.Tensor:
    """Class per candidate (int64): argmax after adding ``background_bias`` to the background logit,
    and ``faint_bias`` more for the candidates marked in ``faint`` (bool per row)."""
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    shifted = logits.clone()
    shifted[:, 0] += background_bias
    if faint is not None and faint_bias:
        shifted[faint, 0] += faint_bias
    return shifted.argmax(dim=1)


def faint(features: np.ndarray, noise_sd_hu: float, peak_slope: float = 0.0) -> np.ndarray:
    """Boolean per feature row: the candidate is under ``FAINT_AREA_MM2`` and peaks under the faint limit,
    and its series' noise SD (``pipeline.model.noise.noise_sd_hu``) is at least ``FAINT_NOISE_SD_HU``.

    The limit is ``FAINT_PEAK_HU`` plus ``peak_slope`` HU per HU of noise SD over ``FAINT_NOISE_SD_HU``.
    """
    area, peak = area_and_peak(features)
    limit = FAINT_PEAK_HU + peak_slope * max(noise_sd_hu - FAINT_NOISE_SD_HU, 0.0)
    return (area < FAINT_AREA_MM2) & (peak < limit) & (noise_sd_hu >= FAINT_NOISE_SD_HU)
