"""Read the scores back from one of our TID 1500 SRs (``report.md``: "our own reader").

The content tree is parsed by highdicom: :class:`highdicom.sr.Comprehensive3DSR`
and :class:`highdicom.sr.MeasurementReport` give the report's root, and
:class:`highdicom.sr.Measurement` reads each number with its finding sites
(its value is the exact Floating Point Value (0040,A161) when present, else
Numeric Value).  Tolerant when reading: figures are recognised by their
finding site (CID 3016, or 41801008 "Coronary artery" for the total) and
their concept name, whatever order they come in; lesion groups (TID 1410)
are not scores of an artery and are left alone.

Written by hand, because highdicom has no accessor for them: the Derived
Imaging Measurements container (TID 1500 row 10, TID 1420) where the total
and artery scores are, and the risk category and CAC-DRS, CODE items of the
Qualitative Evaluations container (row 12).  Reports of older versions had
the scores in TID 1501 measurement groups (``get_image_measurement_groups``),
and the categories in the total's group; both are still read.
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
_DERIVED_MEASUREMENTS = ("126011", "DCM")
_QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS")


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
        key = _site_key(group.finding_sites)
        if key is not None:
            groups[key] = _scores(group.get_measurements(), key, name)
            categories.update(_category_codes(group.get_qualitative_evaluations()))
    derived: dict[str, list[hd.sr.Measurement]] = {}
    for item in _root_container_items(report, _DERIVED_MEASUREMENTS):
        if item.get("ValueType") == "NUM":
            measurement = hd.sr.Measurement.from_sequence([item])
            key = _site_key(measurement.finding_sites)
            if key is not None:
                derived.setdefault(key, []).append(measurement)
    for key, measurements in derived.items():
        groups[key] = _scores(measurements, key, name)
    categories.update(_category_codes(_root_container_items(report, _QUALITATIVE_EVALUATIONS)))
    missing = [key for key in (*(a.name for a in BY_CODE.values()), _TOTAL) if key not in groups]
    if missing:
        raise ReportError(f"{name}: no scores for {', '.join(missing)}")
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


def _site_key(sites: Iterable[hd.sr.FindingSite]) -> str | None:
    """``total`` or the artery name of a finding site list; None for anything else."""
    values = [str(site.ConceptCodeSequence[0].CodeValue) for site in sites]
    if CORONARY_ARTERY_CODE[0] in values:
        return _TOTAL
    arteries = [BY_CODE[value].name for value in values if value in BY_CODE]
    return arteries[0] if arteries else None


def _scores(measurements: Iterable[hd.sr.Measurement], key: str, name: str) -> dict[str, Any]:
    """Agatston, volume, mass and lesion count among ``measurements`` (all but mass required)."""
    scores: dict[str, Any] = {"agatston": None, "volume_mm3": None, "mass_mg": None, "lesions": None}
    for measurement in measurements:
        concept = str(measurement.name.value)
        if concept in _NUMBERS:
            scores[_NUMBERS[concept]] = float(measurement.value)
    for field in ("agatston", "volume_mm3", "lesions"):
        if scores[field] is None:
            raise ReportError(f"{name}: the {key} scores have no {field}")
    scores["lesions"] = int(round(scores["lesions"]))
    return scores


def _root_container_items(report: hd.sr.MeasurementReport, concept: tuple[str, str]) -> list[Dataset]:
    """Items of the containers named ``concept`` directly under the report's root."""
    items: list[Dataset] = []
    for container in report[0].get("ContentSequence", []):
        if container.get("ValueType") == "CONTAINER" and container.get("ContentSequence") is not None:
            name = container.ConceptNameCodeSequence[0]
            if (str(name.CodeValue), str(name.CodingSchemeDesignator)) == concept:
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
