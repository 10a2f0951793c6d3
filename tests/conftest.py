"""Shared fixtures: strict DICOM writing, free ports, the real dcmtk tools, small CT series."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom.config
import pytest

from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

# Strict when writing, tolerant when reading (as highdicom): anything we write must be valid.
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


def dcmtk(tool: str) -> str:
    """Path of a dcmtk (or dicom3tools) program, skipping the test when it is not installed.

    pynetdicom installs Python scripts named storescu/storescp/echoscu that shadow
    dcmtk's on PATH, so the Debian binaries are looked up in /usr/bin first.
    """
    for candidate in (Path("/usr/bin") / tool, Path("/usr/sbin") / tool):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(tool)
    if found is None or "pyenv" in found or "site-packages" in found:
        pytest.skip(f"{tool} is not installed (apt-get install dcmtk dicom3tools)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simple_hu_volume(n_slices: int = 24, size: int = 64) -> np.ndarray:
    """A small body-like volume: air, a water disc, and one calcified spot of known size."""
    hu = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    hu[:, body] = 40.0
    hu[n_slices // 2, 30:34, 30:34] = 350.0
    return hu


@pytest.fixture
def ct_series_dir(tmp_path: Path) -> Path:
    """A 24-slice 64x64 CT series on disk (3 mm slices, 0.7 mm pixels, descending instance order)."""
    datasets = build_ct_datasets(
        simple_hu_volume(),
        pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=3.0,
        increment_mm=3.0,
        origin_mm=(-22.4, -22.4, -100.0),
        header=CTHeader(),
        descending=True,
    )
    folder = tmp_path / "series"
    write_datasets(datasets, folder)
    return folder


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A throw-away PostgreSQL cluster (``node_support.PostgresServer``) on a free port of 127.0.0.1,
    stopped after the tests that use it."""
    from node_support import PostgresServer, postgres_binaries  # node_support imports this module

    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; apt-get install postgresql)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()
