"""Config section ``[report]``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportConfig:
    write_seg: bool = True
    write_summary: bool = True
