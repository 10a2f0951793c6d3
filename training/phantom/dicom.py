"""The DICOM side of a phantom case: scanner-like headers, random file names, the truth SEG.

Everything here is deterministic in the case seed: UIDs come from
``case_uid`` (``generate_uid`` with entropy sources), names from a seeded
generator, and the SEG's own UIDs and dates are replaced after highdicom built
it (highdicom draws fresh UIDs and stamps the current time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_sr.seg import build_lesion_seg
from pipeline.model.identity import REFERENCE_LABELS, AlgorithmIdentity
from pipeline.reading.series import Acquisition, CTSeries, Geometry
from training.phantom.ct_writer import CTHeader
from training.phantom.params import PhantomParams

UidFn = Callable[..., str]

# Fictitious scanner models with the kernels their calcium protocols use.
_SCANNERS = (
    ("SIEMENS", "SOMATOM Force", ("Qr36d", "Sa36f", "B35f")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("STANDARD", "SOFT")),
    ("Philips", "iCT 256", ("B", "XCA")),
    ("TOSHIBA", "Aquilion ONE", ("FC12", "FC02")),
)
_SHIFTED_SCANNERS = (("CANON_MEDICAL", "Aquilion Prime", ("FC03", "FC18")), ("UIH", "uCT 960+", ("B_SOFT_A",)))

PHANTOM_IDENTITY = AlgorithmIdentity(
    name="cacnode-phantom (true labels)",
    version=REFERENCE_LABELS.version,
    uid="2.25.261813574302547210931466519004931357731",
)


def case_header(params: PhantomParams, uid: UidFn) -> CTHeader:
    """Patient, study, series and scanner attributes of a case (synthetic identity only)."""
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0x4EAD])
    scanners = _SHIFTED_SCANNERS if params.shifted else _SCANNERS
    maker, model, kernels = scanners[int(rng.integers(len(scanners)))]
    g = params.grid
    tag = f"{'S' if params.shifted else ''}{params.seed:06d}"
    day = 1 + params.seed % 28
    return CTHeader(
        patient_name=f"PHANTOM^{tag}",
        patient_id=f"PH{tag}",
        patient_birth_date=f"19{40 + params.seed % 45:02d}0101",
        patient_sex=("M", "F", "O")[int(rng.integers(3))],
        study_uid=uid(params, "study"),
        series_uid=uid(params, "series"),
        frame_of_reference_uid=uid(params, "frame"),
        study_id=str(1 + params.seed % 9999),
        accession_number=f"PA{tag}",
        study_date=f"2026{1 + params.seed % 12:02d}{day:02d}",
        study_time=f"{8 + params.seed % 10:02d}{params.seed % 60:02d}00",
        series_number=int(rng.integers(2, 9)),
        series_description=f"CaScore {g.thickness_mm:g}mm",
        manufacturer=maker,
        manufacturer_model=model,
        station_name=f"CT{int(rng.integers(1, 9))}",
        kvp=params.scan.kvp,
        convolution_kernel=kernels[int(rng.integers(len(kernels)))],
        exposure_mas=int(rng.integers(30, 160)),
    )


def file_names(params: PhantomParams, datasets: Sequence[Dataset]) -> list[str]:
    """Scanner-like random file names, one per dataset, in one of several styles."""
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0xF11E])
    style = int(rng.integers(4))
    n = len(datasets)
    if style == 0:
        return [f"IM{i + 1:06d}" for i in rng.permutation(n)]
    if style == 1:
        return [f"{ds.SOPInstanceUID}.dcm" for ds in datasets]
    if style == 2:
        return [f"{rng.integers(16**8):08X}" for _ in range(n - 1)] + [f"{n:08X}Z"]
    return [f"{rng.integers(16**12):012x}.dcm" for _ in range(n - 1)] + [f"last{n}.dcm"]


def series_from_datasets(hu: np.ndarray, ascending: Sequence[Dataset]) -> CTSeries:
    """A CTSeries built directly (used only when ``pipeline.reading.loader`` is not available)."""
    first = ascending[0]
    positions = tuple(tuple(float(v) for v in ds.ImagePositionPatient) for ds in ascending)
    zs = np.array([p[2] for p in positions])
    increment = float(np.median(np.diff(zs))) if len(zs) > 1 else float(first.SliceThickness)
    geometry = Geometry(
        shape=tuple(hu.shape),
        pixel_spacing_mm=(float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        increment_mm=increment,
        slice_thickness_mm=float(first.SliceThickness),
        orientation=tuple(float(v) for v in first.ImageOrientationPatient),
        positions=positions,
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
    )
    acquisition = Acquisition(
        kvp=float(first.KVP),
        convolution_kernel=str(first.ConvolutionKernel),
        manufacturer=str(first.Manufacturer),
        manufacturer_model=str(first.ManufacturerModelName),
        ecg_gated=True,
    )
    return CTSeries(str(first.SeriesInstanceUID), str(first.StudyInstanceUID), hu, geometry, acquisition,
                    tuple(ascending))


def truth_seg(labels: np.ndarray, ascending: Sequence[Dataset], params: PhantomParams, uid: UidFn) -> Dataset:
    """The true labels as a DICOM SEG on the series, with UIDs and dates fixed by the seed."""
    seg = build_lesion_seg(labels, ascending, PHANTOM_IDENTITY, series_number=90,
                           series_description="True coronary calcium")
    return pin_seg_identity(seg, ascending, lambda *parts: uid(params, *parts))


def pin_seg_identity(seg: Dataset, ascending: Sequence[Dataset], uid_of: Callable[..., str]) -> Dataset:
    """``seg`` with the UIDs and dates highdicom drew fresh replaced by ``uid_of(*parts)`` and the series' date.

    A phantom's files must be a pure function of its seed (caches and tests compare bytes).
    """
    sop = uid_of("seg", "instance")
    seg.SOPInstanceUID = sop
    seg.file_meta.MediaStorageSOPInstanceUID = sop
    seg.SeriesInstanceUID = uid_of("seg", "series")
    for i, item in enumerate(seg.SegmentSequence):
        if "TrackingUID" in item:
            item.TrackingUID = uid_of("seg", "tracking", i)
    date, time = str(ascending[0].StudyDate), str(ascending[0].StudyTime)
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in seg:
            setattr(seg, keyword, date)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    if "DimensionOrganizationSequence" in seg:
        dim_uid = uid_of("seg", "dimension")
        seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
        for item in seg.DimensionIndexSequence:
            item.DimensionOrganizationUID = dim_uid
    return seg
