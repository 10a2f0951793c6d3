"""The Secondary Capture summary image: key slices, outlines, the DICOM object."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.uid import SecondaryCaptureImageStorage
from test_report import IDENTITY, make_case

from dicom_sr.config import ReportConfig
from dicom_sr.summary import build_summary, render_summary
from dicom_sr.summary_draw import ARTERY_COLOURS, calcium_per_slice, crop_box, key_slices, render_tile
from pipeline.scoring.agatston import ScoringProfile


def test_key_slices_show_every_artery_then_the_most_calcium_spread_apart() -> None:
    per_slice = np.zeros((4, 10), dtype=int)
    per_slice[1] = [0, 5, 9, 8, 0, 0, 7, 0, 0, 0]  # LAD
    per_slice[3, 8] = 1  # a small RCA lesion on slice 8
    assert key_slices(per_slice, 3) == [2, 6, 8]  # 3 is next to 2; RCA's slice is taken although small
    assert key_slices(per_slice, 2) == [2, 8]  # each artery before the second LAD slice
    assert key_slices(per_slice, 1) == [2]
    assert key_slices(np.zeros((4, 9), dtype=int), 4) == [4]  # no calcium: the middle slice


def test_calcium_per_slice_counts_only_labelled_voxels_above_threshold() -> None:
    hu = np.full((3, 4, 4), 300.0, dtype=np.float32)
    hu[1, 0, 0] = 100.0
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[1, :2, :2] = 2
    labels[2, 3, 3] = 4
    counts = calcium_per_slice(hu, labels, 130.0)
    assert counts.shape == (4, 3)
    assert counts[1].tolist() == [0, 3, 0] and counts[3].tolist() == [0, 0, 1] and counts[0].sum() == 0


def test_crop_box_is_square_and_holds_every_label() -> None:
    labels = np.zeros((2, 512, 512), dtype=np.uint8)
    labels[0, 200, 150] = 1
    labels[1, 260, 330] = 4
    r0, r1, c0, c1 = crop_box(labels, (0.4, 0.4))
    assert r1 - r0 == c1 - c0
    assert r0 <= 200 < r1 and r0 <= 260 < r1 and c0 <= 150 < c1 and c0 <= 330 < c1
    assert 0 <= r0 and r1 <= 512 and 0 <= c0 and c1 <= 512
    assert crop_box(np.zeros((1, 64, 64), dtype=np.uint8), (0.7, 0.7)) == (0, 64, 0, 64)


def test_tile_outlines_calcium_in_the_artery_colour_and_leaves_it_visible() -> None:
    hu = np.full((64, 64), 40.0, dtype=np.float32)
    hu[30:34, 30:34] = 400.0
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[28:36, 28:36] = 2  # LAD region wider than its calcium
    tile = np.asarray(render_tile(hu, labels, 130.0, (0, 64, 0, 64), 256))
    lad = np.all(tile == ARTERY_COLOURS["LAD"], axis=-1)
    assert lad.any()
    assert not np.all(tile == ARTERY_COLOURS["RCA"], axis=-1).any()
    # The outline hugs the calcium (rows/cols 30-33 -> 120-135 at 4x), not the labelled region.
    rows, cols = np.nonzero(lad)
    assert rows.min() >= 110 and rows.max() <= 145 and cols.min() >= 110 and cols.max() <= 145
    assert np.all(tile[125, 125] > 240)  # calcium itself stays white


def test_summary_image_size_and_content() -> None:
    series, labels, result = make_case(kvp=100.0, profile=ScoringProfile(mass_calibration_mg_per_mm3_hu=0.001))
    config = ReportConfig(summary_width_px=1200)
    image = np.asarray(render_summary(result, labels, series, IDENTITY, config))
    assert image.shape[1] == 1200 and 600 < image.shape[0] < 2000
    for name in ("LAD", "RCA"):
        assert np.all(image == ARTERY_COLOURS[name], axis=-1).sum() > 50, name


def test_summary_secondary_capture_object() -> None:
    series, labels, result = make_case(drop_type2=True)
    sc = build_summary(result, labels, series, IDENTITY, ReportConfig(summary_series_number=42))
    buffer = io.BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    back = pydicom.dcmread(buffer)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert (back.PhotometricInterpretation, back.SamplesPerPixel, back.BitsAllocated) == ("RGB", 3, 8)
    assert back.pixel_array.shape == (back.Rows, back.Columns, 3) and back.Columns == 1600
    assert back.SeriesNumber == 42 and "not for diagnostic use" in back.SeriesDescription.lower()
    assert back.StudyInstanceUID == series.study_uid and back.SeriesInstanceUID != series.series_uid
    assert back.BurnedInAnnotation == "NO"


def test_summary_without_calcium_still_renders() -> None:
    def lad_pixels(calcium: bool) -> int:
        series, labels, result = make_case(calcium=calcium)
        image = np.asarray(render_summary(result, labels, series, IDENTITY, ReportConfig()))
        assert image.shape[1] == 1600
        return int(np.all(image == ARTERY_COLOURS["LAD"], axis=-1).sum())

    # Legend and table draw the colour too; only the calcium case adds outlines.
    assert lad_pixels(False) + 200 < lad_pixels(True)


def test_summary_is_compressed_losslessly() -> None:
    """JPEG-LS Lossless: a fraction of the native size on the wire, every pixel as rendered."""
    from pydicom.uid import JPEGLSLossless

    series, labels, result = make_case(size=256)
    # CT noise as scanners have it: the tiles must compress, not just the flat table.
    series.hu[...] += np.random.default_rng(0).normal(0.0, 20.0, series.hu.shape).astype(np.float32)
    config = ReportConfig()
    sc = build_summary(result, labels, series, IDENTITY, config)
    buffer = io.BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    back = pydicom.dcmread(buffer)
    assert back.file_meta.TransferSyntaxUID == JPEGLSLossless
    native = back.Rows * back.Columns * 3
    assert len(buffer.getvalue()) < native / 4, (len(buffer.getvalue()), native)
    expected = np.asarray(render_summary(result, labels, series, IDENTITY, config))
    np.testing.assert_array_equal(back.pixel_array, expected)


def test_tile_outlines_uncounted_calcium_in_grey() -> None:
    from dicom_sr.summary_draw import UNCOUNTED_COLOUR

    hu = np.full((64, 64), 40.0, dtype=np.float32)
    hu[30:34, 30:34] = 400.0
    labels = np.zeros((64, 64), dtype=np.uint8)  # no artery
    uncounted = hu >= 130.0

    def grey(tile: np.ndarray) -> np.ndarray:
        return np.all(tile == UNCOUNTED_COLOUR, axis=-1)

    with_ring = np.asarray(render_tile(hu, labels, 130.0, (0, 64, 0, 64), 256, uncounted))
    without = np.asarray(render_tile(hu, labels, 130.0, (0, 64, 0, 64), 256))
    rows, cols = np.nonzero(grey(with_ring) & ~grey(without))
    assert rows.size > 50  # a ring of about 4 x 16 x 2 pixels
    assert rows.min() >= 110 and rows.max() <= 145 and cols.min() >= 110 and cols.max() <= 145
    assert np.all(with_ring[125, 125] > 240)  # the calcium itself stays white


def test_summary_shows_uncounted_calcium_and_the_review_flag() -> None:
    import dataclasses

    from test_seg import _case_with_uncounted

    from dicom_sr.summary import WARNING
    from dicom_sr.summary_draw import UNCOUNTED_COLOUR

    series, labels, result = _case_with_uncounted(labelled=False)  # Agatston 0, calcium in the crop
    assert result.score.total.agatston == 0 and result.uncounted.review

    def render(r) -> np.ndarray:
        return np.asarray(render_summary(r, labels, series, IDENTITY, ReportConfig()))

    flagged = render(result)
    hidden = render(dataclasses.replace(result, uncounted=None))
    assert flagged.shape[1] == 1600 and flagged.shape[0] > hidden.shape[0]  # the flag takes lines

    def count(image: np.ndarray, colour: tuple[int, int, int]) -> int:
        return int(np.all(image == colour, axis=-1).sum())

    assert count(flagged, UNCOUNTED_COLOUR) > count(hidden, UNCOUNTED_COLOUR) + 200  # outlines and legend
    assert count(flagged, WARNING) > count(hidden, WARNING) + 200  # the review flag text
