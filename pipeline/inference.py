"""Model inference: CT series in, artery label map out (config section ``[model]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    weights: Path = Path("models/cacnode-v1.pt")
    device: Literal["auto", "cuda", "cpu"] = "auto"
