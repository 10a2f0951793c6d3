"""The lesion DICOM SEG: one BINARY segment per artery with calcium (``report.md`` section 2).

When the heart crop holds calcium that no artery counts (``pipeline.scoring.uncounted``), one
more segment, after the arteries', outlines it in grey ("Calcium not attributed to a coronary
artery"), so a viewer shows what the score left out; it is absent otherwise.

Built with highdicom on the frames of the source CT series, in the source
study, with fresh UIDs.  Empty frames are kept (``omit_empty_frames=False``):
some viewers mis-place segmentations whose frames are omitted, and a full
stack also lets readers map frame k to source slice k without geometry.

A Segmentation needs at least one segment (PS3.3 C.8.20.4: the Segment
Sequence has one or more items), so a label map without any artery (and no
uncounted calcium) raises :class:`~pipeline.errors.LabelsError`;
:mod:`dicom_sr.writer` skips the SEG for such a series instead of calling this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cacnode import __version__
from dicom_sr import codes
from dicom_sr.source import device_attributes, header_copies
from dicom_sr.summary_draw import ARTERY_COLOURS, UNCOUNTED_COLOUR
from pipeline.scoring.arteries import ARTERIES, Artery
from pipeline.scoring.uncounted import DESCRIPTION as UNCOUNTED_LABEL
from pipeline.errors import LabelsError
from pipeline.model.identity import AlgorithmIdentity

logger = logging.getLogger(__name__)


def algorithm_identification(identity: AlgorithmIdentity) -> hd.AlgorithmIdentificationSequence | None:
    """The Segment Algorithm Identification of every segment (PS3.3 C.8.20.2).

    None for a reference annotation: its segments are MANUAL, and the
    identification is only for AUTOMATIC and SEMIAUTOMATIC segments.
    """
    if identity.is_reference:
        return None
    return hd.AlgorithmIdentificationSequence(name=identity.name, family=codes.AI_FAMILY, version=identity.version)


# The uncounted calcium's segment: thresholding and connected components (``pipeline.scoring.uncounted``).
UNCOUNTED_FINDER = hd.AlgorithmIdentificationSequence(
    name="cacnode uncounted calcium", family=codes.NEIGHBORHOOD_FAMILY, version=__version__)


def _algorithm_type(identity: AlgorithmIdentity) -> hd.seg.SegmentAlgorithmTypeValues:
    if identity.is_reference:
        return hd.seg.SegmentAlgorithmTypeValues.MANUAL
    return hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC


def display_colour(artery: str) -> hd.color.CIELabColor:
    """Recommended Display CIELab Value (0062,000D) of an artery's segment.

    The artery's colour in the summary image (sRGB), converted to the DICOM
    scaling of CIELab (PS3.3 C.10.7.1.1), so viewers draw the SEG as the image shows it.
    """
    return hd.color.CIELabColor.from_rgb(*ARTERY_COLOURS[artery])


def segment_arteries(labels: np.ndarray) -> tuple[Artery, ...]:
    """The arteries that have at least one labelled voxel, in LM, LAD, LCX, RCA order."""
    counts = np.bincount(labels.ravel(), minlength=256)  # faster than np.unique on a volume
    return tuple(a for a in ARTERIES if counts[a.label] > 0)


def segment_numbers(labels: np.ndarray) -> dict[str, int]:
    """Segment number of each artery's segment in the SEG :func:`build_lesion_seg` writes.

    Segment numbers are consecutive from 1 (highdicom and PS3.3 C.8.20.2
    require it), so they depend on which arteries have calcium.
    """
    return {a.name: i for i, a in enumerate(segment_arteries(labels), start=1)}


def build_lesion_seg(
    labels: np.ndarray,
    source_datasets: Sequence[Dataset],
    identity: AlgorithmIdentity,
    *,
    series_number: int,
    series_description: str,
    uncounted: np.ndarray | None = None,
) -> Dataset:
    """A BINARY Segmentation of the calcium of each artery in ``labels``.

    Parameters
    ----------
    labels
        uint8 (slices, rows, columns), 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA,
        slice ``k`` belonging to ``source_datasets[k]``.
    source_datasets
        The CT datasets of the series, sorted along the slice normal (as
        :class:`pipeline.reading.series.CTSeries.datasets`); pixel data not needed.
        Missing Type 2 patient/study attributes are written empty.
    identity
        The algorithm that produced the labels (Segment Algorithm Identification,
        Manufacturer, Manufacturer's Model Name, Software Versions); for a
        reference annotation the segments are MANUAL, without identification.
    series_number, series_description
        Of the new SEG series.
    uncounted
        Boolean mask, same shape, of the calcium that no artery counts
        (``UncountedCalcium.mask()``); a segment of its own, after the arteries', when any.

    Returns
    -------
    pydicom.dataset.Dataset
        A highdicom :class:`~highdicom.seg.Segmentation` (a pydicom Dataset),
        frame ``k + 1`` of segment ``s`` on source slice ``k``.

    Raises
    ------
    LabelsError
        When ``labels`` does not fit the source datasets or holds no artery.
    """
    series_uid = _series_uid(source_datasets)
    n = len(source_datasets)
    if labels.ndim != 3 or labels.shape[0] != n:
        raise LabelsError(f"series {series_uid}: label map {labels.shape} does not match {n} source slices")
    rows, cols = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise LabelsError(f"series {series_uid}: label map {labels.shape} does not match {rows}x{cols} slices")
    arteries = segment_arteries(labels)
    with_uncounted = uncounted is not None and bool(uncounted.any())
    if with_uncounted and uncounted.shape != labels.shape:
        raise LabelsError(f"series {series_uid}: uncounted mask {uncounted.shape} does not match {labels.shape}")
    if not arteries and not with_uncounted:
        raise LabelsError(f"series {series_uid}: no artery has calcium, a SEG needs at least one segment")

    # Map label values (1-4) to consecutive segment numbers (1..n_segments).
    lut = np.zeros(256, dtype=np.uint8)
    for number, artery in enumerate(arteries, start=1):
        lut[artery.label] = number
    label_map = lut[labels.astype(np.uint8, copy=False)]
    if with_uncounted:
        # Uncounted voxels carry no label (label 0), so the segments do not overlap.
        label_map[uncounted & (labels == 0)] = len(arteries) + 1

    algorithm = algorithm_identification(identity)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=artery.name,
            segmented_property_category=codes.SEG_CATEGORY,
            segmented_property_type=codes.SEG_TYPE,
            algorithm_type=_algorithm_type(identity),
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{artery.name} calcium",
            anatomic_regions=[codes.ARTERY_CODES[artery.name]],
            display_color=display_colour(artery.name),
        )
        for number, artery in enumerate(arteries, start=1)
    ]
    if with_uncounted:
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=len(arteries) + 1,
                segment_label=UNCOUNTED_LABEL,
                segmented_property_category=codes.SEG_CATEGORY,
                segmented_property_type=codes.UNCOUNTED_SEG_TYPE,
                # found by the node's own rules, not by the model or the annotator, even for reference labels
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=UNCOUNTED_FINDER,
                tracking_uid=hd.UID(),
                tracking_id="Calcium not attributed",
                display_color=hd.color.CIELabColor.from_rgb(*UNCOUNTED_COLOUR),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=header_copies(source_datasets),
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **device_attributes(identity),
        series_description=series_description,
        content_label="CALCIUM",
        content_description="Coronary calcium by artery",
        omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if identity.is_reference:
        # Segment Description (0062,0006, LO): the segments copy an annotation.
        for segment in seg.SegmentSequence[: len(arteries)]:
            segment.SegmentDescription = "Reference annotation"
    if with_uncounted:
        # Not a finding of the labels: in the heart crop, at or above the threshold, counted in no artery.
        seg.SegmentSequence[len(arteries)].SegmentDescription = "In the heart crop, counted in no artery's score"
    logger.debug("series %s: SEG with %d segments built", series_uid, len(seg.SegmentSequence))
    return seg


def _series_uid(source_datasets: Sequence[Dataset]) -> str:
    if not source_datasets:
        raise LabelsError("cannot build a SEG without source datasets")
    return str(getattr(source_datasets[0], "SeriesInstanceUID", "?"))
