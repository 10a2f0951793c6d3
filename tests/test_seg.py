"""The lesion SEG (interface 5): segments, codes, frames, source references, errors."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from test_report import IDENTITY, make_case

from dicom_sr.seg import build_lesion_seg, segment_numbers
from pipeline.errors import LabelsError

DESCRIPTION = "Calcium lesions SEG - not for diagnostic use"


def _write_read(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # strict writing validation (conftest)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_one_segment_per_artery_with_calcium_and_its_codes() -> None:
    series, labels, _ = make_case()
    seg = _write_read(build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902,
                                       series_description=DESCRIPTION))  # fmt: skip
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["LAD", "RCA"]
    assert [s.SegmentNumber for s in segments] == [1, 2]
    assert segment_numbers(labels) == {"LAD": 1, "RCA": 2}
    for segment, site in zip(segments, ("59438005", "13647002")):
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "29483008"
        assert segment.AnatomicRegionSequence[0].CodeValue == site
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName == IDENTITY.name
    assert seg.SegmentationType == "BINARY"
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9902, DESCRIPTION)
    assert seg.DeviceSerialNumber == IDENTITY.uid


def test_empty_frames_are_kept_and_frames_match_the_labels() -> None:
    series, labels, _ = make_case()
    seg = _write_read(build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902,
                                       series_description=DESCRIPTION))  # fmt: skip
    n = len(series.datasets)
    assert int(seg.NumberOfFrames) == 2 * n  # every slice, for both segments
    parsed = hd.seg.Segmentation.from_dataset(seg)
    for number, value in ((1, 2), (2, 4)):
        for k, uid in enumerate(series.sop_instance_uids):
            frame = parsed.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[number]
            )[0, :, :, 0]
            assert np.array_equal(frame > 0, labels[k] == value), (number, k)


def test_patient_study_copied_and_source_referenced() -> None:
    series, labels, _ = make_case()
    seg = build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902, series_description=DESCRIPTION)
    source = series.datasets[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert str(seg.PatientName) == str(source.PatientName) and seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = {
        str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert referenced == set(series.sop_instance_uids)
    # The source datasets keep their pixel data: the builder works on header copies.
    assert all("PixelData" in ds for ds in series.datasets)


def test_missing_type2_attributes_do_not_crash() -> None:
    series, labels, _ = make_case(drop_type2=True)
    seg = _write_read(build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902,
                                       series_description=DESCRIPTION))  # fmt: skip
    assert "PatientID" in seg and seg.PatientID == ""
    assert "PatientName" not in series.datasets[0]  # the source is left as it was


def test_odd_type2_values_are_written_empty_not_refused() -> None:
    series, labels, _ = make_case()
    series.datasets[0].PatientSex = "X"  # not M/F/O: highdicom would refuse it
    seg = build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902, series_description=DESCRIPTION)
    assert seg.PatientSex == ""
    assert series.datasets[0].PatientSex == "X"  # the caller's dataset is not changed


def test_no_calcium_or_wrong_shape_is_a_labels_error() -> None:
    series, labels, _ = make_case(calcium=False)
    with pytest.raises(LabelsError, match="no artery"):
        build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902, series_description=DESCRIPTION)
    series, labels, _ = make_case()
    with pytest.raises(LabelsError, match=series.series_uid):
        build_lesion_seg(labels[:, :-1], series.datasets, IDENTITY, series_number=9902, series_description=DESCRIPTION)


def test_segments_carry_the_summary_image_colours_as_cielab() -> None:
    """report.md section 2: each segment's Recommended Display CIELab Value is its artery's summary colour."""
    from dicom_sr.summary_draw import ARTERY_COLOURS

    series, labels, _ = make_case()
    seg = _write_read(build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902,
                                       series_description=DESCRIPTION))  # fmt: skip
    for segment in seg.SegmentSequence:
        value = tuple(int(v) for v in segment.RecommendedDisplayCIELabValue)
        assert len(value) == 3 and all(0 <= v <= 0xFFFF for v in value)
        rgb = hd.color.CIELabColor.from_dicom_value(value).to_rgb()
        expected = ARTERY_COLOURS[str(segment.SegmentLabel)]
        assert max(abs(a - b) for a, b in zip(rgb, expected)) <= 2, (segment.SegmentLabel, rgb, expected)


def _case_with_uncounted(labelled: bool = True):
    """``make_case`` plus an unlabelled 4x4 spot of 500 HU, scored with the whole image as the heart crop."""
    from pipeline.model.preprocess import CropBox
    from pipeline.scoring.agatston import ScoringProfile
    from pipeline.scoring.result import score_series

    series, labels, _ = make_case()
    if not labelled:
        labels = np.zeros_like(labels)
    series.hu[5, 40:44, 10:14] = 500.0
    n, rows, cols = series.hu.shape
    box = CropBox(0, n, 0, 0, rows, cols, rows / 2, cols / 2, True)
    result = score_series(series, labels, ScoringProfile(), "labels:test.seg.dcm", heart_box=box)
    return series, labels, result


@pytest.mark.parametrize("labelled", [True, False])
def test_uncounted_calcium_is_a_grey_segment_of_its_own_after_the_arteries(tmp_path, labelled: bool) -> None:
    import subprocess

    from conftest import dcmtk

    from dicom_sr.summary_draw import UNCOUNTED_COLOUR
    from pipeline.scoring.uncounted import DESCRIPTION as UNCOUNTED

    series, labels, result = _case_with_uncounted(labelled)
    assert result.uncounted is not None and result.uncounted.components == (1 if labelled else 3)
    mask = result.uncounted.mask()
    built = build_lesion_seg(labels, series.datasets, IDENTITY, series_number=9902, series_description=DESCRIPTION,
                             uncounted=mask)  # fmt: skip
    path = tmp_path / "seg.dcm"
    built.save_as(path, enforce_file_format=True)
    seg = pydicom.dcmread(path)
    segments = seg.SegmentSequence
    arteries = ["LAD", "RCA"] if labelled else []
    assert [s.SegmentLabel for s in segments] == arteries + [UNCOUNTED]
    last = segments[-1]
    assert last.SegmentNumber == len(arteries) + 1
    assert last.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert (last.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            last.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("18115005", "SCT")  # fmt: skip
    assert "AnatomicRegionSequence" not in last  # not placed in an artery
    # found by the node's rules, whoever made the artery labels
    assert last.SegmentAlgorithmType == "AUTOMATIC"
    assert last.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "cacnode uncounted calcium"
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in last.RecommendedDisplayCIELabValue)).to_rgb()
    assert max(abs(a - b) for a, b in zip(rgb, UNCOUNTED_COLOUR)) <= 2
    parsed = hd.seg.Segmentation.from_dataset(seg)
    for k, uid in enumerate(series.sop_instance_uids):
        frame = parsed.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[len(arteries) + 1]
        )[0, :, :, 0]
        assert np.array_equal(frame > 0, mask[k]), k
    done = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert [line for line in output.splitlines() if line.startswith("Error")] == [], output


def test_the_report_seg_has_the_extra_segment_only_when_there_is_uncounted_calcium() -> None:
    from dicom_sr.config import ReportConfig
    from dicom_sr.writer import build_report

    series, labels, result = make_case()  # no heart crop given: not assessed
    assert result.uncounted is None
    plain = build_report(result, labels, series, IDENTITY, ReportConfig(write_summary=False)).seg
    assert [s.SegmentLabel for s in plain.SegmentSequence] == ["LAD", "RCA"]
    series, labels, result = _case_with_uncounted()
    seg = build_report(result, labels, series, IDENTITY, ReportConfig(write_summary=False)).seg
    assert len(seg.SegmentSequence) == 3
    # A zero score with calcium in the crop still gets a SEG that shows it.
    series, labels, result = _case_with_uncounted(labelled=False)
    assert result.score.total.agatston == 0 and result.uncounted.review
    seg = build_report(result, labels, series, IDENTITY, ReportConfig(write_summary=False)).seg
    assert seg is not None and len(seg.SegmentSequence) == 1
