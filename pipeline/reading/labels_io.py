"""Read a coronary-calcium annotation (DICOM SEG or NIfTI) as a label map on a loaded series.

The label map is uint8 in the series' slice order, 0 background, 1 LM, 2 LAD,
3 LCX, 4 RCA (``calcium-scoring.md``).

* DICOM SEG: a segment names its artery by its Segment Label (``LM``, ``LAD``,
  ``LCX``, ``RCA``) or by a SNOMED CT code of CID 3016 (``report.md``) as its
  Anatomic Region or Segmented Property Type.  Frames are put on slices by the
  Referenced SOP Instance UID of their source image (PS3.3 C.8.20.3.1.1, via
  highdicom) or, when the SEG does not reference the series' instances, by
  their Image Position (Patient) in the Plane Position Sequence (C.7.6.16.2.3)
  -- never by assuming frame k is slice k.
* NIfTI: values 1-4; its affine must describe the series' voxel grid (any axis
  order or flip, which is undone here), since NIfTI files are commonly written
  in RAS with the slice axis reversed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from pipeline.scoring.arteries import ARTERIES, BY_CODE, BY_NAME, Artery
from pipeline.errors import LabelsError
from pipeline.reading.series import CTSeries

logger = logging.getLogger(__name__)

# NIfTI world coordinates are RAS+, DICOM patient coordinates LPS+.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Largest disagreement (in voxels) tolerated between a NIfTI affine and the series grid.
_GRID_TOL_VOXELS = 0.05


def read_labels(path: Path, series: CTSeries) -> np.ndarray:
    """The artery label map of ``series`` from a DICOM SEG or NIfTI file.

    Parameters
    ----------
    path
        A DICOM Segmentation (``.dcm`` or any name) or a NIfTI file (``.nii``, ``.nii.gz``).
    series
        The loaded series the annotation belongs to.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``series.hu.shape``, in the series' slice order.

    Raises
    ------
    LabelsError
        One line naming the file and why it does not fit the series.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"label file {path} does not exist")
    if path.name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path, series)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise LabelsError(f"{path}: neither NIfTI (.nii/.nii.gz) nor readable DICOM ({exc})") from None
    if ds.get("SOPClassUID") != SegmentationStorage:
        raise LabelsError(f"{path}: DICOM object is not a Segmentation (SOP class {ds.get('SOPClassUID')})")
    return seg_labels(ds, series, name=path.name)


def labels_origin(path: Path) -> str:
    """Where a label file :func:`read_labels` accepted comes from: its name, and a SEG's SOP Instance UID.

    The report names the annotation it was scored from; the UID identifies a
    DICOM SEG wherever it is copied, the file name a NIfTI file.
    """
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        return path.name
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return f"{path.name} (SEG {ds.SOPInstanceUID})"


def seg_labels(ds: Dataset, series: CTSeries, name: str = "SEG") -> np.ndarray:
    """The label map of a DICOM Segmentation dataset on ``series`` (see :func:`read_labels`)."""
    where = f"{name} (series {series.series_uid})"
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (AttributeError, ValueError, KeyError, TypeError) as exc:
        raise LabelsError(f"{where}: not a valid Segmentation: {exc}") from None
    arteries = _segment_arteries(seg, where)
    shape = series.hu.shape
    if (int(ds.Rows), int(ds.Columns)) != shape[1:]:
        raise LabelsError(f"{where}: frames are {ds.Rows}x{ds.Columns}, the series {shape[1]}x{shape[2]}")
    numbers = sorted(arteries)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    ours = set(series.sop_instance_uids)
    if referenced & ours:
        if referenced - ours:
            raise LabelsError(f"{where}: refers to {len(referenced - ours)} instance(s) not in the series")
        masks = seg.get_pixels_by_source_instance(
            list(series.sop_instance_uids),
            segment_numbers=numbers,
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,  # SEGs may omit empty frames
        )
    else:
        logger.info("%s: no references to the series' instances, placing frames by position", where)
        masks = _masks_by_position(ds, series, numbers, where)
    labels = np.zeros(shape, dtype=np.uint8)
    for i, number in enumerate(numbers):
        mask = masks[..., i] >= 0.5  # FRACTIONAL values come rescaled to 0-1
        label = arteries[number].label
        clash = mask & (labels != 0) & (labels != label)
        if clash.any():
            raise LabelsError(f"{where}: {int(clash.sum())} voxel(s) belong to two arteries")
        labels[mask] = label
    return labels


def _segment_arteries(seg: hd.seg.Segmentation, where: str) -> dict[int, Artery]:
    """Segment number -> artery, by segment label or by SNOMED CT code."""
    found: dict[int, Artery] = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        artery = _artery_of(item)
        if artery is None:
            label = item.get("SegmentLabel", "")
            logger.warning("%s: segment %d '%s' names no coronary artery, ignored", where, number, label)
            continue
        found[number] = artery
    if not found:
        labels = ", ".join(str(item.get("SegmentLabel", "?")) for item in seg.SegmentSequence)
        raise LabelsError(f"{where}: no segment names LM, LAD, LCX or RCA (segments: {labels})")
    return found


def _artery_of(item: Dataset) -> Artery | None:
    label = str(item.get("SegmentLabel", "") or "").strip().upper()
    if label in BY_NAME:
        return BY_NAME[label]
    for keyword in ("AnatomicRegionSequence", "SegmentedPropertyTypeCodeSequence"):
        for code in item.get(keyword, []):
            # SRT is the retired designator of SNOMED codes (PS3.16 8.1).
            if code.get("CodingSchemeDesignator") in ("SCT", "SRT") and str(code.get("CodeValue")) in BY_CODE:
                return BY_CODE[str(code.CodeValue)]
    return None


def _masks_by_position(ds: Dataset, series: CTSeries, numbers: list[int], where: str) -> np.ndarray:
    """(slices, rows, cols, segments) masks placed by each frame's Image Position (Patient)."""
    g = series.geometry
    frame_of_reference = ds.get("FrameOfReferenceUID")
    if frame_of_reference and g.frame_of_reference_uid and frame_of_reference != g.frame_of_reference_uid:
        raise LabelsError(f"{where}: frame of reference differs from the series'")
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    positions = np.asarray(g.positions)
    normal = g.normal
    distance = positions @ normal
    masks = np.zeros((*series.hu.shape, len(numbers)), dtype=np.float32)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        try:
            position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError) as exc:
            raise LabelsError(f"{where}: frame {f + 1} has neither a source reference nor a position ({exc})") from None
        if number not in numbers:
            continue
        k = int(np.argmin(np.abs(distance - position @ normal)))
        in_plane = np.linalg.norm((positions[k] - position) - ((positions[k] - position) @ normal) * normal)
        if abs(distance[k] - position @ normal) > g.increment_mm / 4 or in_plane > 0.01 * min(g.pixel_spacing_mm):
            raise LabelsError(f"{where}: frame {f + 1} at {position.round(2).tolist()} lies on no slice of the series")
        masks[k, :, :, numbers.index(number)] = np.maximum(masks[k, :, :, numbers.index(number)], frames[f])
    return masks


def _read_nifti(path: Path, series: CTSeries) -> np.ndarray:
    try:
        import nibabel as nib  # an extra: only NIfTI label files need it
    except ImportError:
        raise LabelsError(f"{path.name}: reading NIfTI labels needs nibabel: pip install 'cacnode[nifti]'") from None

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise LabelsError(f"{path.name}: cannot read NIfTI: {exc}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LabelsError(f"{path.name}: NIfTI has shape {data.shape}, expected 3 dimensions")
    values = np.unique(data)
    if not np.all(np.isin(values, np.arange(len(ARTERIES) + 1))):
        bad = [v for v in values.tolist() if v not in range(len(ARTERIES) + 1)][:5]
        raise LabelsError(f"{path.name}: label values must be 0-4, found {bad}")
    volume = _to_series_grid(data.astype(np.uint8), img.affine, series, path.name)
    return np.ascontiguousarray(volume)


def series_affine(series: CTSeries) -> np.ndarray:
    """4x4 map from (column, row, slice) voxel indices to DICOM patient coordinates (LPS, mm)."""
    g = series.geometry
    row_dir = np.asarray(g.orientation[:3])  # direction of increasing column index
    col_dir = np.asarray(g.orientation[3:])  # direction of increasing row index
    affine = np.eye(4)
    affine[:3, 0] = row_dir * g.pixel_spacing_mm[1]
    affine[:3, 1] = col_dir * g.pixel_spacing_mm[0]
    affine[:3, 2] = g.normal * g.increment_mm
    affine[:3, 3] = g.positions[0]
    return affine


def _to_series_grid(data: np.ndarray, nifti_affine: np.ndarray, series: CTSeries, name: str) -> np.ndarray:
    """Reorder a NIfTI array onto the series grid, checking the two grids coincide."""
    # index_series = M @ index_nifti must be a signed axis permutation plus an integer shift.
    m = np.linalg.inv(series_affine(series)) @ _RAS_TO_LPS @ np.asarray(nifti_affine, dtype=np.float64)
    rotation, shift = m[:3, :3], m[:3, 3]
    perm = np.rint(rotation)
    if np.abs(rotation - perm).max() > _GRID_TOL_VOXELS or not np.array_equal(np.abs(perm).sum(axis=0), [1, 1, 1]):
        raise LabelsError(f"{name}: NIfTI voxel grid is not the series' (spacing or orientation differ)")
    n_slices, rows, cols = series.hu.shape
    target = (cols, rows, n_slices)  # series index order (i column, j row, k slice)
    axes, arr = [], data
    for a in range(3):
        b = int(np.flatnonzero(perm[a])[0])
        axes.append(b)
    arr = np.transpose(data, axes)  # now indexed (i, j, k) up to flips
    if arr.shape != target:
        raise LabelsError(f"{name}: NIfTI shape {data.shape} does not match the series ({n_slices}x{rows}x{cols})")
    for a in range(3):
        sign = perm[a, axes[a]]
        expected = 0.0 if sign > 0 else target[a] - 1
        if abs(shift[a] - expected) > _GRID_TOL_VOXELS:
            offset = shift[a] - expected
            raise LabelsError(f"{name}: NIfTI is offset from the series by {offset:.2f} voxels along axis {a}")
        if sign < 0:
            arr = np.flip(arr, axis=a)
    return np.transpose(arr, (2, 1, 0))
