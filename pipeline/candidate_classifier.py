"""The lesion classifier: a candidate's features -> background or one of the four arteries.

The second stage of the model (the first is ``pipeline.model.UNet3D``).  A
small MLP over the feature rows of ``pipeline.candidate_features``; the
feature standardisation is part of the module (buffers), so the weights file
alone rebuilds it.  A plain ``nn.Module``, trained by
``training.candidate_module``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.arteries import N_CLASSES
from pipeline.candidate_features import N_FEATURES


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture arguments; saved in the weights file."""

    n_features: int = N_FEATURES
    n_classes: int = N_CLASSES
    hidden: tuple[int, ...] = (64, 64)
    dropout: float = 0.1


class CandidateClassifier(nn.Module):
    """(n, n_features) -> logits (n, n_classes)."""

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
        layers.append(nn.Linear(width, config.n_classes))
        self.net = nn.Sequential(*layers)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Centre and scale the inputs by these training rows' statistics."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_std)


def decide(logits: torch.Tensor, background_bias: float) -> torch.Tensor:
    """Class per candidate (int64): argmax after adding ``background_bias`` to the background logit."""
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    shifted = logits.clone()
    shifted[:, 0] += background_bias
    return shifted.argmax(dim=1)
