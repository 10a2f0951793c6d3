"""Config section ``[training]``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingConfig:
    max_epochs: int = 1
