"""Each counted lesion is located in the SR: a TID 1410 planar ROI with its outline on its peak CT slice.

Viewers that draw measurements from coordinates (OHIF, dcmjs) need these
groups; the artery and total scores, derived measurements beside them, keep
the numbers the reader reads.
"""

from __future__ import annotations

import dataclasses
import io
import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
from test_report import IDENTITY, make_case, root_container

from dicom_sr import codes
from dicom_sr.config import ReportConfig
from dicom_sr.outline import outline
from dicom_sr.reader import read_sr_scores
from dicom_sr.writer import build_report
from pipeline.scoring.agatston import ScoringProfile
from pipeline.scoring.arteries import BY_CODE, BY_NAME
from pipeline.scoring.lesions import find_lesions
from pipeline.scoring.result import score_series, to_json

NO_FILES = ReportConfig(write_seg=False, write_summary=False)


def _case(hu: np.ndarray, labels: np.ndarray):
    """The 24 x 64 x 64 series of :func:`make_case` with other calcium, scored."""
    series, _, _ = make_case(calcium=False)
    series = dataclasses.replace(series, hu=hu)
    return series, labels, score_series(series, labels, ScoringProfile(), "labels:test.seg.dcm")


def _rich_case():
    """Lesions of every kind the outline and the grouping must handle, in all four arteries."""
    hu = np.full((24, 64, 64), 40.0, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    hu[12, 30:34, 30:34] = 350.0  # LAD 2: one slice, a square
    labels[12, 28:36, 28:36] = 2
    hu[5, 40:43, 5:8] = 180.0  # LAD 1: three slices, largest (and brightest) on slice 6, L-shaped there
    hu[6, 38:46, 4:8] = 450.0
    hu[6, 42:46, 8:14] = 450.0
    hu[7, 40:42, 5:7] = 220.0
    labels[5:8, 36:48, 2:16] = 2
    hu[18, 10:13, 10:13] = 260.0  # LCX: two squares touching at one corner (one 8-connected component)
    hu[18, 13:16, 13:16] = 260.0
    labels[18, 8:18, 8:18] = 3
    hu[3, 50:53, 50:56] = 500.0  # RCA 1
    hu[20, 50:52, 20:23] = 140.0  # RCA 2, small
    hu[20, 55, 30] = 900.0  # a single pixel (0.49 mm2): below the minimum area, not a lesion
    labels[3, 48:55, 48:58] = 4
    labels[20, 48:58, 18:32] = 4
    hu[9:11, 20:23, 50:53] = 300.0  # LM: two slices
    labels[9:11, 18:25, 48:55] = 1
    return _case(hu, labels)


def _planar_groups(sr: pydicom.Dataset) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The TID 1410 groups, as highdicom reads them back from the written bytes."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    parsed = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return hd.sr.MeasurementReport.from_sequence(parsed.content).get_planar_roi_measurement_groups()


def _value(group, concept) -> float:
    (measurement,) = [m for m in group.get_measurements() if m.name.value == concept.value]
    return float(measurement.value)


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_lesions_are_the_counted_3d_components_and_sum_to_the_artery_scores() -> None:
    series, labels, result = _rich_case()
    g = series.geometry
    lesions = find_lesions(series.hu, labels, g.pixel_spacing_mm, g.increment_mm, result.profile)
    by_artery = {name: [les for les in lesions if les.artery == name] for name in BY_NAME}
    for name, score in result.score.arteries.items():
        assert len(by_artery[name]) == score.lesions, name
        assert math.fsum(les.agatston for les in by_artery[name]) == pytest.approx(score.agatston, rel=1e-12), name
        assert math.fsum(les.volume_mm3 for les in by_artery[name]) == pytest.approx(score.volume_mm3, rel=1e-12)
    assert [les.number for les in by_artery["LAD"]] == [1, 2] and [les.number for les in by_artery["RCA"]] == [1, 2]
    # Numbered in slice order: LAD 1 spans slices 5-7, its largest component on slice 6 (8x4 + 4x6
    # pixels at weight 4), plus 3x3 at weight 1 and 2x2 at weight 2 on the other slices.
    lad1 = by_artery["LAD"][0]
    assert (lad1.slice_index, lad1.row, lad1.col, lad1.mask.sum()) == (6, 38, 4, 56)
    assert by_artery["LAD"][1].slice_index == 12
    assert lad1.area_mm2 == pytest.approx(56 * 0.49)
    assert lad1.agatston == pytest.approx(0.49 * (56 * 4 + 9 * 1 + 4 * 2))
    (lcx,) = by_artery["LCX"]
    assert lcx.mask.sum() == 18 and lcx.agatston == pytest.approx(18 * 0.49 * 2)


def test_outline_follows_the_pixel_edges_clockwise_and_closes() -> None:
    square = np.ones((2, 3), dtype=bool)
    assert outline(square, row=10, col=20).tolist() == [[20, 10], [23, 10], [23, 12], [20, 12], [20, 10]]
    # Two pixels touching at a corner stay on one outline that encloses both.
    diagonal = np.eye(2, dtype=bool)
    points = outline(diagonal)
    assert _shoelace(points) == 2.0 and points[0].tolist() == points[-1].tolist()
    ell = np.zeros((5, 5), dtype=bool)
    ell[:, :2] = True
    ell[3:, :] = True
    assert _shoelace(outline(ell)) == ell.sum()
    assert len(outline(ell)) == 7  # six corners, the first repeated


def test_outline_of_a_large_lesion_has_at_most_64_points_on_its_edge() -> None:
    yy, xx = np.mgrid[:120, :120]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 < 50**2
    points = outline(disc, row=100, col=200)
    assert len(points) <= 64 and points[0].tolist() == points[-1].tolist()
    # Every vertex is a corner of a pixel of the disc that touches the background.
    padded = np.pad(disc, 1)
    for x, y in (points - [200, 100]).astype(int).tolist():
        around = padded[y : y + 2, x : x + 2]  # the four pixels sharing corner (x, y)
        assert around.any() and not around.all()
    assert _shoelace(points) == pytest.approx(disc.sum(), rel=0.05)


def test_every_lesion_has_one_planar_roi_group_outlining_it_on_its_peak_slice() -> None:
    series, labels, result = _rich_case()
    report = build_report(result, labels, series, IDENTITY, NO_FILES)
    groups = _planar_groups(report.sr)
    g = series.geometry
    lesions = find_lesions(series.hu, labels, g.pixel_spacing_mm, g.increment_mm, result.profile)
    assert len(groups) == len(lesions) == result.score.total.lesions == 6
    by_name = {str(group.tracking_identifier): group for group in groups}
    assert len({str(group.tracking_uid) for group in groups}) == len(groups)
    agatston: dict[str, list[float]] = {name: [] for name in BY_NAME}
    rows, cols = g.shape[1:]
    for lesion in lesions:
        group = by_name[f"{lesion.artery} lesion {lesion.number}"]
        (site,) = group.finding_sites
        assert BY_CODE[str(site.value.value)].name == lesion.artery
        assert group.finding_type.value == codes.SEG_TYPE.value
        assert _value(group, codes.AGATSTON) == pytest.approx(lesion.agatston, abs=1e-9)
        assert _value(group, codes.AREA) == pytest.approx(lesion.area_mm2)
        agatston[lesion.artery].append(_value(group, codes.AGATSTON))
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (ref,) = region.ContentSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == series.datasets[lesion.slice_index].SOPInstanceUID
        points = region.value
        assert len(points) <= 64 and points[0].tolist() == points[-1].tolist()
        assert points.min() >= 0 and points[:, 0].max() <= cols and points[:, 1].max() <= rows
        # The outline encloses the lesion's pixels on that slice: its area is theirs, and its
        # centre (these test lesions are convex enough) is calcium of the lesion's artery.
        assert _shoelace(points) == lesion.mask.sum()
        cx, cy = points[:-1].mean(axis=0)
        on_slice = (labels[lesion.slice_index] == BY_NAME[lesion.artery].label) & (
            series.hu[lesion.slice_index] >= result.profile.threshold_hu
        )
        assert on_slice[int(cy), int(cx)], lesion
    for name, values in agatston.items():
        assert math.fsum(values) == pytest.approx(result.score.arteries[name].agatston, abs=0.05 * len(values) + 1e-9)


def test_the_reader_still_reads_the_artery_and_total_scores() -> None:
    series, labels, result = _rich_case()
    report = build_report(result, labels, series, IDENTITY, ReportConfig(write_summary=False))
    full = to_json(result)
    assert read_sr_scores(report.sr) == {key: full[key] for key in ("total", "arteries", "risk_category", "cac_drs")}


def test_a_series_without_calcium_has_no_lesion_groups() -> None:
    series, labels, result = make_case(calcium=False)
    assert _planar_groups(build_report(result, labels, series, IDENTITY, NO_FILES).sr) == []


def test_each_lesion_adds_only_a_few_kilobytes_to_the_sr() -> None:
    hu = np.full((24, 64, 64), 40.0, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for i in range(30):  # 30 separate lesions, spread over slices and arteries
        z, r, c = 2 + (i % 20), 4 + 12 * (i % 5), 4 + 12 * (i // 5 % 5)
        hu[z, r : r + 5, c : c + 4] = 420.0
        labels[z, r : r + 5, c : c + 4] = 1 + i % 4
    series, labels, result = _case(hu, labels)
    assert result.score.total.lesions == 30
    empty_series, empty_labels, empty = make_case(calcium=False)

    def size(sr: pydicom.Dataset) -> int:
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        return len(buffer.getvalue())

    grown = size(build_report(result, labels, series, IDENTITY, NO_FILES).sr) - size(
        build_report(empty, empty_labels, empty_series, IDENTITY, NO_FILES).sr
    )
    assert grown / 30 < 4000


def test_every_measurement_group_has_an_outline_a_viewer_can_draw() -> None:
    """OHIF draws each group of Imaging Measurements from its coordinates and fails on one without."""
    series, labels, result = _rich_case()
    sr = build_report(result, labels, series, IDENTITY, NO_FILES).sr
    groups = root_container(sr, "126010").ContentSequence
    assert len(groups) == 6
    for group in groups:
        assert [item.GraphicType for item in group.ContentSequence if item.ValueType == "SCOORD"] == ["POLYLINE"]


def test_artery_and_total_scores_are_derived_measurements_with_their_finding_site() -> None:
    series, labels, result = _rich_case()
    sr = build_report(result, labels, series, IDENTITY, NO_FILES).sr
    found: dict[tuple[str, str], float] = {}
    for num in root_container(sr, "126011").ContentSequence:
        assert num.ValueType == "NUM"
        (site,) = [item.ConceptCodeSequence[0].CodeValue for item in num.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeValue == "363698007"]
        key = ("total" if site == codes.CORONARY_ARTERY.value else BY_CODE[site].name,
               num.ConceptNameCodeSequence[0].CodeValue)
        assert key not in found
        found[key] = float(num.MeasuredValueSequence[0].NumericValue)
    assert found[("total", codes.AGATSTON.value)] == pytest.approx(result.score.total.agatston, abs=0.05)
    for name in BY_NAME:
        assert found[(name, codes.LESION_COUNT.value)] == result.score.arteries[name].lesions
        assert found[(name, codes.VOLUME.value)] == pytest.approx(result.score.arteries[name].volume_mm3, abs=0.05)
    assert len(found) == 5 * 3


def test_a_zero_report_has_no_imaging_measurements_but_reads_back_as_zeros() -> None:
    series, labels, result = make_case(calcium=False)
    sr = build_report(result, labels, series, IDENTITY, NO_FILES).sr
    assert root_container(sr, "126010") is None
    scores = read_sr_scores(sr)
    assert scores["total"]["agatston"] == 0.0 and scores["risk_category"] == "0"
    assert all(s["lesions"] == 0 for s in scores["arteries"].values())


def test_calcium_no_artery_counts_is_in_the_sr_with_its_review_flag() -> None:
    from pipeline.scoring.uncounted import DESCRIPTION, UncountedCalcium

    series, labels, result = make_case(calcium=False)
    review = "look at the heart region"
    uncounted = UncountedCalcium(shape=series.hu.shape, voxels=np.arange(40), volume_mm3=123.45, components=3,
                                 agatston=150.0, bone_objects=1, review=True, review_text=review)
    sr = build_report(dataclasses.replace(result, uncounted=uncounted), labels, series, IDENTITY, NO_FILES).sr
    (heart,) = [num for num in root_container(sr, "126011").ContentSequence
                if any(item.ConceptNameCodeSequence[0].CodeValue == "363698007"
                       and item.ConceptCodeSequence[0].CodeValue == codes.HEART.value for item in num.ContentSequence)]
    assert heart.ConceptNameCodeSequence[0].CodeValue == codes.VOLUME.value
    assert float(heart.MeasuredValueSequence[0].NumericValue) == pytest.approx(123.5)
    texts = [item.TextValue for item in root_container(sr, "C0034375").ContentSequence if item.ValueType == "TEXT"]
    assert any(DESCRIPTION in t and "123.5 mm3 in 3 object(s)" in t for t in texts), texts
    assert f"Review: {review}" in texts
    # The readers of the artery and total scores pass the heart's number by: the score stays zero.
    assert read_sr_scores(sr)["total"]["agatston"] == 0.0
    # Without the assessment, nothing is said.
    plain = build_report(result, labels, series, IDENTITY, NO_FILES).sr
    assert not [t for t in (i.get("TextValue", "") for i in root_container(plain, "C0034375").ContentSequence)
                if DESCRIPTION in t]


def test_the_total_names_the_artery_segments_and_the_heart_volume_the_grey_one() -> None:
    from pipeline.scoring.uncounted import DESCRIPTION, UncountedCalcium

    series, labels, result = _rich_case()
    spot = np.zeros(series.hu.shape, dtype=bool)
    spot[15, 2:5, 30:34] = True  # calcium-free and unlabelled in the rich case
    uncounted = UncountedCalcium(shape=series.hu.shape, voxels=np.flatnonzero(spot), volume_mm3=5.9, components=1,
                                 agatston=0.0, bone_objects=0, review=False, review_text=None)
    report = build_report(dataclasses.replace(result, uncounted=uncounted), labels, series, IDENTITY,
                          ReportConfig(write_summary=False))
    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in report.seg.SegmentSequence}
    assert set(numbers) == {*BY_NAME, DESCRIPTION}

    def segments(site: str) -> set[int]:
        return {int(n) for num in root_container(report.sr, "126011").ContentSequence
                if any(i.ConceptNameCodeSequence[0].CodeValue == "363698007" and i.ConceptCodeSequence[0].CodeValue
                       == site for i in num.ContentSequence)
                for item in num.ContentSequence if item.ValueType == "IMAGE"
                for ref in item.ReferencedSOPSequence for n in np.atleast_1d(ref.ReferencedSegmentNumber)}

    assert segments(codes.CORONARY_ARTERY.value) == {numbers[name] for name in BY_NAME}
    assert segments(codes.HEART.value) == {numbers[DESCRIPTION]}
