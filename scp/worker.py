"""The worker: one process that keeps the model loaded and scores due series one at a time.

It talks to the listeners only through the database: it claims the oldest
queued job (a lease, renewed while it scores: ``scp.lease``), checks
eligibility on the headers, loads the series from the spool, labels it,
scores it, writes the report into the results folder and queues one delivery
per destination.  Running in its own process keeps the listener's threads
(and the GIL) free while the model works.  ``cacnode serve`` runs one as its
child; ``cacnode worker`` (``scp.worker_app``) runs one on its own, beside
others on other machines sharing the database and the storage.

The report files are written once, durably, before the deliveries that send
them are queued; a delivery repeated after a crash sends those same files,
so the same SOP Instance UIDs.  A worker that lost its lease writes into its
own folder (named by the attempt) and cannot record it, so its report is
never sent.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from dicom_sr.config import ReportConfig
from pipeline.reading.eligibility import EligibilityRules
from pipeline.errors import CacnodeError
from pipeline.model.inference import ModelConfig
from pipeline.scoring.agatston import ScoringProfile
from scp.config import DatabaseConfig, Destination, DicomWebDestination, StorageConfig
from scp.db import Database, Job, LeaseLost
from scp.db_engine import DATABASE_ERRORS
from scp.lease import LeaseKeeper
from scp.spool import Spool

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long the worker waits before it tries the database again after a write
# failed (a full disk); the wait doubles up to the maximum.
BOOKKEEPING_RETRY_SECONDS = 1.0
BOOKKEEPING_RETRY_MAX_SECONDS = 30.0
EXPIRED_SWEEP_SECONDS = 5.0  # at most this long between looks for jobs whose lease ran out


@dataclass(frozen=True)
class WorkerSettings:
    """The config sections the worker needs (never the whole config)."""

    storage: StorageConfig
    model: ModelConfig
    eligibility: EligibilityRules
    scoring: ScoringProfile
    report: ReportConfig
    destinations: tuple[Destination | DicomWebDestination, ...]
    return_to_caller: bool
    return_port: int
    poll_seconds: float = 0.05  # how often the job table is checked when idle (a cheap indexed query)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    job_max_attempts: int = 3  # scp.job_max_attempts: starts of a job before a lost lease fails it

    def open_database(self, owner: str) -> Database:
        """The shared database, with ``owner`` as the name on this worker's leases."""
        return Database(
            self.database.target(self.storage), owner=owner, lease_seconds=self.database.lease_seconds
        )


def destinations_for(settings: WorkerSettings, job: Job) -> list[tuple[str, str, int]]:
    """Configured C-STORE destinations, plus the calling AE when ``return_to_caller`` is on."""
    out = [(d.ae_title, d.host, d.port) for d in settings.destinations if isinstance(d, Destination)]
    if settings.return_to_caller and job.calling_aet and job.calling_host:
        caller = (job.calling_aet, job.calling_host, settings.return_port)
        if caller not in out:
            out.append(caller)
    return out


def web_destinations_for(settings: WorkerSettings) -> list[str]:
    """Keys (URLs) of the configured STOW-RS destinations; their credentials stay in the config."""
    return [d.key for d in settings.destinations if isinstance(d, DicomWebDestination)]


def write_results(folder: Path, objects: Sequence[tuple[str, Dataset | None]], summary: dict) -> None:
    """Write the report files and ``result.json`` durably into ``folder`` (replaced as a whole).

    On failure (a full disk) the partial files are removed, so they do not
    hold the space the bookkeeping of that failure needs.
    """
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    _fsync(folder.parent, directory=True)


@dataclass(frozen=True)
class Outcome:
    """How a job ended, to be recorded in the database: ``failed`` or ``skipped`` with a reason, or a report."""

    state: str
    reason: str | None = None
    result_dir: Path | None = None
    sr_uid: str | None = None
    total_agatston: float | None = None
    destinations: tuple[tuple[str, str, int], ...] = ()
    web_destinations: tuple[str, ...] = ()


def process_job(job: Job, settings: WorkerSettings, labeller: object) -> Outcome:
    """Score one job end to end and write its report files; the caller records the outcome.

    Raises
    ------
    CacnodeError
        The series cannot be scored (the message says why).
    """
    from dicom_sr.writer import build_report
    from pipeline.reading.eligibility import eligibility_reasons
    from pipeline.reading.loader import load_series, read_headers
    from pipeline.scoring.result import score_series, to_json

    spool = Spool(settings.storage.spool)
    folder = spool.series_dir(job.study_uid, job.series_uid)
    headers = read_headers(folder).get(job.series_uid, [])
    if not headers:
        reason = f"no readable instances in {folder}"
        log.error("series %s: failed: %s", job.series_uid, reason)
        return Outcome("failed", reason)
    reasons = eligibility_reasons(headers, settings.eligibility)
    if reasons:
        log.info("series %s: skipped, not eligible: %s", job.series_uid, "; ".join(reasons))
        return Outcome("skipped", "; ".join(reasons))
    started = time.monotonic()
    series = load_series(
        folder, series_uid=job.series_uid, max_obliquity_degrees=settings.eligibility.max_obliquity_degrees
    )
    labels = labeller.predict(series)  # type: ignore[attr-defined]
    identity = labeller.identity  # type: ignore[attr-defined]
    result = score_series(series, labels, settings.scoring, f"model:{identity.name} {identity.version}",
                          heart_box=labeller.heart_box(series))
    report = build_report(result, labels, series, identity, settings.report)
    if settings.report.write_seg and report.seg is None:
        log.info("series %s: no lesion SEG: no artery has calcium", job.series_uid)
    summary = to_json(result)
    summary["sr_sop_instance_uid"] = str(report.sr.SOPInstanceUID)
    summary["generation"] = job.generation
    # a later attempt gets its own folder: a worker that lost its lease may still be writing the earlier one
    attempt = f"-a{job.attempt}" if job.attempt > 1 else ""
    result_dir = (
        settings.storage.results / job.study_uid / job.series_uid / f"{job.generation:03d}-job{job.id}{attempt}"
    )
    write_results(result_dir, [("sr.dcm", report.sr), ("seg.dcm", report.seg), ("summary.dcm", report.summary)], summary)
    destinations = tuple(destinations_for(settings, job))
    web_destinations = tuple(web_destinations_for(settings))
    log.info(
        "series %s: reported (generation %d, %d slices, Agatston %.1f) in %.1f s; %d destination(s)",
        job.series_uid, job.generation, result.n_slices, result.score.total.agatston,
        time.monotonic() - started, len(destinations) + len(web_destinations),
    )
    return Outcome(
        "reported" if destinations or web_destinations else "sent",
        result_dir=result_dir,
        sr_uid=str(report.sr.SOPInstanceUID),
        total_agatston=float(result.score.total.agatston),
        destinations=destinations,
        web_destinations=web_destinations,
    )


def record(db: Database, job: Job, outcome: Outcome) -> None:
    """Write a job's outcome into the database (one transaction)."""
    if outcome.result_dir is not None:
        db.finish_job(
            job.id,
            time.time(),
            result_dir=outcome.result_dir,
            sr_uid=outcome.sr_uid or "",
            total_agatston=outcome.total_agatston or 0.0,
            destinations=outcome.destinations,
            web_destinations=outcome.web_destinations,
        )
    else:
        db.end_job(job.id, outcome.state, outcome.reason or "", time.time())


def run_worker(settings: WorkerSettings, control: Connection, parent_pid: int, owner: str) -> int:
    """Entry point of the worker process that ``cacnode serve`` starts: load the model once, then take jobs.

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
    owner
        The name on this worker's leases; the listener releases the jobs
        leased under it when it sees this worker die.
    """
    _die_with_parent()
    if os.getppid() != parent_pid:
        log.warning("worker: the listener is gone before the worker started; exiting")
        return 1
    # Ctrl-C reaches the whole process group; the listener decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    labeller = load_labeller(settings)
    if labeller is None:
        return 2
    control.send("ready")
    db = settings.open_database(owner)
    try:
        work(settings, db, labeller, lambda timeout: _told_to_stop(control, timeout))
    finally:
        db.close()
    return 0


def load_labeller(settings: WorkerSettings) -> object | None:
    """The model, loaded once per worker process; None (logged) when it cannot be."""
    from pipeline.model.inference import Labeller

    try:
        labeller = Labeller.load(settings.model)
    except CacnodeError as exc:
        log.error("worker: cannot load the model: %s", exc)
        return None
    log.info("worker: model %s %s loaded", labeller.identity.name, labeller.identity.version)
    return labeller


def work(settings: WorkerSettings, db: Database, labeller: object, stop: Callable[[float], bool]) -> None:
    """Take jobs until ``stop(timeout)`` (which waits up to ``timeout`` s for a stop) says to stop.

    Now and then it also takes up jobs whose worker stopped renewing its
    lease (killed, its machine down): any worker may, the database makes
    sure only one does.
    """
    wait = BOOKKEEPING_RETRY_SECONDS
    sweep_every = min(db.lease_seconds / 2, EXPIRED_SWEEP_SECONDS)
    swept = 0.0
    while not stop(0.0):
        try:
            now = time.time()
            if now - swept >= sweep_every:
                swept = now
                _take_up_expired(db, now, settings.job_max_attempts)
            job = db.claim_job(now)
        except DATABASE_ERRORS as exc:  # a full disk, a locked database, a server away: wait
            log.error("worker: cannot take a job from the database (%s); trying again in %.0f s", exc, wait)
            if stop(wait):
                break
            wait = min(wait * 2, BOOKKEEPING_RETRY_MAX_SECONDS)
            continue
        wait = BOOKKEEPING_RETRY_SECONDS
        if job is None:
            if stop(settings.poll_seconds):  # wakes at once on a stop
                break
            continue
        log.info("series %s: processing (job %d, generation %d, attempt %d)",
                 job.series_uid, job.id, job.generation, job.attempt)
        with LeaseKeeper(db, job.id, db.lease_seconds / 3) as lease:
            outcome = _score(job, settings, labeller)
        if lease.lost:
            log.warning("series %s: job %d was taken over by another worker while this one scored it;"
                        " this outcome is dropped", job.series_uid, job.id)
            continue
        if not _record_until_done(db, job, outcome, stop):
            break


def _take_up_expired(db: Database, now: float, max_attempts: int) -> None:
    for job in db.release_expired(now, max_attempts):
        if job.state == "complete":
            log.warning("series %s: job %d re-queued: its worker's lease expired (attempt %d of %d)",
                        job.series_uid, job.id, job.attempts, max_attempts)
        elif job.state == "failed":
            log.error("series %s: job %d failed: its worker's lease expired %d times (scp.job_max_attempts)",
                      job.series_uid, job.id, job.attempts)
        else:
            log.info("series %s: job %d of a lost worker superseded (the series was re-opened)",
                     job.series_uid, job.id)


def _score(job: Job, settings: WorkerSettings, labeller: object) -> Outcome:
    """``process_job``, with every failure turned into a ``failed`` outcome (one bad series must not stop the node)."""
    try:
        return process_job(job, settings, labeller)
    except CacnodeError as exc:
        log.error("series %s: failed: %s", job.series_uid, exc)
        return Outcome("failed", str(exc))
    except Exception as exc:  # the reason is kept in the job
        log.exception("series %s: failed with an internal error", job.series_uid)
        return Outcome("failed", f"internal error: {type(exc).__name__}: {exc}")


def _record_until_done(db: Database, job: Job, outcome: Outcome, stop: Callable[[float], bool]) -> bool:
    """Record ``outcome``, trying again while the database cannot take it; False when told to stop first.

    A full disk fails the COMMIT ("database or disk is full"); the worker
    must not exit over it, or the job would stay ``running`` with nobody on
    it.  It waits and tries again (space may be freed); told to stop
    meanwhile, it leaves the job ``running``, and the next start queues it again.
    """
    wait = BOOKKEEPING_RETRY_SECONDS
    while True:
        try:
            record(db, job, outcome)
        except LeaseLost as exc:
            log.warning("series %s: outcome of job %d not recorded: %s", job.series_uid, job.id, exc)
            return True
        except DATABASE_ERRORS as exc:
            log.error(
                "series %s: cannot record job %d as %s in the database (%s); the job stays running,"
                " trying again in %.0f s", job.series_uid, job.id, outcome.state, exc, wait,
            )
        else:
            if wait > BOOKKEEPING_RETRY_SECONDS:
                log.info("series %s: job %d recorded as %s after all", job.series_uid, job.id, outcome.state)
            return True
        if stop(wait):
            log.warning(
                "series %s: stopping with job %d unrecorded; it stays running and is queued again at the next start",
                job.series_uid, job.id,
            )
            return False
        wait = min(wait * 2, BOOKKEEPING_RETRY_MAX_SECONDS)


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
