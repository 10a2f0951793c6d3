"""Lossless compressed transfer syntaxes, made by real tools (dcmtk, GDCM) and by real scanners."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pipeline.reading.loader import load_series
from tests.conftest import dcmtk, simple_hu_volume
from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

# (tool, arguments before input/output, transfer syntax it must produce)
CODECS = [
    ("dcmcjpeg", [], JPEGLosslessSV1),  # dcmtk's default is lossless SV1 (process 14)
    ("dcmcjpls", [], JPEGLSLossless),
    ("dcmcrle", [], RLELossless),
    ("gdcmconv", ["--jpeg"], JPEGLosslessSV1),
    ("gdcmconv", ["--jpegls"], JPEGLSLossless),
    ("gdcmconv", ["--j2k"], JPEG2000Lossless),
    ("gdcmconv", ["--rle"], RLELossless),
]


def compress(src: Path, dst: Path, tool: str, args: list[str]) -> None:
    dst.mkdir()
    program = dcmtk(tool)  # skips when the tool is not installed
    for path in sorted(src.iterdir()):
        subprocess.run([program, *args, str(path), str(dst / path.name)], check=True, capture_output=True)


@pytest.mark.parametrize(("tool", "args", "syntax"), CODECS, ids=[f"{t}{''.join(a)}" for t, a, _ in CODECS])
def test_compressed_series_gives_the_same_hu(ct_series_dir, tmp_path, tool, args, syntax):
    compress(ct_series_dir, tmp_path / "compressed", tool, args)
    first = next((tmp_path / "compressed").iterdir())
    assert pydicom.dcmread(first, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    series = load_series(tmp_path / "compressed")
    assert np.array_equal(series.hu, load_series(ct_series_dir).hu)
    assert np.array_equal(series.hu, simple_hu_volume())


@pytest.mark.parametrize(("tool", "args"), [("dcmcjpls", []), ("gdcmconv", ["--j2k"]), ("dcmcjpeg", [])])
def test_compressed_unsigned_with_other_intercept(tmp_path, tool, args):
    hu = simple_hu_volume(n_slices=6)
    datasets = build_ct_datasets(
        hu,
        pixel_spacing_mm=(0.6, 0.6),
        slice_thickness_mm=2.5,
        increment_mm=2.5,
        header=CTHeader(),
        stored="uint16",
        intercept=-2048.0,
    )
    write_datasets(datasets, tmp_path / "plain")
    compress(tmp_path / "plain", tmp_path / "compressed", tool, args)
    assert np.array_equal(load_series(tmp_path / "compressed").hu, hu)


def _pydicom_data_file(name: str) -> str:
    """A file of the optional ``pydicom-data`` package, skipping when it is not installed."""
    try:
        return get_testdata_file(name, download=False) or pytest.skip(f"{name}: pydicom-data not installed")
    except (ValueError, RuntimeError):
        pytest.skip(f"{name}: pydicom-data not installed")


def test_real_jpeg2000_ct_equals_its_uncompressed_twin():
    compressed = pydicom.dcmread(_pydicom_data_file("693_J2KR.dcm"))
    plain = pydicom.dcmread(_pydicom_data_file("693_UNCR.dcm"))
    assert compressed.file_meta.TransferSyntaxUID == JPEG2000Lossless
    a, b = load_series([compressed]), load_series([plain])
    assert np.array_equal(a.hu, b.hu)
    assert a.hu.min() == -3024.0  # outside the scan field, as this scanner writes it
    assert a.acquisition.kvp == 140.0


# This real header holds hashed (invalid) UIDs; pydicom warns on reading them, and loading must not care.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_real_jpeg_lossless_ct_from_a_scanner():
    ds = pydicom.dcmread(_pydicom_data_file("bad_sequence.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    series = load_series([ds])
    assert series.hu.shape == (1, 512, 512)
    # 12-bit unsigned with intercept -1024: air at about -1000 HU, bone above +1000 HU.
    assert -1030 < series.hu.min() < -990 and series.hu.max() > 1000
    assert series.acquisition.manufacturer == "SIEMENS" and series.acquisition.convolution_kernel == "B30s"


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # pydicom on the cut file
def test_truncated_compressed_file_is_skipped(ct_series_dir, tmp_path, caplog):
    compress(ct_series_dir, tmp_path / "compressed", "dcmcjpls", [])
    # A truncated extra copy of one slice (new SOP instance, same position): skipped, not a duplicate.
    copy = pydicom.dcmread(sorted((tmp_path / "compressed").iterdir())[3])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(tmp_path / "compressed" / "copy.dcm", enforce_file_format=True)
    raw = (tmp_path / "compressed" / "copy.dcm").read_bytes()
    (tmp_path / "compressed" / "copy.dcm").write_bytes(raw[: len(raw) - 300])
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.loader"):
        series = load_series(tmp_path / "compressed")
    assert np.array_equal(series.hu, simple_hu_volume())
    assert "copy.dcm" in caplog.text
