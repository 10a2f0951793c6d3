"""The in-memory form of one loaded CT series: HU volume, geometry, acquisition facts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a (slices, rows, columns) volume lie in patient space.

    ``positions`` are the Image Position (Patient) of each slice in the sorted
    order of the volume; slices are sorted along the slice normal
    (row direction x column direction), ascending.
    """

    shape: tuple[int, int, int]
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    increment_mm: float  # median distance between adjacent slice centres along the normal
    slice_thickness_mm: float | None
    orientation: tuple[float, float, float, float, float, float]
    positions: tuple[tuple[float, float, float], ...]
    frame_of_reference_uid: str | None = None

    @property
    def normal(self) -> np.ndarray:
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, col)


@dataclass(frozen=True)
class Acquisition:
    """Header facts the report and the deviation flags need."""

    kvp: float | None = None
    convolution_kernel: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    ecg_gated: bool | None = None  # None when the header does not say
    contrast_agent: str | None = None  # Contrast/Bolus Agent, None when absent


@dataclass(frozen=True)
class CTSeries:
    """A loaded, sorted, rescaled CT series.

    ``hu`` is float32 (slices, rows, columns) in Hounsfield units.
    ``datasets`` are the source datasets in the same slice order (pixel data
    included), kept for the report's evidence, SEG and summary image.
    """

    series_uid: str
    study_uid: str
    hu: np.ndarray
    geometry: Geometry
    acquisition: Acquisition
    datasets: tuple[Dataset, ...] = field(repr=False)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)
