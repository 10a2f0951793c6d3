"""Read the scores back from one of our TID 1500 SRs (``report.md``: "our own reader").

Tolerant when reading: measurement groups are recognised by their finding
site (CID 3016, or 41801008 "Coronary artery" for the total) and numbers by
their concept name, whatever order they come in.  The exact value is taken
from Floating Point Value (0040,A161) when present, else from Numeric Value.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_sr import codes
from pipeline.scoring.arteries import BY_CODE, CORONARY_ARTERY_CODE
from pipeline.errors import CacnodeError

_IMAGING_MEASUREMENTS = "126010"
_MEASUREMENT_GROUP = "125007"
_FINDING_SITE = "363698007"
_NUMBERS = {
    codes.AGATSTON.value: "agatston",
    codes.VOLUME.value: "volume_mm3",
    codes.MASS.value: "mass_mg",
    codes.LESION_COUNT.value: "lesions",
}
_TOTAL = "total"


class ReportError(CacnodeError):
    """An SR that is not a calcium score report of ours, or lacks some of its figures."""


def read_sr_scores(ds_or_path: Dataset | Path | str) -> dict[str, Any]:
    """The scores of a calcium score SR, shaped as the matching parts of :func:`pipeline.scoring.result.to_json`.

    Parameters
    ----------
    ds_or_path
        The SR dataset, or the path of its file.

    Returns
    -------
    dict
        ``{"total": {...}, "arteries": {"LM": {...}, ...}, "risk_category": str,
        "cac_drs": str}``, each score dict with ``agatston``, ``volume_mm3``,
        ``mass_mg`` (``None`` when the SR has no mass) and ``lesions``.

    Raises
    ------
    ReportError
        When the file is not DICOM or misses a group or figure of ours.
    """
    ds, name = _dataset(ds_or_path)
    groups: dict[str, dict[str, Any]] = {}
    categories: dict[str, str] = {}
    for group in _measurement_groups(ds):
        site = _finding_site(group)
        if site == CORONARY_ARTERY_CODE[0]:
            key = _TOTAL
        elif site in BY_CODE:
            key = BY_CODE[site].name
        else:
            continue
        scores: dict[str, Any] = {"agatston": None, "volume_mm3": None, "mass_mg": None, "lesions": None}
        for item in group.get("ContentSequence", []):
            concept = _concept(item)
            if item.ValueType == "NUM" and concept in _NUMBERS:
                scores[_NUMBERS[concept]] = _number(item)
        for field in ("agatston", "volume_mm3", "lesions"):
            if scores[field] is None:
                raise ReportError(f"{name}: the {key} group has no {field}")
        scores["lesions"] = int(round(scores["lesions"]))
        groups[key] = scores
    # Risk category and CAC-DRS: CODE items anywhere in the tree (we write them in
    # the Qualitative Evaluations container; older reports had them in the total group).
    for item in _all_items(ds):
        concept = _concept(item)
        if item.get("ValueType") == "CODE" and concept in (codes.RISK_CATEGORY.value, codes.CAC_DRS.value):
            categories[concept] = str(item.ConceptCodeSequence[0].CodeValue)
    missing = [key for key in (*(a.name for a in BY_CODE.values()), _TOTAL) if key not in groups]
    if missing:
        raise ReportError(f"{name}: no measurement group for {', '.join(missing)}")
    for concept, label in ((codes.RISK_CATEGORY.value, "risk category"), (codes.CAC_DRS.value, "CAC-DRS")):
        if concept not in categories:
            raise ReportError(f"{name}: no {label} in the SR")
    return {
        "total": groups[_TOTAL],
        "arteries": {a.name: groups[a.name] for a in sorted(BY_CODE.values(), key=lambda a: a.label)},
        "risk_category": categories[codes.RISK_CATEGORY.value],
        "cac_drs": categories[codes.CAC_DRS.value],
    }


def _dataset(ds_or_path: Dataset | Path | str) -> tuple[Dataset, str]:
    if isinstance(ds_or_path, Dataset):
        return ds_or_path, f"SR {ds_or_path.get('SOPInstanceUID', '?')}"
    try:
        return pydicom.dcmread(ds_or_path), str(ds_or_path)
    except (InvalidDicomError, OSError) as exc:
        raise ReportError(f"{ds_or_path}: cannot read as DICOM: {exc}") from None


def _concept(item: Dataset) -> str | None:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else None


def _measurement_groups(ds: Dataset) -> Iterator[Dataset]:
    for container in ds.get("ContentSequence", []):
        if container.ValueType == "CONTAINER" and _concept(container) == _IMAGING_MEASUREMENTS:
            for group in container.get("ContentSequence", []):
                if group.ValueType == "CONTAINER" and _concept(group) == _MEASUREMENT_GROUP:
                    yield group


def _all_items(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _all_items(child)


def _finding_site(group: Dataset) -> str | None:
    for item in group.get("ContentSequence", []):
        if item.ValueType == "CODE" and _concept(item) == _FINDING_SITE:
            return str(item.ConceptCodeSequence[0].CodeValue)
    return None


def _number(item: Dataset) -> float:
    value = item.MeasuredValueSequence[0]
    if "FloatingPointValue" in value:
        return float(value.FloatingPointValue)
    return float(value.NumericValue)
