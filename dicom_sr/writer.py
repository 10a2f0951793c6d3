"""Build and write the report objects of one scored series (``report.md``): SR, SEG, summary.

:func:`build_report` is what the node calls (config decides which optional
objects are made); :func:`write_report_files` is what ``cacnode score --sr/
--seg/--summary`` calls (the paths asked for decide).  Both build the objects
together, so the SR references exactly the SEG instance written beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_sr.config import ReportConfig
from dicom_sr.seg import build_lesion_seg, segment_arteries
from dicom_sr.sr import build_sr
from dicom_sr.summary import build_summary
from pipeline.errors import CacnodeError, LabelsError
from pipeline.model.identity import AlgorithmIdentity
from pipeline.scoring.lesions import find_lesions
from pipeline.scoring.result import SeriesResult
from pipeline.reading.series import CTSeries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportObjects:
    """The DICOM objects of one report, each in its own new series of the source study."""

    sr: Dataset  # Comprehensive 3D SR, TID 1500
    seg: Dataset | None  # lesion SEG; None when switched off or no artery has calcium
    summary: Dataset | None  # Secondary Capture summary image; None when switched off

    def datasets(self) -> list[Dataset]:
        """The objects to send, SEG before the SR that references it."""
        return [ds for ds in (self.seg, self.sr, self.summary) if ds is not None]


def build_report(
    result: SeriesResult,
    labels: np.ndarray,
    series: CTSeries,
    identity: AlgorithmIdentity,
    config: ReportConfig,
) -> ReportObjects:
    """The SR, and the SEG and summary image when ``config`` asks for them.

    Parameters
    ----------
    result
        The scores of ``series`` (from :func:`pipeline.scoring.result.score_series`).
    labels
        uint8 label map of ``series`` (0 background, 1-4 arteries), in its slice order.
    series
        The loaded series; its datasets are the evidence and the SEG's source frames.
    identity
        The algorithm that produced ``labels``.
    config
        Section ``[report]``.

    Returns
    -------
    ReportObjects
        No SEG is made for a series without calcium, counted or not (``result.uncounted``):
        a SEG needs a segment (the caller says so, once, where it logs).

    Raises
    ------
    LabelsError
        When ``labels`` does not match the series.
    """
    if labels.shape != series.hu.shape:
        raise LabelsError(
            f"series {series.series_uid}: labels {labels.shape} do not match the series {series.hu.shape}"
        )
    seg = None
    # Calcium that no artery counts gets a segment of its own (and makes a SEG of a zero score).
    uncounted = result.uncounted.mask() if result.uncounted is not None and result.uncounted.components else None
    if config.write_seg and (segment_arteries(labels) or uncounted is not None):
        seg = build_lesion_seg(
            labels,
            series.datasets,
            identity,
            series_number=config.seg_series_number,
            series_description=config.seg_series_description,
            uncounted=uncounted,
        )
    g = series.geometry
    lesions = find_lesions(series.hu, labels, g.pixel_spacing_mm, g.increment_mm, result.profile)
    sr = build_sr(result, series.datasets, identity, config, seg, lesions)
    summary = build_summary(result, labels, series, identity, config) if config.write_summary else None
    return ReportObjects(sr=sr, seg=seg, summary=summary)


def write_report_files(
    result: SeriesResult,
    labels: np.ndarray,
    series: CTSeries,
    identity: AlgorithmIdentity,
    config: ReportConfig,
    sr_path: Path | None = None,
    seg_path: Path | None = None,
    summary_path: Path | None = None,
) -> ReportObjects:
    """Build the report and write the objects whose paths are given (DICOM Part 10 files).

    The paths decide what is made, whatever ``config.write_seg`` and
    ``config.write_summary`` say: asking for a file is asking for the object.
    When ``seg_path`` is given but no artery has calcium and none is uncounted, no SEG exists; that
    is logged and no file is written there.  The SR references the SEG only
    when the SEG is written.

    Returns
    -------
    ReportObjects
        The objects built (the SR always, written only when ``sr_path`` is given).
    """
    wanted = dataclasses.replace(config, write_seg=seg_path is not None, write_summary=summary_path is not None)
    objects = build_report(result, labels, series, identity, wanted)
    if seg_path is not None and objects.seg is None:
        # not an error: a SEG needs at least one segment, and a zero score is a result
        logger.info("series %s: no SEG written to %s: no artery has calcium", series.series_uid, seg_path)
    for path, ds in ((sr_path, objects.sr), (seg_path, objects.seg), (summary_path, objects.summary)):
        if path is not None and ds is not None:
            save_atomically(ds, Path(path))
    return objects


def save_atomically(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` through a temporary file, so no half-written file is ever seen.

    The folder must exist (the caller checked the path; no folder is made
    behind the user's back).  The file gets the mode the process umask gives
    (0644 under umask 022), as any file a PACS export folder is read from:
    ``tempfile.mkstemp`` would make it 0600 whatever the umask.

    Raises
    ------
    CacnodeError
        The file cannot be written (e.g. the disk is full), naming it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        try:
            with os.fdopen(fd, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CacnodeError(f"cannot write {path}: {exc.strerror or exc}") from None
    logger.debug("wrote %s (%s)", path, ds.SOPClassUID.name)
