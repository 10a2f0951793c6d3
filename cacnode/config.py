"""The whole ``config.toml``: one frozen dataclass per section, each owned by its component.

Each component receives its own section, never this whole object (STYLE.md 8).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cacnode.settings import ConfigError, from_table
from dicom_sr.config import ReportConfig
from pipeline.reading.eligibility import EligibilityRules
from pipeline.model.inference import ModelConfig
from pipeline.scoring.agatston import ScoringProfile
from scp.config import DatabaseConfig, Destination, DicomWebDestination, ScpConfig, SeriesConfig, StorageConfig
from training.config import TrainingConfig


@dataclass(frozen=True)
class Config:
    scp: ScpConfig = field(default_factory=ScpConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    # C-STORE or STOW-RS peers, told apart by each entry's ``kind`` ("dimse" when absent)
    destinations: tuple[Destination | DicomWebDestination, ...] = ()
    scoring: ScoringProfile = field(default_factory=ScoringProfile)
    eligibility: EligibilityRules = field(default_factory=EligibilityRules)
    model: ModelConfig = field(default_factory=ModelConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        # A destination's key names its deliveries in the database; two entries
        # with one key would be one peer sent every report twice.
        seen: dict[str, int] = {}
        for i, d in enumerate(self.destinations):
            if d.key in seen:
                raise ValueError(f"destinations[{i}] is the same destination as destinations[{seen[d.key]}] ({d.key})")
            seen[d.key] = i


def load_config(path: Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the built-in defaults.

    Relative paths in the file are taken relative to the file's own folder, so
    the node behaves the same whatever directory it is started from.
    """
    if path is None:
        return _resolve_paths(Config(), Path.cwd())
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = from_table(Config, doc, "config")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}".replace(": config.", ": ").replace(": config: ", ": ")) from None
    return _resolve_paths(config, path.resolve().parent)


def _resolve_paths(obj, base: Path):
    """Return ``obj`` with every relative ``Path`` field made absolute against ``base``."""
    if isinstance(obj, tuple):
        return tuple(_resolve_paths(o, base) for o in obj)
    if not dataclasses.is_dataclass(obj):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            changes[f.name] = value if value.is_absolute() else base / value
        elif dataclasses.is_dataclass(value) or isinstance(value, tuple):
            changes[f.name] = _resolve_paths(value, base)
    return dataclasses.replace(obj, **changes) if changes else obj
