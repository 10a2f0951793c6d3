"""Read the scores back from one of our TID 1500 SRs (``report.md``: "our own reader").

The content tree is parsed by highdicom: :class:`highdicom.sr.Comprehensive3DSR`
and :class:`highdicom.sr.MeasurementReport` give the TID 1501 measurement
groups (``get_image_measurement_groups``), their finding sites and their
measurements (``get_measurements``, whose value is the exact Floating Point
Value (0040,A161) when present, else Numeric Value).  Tolerant when reading:
groups are recognised by their finding site (CID 3016, or 41801008
"Coronary artery" for the total) and numbers by their concept name,
whatever order they come in; ROI groups (TID 1410, TID 1411) are not scores
of an artery and are left alone.

Written by hand, because highdicom has no accessor for it: the risk category
and CAC-DRS, CODE items of the Qualitative Evaluations container that TID 1500
puts beside the Imaging Measurements (row 12) -- older reports of ours had
them in the total's group, which highdicom's ``get_qualitative_evaluations``
reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_sr import codes
from pipeline.scoring.arteries import BY_CODE, CORONARY_ARTERY_CODE
from pipeline.errors import CacnodeError

_NUMBERS = {
    codes.AGATSTON.value: "agatston",
    codes.VOLUME.value: "volume_mm3",
    codes.MASS.value: "mass_mg",
    codes.LESION_COUNT.value: "lesions",
}
_CATEGORIES = (codes.RISK_CATEGORY.value, codes.CAC_DRS.value)
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
        When the file is not DICOM, not a TID 1500 Comprehensive 3D SR, or
        misses a group or figure of ours.
    """
    ds, name = _dataset(ds_or_path)
    report = _measurement_report(ds, name)
    groups: dict[str, dict[str, Any]] = {}
    categories: dict[str, str] = {}
    for group in report.get_image_measurement_groups():
        sites = [str(site.ConceptCodeSequence[0].CodeValue) for site in group.finding_sites]
        if CORONARY_ARTERY_CODE[0] in sites:
            key = _TOTAL
        else:
            arteries = [BY_CODE[site].name for site in sites if site in BY_CODE]
            if not arteries:
                continue
            key = arteries[0]
        scores: dict[str, Any] = {"agatston": None, "volume_mm3": None, "mass_mg": None, "lesions": None}
        for measurement in group.get_measurements():
            concept = str(measurement.name.value)
            if concept in _NUMBERS:
                scores[_NUMBERS[concept]] = float(measurement.value)
        for field in ("agatston", "volume_mm3", "lesions"):
            if scores[field] is None:
                raise ReportError(f"{name}: the {key} group has no {field}")
        scores["lesions"] = int(round(scores["lesions"]))
        groups[key] = scores
        categories.update(_category_codes(group.get_qualitative_evaluations()))
    categories.update(_category_codes(_root_qualitative_evaluations(report)))
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


def _measurement_report(ds: Dataset, name: str) -> hd.sr.MeasurementReport:
    """The TID 1500 content of ``ds``, parsed by highdicom (the caller's dataset is left unchanged).

    A highdicom SR object is parsed again too: its ``content`` was taken when
    it was built, and the dataset may have changed since.
    """
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=True)
        return hd.sr.MeasurementReport.from_sequence(sr.content)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{name}: not a TID 1500 Comprehensive 3D SR: {exc}") from None


def _root_qualitative_evaluations(report: hd.sr.MeasurementReport) -> list[Dataset]:
    """Items of the Qualitative Evaluations containers directly under the report's root (TID 1500 row 12)."""
    items: list[Dataset] = []
    for container in report[0].get("ContentSequence", []):
        if container.get("ValueType") == "CONTAINER" and container.get("ContentSequence") is not None:
            name = container.ConceptNameCodeSequence[0]
            if (str(name.CodeValue), str(name.CodingSchemeDesignator)) == ("C0034375", "UMLS"):
                items.extend(container.ContentSequence)
    return items


def _category_codes(items: Iterable[Dataset]) -> dict[str, str]:
    """Risk category and CAC-DRS among ``items``: concept code value -> coded value."""
    found = {}
    for item in items:
        if item.get("ValueType") != "CODE":
            continue
        concept = str(item.ConceptNameCodeSequence[0].CodeValue)
        if concept in _CATEGORIES:
            found[concept] = str(item.ConceptCodeSequence[0].CodeValue)
    return found
