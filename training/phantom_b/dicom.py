"""The DICOM side of a family-B case: headers, file names, UIDs and the truth SEG, all fixed by the seed.

UIDs come from ``generate_uid`` with the entropy ``("cacnode-phantom-b",
seed, ...)``, so they never meet family A's (whose entropy starts
``"cacnode-phantom"``).  The scanner and kernel names in the headers follow
the drawn reconstruction kernel (smooth, standard or sharp).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_sr.seg import build_lesion_seg
from pipeline.model.identity import REFERENCE_LABELS, AlgorithmIdentity
from training.phantom.dicom import pin_seg_identity
from training.phantom.ct_writer import CTHeader
from training.phantom_b.geometry import Grid
from training.phantom_b.params import CaseParams

ENTROPY = "cacnode-phantom-b"

# (manufacturer, model, kernel name for smooth / standard / sharp reconstructions)
_SCANNERS = (
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", ("SOFT", "STANDARD", "DETAIL")),
    ("SIEMENS", "SOMATOM Definition Flash", ("B30f", "B35f", "B46f")),
    ("Philips", "Brilliance 64", ("A", "B", "C")),
    ("TOSHIBA", "Aquilion ONE", ("FC02", "FC12", "FC18")),
    ("Canon Medical Systems", "Aquilion Prime SP", ("FC03", "FC13", "FC17")),
    ("SIEMENS", "SOMATOM go.Top", ("Qr32", "Qr36", "Qr44")),
)
_KERNEL_INDEX = {"smooth": 0, "standard": 1, "sharp": 2}

TRUTH_IDENTITY = AlgorithmIdentity(
    name="cacnode-phantom-b (true labels)",
    version=REFERENCE_LABELS.version,
    uid=generate_uid(prefix="2.25.", entropy_srcs=[ENTROPY, "truth identity"]),
)


def uid(seed: int, *parts: object) -> str:
    """A UID fixed by the seed and ``parts``."""
    return generate_uid(entropy_srcs=[ENTROPY, str(seed), *map(str, parts)])


def header(params: CaseParams, grid: Grid) -> CTHeader:
    """Patient, study, series and scanner attributes (synthetic identity only)."""
    seed = params.seed
    rng = np.random.default_rng([seed, 0xB0B, 0x4EAD])
    maker, model, kernels = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    return CTHeader(
        patient_name=f"PHANTOMB^{seed:06d}",
        patient_id=f"PB{seed:06d}",
        patient_birth_date=f"19{35 + seed % 50:02d}{1 + seed % 12:02d}15",
        patient_sex=("M", "F")[int(rng.integers(2))],
        study_uid=uid(seed, "study"),
        series_uid=uid(seed, "series"),
        frame_of_reference_uid=uid(seed, "frame"),
        study_id=str(1000 + seed % 9000),
        accession_number=f"PB{seed:08d}",
        study_date=f"2025{1 + seed % 12:02d}{1 + (seed // 12) % 28:02d}",
        study_time=f"{7 + seed % 11:02d}{(seed * 7) % 60:02d}{(seed * 13) % 60:02d}",
        series_number=int(rng.integers(2, 12)),
        series_description=f"Calcium Score {grid.thickness_mm:g} mm",
        study_description="CT Cardiac Calcium Score",
        manufacturer=maker,
        manufacturer_model=model,
        station_name=f"CTB{int(rng.integers(1, 20)):02d}",
        kvp=params.scan.kvp,
        convolution_kernel=kernels[_KERNEL_INDEX[params.scan.kernel]],
        exposure_mas=int(rng.integers(20, 120)),
    )


def file_names(seed: int, datasets: Sequence[Dataset]) -> list[str]:
    """Scanner-like file names, one per dataset (in the order written), in one of four styles."""
    rng = np.random.default_rng([seed, 0xB0B, 0xF11E])
    style = int(rng.integers(4))
    n = len(datasets)
    if style == 0:
        return [f"I{int(ds.InstanceNumber):04d}" for ds in datasets]
    if style == 1:
        return [f"CT.{ds.SOPInstanceUID}" for ds in datasets]
    if style == 2:
        series = int(datasets[0].SeriesNumber)
        return [f"{series:03d}_{int(ds.InstanceNumber):05d}.dcm" for ds in datasets]
    return [f"{int(v):016x}" for v in rng.choice(2**62, size=n, replace=False)]


def truth_seg(labels: np.ndarray, ascending: Sequence[Dataset], seed: int) -> Dataset:
    """The true labels as a DICOM SEG on the series, with UIDs and dates fixed by the seed."""
    seg = build_lesion_seg(labels, ascending, TRUTH_IDENTITY, series_number=91,
                           series_description="True coronary calcium")
    return pin_seg_identity(seg, ascending, lambda *parts: uid(seed, *parts))
