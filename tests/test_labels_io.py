"""Label files on a loaded series: DICOM SEG (by label, by SCT code, by reference or position) and NIfTI."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from dicom_sr.seg import build_lesion_seg
from pipeline.scoring.arteries import BY_NAME
from pipeline.errors import LabelsError
from pipeline.model.identity import REFERENCE_LABELS
from pipeline.reading.labels_io import read_labels, series_affine
from pipeline.reading.loader import load_series
from pipeline.reading.series import CTSeries
from training.phantom.ct_writer import CTHeader, build_ct_datasets

SHAPE = (12, 32, 40)
CALCIFIED = Code("29483008", "SCT", "Calcified atheromatous plaque")
CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")


def make_series(
    header: CTHeader | None = None,
    spacing: tuple[float, float] = (0.7, 0.6),
    increment: float = 3.0,
    origin: tuple[float, float, float] = (-20.0, -10.0, -50.0),
) -> CTSeries:
    hu = np.full(SHAPE, 40.0, dtype=np.float32)
    datasets = build_ct_datasets(
        hu,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=3.0,
        increment_mm=increment,
        origin_mm=origin,
        header=header or CTHeader(),
        descending=True,
    )
    return load_series(datasets)


def label_map() -> np.ndarray:
    """An asymmetric label map (so any flip or transpose shows): all four arteries."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2, 3:6, 4:9] = 1
    labels[5, 10:12, 20:30] = 2
    labels[5, 20:22, 5:7] = 3
    labels[9, 25:31, 33:36] = 4
    labels[10, 0, 0] = 4
    return labels


@pytest.fixture
def series() -> CTSeries:
    return make_series()


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def manual_seg(
    series: CTSeries,
    masks: dict[str, np.ndarray],
    label_of: Callable[[str], str],
    codes_of: Callable[[str], tuple[Code | None, Code]],
    sources: Sequence[pydicom.Dataset] | None = None,
    **kwargs: object,
) -> hd.seg.Segmentation:
    """A BINARY SEG made with highdicom directly: one segment per entry of ``masks``, in that order."""
    descriptions = []
    for number, name in enumerate(masks, start=1):
        region, prop = codes_of(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label_of(name),
                segmented_property_category=CATEGORY,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                anatomic_regions=[region] if region is not None else None,
            )
        )
    stacked = np.stack([m.astype(np.uint8) for m in masks.values()], axis=-1)
    return hd.seg.Segmentation(
        source_images=list(sources if sources is not None else series.datasets),
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=40,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="manual",
        software_versions="1",
        device_serial_number="1",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **kwargs,
    )


def artery_code(name: str) -> Code:
    a = BY_NAME[name]
    return Code(a.sct_code, "SCT", a.meaning)


# --- DICOM SEG ---------------------------------------------------------------------------------------


def test_lesion_seg_of_the_report_round_trips(series, tmp_path):
    labels = label_map()
    seg = build_lesion_seg(labels, series.datasets, REFERENCE_LABELS, series_number=90, series_description="calcium")
    assert np.array_equal(read_labels(save(seg, tmp_path / "labels.seg.dcm"), series), labels)


def test_segments_in_other_order_coded_only_by_sct(series, tmp_path, caplog):
    labels = label_map()
    heart = np.zeros(SHAPE, dtype=bool)
    heart[0, :4, :4] = True
    masks = {"RCA": labels == 4, "HEART": heart, "LM": labels == 1, "LCX": labels == 3, "LAD": labels == 2}
    seg = manual_seg(
        series,
        masks,
        label_of=lambda name: f"Segment {name.lower()[::-1]}",  # labels that name no artery
        codes_of=lambda name: (None, codes.SCT.Heart) if name == "HEART" else (artery_code(name), CALCIFIED),
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.labels_io"):
        result = read_labels(save(seg, tmp_path / "sct.dcm"), series)
    assert np.array_equal(result, labels)
    assert "names no coronary artery" in caplog.text


def test_artery_code_as_segmented_property_type(series, tmp_path):
    labels = label_map()
    masks = {"LAD": labels == 2, "LM": labels == 1}
    seg = manual_seg(series, masks, label_of=lambda n: "calcium", codes_of=lambda n: (None, artery_code(n)))
    expected = np.where(np.isin(labels, (1, 2)), labels, 0)
    assert np.array_equal(read_labels(save(seg, tmp_path / "prop.dcm"), series), expected)


def test_frames_from_reversed_sources_and_omitted_empty_frames(series, tmp_path):
    labels = label_map()
    masks = {name: labels == BY_NAME[name].label for name in ("LM", "LAD", "LCX", "RCA")}
    reversed_masks = {name: m[::-1] for name, m in masks.items()}
    seg = manual_seg(
        series,
        reversed_masks,
        label_of=str,
        codes_of=lambda n: (artery_code(n), CALCIFIED),
        sources=series.datasets[::-1],
        omit_empty_frames=True,
    )
    assert int(seg.NumberOfFrames) < 4 * SHAPE[0]
    assert np.array_equal(read_labels(save(seg, tmp_path / "rev.dcm"), series), labels)


def test_seg_on_other_instances_is_placed_by_position(tmp_path):
    # Same series and geometry, but re-exported with new SOP Instance UIDs: only positions tie them.
    header = CTHeader()
    original, reexported = make_series(header), make_series(header)
    assert not set(original.sop_instance_uids) & set(reexported.sop_instance_uids)
    labels = label_map()
    seg = build_lesion_seg(labels, original.datasets, REFERENCE_LABELS, series_number=90, series_description="c")
    assert np.array_equal(read_labels(save(seg, tmp_path / "pos.dcm"), reexported), labels)


def test_seg_of_another_geometry_is_refused(series, tmp_path):
    header = CTHeader(frame_of_reference_uid=series.geometry.frame_of_reference_uid)
    other = make_series(header, origin=(-20.0, -10.0, 200.0))
    seg = build_lesion_seg(label_map(), other.datasets, REFERENCE_LABELS, series_number=90, series_description="c")
    with pytest.raises(LabelsError, match="lies on no slice of the series"):
        read_labels(save(seg, tmp_path / "far.dcm"), series)


def test_seg_with_extra_instances_is_refused(series, tmp_path):
    header = CTHeader(
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        frame_of_reference_uid=series.geometry.frame_of_reference_uid,
    )
    more = make_series(header, origin=(-20.0, -10.0, -14.0))  # continues the same series above it
    sources = list(series.datasets) + list(more.datasets)
    labels = np.concatenate([label_map(), label_map()])
    seg = build_lesion_seg(labels, sources, REFERENCE_LABELS, series_number=90, series_description="c")
    with pytest.raises(LabelsError, match="refers to 12 instance"):
        read_labels(save(seg, tmp_path / "extra.dcm"), series)


def test_overlapping_arteries_are_refused(series, tmp_path):
    labels = label_map()
    lad = labels == 2
    rca = lad.copy()
    seg = manual_seg(series, {"LAD": lad, "RCA": rca}, label_of=str, codes_of=lambda n: (artery_code(n), CALCIFIED))
    with pytest.raises(LabelsError, match="belong to two arteries"):
        read_labels(save(seg, tmp_path / "overlap.dcm"), series)


def test_seg_without_artery_segments(series, tmp_path):
    mask = label_map() > 0
    seg = manual_seg(series, {"X": mask}, label_of=lambda n: "Heart", codes_of=lambda n: (None, codes.SCT.Heart))
    with pytest.raises(LabelsError, match=r"no segment names LM, LAD, LCX or RCA \(segments: Heart\)"):
        read_labels(save(seg, tmp_path / "heart.dcm"), series)


def test_not_a_seg_and_not_a_file(series, tmp_path):
    ct = save(series.datasets[0], tmp_path / "ct.dcm")
    with pytest.raises(LabelsError, match="not a Segmentation"):
        read_labels(ct, series)
    (tmp_path / "junk.bin").write_bytes(b"junk" * 100)
    with pytest.raises(LabelsError, match="neither NIfTI"):
        read_labels(tmp_path / "junk.bin", series)
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "missing.nii.gz", series)


# --- NIfTI -----------------------------------------------------------------------------------------


def nifti_ras(labels: np.ndarray, series: CTSeries) -> nib.Nifti1Image:
    """The label map as a NIfTI in the series' own voxel order, with its RAS affine."""
    return nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(series))


def test_nifti_in_series_order(series, tmp_path):
    nib.save(nifti_ras(label_map(), series), tmp_path / "l.nii.gz")
    assert np.array_equal(read_labels(tmp_path / "l.nii.gz", series), label_map())


def test_nifti_without_nibabel_is_one_line_naming_the_extra(series, tmp_path, monkeypatch):
    nib.save(nifti_ras(label_map(), series), tmp_path / "l.nii.gz")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if the nifti extra were not installed
    with pytest.raises(LabelsError, match=r"l.nii.gz: reading NIfTI labels needs nibabel: pip install 'cacnode\[nifti\]'"):
        read_labels(tmp_path / "l.nii.gz", series)


def test_nifti_reoriented_to_ras_and_4d(series, tmp_path):
    original = nifti_ras(label_map(), series)
    canonical = nib.as_closest_canonical(original)
    assert not np.allclose(canonical.affine, original.affine)  # x and y really were flipped
    nib.save(canonical, tmp_path / "ras.nii")
    assert np.array_equal(read_labels(tmp_path / "ras.nii", series), label_map())
    data = np.asanyarray(canonical.dataobj).astype(np.float32)[..., np.newaxis]
    nib.save(nib.Nifti1Image(data, canonical.affine), tmp_path / "4d.nii.gz")
    assert np.array_equal(read_labels(tmp_path / "4d.nii.gz", series), label_map())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a @ np.diag([1.0, 1.0, 2.0 / 3.0, 1.0]), "voxel grid is not the series'"),
        (lambda a: a + np.pad([[6.0]], ((2, 1), (3, 0))), "offset from the series by"),  # +6 mm in z
        (lambda a: a @ np.eye(4)[[1, 0, 2, 3]], "does not match the series"),  # x and y swapped
    ],
)
def test_nifti_with_other_geometry_is_refused(series, tmp_path, change, message):
    image = nifti_ras(label_map(), series)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), change(image.affine)), tmp_path / "bad.nii.gz")
    with pytest.raises(LabelsError, match=message):
        read_labels(tmp_path / "bad.nii.gz", series)


def test_nifti_with_values_outside_1_to_4(series, tmp_path):
    labels = label_map()
    labels[0, 0, 0] = 7
    nib.save(nifti_ras(labels, series), tmp_path / "seven.nii.gz")
    with pytest.raises(LabelsError, match=r"label values must be 0-4, found \[7\]"):
        read_labels(tmp_path / "seven.nii.gz", series)

