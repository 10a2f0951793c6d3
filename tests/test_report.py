"""The report objects together: SR content, round trip through files, config switches, UIDs."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from dicom_sr.config import ReportConfig
from dicom_sr.reader import ReportError, read_sr_scores
from dicom_sr.writer import build_report, write_report_files
from pipeline.model.identity import AlgorithmIdentity
from pipeline.scoring.result import SeriesResult, score_series, to_json
from pipeline.scoring.agatston import ScoringProfile
from pipeline.reading.series import Acquisition, CTSeries, Geometry
from training.phantom.ct_writer import CTHeader, build_ct_datasets

IDENTITY = AlgorithmIdentity(name="cacnode-test-model", version="1.2.3", uid="2.25.1234567890123456789")
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def make_case(
    *,
    kvp: float = 120.0,
    calcium: bool = True,
    profile: ScoringProfile | None = None,
    drop_type2: bool = False,
    n_slices: int = 24,
    size: int = 64,
) -> tuple[CTSeries, np.ndarray, SeriesResult]:
    """A small scored CT series: LAD and RCA lesions of known size (or none), built in memory.

    Also used by the other report test modules.
    """
    hu = np.full((n_slices, size, size), 40.0, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if calcium:
        mid = n_slices // 2
        hu[mid, 30:34, 30:34] = 350.0  # LAD: 16 px, peak 350 HU -> weight 3
        labels[mid, 28:36, 28:36] = 2
        hu[mid - 2 : mid, 10:14, 40:44] = 250.0  # RCA: 2 slices of 16 px, weight 2
        labels[mid - 2 : mid, 8:16, 38:46] = 4
    datasets = build_ct_datasets(
        hu,
        pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=3.0,
        increment_mm=3.0,
        origin_mm=(-22.4, -22.4, -100.0),
        header=CTHeader(kvp=kvp),
    )
    if drop_type2:
        for ds in datasets:
            for keyword in TYPE2_PATIENT_STUDY:
                delattr(ds, keyword)
    geometry = Geometry(
        shape=hu.shape,
        pixel_spacing_mm=(0.7, 0.7),
        increment_mm=3.0,
        slice_thickness_mm=3.0,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        positions=tuple(tuple(float(v) for v in ds.ImagePositionPatient) for ds in datasets),
        frame_of_reference_uid=str(datasets[0].FrameOfReferenceUID),
    )
    series = CTSeries(
        series_uid=str(datasets[0].SeriesInstanceUID),
        study_uid=str(datasets[0].StudyInstanceUID),
        hu=hu,
        geometry=geometry,
        acquisition=Acquisition(kvp=kvp),
        datasets=tuple(datasets),
    )
    result = score_series(series, labels, profile or ScoringProfile(), "labels:test.seg.dcm")
    return series, labels, result


def _expected(result: SeriesResult) -> dict:
    full = to_json(result)
    return {key: full[key] for key in ("total", "arteries", "risk_category", "cac_drs")}


def _codes(ds: Dataset) -> set[tuple[str, str]]:
    """Every (code value, scheme) pair anywhere in a dataset."""
    found = set()
    for elem in ds.iterall():
        if elem.keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence"):
            for item in elem.value:
                found.add((str(item.CodeValue), str(item.CodingSchemeDesignator)))
    return found


def _texts(ds: Dataset) -> list[str]:
    return [str(elem.value) for elem in ds.iterall() if elem.keyword == "TextValue"]


@pytest.mark.parametrize("mass", [None, 0.001])
def test_round_trip_through_files_gives_the_scores_exactly(tmp_path: Path, mass: float | None) -> None:
    series, labels, result = make_case(profile=ScoringProfile(mass_calibration_mg_per_mm3_hu=mass))
    assert result.score.total.agatston > 0  # the case must hold calcium for the test to mean anything
    sr_path, seg_path, sc_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm", tmp_path / "sc.dcm"
    write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=sr_path, seg_path=seg_path,
                       summary_path=sc_path)  # fmt: skip
    assert read_sr_scores(sr_path) == _expected(result)
    back = read_sr_scores(pydicom.dcmread(sr_path))
    assert (back["total"]["mass_mg"] is None) == (mass is None)
    assert {p.name for p in tmp_path.iterdir()} == {"sr.dcm", "seg.dcm", "sc.dcm"}  # no temporary files left


def test_sr_content_follows_the_spec() -> None:
    series, labels, result = make_case(kvp=100.0)
    report = build_report(result, labels, series, IDENTITY, ReportConfig())
    sr = report.sr
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    codes = _codes(sr)
    for code in [("450360000", "SCT"), ("112055", "DCM"), ("122660", "DCM"), ("112056", "DCM"), ("123110", "DCM"),
                 ("3227004", "SCT"), ("59438005", "SCT"), ("57396003", "SCT"), ("13647002", "SCT"),
                 ("41801008", "SCT"), ("RISKCAT", "99CACNODE"), ("CACDRS", "99CACNODE")]:  # fmt: skip
        assert code in codes, code
    assert ("112058", "DCM") not in codes  # retired "Calcium score"
    assert ("122661", "DCM") not in codes  # no mass without a calibration factor
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CACNODE"
    # Device observer and contributing equipment name the model by its UID.
    uid_refs = [str(e.value) for e in sr.iterall() if e.keyword == "UID"]
    assert IDENTITY.uid in uid_refs
    (equipment,) = [e for e in sr.ContributingEquipmentSequence if e.get("DeviceSerialNumber") == IDENTITY.uid]
    assert equipment.ManufacturerModelName == IDENTITY.name
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
    # Evidence: every CT instance and the SEG.
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    assert evidence == set(series.sop_instance_uids) | {report.seg.SOPInstanceUID}
    # Caveats as text: caution, profile, the 100 kVp deviation and the estimate sentence.
    texts = _texts(sr)
    assert ReportConfig().caution in texts
    assert any("100 kVp" in t for t in texts)
    assert any("not 120 kVp" in t for t in texts)
    assert any("estimates" in t for t in texts)
    # TID 4019 parameters name the scoring profile.
    (parameters,) = {t for t in texts if t.startswith("profile=")}
    assert "threshold_hu=130" in parameters and "connectivity=8" in parameters and "min_area=1 mm2" in parameters


def root_container(sr: Dataset, code_value: str) -> Dataset | None:
    """The container directly under the SR's root whose concept has ``code_value``, or None."""
    found = [item for item in sr.ContentSequence
             if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == code_value]
    assert len(found) <= 1
    return found[0] if found else None


def test_measurements_reference_the_seg_segments_they_were_measured_on() -> None:
    series, labels, result = make_case()
    report = build_report(result, labels, series, IDENTITY, ReportConfig())
    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in report.seg.SegmentSequence}
    assert set(numbers) == {"LAD", "RCA"}
    by_site: dict[str, set[int]] = {}
    for num in root_container(report.sr, "126011").ContentSequence:
        site = next(i.ConceptCodeSequence[0].CodeMeaning for i in num.ContentSequence if i.ValueType == "CODE"
                    and i.ConceptNameCodeSequence[0].CodeValue == "363698007")  # fmt: skip
        refs = {
            int(n)
            for item in num.ContentSequence
            if item.ValueType == "IMAGE"
            for ref in item.ReferencedSOPSequence
            if ref.ReferencedSOPInstanceUID == report.seg.SOPInstanceUID
            for n in np.atleast_1d(ref.ReferencedSegmentNumber)
        }
        assert by_site.setdefault(site, refs) == refs  # every number of a site names the same segments
    assert by_site["Left anterior descending coronary artery"] == {numbers["LAD"]}
    assert by_site["Right coronary artery"] == {numbers["RCA"]}
    assert by_site["Left main coronary artery"] == set()
    assert by_site["Coronary artery"] == {numbers["LAD"], numbers["RCA"]}


def test_patient_and_study_copied_uids_fresh_series_numbers_from_config() -> None:
    series, labels, result = make_case()
    config = ReportConfig(sr_series_number=501, seg_series_number=502, summary_series_number=503,
                          sr_series_description="CAC SR (not for diagnostic use)")  # fmt: skip
    first = build_report(result, labels, series, IDENTITY, config)
    second = build_report(result, labels, series, IDENTITY, config)
    source = series.datasets[0]
    for ds in first.datasets():
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "StudyID", "AccessionNumber", "StudyDate"):  # fmt: skip
            assert str(ds[keyword].value) == str(source[keyword].value), keyword
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "not for diagnostic use" in ds.SeriesDescription.lower()
    assert [ds.SeriesNumber for ds in first.datasets()] == [502, 501, 503]
    assert first.sr.SeriesDescription == "CAC SR (not for diagnostic use)"
    uids = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for r in (first, second) for ds in r.datasets()]
    assert len({u for pair in uids for u in pair}) == 2 * len(uids)


def test_missing_type2_attributes_do_not_crash_and_are_written_empty(tmp_path: Path) -> None:
    series, labels, result = make_case(drop_type2=True)
    paths = {name: tmp_path / f"{name}.dcm" for name in ("sr", "seg", "sc")}
    write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=paths["sr"], seg_path=paths["seg"],
                       summary_path=paths["sc"])  # fmt: skip
    for path in paths.values():
        ds = pydicom.dcmread(path)
        assert "PatientName" in ds and not ds.PatientName  # Type 2: present, empty
        assert "StudyID" in ds and not ds.StudyID
    assert read_sr_scores(paths["sr"]) == _expected(result)


def test_config_switches_seg_and_summary_off() -> None:
    series, labels, result = make_case()
    report = build_report(result, labels, series, IDENTITY, ReportConfig(write_seg=False, write_summary=False))
    assert report.seg is None and report.summary is None
    assert all(ds.SOPClassUID != SegmentationStorage for ds in report.datasets())
    referenced = {str(e.value) for e in report.sr.iterall() if e.keyword == "ReferencedSOPClassUID"}
    assert SegmentationStorage not in referenced
    assert read_sr_scores(report.sr) == _expected(result)


def test_series_without_calcium_gets_no_seg_but_a_zero_report(tmp_path: Path) -> None:
    series, labels, result = make_case(calcium=False)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    report = write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=sr_path, seg_path=seg_path)
    assert report.seg is None and not seg_path.exists()
    scores = read_sr_scores(sr_path)
    assert scores["total"] == {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": None, "lesions": 0}
    assert (scores["risk_category"], scores["cac_drs"]) == ("0", "A0")


def test_write_report_files_writes_only_what_is_asked(tmp_path: Path) -> None:
    series, labels, result = make_case()
    report = write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=tmp_path / "sr.dcm")
    assert report.seg is None and report.summary is None
    assert [p.name for p in tmp_path.iterdir()] == ["sr.dcm"]


def test_labels_of_the_wrong_shape_are_a_clear_error() -> None:
    from pipeline.errors import LabelsError

    series, labels, result = make_case()
    with pytest.raises(LabelsError, match=series.series_uid):
        build_report(result, labels[:-1], series, IDENTITY, ReportConfig())


def test_reader_rejects_what_is_not_our_sr(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ReportError, match="junk.dcm"):
        read_sr_scores(junk)
    series, labels, result = make_case()
    sr = build_report(result, labels, series, IDENTITY, ReportConfig(write_seg=False, write_summary=False)).sr
    derived = root_container(sr, "126011")
    derived.ContentSequence = [  # without the LM numbers
        num for num in derived.ContentSequence
        if not any(item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue == "3227004"
                   for item in num.ContentSequence)]
    with pytest.raises(ReportError, match="LM"):
        read_sr_scores(sr)


def test_report_config_is_validated() -> None:
    with pytest.raises(ValueError, match="not for diagnostic use"):
        ReportConfig(sr_series_description="Calcium score")
    with pytest.raises(ValueError, match="seg_series_number"):
        ReportConfig(seg_series_number=0)
    with pytest.raises(ValueError, match="key_slices"):
        ReportConfig(key_slices=9)
    assert dataclasses.replace(ReportConfig(), write_seg=False).write_seg is False


def test_report_section_of_config_toml_loads(tmp_path: Path) -> None:
    from cacnode.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[report]\nwrite_seg = false\nsr_series_number = 77\nkey_slices = 3\n')
    report = load_config(path).report
    assert (report.write_seg, report.write_summary, report.sr_series_number, report.key_slices) == (False, True, 77, 3)


def test_missing_seg_of_a_series_without_calcium_is_logged_once(tmp_path: Path, caplog) -> None:
    series, labels, result = make_case(calcium=False)
    with caplog.at_level(logging.DEBUG, logger="dicom_sr"):
        write_report_files(result, labels, series, IDENTITY, ReportConfig(), seg_path=tmp_path / "seg.dcm")
    (line,) = [r.getMessage() for r in caplog.records if "SEG" in r.getMessage()]
    assert line == f"series {series.series_uid}: no SEG written to {tmp_path / 'seg.dcm'}: no artery has calcium"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["umask-022", "umask-027"])
def test_report_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    series, labels, result = make_case()
    paths = {name: tmp_path / f"{name}.dcm" for name in ("sr", "seg", "sc")}
    previous = os.umask(umask)
    try:
        write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=paths["sr"],
                           seg_path=paths["seg"], summary_path=paths["sc"])  # fmt: skip
    finally:
        os.umask(previous)
    assert {name: stat.S_IMODE(p.stat().st_mode) for name, p in paths.items()} == dict.fromkeys(paths, mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sc.dcm", "seg.dcm", "sr.dcm"]  # no temporary file left


def test_unwritable_report_file_is_a_clear_error(tmp_path: Path) -> None:
    from pipeline.errors import CacnodeError

    series, labels, result = make_case()
    with pytest.raises(CacnodeError, match=r"^cannot write .*missing/sr\.dcm: No such file or directory$"):
        write_report_files(result, labels, series, IDENTITY, ReportConfig(), sr_path=tmp_path / "missing" / "sr.dcm")
    assert not (tmp_path / "missing").exists()


def test_reader_reads_artery_scores_from_the_derived_measurements_not_from_lesion_rois() -> None:
    """A lesion located by a TID 1410 planar ROI (its artery, its Agatston) is no artery total."""
    import highdicom as hd

    from dicom_sr import codes

    series, labels, result = make_case()
    sr = build_report(result, labels, series, IDENTITY, ReportConfig(write_seg=False, write_summary=False)).sr
    ct = series.datasets[len(series.datasets) // 2]
    outline = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[28.0, 28.0], [36.0, 28.0], [36.0, 36.0], [28.0, 36.0], [28.0, 28.0]]),
        source_image=hd.sr.SourceImageForRegion(ct.SOPClassUID, ct.SOPInstanceUID),
    )
    lesion = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="LAD lesion 1"),
        referenced_region=outline,
        finding_type=codes.SEG_TYPE,
        finding_sites=[hd.sr.FindingSite(codes.ARTERY_CODES["LAD"])],
        measurements=[hd.sr.Measurement(name=codes.AGATSTON, value=1234.0, unit=codes.UNIT_NONE)],
    )
    root_container(sr, "126010").ContentSequence.extend(lesion)
    assert read_sr_scores(sr) == _expected(result)
