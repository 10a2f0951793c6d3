"""Config section ``[report]``: which report objects are written and how their series are named."""

from __future__ import annotations

from dataclasses import dataclass

# report.md: every object carries this caution in its series description.
CAUTION_PHRASE = "not for diagnostic use"
_MAX_LO = 64  # Series Description is LO, at most 64 characters (PS3.5 6.2)


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report objects (``report.md``).

    Series numbers are stable so a PACS hanging protocol can place the objects;
    every series description must contain :data:`CAUTION_PHRASE`.
    """

    write_seg: bool = True  # the lesion SEG; skipped anyway when no artery has calcium
    write_summary: bool = True  # the Secondary Capture summary image
    sr_series_number: int = 9901
    seg_series_number: int = 9902
    summary_series_number: int = 9903
    sr_series_description: str = "Calcium score SR - not for diagnostic use"
    seg_series_description: str = "Calcium lesions SEG - not for diagnostic use"
    summary_series_description: str = "Calcium score summary - not for diagnostic use"
    # Printed on the summary image and written as a text item of the SR.
    caution: str = "Research software output, not for diagnostic use. A physician must check every score."
    key_slices: int = 4  # slices shown on the summary image (1-6)
    summary_width_px: int = 1600  # summary image width; >= 1024 to read on a reading-room monitor

    def __post_init__(self) -> None:
        for name in ("sr", "seg", "summary"):
            number = getattr(self, f"{name}_series_number")
            if not 1 <= number <= 2**31 - 1:
                raise ValueError(f"report.{name}_series_number must be 1 to 2147483647, got {number}")
            description = getattr(self, f"{name}_series_description")
            if len(description) > _MAX_LO:
                raise ValueError(f"report.{name}_series_description is longer than {_MAX_LO} characters")
            if CAUTION_PHRASE not in description.lower():
                raise ValueError(f"report.{name}_series_description must contain {CAUTION_PHRASE!r}")
        if not self.caution.strip():
            raise ValueError("report.caution must not be empty")
        if not 1 <= self.key_slices <= 6:
            raise ValueError(f"report.key_slices must be 1 to 6, got {self.key_slices}")
        if not 1024 <= self.summary_width_px <= 4096:
            raise ValueError(f"report.summary_width_px must be 1024 to 4096, got {self.summary_width_px}")
