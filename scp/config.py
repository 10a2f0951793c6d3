"""Config sections of the node: ``[scp]``, ``[series]``, ``[storage]``, ``[[destinations]]``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ScpConfig:
    ae_title: str = "CACNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty admits any caller (a warning is logged)


@dataclass(frozen=True)
class SeriesConfig:
    quiet_seconds: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    directory: Path = Path("var/cacnode")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int
