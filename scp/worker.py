"""The worker: one process that keeps the model loaded and scores due series one at a time.

It talks to the listener only through the database: it claims the oldest
queued job, checks eligibility on the headers, loads the series from the
spool, labels it, scores it, writes the report into the results folder and
queues one delivery per destination.  Running in its own process keeps the
listener's threads (and the GIL) free while the model works.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from dicom_sr.config import ReportConfig
from pipeline.eligibility import EligibilityRules
from pipeline.errors import CacnodeError
from pipeline.inference import ModelConfig
from pipeline.scoring import ScoringProfile
from scp.config import Destination, StorageConfig
from scp.db import Database, Job
from scp.spool import Spool

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class WorkerSettings:
    """The config sections the worker needs (never the whole config)."""

    storage: StorageConfig
    model: ModelConfig
    eligibility: EligibilityRules
    scoring: ScoringProfile
    report: ReportConfig
    destinations: tuple[Destination, ...]
    return_to_caller: bool
    return_port: int
    poll_seconds: float = 0.05  # how often the job table is checked when idle (a cheap indexed query)


def destinations_for(settings: WorkerSettings, job: Job) -> list[tuple[str, str, int]]:
    """Configured destinations, plus the calling AE when ``return_to_caller`` is on."""
    out = [(d.ae_title, d.host, d.port) for d in settings.destinations]
    if settings.return_to_caller and job.calling_aet and job.calling_host:
        caller = (job.calling_aet, job.calling_host, settings.return_port)
        if caller not in out:
            out.append(caller)
    return out


def write_results(folder: Path, objects: Sequence[tuple[str, Dataset | None]], summary: dict) -> None:
    """Write the report files and ``result.json`` durably into ``folder`` (replaced as a whole)."""
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, ds in objects:
        if ds is None:
            continue
        path = tmp / name
        dcmwrite(path, ds, enforce_file_format=True)
        _fsync(path)
    path = tmp / "result.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    _fsync(path)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    _fsync(folder.parent, directory=True)


def process_job(job: Job, settings: WorkerSettings, db: Database, labeller: object) -> str:
    """Score one job end to end and record the outcome; return the job's new state."""
    from dicom_sr.writer import build_report
    from pipeline.eligibility import eligibility_reasons
    from pipeline.loader import load_series, read_headers
    from pipeline.result import score_series, to_json

    spool = Spool(settings.storage.spool)
    folder = spool.series_dir(job.study_uid, job.series_uid)
    headers = read_headers(folder).get(job.series_uid, [])
    if not headers:
        reason = f"no readable instances in {folder}"
        db.end_job(job.id, "failed", reason, time.time())
        log.error("series %s: failed: %s", job.series_uid, reason)
        return "failed"
    reasons = eligibility_reasons(headers, settings.eligibility)
    if reasons:
        db.end_job(job.id, "skipped", "; ".join(reasons), time.time())
        log.info("series %s: skipped, not eligible: %s", job.series_uid, "; ".join(reasons))
        return "skipped"
    started = time.monotonic()
    series = load_series(
        folder, series_uid=job.series_uid, max_obliquity_degrees=settings.eligibility.max_obliquity_degrees
    )
    labels = labeller.predict(series)  # type: ignore[attr-defined]
    identity = labeller.identity  # type: ignore[attr-defined]
    result = score_series(series, labels, settings.scoring, f"model:{identity.name} {identity.version}")
    report = build_report(result, labels, series, identity, settings.report)
    summary = to_json(result)
    summary["sr_sop_instance_uid"] = str(report.sr.SOPInstanceUID)
    summary["generation"] = job.generation
    result_dir = settings.storage.results / job.study_uid / job.series_uid / f"{job.generation:03d}-job{job.id}"
    write_results(result_dir, [("sr.dcm", report.sr), ("seg.dcm", report.seg), ("summary.dcm", report.summary)], summary)
    destinations = destinations_for(settings, job)
    db.finish_job(
        job.id,
        time.time(),
        result_dir=result_dir,
        sr_uid=str(report.sr.SOPInstanceUID),
        total_agatston=float(result.score.total.agatston),
        destinations=destinations,
    )
    log.info(
        "series %s: reported (generation %d, %d slices, Agatston %.1f) in %.1f s; %d destination(s)",
        job.series_uid, job.generation, result.n_slices, result.score.total.agatston,
        time.monotonic() - started, len(destinations),
    )
    return "reported" if destinations else "sent"


def run_worker(settings: WorkerSettings, control: Connection, parent_pid: int) -> int:
    """Entry point of the worker process: load the model once, then take jobs until told to stop.

    Parameters
    ----------
    control
        This end of a pipe to the listener: it sends ``"stop"``; we send
        ``"ready"`` once the model is loaded.  A pipe rather than shared
        events because a listener killed with -9 closes its end (we read EOF
        and stop), whereas a lock it held at that moment would stay taken.
    parent_pid
        The listener's pid: if it is gone before we could ask Linux to kill
        us with it, we stop rather than run beside a restarted node.
    """
    _die_with_parent()
    if os.getppid() != parent_pid:
        log.warning("worker: the listener is gone before the worker started; exiting")
        return 1
    # Ctrl-C reaches the whole process group; the listener decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pipeline.inference import Labeller

    try:
        labeller = Labeller.load(settings.model)
    except CacnodeError as exc:
        log.error("worker: cannot load the model: %s", exc)
        return 2
    log.info("worker: model %s %s loaded", labeller.identity.name, labeller.identity.version)
    control.send("ready")
    db = Database(settings.storage.database)
    try:
        while not _told_to_stop(control, 0.0):
            job = db.claim_job(time.time())
            if job is None:
                if _told_to_stop(control, settings.poll_seconds):  # wakes at once on "stop" or EOF
                    break
                continue
            log.info("series %s: processing (job %d, generation %d)", job.series_uid, job.id, job.generation)
            try:
                process_job(job, settings, db, labeller)
            except CacnodeError as exc:
                db.end_job(job.id, "failed", str(exc), time.time())
                log.error("series %s: failed: %s", job.series_uid, exc)
            except Exception as exc:  # one bad series must not stop the node; the reason is kept in the job
                db.end_job(job.id, "failed", f"internal error: {type(exc).__name__}: {exc}", time.time())
                log.exception("series %s: failed with an internal error", job.series_uid)
    finally:
        db.close()
    return 0


def _told_to_stop(control: Connection, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a message; True on "stop" or when the listener is gone (EOF)."""
    try:
        if control.poll(timeout):
            return control.recv() == "stop"
    except (EOFError, OSError):
        return True
    return False


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the listener dies (kill -9 included), so a restart never runs two workers."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        log.debug("prctl unavailable; relying on the control pipe")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
