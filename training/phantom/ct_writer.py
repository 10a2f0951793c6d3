"""Write an HU volume as a CT Image Storage series with the headers a real scanner writes.

Used by the phantom generator and by the tests that need DICOM input.  The
datasets pass ``dciodvfy`` (CT Image IOD, PS3.3 A.3) without errors.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


@dataclass(frozen=True)
class CTHeader:
    """Identity and acquisition facts of a synthetic series (no real patient data)."""

    patient_name: str = "PHANTOM^CAC"
    patient_id: str = "PHANTOM-0000"
    patient_birth_date: str = "19600101"
    patient_sex: Literal["M", "F", "O"] = "O"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    study_id: str = "1"
    accession_number: str = "PH0000"
    study_date: str = "20260101"
    study_time: str = "120000"
    series_number: int = 2
    series_description: str = "Calcium Score 3.0 mm"
    study_description: str = "CT Calcium Scoring"
    manufacturer: str = "cacnode phantom"
    manufacturer_model: str = "Synthetic CT"
    station_name: str = "PHANTOM"
    kvp: float = 120.0
    convolution_kernel: str = "B35f"
    exposure_mas: int = 80
    ecg_gated: bool = True
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    body_part: str = "HEART"


def build_ct_datasets(
    hu: np.ndarray,
    *,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    increment_mm: float,
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    header: CTHeader | None = None,
    stored: Literal["int16", "uint16"] = "int16",
    intercept: float = -1024.0,
    slope: float = 1.0,
    descending: bool = False,
    instance_uids: list[str] | None = None,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of ``hu`` (slices, rows, columns).

    Slice ``k`` of ``hu`` lies at ``origin + k * increment`` along patient z
    (feet->head is +z in LPS), so ``hu`` is in ascending-z order.  With
    ``descending=True`` the Instance Numbers run head to feet, as many scanners
    write them; positions stay correct either way.
    """
    header = header or CTHeader()
    n_slices, rows, cols = hu.shape
    stored_values = np.rint((hu - intercept) / slope)
    info = np.iinfo(np.int16 if stored == "int16" else np.uint16)
    stored_values = np.clip(stored_values, info.min, info.max).astype(stored)
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    order = list(range(n_slices))[::-1] if descending else list(range(n_slices))
    datasets = []
    for instance_number, k in enumerate(order, start=1):
        sop_uid = instance_uids[k] if instance_uids else generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(header.image_type)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = header.study_time
        ds.AccessionNumber = header.accession_number
        ds.Modality = "CT"
        ds.Manufacturer = header.manufacturer
        ds.InstitutionName = "cacnode synthetic"
        ds.ReferringPhysicianName = ""
        ds.StationName = header.station_name
        ds.StudyDescription = header.study_description
        ds.SeriesDescription = header.series_description
        ds.ManufacturerModelName = header.manufacturer_model
        ds.PatientName = header.patient_name
        ds.PatientID = header.patient_id
        ds.PatientBirthDate = header.patient_birth_date
        ds.PatientSex = header.patient_sex
        ds.BodyPartExamined = header.body_part
        ds.SliceThickness = _ds(slice_thickness_mm)
        ds.KVP = _ds(header.kvp)
        ds.DataCollectionDiameter = "500"
        ds.SoftwareVersions = "cacnode-phantom"
        ds.ReconstructionDiameter = _ds(cols * pixel_spacing_mm[1])
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "280"
        ds.XRayTubeCurrent = str(int(header.exposure_mas * 1000 / 280))
        ds.Exposure = str(header.exposure_mas)
        ds.ConvolutionKernel = header.convolution_kernel
        ds.PatientPosition = "FFS"
        if header.ecg_gated:
            # Cardiac Synchronization (PS3.3 C.7.6.18.1) is not in the CT IOD; Trigger
            # Time is what scanners write for gated scans.  Cardiac Number of Images
            # (0018,1090) is left out: PACS such as Orthanc read it as the number of
            # instances to expect, and no single value is right for a series of slices.
            ds.TriggerTime = "420"
        ds.StudyInstanceUID = header.study_uid
        ds.SeriesInstanceUID = header.series_uid
        ds.StudyID = header.study_id
        ds.SeriesNumber = header.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance_number
        z = origin_mm[2] + k * increment_mm
        ds.ImagePositionPatient = [_ds(origin_mm[0]), _ds(origin_mm[1]), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = header.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(pixel_spacing_mm[0]), _ds(pixel_spacing_mm[1])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if stored == "int16" else 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored_values[k]).tobytes()
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        datasets.append(ds)
    return datasets


def write_datasets(datasets: list[Dataset], folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write datasets as DICOM Part 10 files; ``names`` default to ``<SOPInstanceUID>.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / (names[i] if names else f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]
