"""Series loading: grouping, sorting along the normal, per-slice rescale, clear errors."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pipeline.errors import SeriesError
from pipeline.reading.loader import load_series, read_headers
from tests.conftest import simple_hu_volume
from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

ORIGIN = (-22.4, -22.4, -100.0)


def make(hu: np.ndarray | None = None, header: CTHeader | None = None, **kwargs) -> list[pydicom.Dataset]:
    """Datasets of a small series; keyword arguments override the writer's defaults."""
    options = dict(pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=3.0, increment_mm=3.0, origin_mm=ORIGIN)
    options.update(kwargs)
    return build_ct_datasets(simple_hu_volume() if hu is None else hu, header=header or CTHeader(), **options)


def roundtrip(datasets: list[pydicom.Dataset], folder: Path) -> list[pydicom.Dataset]:
    """The datasets as read back from files (what a scanner delivers)."""
    paths = write_datasets(datasets, folder)
    return [pydicom.dcmread(p) for p in paths]


def error_of(source, **kwargs) -> str:
    with pytest.raises(SeriesError) as info:
        load_series(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- correct volumes ---------------------------------------------------------------------------


def test_folder_gives_exact_hu_sorted_ascending_along_normal(ct_series_dir):
    series = load_series(ct_series_dir)
    assert np.array_equal(series.hu, simple_hu_volume())
    assert series.hu.dtype == np.float32
    z = [p[2] for p in series.geometry.positions]
    assert z == sorted(z) and z[0] == pytest.approx(-100.0)
    # The fixture writes Instance Numbers head to feet: sorting must not follow them.
    assert [int(ds.InstanceNumber) for ds in series.datasets] == list(range(24, 0, -1))
    g = series.geometry
    assert g.shape == (24, 64, 64)
    assert g.pixel_spacing_mm == (0.7, 0.7)
    assert g.increment_mm == pytest.approx(3.0)
    assert g.slice_thickness_mm == 3.0
    assert g.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert g.frame_of_reference_uid == series.datasets[0].FrameOfReferenceUID
    a = series.acquisition
    assert (a.kvp, a.convolution_kernel, a.manufacturer, a.ecg_gated) == (120.0, "B35f", "cacnode phantom", True)
    assert series.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in series.datasets)


def test_nested_folders_and_shuffled_names(tmp_path):
    datasets = make()
    names = [f"sub{i % 3}/IMG{random.Random(i).randint(0, 10**6):07d}_{i}" for i in range(len(datasets))]
    for i in range(3):
        (tmp_path / f"sub{i}").mkdir()
    write_datasets(datasets, tmp_path, names=names)
    assert np.array_equal(load_series(tmp_path).hu, simple_hu_volume())


def test_feet_first_normal_sorts_along_normal_not_z(tmp_path):
    # Column direction (0,-1,0) flips the normal to -z: ascending along the normal is head to feet.
    datasets = make()
    for ds in datasets:
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "-1", "0"]
    series = load_series(datasets)
    z = [p[2] for p in series.geometry.positions]
    assert z == sorted(z, reverse=True)
    assert np.array_equal(series.hu, simple_hu_volume()[::-1])


@pytest.mark.parametrize(
    ("stored", "intercept", "slope"),
    [
        ("int16", -1024.0, 1.0),
        ("uint16", -1024.0, 1.0),
        ("int16", 0.0, 1.0),
        ("uint16", -2048.0, 1.0),
        ("int16", -1000.0, 0.5),
    ],
)
def test_stored_types_and_rescale_are_exact(tmp_path, stored, intercept, slope):
    hu = simple_hu_volume()
    datasets = roundtrip(make(hu, stored=stored, intercept=intercept, slope=slope), tmp_path)
    assert datasets[0].PixelRepresentation == (1 if stored == "int16" else 0)
    assert np.array_equal(load_series(datasets).hu, hu)


def test_rescale_is_applied_per_slice(tmp_path):
    # One series whose slices carry different intercepts (scanners may do this): each slice its own.
    hu = simple_hu_volume()
    header = CTHeader()
    low = make(hu, header=header, intercept=-1024.0)
    high = make(hu, header=header, intercept=-2000.0, stored="uint16")
    mixed = [low[k] if k % 2 else high[k] for k in range(len(low))]
    series = load_series(roundtrip(mixed, tmp_path))
    assert np.array_equal(series.hu, hu)


def test_list_of_datasets_equals_folder(ct_series_dir):
    from_folder = load_series(ct_series_dir)
    datasets = [pydicom.dcmread(p) for p in sorted(ct_series_dir.iterdir())]
    from_list = load_series(datasets)
    assert np.array_equal(from_folder.hu, from_list.hu)
    assert from_folder.geometry == from_list.geometry


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_volume_does_not_depend_on_input_order(seed):
    datasets = make(simple_hu_volume(n_slices=8, size=16))
    reference = load_series(datasets)
    shuffled = list(datasets)
    random.Random(seed).shuffle(shuffled)
    series = load_series(shuffled)
    assert np.array_equal(series.hu, reference.hu)
    assert series.sop_instance_uids == reference.sop_instance_uids


def test_read_headers_groups_without_pixel_data(tmp_path):
    a, b = make(header=CTHeader()), make(simple_hu_volume(n_slices=5), header=CTHeader(series_description="Other"))
    write_datasets(a, tmp_path / "a")
    write_datasets(b, tmp_path / "b")
    (tmp_path / "notes.txt").write_text("not dicom")
    groups = read_headers(tmp_path)
    assert {uid: len(v) for uid, v in groups.items()} == {a[0].SeriesInstanceUID: 24, b[0].SeriesInstanceUID: 5}
    assert all("PixelData" not in ds for v in groups.values() for ds in v)


def test_real_scanner_file_ct_small():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = load_series([ds])
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(series.hu[0], expected)
    assert series.geometry.shape == (1, 128, 128)
    assert series.geometry.increment_mm == 5.0  # one slice: its thickness
    assert series.acquisition.manufacturer == "GE MEDICAL SYSTEMS"
    assert series.acquisition.contrast_agent  # this real header is contrast enhanced


# --- choosing a series ---------------------------------------------------------------------------


def test_folder_with_two_series_lists_the_choices(tmp_path):
    a = make(header=CTHeader(series_description="Calcium 3mm"))
    b = make(simple_hu_volume(n_slices=5), header=CTHeader(series_description="Lung 1mm"))
    write_datasets(a, tmp_path / "a")
    write_datasets(b, tmp_path / "b")
    message = error_of(tmp_path)
    assert "2 series" in message
    assert a[0].SeriesInstanceUID in message and b[0].SeriesInstanceUID in message
    assert "Calcium 3mm" in message and "24 files" in message and "5 files" in message
    chosen = load_series(tmp_path, series_uid=b[0].SeriesInstanceUID)
    assert chosen.hu.shape == (5, 64, 64)
    assert "no series 9.9.9" in error_of(tmp_path, series_uid="9.9.9")


def test_mixed_series_in_a_list_is_an_error():
    a, b = make(), make()
    message = error_of(a + b[:3])
    assert "mixes 2 series" in message and a[0].SeriesInstanceUID in message


def test_missing_and_empty_folders(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no DICOM files" in error_of(tmp_path / "empty")


def test_folder_of_files_that_are_not_dicom_is_one_honest_error_without_warnings(tmp_path, caplog):
    for name in ("notes.txt", "scan.png", "sub/readme.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("hello " * 50)  # longer than a DICOM preamble
    with caplog.at_level(logging.DEBUG, logger="pipeline.reading.loader"):
        message = error_of(tmp_path)
    assert message == f"folder {tmp_path}: 3 file(s) found, none of them DICOM"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "force" not in caplog.text


def test_files_that_are_not_dicom_beside_a_series_are_one_warning(ct_series_dir, caplog):
    for name in ("a.txt", "b.txt"):
        (ct_series_dir / name).write_text("hello")
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.loader"):
        load_series(ct_series_dir)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"folder {ct_series_dir}: skipping 2 file(s) that are not DICOM: a.txt, b.txt"


# --- bad input: one clear line naming the series ------------------------------------------------


def test_missing_slice_is_named():
    datasets = make()
    uid = datasets[0].SeriesInstanceUID
    del datasets[10]
    message = error_of(datasets)
    assert message.startswith(f"series {uid}:") and "1 slice(s) missing" in message and "gap 6 mm" in message


def test_duplicate_position_is_named():
    datasets = make()
    copy = make(header=CTHeader(series_uid=datasets[0].SeriesInstanceUID))[5]
    message = error_of(datasets + [copy])
    assert "duplicate slice position" in message and "-85.00" in message


def test_irregular_spacing():
    datasets = make()
    for ds in datasets[12:]:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.0]
    assert "spacing varies from 3 to 4 mm" in error_of(datasets)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ds: setattr(ds, "PixelSpacing", ["0.8", "0.8"]), "pixel spacing varies"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9998477, 0.0174524]), "orientation differs"),
        (lambda ds: setattr(ds, "Modality", "MR"), "modality CT/MR, not CT"),
        (lambda ds: delattr(ds, "PixelData"), "has no pixel data"),
    ],
)
def test_one_inconsistent_slice(change, expected):
    datasets = make()
    change(datasets[7])
    assert expected in error_of(datasets)


def test_inconsistent_size(tmp_path):
    header = CTHeader()
    datasets = make(header=header)
    small = make(simple_hu_volume(size=32), header=header)
    datasets[3] = small[3]
    assert "slice size varies (32x32, 64x64)" in error_of(datasets)


def test_not_ct():
    datasets = make()
    for ds in datasets:
        ds.Modality = "MR"
    assert error_of(datasets).endswith("modality MR, not CT")


def test_no_pixel_data(ct_series_dir):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_series_dir.iterdir()]
    assert "has no pixel data" in error_of(headers)


def test_oblique_and_sagittal_slices_are_refused():
    tilt = np.radians(20)
    oblique = make()
    for ds in oblique:
        ds.ImageOrientationPatient = ["1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
    assert "oblique, 20.0 degrees from axial" in error_of(oblique)
    sagittal = make()
    for ds in sagittal:
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    assert "slices are sagittal" in error_of(sagittal)


def test_sheared_stack_is_refused():
    # Axial orientation but positions marching in y too: a gantry-tilted acquisition.
    datasets = make()
    for k, ds in enumerate(datasets):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, -22.4 + (z + 100.0) * 0.2, z]
    assert "not stacked along their normal" in error_of(datasets)


def test_truncated_and_foreign_files_are_skipped_with_a_warning(ct_series_dir, caplog):
    # A truncated copy of slice 5 (new SOP instance, same series and position): were it read,
    # it would be a duplicate position; it must be skipped with a warning instead.
    first = pydicom.dcmread(sorted(ct_series_dir.iterdir())[5])
    first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    first.save_as(ct_series_dir / "cut.dcm", enforce_file_format=True)
    raw = (ct_series_dir / "cut.dcm").read_bytes()
    (ct_series_dir / "cut.dcm").write_bytes(raw[: len(raw) // 2])  # cut in the pixel data
    (ct_series_dir / "header-only.dcm").write_bytes(raw[:300])  # cut in the header
    (ct_series_dir / "readme.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.loader"):
        series = load_series(ct_series_dir)
    assert np.array_equal(series.hu, simple_hu_volume())
    assert "readme.txt" in caplog.text and "cut.dcm" in caplog.text and "header-only.dcm" in caplog.text


def test_truncated_file_of_the_series_itself_is_a_gap_not_a_wrong_volume(ct_series_dir, caplog):
    # An inner slice by position (file names are random UIDs: the 6th name may be an end slice,
    # whose loss shortens the series instead of opening a gap).
    by_position = sorted(ct_series_dir.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    victim = by_position[len(by_position) // 2]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - 100])
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.loader"):
        message = error_of(ct_series_dir)
    assert "missing" in message
    assert "truncated" in caplog.text and victim.name in caplog.text


def test_only_truncated_files_is_no_pixel_data(ct_series_dir):
    for path in ct_series_dir.iterdir():
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) - 2000])
    assert "no pixel data in any of its 24 files" in error_of(ct_series_dir)
