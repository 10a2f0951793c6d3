"""The four coronary arteries scored, their label values and their codes.

Label values follow ``calcium-scoring.md`` (0 background, 1 LM, 2 LAD, 3 LCX,
4 RCA); the SNOMED CT codes are the finding sites of CID 3016 named in
``report.md``.  Every module that names an artery imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artery:
    """One scored coronary artery."""

    name: str  # short name used in JSON and reports
    label: int  # value in a label map
    sct_code: str  # SNOMED CT concept id (CID 3016)
    meaning: str  # code meaning as written in DICOM


ARTERIES: tuple[Artery, ...] = (
    Artery("LM", 1, "3227004", "Left main coronary artery"),
    Artery("LAD", 2, "59438005", "Left anterior descending coronary artery"),
    Artery("LCX", 3, "57396003", "Left circumflex coronary artery"),
    Artery("RCA", 4, "13647002", "Right coronary artery"),
)
ARTERY_NAMES: tuple[str, ...] = tuple(a.name for a in ARTERIES)
BY_NAME: dict[str, Artery] = {a.name: a for a in ARTERIES}
BY_CODE: dict[str, Artery] = {a.sct_code: a for a in ARTERIES}
N_CLASSES = len(ARTERIES) + 1  # background + arteries

# The total is reported against the coronary tree as a whole.
CORONARY_ARTERY_CODE = ("41801008", "SCT", "Coronary artery")
