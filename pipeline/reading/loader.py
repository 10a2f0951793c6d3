"""Turn a folder of CT DICOM files (or a list of datasets) into a :class:`CTSeries`.

Only this module reads image files.  Steps: read, group by Series Instance
UID, pick one series, check the headers (CT, single frame, one size, one pixel
spacing, one orientation, axial), sort along the slice normal
(:mod:`pipeline.reading.stacking`), decode every slice and apply its own Rescale
Slope/Intercept (PS3.3 C.11.1.1.2) into a float32 HU volume.

Why not :func:`highdicom.get_volume_from_series`: it raises a bare
``ValueError("Series is not a regularly-spaced volume.")`` for a missing
slice, duplicates and irregular spacing alike (a user could not act on it),
requires string-equal orientations and a Frame of Reference UID, and applies
the rescale through a general float64 pipeline per frame.  Decoding is left
to pydicom's decoders (``pydicom.pixels.get_decoder``), which handle the
compressed transfer syntaxes through pylibjpeg, pyjpegls and openjpeg.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from pipeline.errors import SeriesError, SeveralSeriesError
from pipeline.reading.series import Acquisition, CTSeries, Geometry
from pipeline.reading.stacking import StackError, check_orientations, obliquity_degrees, plane_name, sort_stack

logger = logging.getLogger(__name__)

# Slices tilted further than this from the patient z axis are refused: the
# Agatston method is defined on axial slices (calcium-scoring.md).
MAX_OBLIQUITY_DEGREES = 5.0
# Errors pydicom raises on a file that is not DICOM or is cut short, or on an
# element it cannot convert (NotImplementedError: a VR it does not know).
_UNREADABLE = (
    InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError,
    NotImplementedError,
)


def read_headers(folder: Path) -> dict[str, list[Dataset]]:
    """Headers (no pixel data) of every DICOM file under ``folder``, by Series Instance UID.

    Files that are not DICOM or cannot be parsed are skipped with a warning.
    """
    groups: dict[str, list[Dataset]] = {}
    for _, ds in _read_folder(Path(folder), stop_before_pixels=True):
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return groups


def load_series(
    source: Path | Sequence[Dataset],
    series_uid: str | None = None,
    *,
    max_obliquity_degrees: float = MAX_OBLIQUITY_DEGREES,
) -> CTSeries:
    """Load one CT series as a sorted float32 HU volume with its geometry.

    Parameters
    ----------
    source
        A folder (searched recursively) or the datasets of one series (pixel data included).
    series_uid
        The series to load when ``source`` holds several.
    max_obliquity_degrees
        Largest angle between the slice normal and the patient z axis.

    Returns
    -------
    CTSeries
        ``hu[k]`` is the slice ``k``-th along the slice normal (ascending).

    Raises
    ------
    SeriesError
        One line naming the series (or folder) and the problem.
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        named = _read_folder(folder, stop_before_pixels=False)
        where = f"folder {folder}"
        if not named:
            raise SeriesError(f"{where}: {_nothing_found(folder)}")
    else:
        named = [(f"dataset {i}", ds) for i, ds in enumerate(source)]
        where = "the datasets given"
        unnamed = [name for name, ds in named if "SeriesInstanceUID" not in ds]
        if unnamed:
            raise SeriesError(f"{where}: {unnamed[0]} has no Series Instance UID")
        if not named:
            raise SeriesError(f"{where}: no DICOM files")
    groups: dict[str, list[tuple[str, Dataset]]] = {}
    for name, ds in named:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((name, ds))
    uid = _choose(groups, series_uid, where, mixed=not isinstance(source, (str, Path)))
    members = groups[uid]
    if isinstance(source, (str, Path)):
        members = _drop_truncated(uid, members)
    return _build(uid, members, max_obliquity_degrees)


def _read_folder(folder: Path, stop_before_pixels: bool) -> list[tuple[str, Dataset]]:
    if not folder.is_dir():
        raise SeriesError(f"folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    found = []
    foreign = []  # files that are not DICOM at all: one line for them all, not a warning each
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if not _is_part10(path):
            foreign.append(name)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            for _ in ds.iterall():  # pydicom converts elements lazily: a bad one fails here, not in a later step
                pass
        except _UNREADABLE as exc:
            logger.warning("skipping %s: not a readable DICOM file (%s)", path, _first_line(exc))
            continue
        if "SeriesInstanceUID" not in ds or path.name == "DICOMDIR":
            logger.warning("skipping %s: no Series Instance UID (truncated, or not an image)", path)
            continue
        found.append((name, ds))
    if foreign and found:  # with nothing found, the caller's error says it instead
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        logger.warning("folder %s: skipping %d file(s) that are not DICOM: %s", folder, len(foreign), shown)
    return found


def _is_part10(path: Path) -> bool:
    """True for a DICOM file: 128-byte preamble, then "DICM" (PS3.10 7.1).

    pydicom refuses any other file unless forced, and forcing would read
    text or images as garbage data sets, so the others are not opened.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # let dcmread report why it cannot be read
    return head[128:132] == b"DICM"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened at a word boundary."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _nothing_found(folder: Path) -> str:
    """Why a folder gave no series, for the error: empty, no DICOM among its files, or none readable."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        return "no DICOM files (the folder is empty)"
    dicom = sum(1 for p in files if _is_part10(p))
    if dicom == 0:
        return f"{len(files)} file(s) found, none of them DICOM"
    return f"{len(files)} file(s) found, {dicom} of them DICOM, none a readable image (each skipped above)"


def _choose(groups: dict[str, list[tuple[str, Dataset]]], series_uid: str | None, where: str, mixed: bool) -> str:
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesError(f"{where}: no series {series_uid} (found {_choices(groups)})")
        return series_uid
    if len(groups) == 1:
        return next(iter(groups))
    if mixed:
        raise SeriesError(f"{where} mixes {len(groups)} series, choose one by UID: {_choices(groups)}")
    raise SeveralSeriesError(where, len(groups), _choices(groups))


def _choices(groups: dict[str, list[tuple[str, Dataset]]]) -> str:
    parts = []
    for uid, members in groups.items():
        ds = members[0][1]
        description = str(ds.get("SeriesDescription", "") or "").strip()
        modality = str(ds.get("Modality", "?"))
        parts.append(f"{uid} ({modality} '{description}', {len(members)} files)")
    return "; ".join(parts)


def _drop_truncated(uid: str, members: list[tuple[str, Dataset]]) -> list[tuple[str, Dataset]]:
    """Skip files of a folder whose pixel data is missing or cut short (warned, not fatal)."""
    kept = [(name, ds) for name, ds in members if _pixel_data_complete(ds)]
    for name, _ in members:
        if all(name != k for k, _ in kept):
            logger.warning("series %s: skipping %s: pixel data missing, truncated or not described", uid, name)
    if not kept:
        raise SeriesError(f"series {uid}: no pixel data in any of its {len(members)} files")
    return kept


def _pixel_data_complete(ds: Dataset) -> bool:
    if "PixelData" not in ds:
        return False
    try:
        needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return False  # no Rows, Columns or Bits Allocated: the pixel data cannot be read
    if _transfer_syntax(ds).is_encapsulated:
        return True  # a damaged compressed frame fails at decoding, with the file named
    return len(ds.PixelData) >= needed * int(ds.get("NumberOfFrames", 1) or 1)


def _build(uid: str, members: list[tuple[str, Dataset]], max_obliquity: float) -> CTSeries:
    names = [name for name, _ in members]
    datasets = [ds for _, ds in members]
    first = datasets[0]
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["CT"]:
        raise SeriesError(f"series {uid}: modality {'/'.join(m or '(none)' for m in modalities)}, not CT")
    for name, ds in members:
        if "PixelData" not in ds:
            raise SeriesError(f"series {uid}: {name} has no pixel data")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise SeriesError(f"series {uid}: {name} is a multi-frame image; only single-frame CT is supported")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if ds.get(keyword) in (None, ""):
                raise SeriesError(f"series {uid}: {name} has no {keyword}")
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in datasets})
    if len(sizes) > 1:
        raise SeriesError(f"series {uid}: slice size varies ({', '.join(f'{r}x{c}' for r, c in sizes)})")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if np.ptp(spacings, axis=0).max() > 1e-4 * spacings.max():
        raise SeriesError(
            f"series {uid}: pixel spacing varies from {spacings.min(axis=0).tolist()} "
            f"to {spacings.max(axis=0).tolist()} mm"
        )
    try:
        orientation = check_orientations([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
        tilt = obliquity_degrees(orientation)
        if tilt > max_obliquity:
            plane = plane_name(orientation)
            kind = "oblique" if plane == "axial" else plane
            raise SeriesError(
                f"series {uid}: slices are {kind}, {tilt:.1f} degrees from axial (at most {max_obliquity:g} allowed)"
            )
        single = _float(first, "SpacingBetweenSlices") or _float(first, "SliceThickness")
        stack = sort_stack([[float(v) for v in ds.ImagePositionPatient] for ds in datasets], orientation, names, single)
    except StackError as exc:
        raise SeriesError(f"series {uid}: {exc}") from None
    ordered = [datasets[i] for i in stack.order]
    hu = _hu_volume(uid, [names[i] for i in stack.order], ordered)
    geometry = Geometry(
        shape=hu.shape,
        pixel_spacing_mm=(float(spacings[0, 0]), float(spacings[0, 1])),
        increment_mm=stack.increment_mm,
        slice_thickness_mm=_float(first, "SliceThickness"),
        orientation=orientation,
        positions=tuple(tuple(float(v) for v in ds.ImagePositionPatient) for ds in ordered),
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if first.get("FrameOfReferenceUID") else None,
    )
    logger.debug("series %s: %d slices %dx%d loaded", uid, *hu.shape)
    return CTSeries(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        hu=hu,
        geometry=geometry,
        acquisition=acquisition_of(first),
        datasets=tuple(ordered),
    )


def _hu_volume(uid: str, names: list[str], datasets: list[Dataset]) -> np.ndarray:
    """Decode each slice into one preallocated float32 volume and rescale it in place."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    hu = np.empty((len(datasets), rows, cols), dtype=np.float32)
    for k, (name, ds) in enumerate(zip(names, datasets)):
        try:
            # as_array does not cache the decoded frame on the dataset (ds.pixel_array does).
            stored, _ = get_decoder(_transfer_syntax(ds)).as_array(ds)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
            raise SeriesError(f"series {uid}: cannot decode pixel data of {name}: {str(exc).splitlines()[0]}") from None
        if stored.shape != (rows, cols):
            raise SeriesError(f"series {uid}: {name} decodes to shape {stored.shape}, expected {rows}x{cols}")
        if "ModalityLUTSequence" in ds:
            hu[k] = apply_modality_lut(stored, ds)
            continue
        # Rescale Slope/Intercept are per slice (PS3.3 C.11.1.1.2): they may differ.
        slope = _float(ds, "RescaleSlope")
        intercept = _float(ds, "RescaleIntercept")
        if slope is None or intercept is None:
            logger.warning("series %s: %s has no Rescale Slope/Intercept; stored values taken as HU", uid, name)
        hu[k] = stored
        if slope not in (None, 1.0):
            hu[k] *= np.float32(slope)
        if intercept not in (None, 0.0):
            hu[k] += np.float32(intercept)
    return hu


def acquisition_of(ds: Dataset) -> Acquisition:
    """The acquisition facts of a CT header (kVp, kernel, manufacturer, gating, contrast)."""
    kernel = ds.get("ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)  # multi-valued, e.g. Siemens "Br36d\3"
    model = ds.get("ManufacturerModelName")
    manufacturer = ds.get("Manufacturer")
    contrast = str(ds.get("ContrastBolusAgent", "") or "").strip()
    return Acquisition(
        kvp=_float(ds, "KVP"),
        convolution_kernel=str(kernel) if kernel else None,
        manufacturer=str(manufacturer) if manufacturer else None,
        manufacturer_model=str(model) if model else None,
        ecg_gated=_ecg_gated(ds),
        contrast_agent=contrast or None,
    )


def _ecg_gated(ds: Dataset) -> bool | None:
    """What the header says about ECG gating; ``None`` when it says nothing.

    Cardiac Synchronization Technique (PS3.3 C.7.6.18.1) is explicit; in the
    CT Image IOD scanners mark gated reconstructions with Trigger Time or
    Cardiac Number of Images (C.7.6.1).
    """
    technique = str(ds.get("CardiacSynchronizationTechnique", "") or "").upper()
    if technique:
        return technique != "NONE"
    if ds.get("TriggerTime") not in (None, "") or ds.get("CardiacNumberOfImages") not in (None, "", 0):
        return True
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax of the pixel data; datasets built in memory default to native little endian."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    return ExplicitVRLittleEndian


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        result = float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None
