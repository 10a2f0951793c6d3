"""``cacnode serve``: wire the listener, the completion scheduler, the worker, delivery and the web side.

With ``--no-worker`` (``Node(run_worker=False)``) the process only receives
and completes series: workers elsewhere (``cacnode worker``) score and
deliver, sharing the PostgreSQL database and the storage (docs/deployment.md).

One process listens (pynetdicom's threaded server, with the admission rules
of ``scp.admission``: one thread per association, each running the thin
C-STORE handler of ``scp.handlers``), and its main thread completes series by
quiet period and supervises the worker; a second process (the worker,
``scp.worker``) keeps the model loaded and scores; a thread delivers reports;
an optional thread serves the status page, health and metrics.  They share nothing but the
spool and the database, so the worker's work never blocks a sender, a
restart after a crash picks up everything from disk, and a worker that dies
is replaced and its job queued again without a restart of the node.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from types import FrameType

from pydicom import uid as uids
from pydicom.pixels import get_decoder
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage, Verification

from cacnode.config import Config
from pipeline.errors import CacnodeError
from pipeline.model.weights import load_weights
from scp.admission import Admission, AdmissionLimits, GuardedServer
from scp.completion import SharedCompletion
from scp.config import DicomWebDestination
from scp.db import Database, default_owner
from scp.db_engine import DATABASE_ERRORS, UNAVAILABLE, cannot_open
from scp.delivery import DeliveryLoop, DeliveryPolicy
from scp.handlers import StoreContext, handle_accepted, handle_echo, handle_rejected, handle_store
from scp.metrics import Counters, DatabaseCollector, JobWatch
from scp.sources import SourceFilter
from scp.spool import Spool
from scp.status_page import ModelIdentity
from scp.stow import check_secret_files
from scp.web import WebContext, WebServer, make_app, read_admin_token
from scp.worker import WorkerSettings, run_worker

log = logging.getLogger(__name__)

# Uncompressed syntaxes (PS3.5 A.1-A.3) and the lossless compressed ones
# scanners and PACS use (PS3.5 A.4: JPEG Lossless 14 and SV1, JPEG-LS
# lossless, JPEG 2000 lossless, RLE).  A compressed one is offered only when a
# pixel decoder for it is installed, so we never accept what we cannot read.
UNCOMPRESSED = (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian)
LOSSLESS = (
    uids.JPEGLosslessSV1,
    uids.JPEGLossless,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
    uids.RLELossless,
)
SCHEDULER_TICK_SECONDS = 0.1  # how often due series are looked for; bounds the added latency
STOP_GRACE_SECONDS = 30.0  # how long a stop waits for open associations and the current job
WORKER_RESTART_SECONDS = 5.0  # wait before restarting a worker that died; doubles while it keeps dying before ready
WORKER_RESTART_MAX_SECONDS = 300.0
SWEEP_SECONDS = 60.0  # how often data sets left by aborted transfers are looked for
JOB_WATCH_SECONDS = 1.0  # how often jobs the worker finished are looked for (latency histograms)


def transfer_syntaxes() -> list[str]:
    """The syntaxes we accept for CT images: uncompressed plus each lossless one we can decode."""
    accepted = list(UNCOMPRESSED)
    for syntax in LOSSLESS:
        try:
            available = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):
            available = False
        if available:
            accepted.append(syntax)
        else:
            log.warning("no pixel decoder for %s installed; not accepted", syntax.name)
    return accepted


def build_ae(config: Config) -> AE:
    """The application entity with our title, limits, timeouts and accepted contexts.

    Only CT Image Storage and Verification are supported: any other SOP class
    is refused at association negotiation (PS3.8 9.3.3.2, presentation context
    result "abstract syntax not supported"), never silently dropped.  Enhanced
    CT is not offered because the loader reads single-frame CT only.
    """
    c = config.scp
    ae = AE(ae_title=c.ae_title)
    # pynetdicom counts connections still waiting for their request as
    # associations; scp.admission enforces max_associations on the ones that
    # asked, so pynetdicom's own count is only a backstop here.
    ae.maximum_associations = c.max_associations + c.max_pending_connections
    ae.maximum_pdu_size = c.max_pdu
    ae.acse_timeout = c.acse_timeout_seconds
    ae.dimse_timeout = c.dimse_timeout_seconds
    ae.network_timeout = c.network_timeout_seconds
    ae.require_called_aet = True
    ae.require_calling_aet = list(c.allowed_calling_aets)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, transfer_syntaxes())
    return ae


def tls_context(config: Config) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1) server context from ``[scp]``, or None when TLS is off."""
    c = config.scp
    if not c.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=str(c.tls_certificate), keyfile=str(c.tls_key))
        if c.tls_ca is not None:
            context.load_verify_locations(cafile=str(c.tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise CacnodeError(f"scp TLS: cannot load {c.tls_certificate}, {c.tls_key} or {c.tls_ca}: {exc}") from None
    return context


def web_destinations(config: Config) -> tuple[DicomWebDestination, ...]:
    """The STOW-RS destinations among ``[[destinations]]``."""
    return tuple(d for d in config.destinations if isinstance(d, DicomWebDestination))


def worker_settings(config: Config) -> WorkerSettings:
    return WorkerSettings(
        storage=config.storage,
        model=config.model,
        eligibility=config.eligibility,
        scoring=config.scoring,
        report=config.report,
        destinations=config.destinations,
        return_to_caller=config.scp.return_to_caller,
        return_port=config.scp.return_port,
        database=config.database,
        job_max_attempts=config.scp.job_max_attempts,
    )


def delivery_policy(config: Config) -> DeliveryPolicy:
    c = config.scp
    return DeliveryPolicy(
        calling_ae_title=c.ae_title,
        max_attempts=c.retry_max_attempts,
        backoff_seconds=c.retry_backoff_seconds,
        acse_timeout=c.acse_timeout_seconds,
        dimse_timeout=c.dimse_timeout_seconds,
        network_timeout=c.network_timeout_seconds,
    )


def _worker_main(settings: WorkerSettings, control: Connection, parent_pid: int, level: int, owner: str) -> None:
    """Entry of the spawned worker process; its exit code is ``run_worker``'s.

    A spawned process starts with logging unconfigured; this is the app's
    process entry, so it sets up the same format as the CLI.
    """
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    quiet_chatty_libraries()
    raise SystemExit(run_worker(settings, control, parent_pid, owner))


def quiet_chatty_libraries() -> None:
    """One log line per event: pynetdicom (per PDU), highdicom (per module), dicomweb-client (per request) say more."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("pynetdicom", "highdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.WARNING)


class WorkerSupervisor:
    """Runs the worker process and restarts it (with back-off) if it dies.

    Each worker it starts leases jobs as ``owner_prefix`` plus a random part,
    so the node can release the jobs of its own dead worker, and of its
    worker before a restart, without touching those of other workers
    sharing the database.
    """

    def __init__(self, settings: WorkerSettings, owner_prefix: str) -> None:
        self.owner_prefix = owner_prefix
        # spawn, not fork: the listener has threads, and torch must start clean
        self._ctx = multiprocessing.get_context("spawn")
        self._settings = settings
        self._proc: SpawnProcess | None = None
        self._control: Connection | None = None
        self._ready = False
        self._stopping = False
        self._restart_at = 0.0
        self._backoff = WORKER_RESTART_SECONDS

    def start(self) -> None:
        self._ready = False
        ours, theirs = self._ctx.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        owner = f"{self.owner_prefix}{uuid.uuid4().hex[:8]}"
        self._proc = self._ctx.Process(
            target=_worker_main, args=(self._settings, theirs, os.getpid(), level, owner), name="cacnode-worker"
        )
        self._proc.start()
        theirs.close()  # only the worker holds that end now, so our death reads as EOF there
        self._control = ours
        log.info("worker started (pid %d); loading the model", self._proc.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def ready(self) -> bool:
        if not self._ready and self._control is not None:
            try:
                self._ready = self._control.poll(0) and self._control.recv() == "ready"
            except (EOFError, OSError):
                self._ready = False
            if self._ready:
                self._backoff = WORKER_RESTART_SECONDS  # it got going: a later death restarts it soon again
        return self.alive() and self._ready

    def supervise(self, now: float, may_restart: bool = True) -> str | None:
        """Restart a worker that exited while the node is running (not before ``may_restart``).

        Returns how the worker ended (e.g. "was killed by SIGKILL") once, when
        its death is first seen, so the caller can take up its job; else None.
        """
        if self._proc is None or self._stopping:
            return None
        self.ready()  # also for a dead one: whether it had got ready sets the back-off
        if self._proc.is_alive():
            return None
        if self._restart_at == 0.0:
            how = _exit_description(self._proc.exitcode)
            log.error("worker (pid %d) %s; restarting it in %.0f s", self._proc.pid, how, self._backoff)
            self._restart_at = now + self._backoff
            self._backoff = min(self._backoff * 2, WORKER_RESTART_MAX_SECONDS)
            return how
        if now >= self._restart_at and may_restart:
            self._restart_at = 0.0
            self.start()
        return None

    def stop(self, grace: float) -> None:
        """Let the current job finish (up to ``grace`` s); a job cut short is re-queued at the next start."""
        self._stopping = True
        if self._proc is None:
            return
        try:
            self._control.send("stop")  # type: ignore[union-attr]
        except OSError:
            pass  # the worker has already exited
        self._proc.join(grace)
        if self._proc.is_alive():
            log.warning("worker still busy after %.0f s; terminating (its job is re-queued at the next start)", grace)
            self._proc.terminate()
            self._proc.join(5.0)


def _exit_description(exitcode: int | None) -> str:
    """How a worker process ended, in words ("killed by SIGKILL", "exited with code 1")."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        # the kernel's out-of-memory killer sends SIGKILL
        return f"was killed by {name}" + (" (out of memory?)" if -exitcode == signal.SIGKILL else "")
    return f"exited with code {exitcode}"


class Node:
    """Everything ``cacnode serve`` runs, startable and stoppable from one thread.

    Parameters
    ----------
    run_worker
        Also run a worker process and the delivery (one machine does
        everything); False: receive and complete series only, for workers
        elsewhere (``cacnode worker``).
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.time, *, run_worker: bool = True) -> None:
        self.config = config
        self.clock = clock
        self.run_worker = run_worker
        self.counters = Counters()
        storage = config.storage
        storage.directory.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(storage.spool, config.scp.min_free_disk_bytes, storage.fsync_directory)
        self.db = Database(
            config.database.target(storage), owner=default_owner("receiver"),
            lease_seconds=config.database.lease_seconds,
        )
        self.policy = SharedCompletion(config.series.quiet_seconds, config.series.early_completion)
        self.ae = build_ae(config)
        # this node's own worker, before and after a restart: host and port name the node
        self.worker = WorkerSupervisor(worker_settings(config), f"{socket.gethostname()}:{config.scp.port}/embedded#")
        self.delivery = DeliveryLoop(
            self.db, delivery_policy(config), clock, self.counters, web_destinations=web_destinations(config)
        )
        self.counters.registry.register(DatabaseCollector(self.db))
        self.jobs_watch = JobWatch(self.db, self.counters, since=clock())
        self._watched = 0.0
        self.web: WebServer | None = None
        self._model_identity: ModelIdentity | None = None
        self._server: GuardedServer | None = None
        self._orphaned_by: str | None = None  # how the last worker died, while its job is not yet taken up
        self._stopping = False  # once set, a dead worker is part of the stop, not a crash to restart
        self._requeue_failing = False  # logged once per outage, not on every tick
        self._open_failing = False
        self._swept = 0.0

    def recover(self) -> None:
        """Pick up what a previous run left: partial files, spooled but unrecorded instances, jobs, open series."""
        now = self.clock()
        if self.config.database.url:
            # other receivers share the spool and may be mid-transfer: only files idle for long are stale
            dropped = self.spool.sweep_receiving(self._stale_before())
        else:
            dropped = self.spool.clear_incoming()
        if dropped:
            log.info("removed %d partial file(s) of instances never acknowledged", dropped)
        self._swept = now
        found = self.db.add_spooled(self.spool.scan(), now)
        for series_uid in found:
            log.info("series %s: spooled instances recovered into the database", series_uid)
        if self.run_worker:  # the jobs of other workers sharing the database are theirs to finish
            requeued = self.db.recover(now, owner_prefix=self.worker.owner_prefix)
            if requeued:
                log.info("%d job(s) interrupted by the last stop re-queued", requeued)
        # the quiet period restarts now: a sender cut off by the crash may still resend
        self.policy.restart(now)
        for s in self.db.open_series():
            log.info("series %s: still open with %d instance(s)", s.series_uid, s.n_instances)

    def start(self) -> None:
        c = self.config.scp
        admin_token = read_admin_token(c.admin_token_file) if c.metrics_port else None  # fail before opening ports
        self.recover()
        if not c.allowed_calling_aets:
            log.warning("scp.allowed_calling_aets is empty: any calling AE title is admitted")
        ctx = StoreContext(
            spool=self.spool,
            db=self.db,
            policy=self.policy,
            counters=self.counters,
            max_instance_bytes=c.max_instance_bytes,
            clock=self.clock,
            log_phi=c.log_phi,
        )
        sources = SourceFilter(c.allowed_addresses)
        admission = Admission(self.ae, AdmissionLimits.from_config(c), self.counters)
        handlers = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [ctx]),
            (evt.EVT_REQUESTED, sources.handle_requested, [self.counters]),  # first: a refused address takes no slot
            (evt.EVT_REQUESTED, admission.handle_requested),
            (evt.EVT_REJECTED, handle_rejected, [c.allowed_calling_aets, self.counters]),
            (evt.EVT_ACCEPTED, handle_accepted, [self.counters]),
        ]
        # C-STORE data sets stream to a file as they arrive instead of into
        # memory; pynetdicom makes that file with tempfile, so the app points
        # tempfile at the spool's receiving folder, where the handler links it
        # into place (same file system) and the disk-space checks apply.
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.receiving)
        tls = tls_context(self.config)
        try:
            self._server = self.ae.make_server(
                (c.host, c.port), evt_handlers=handlers, server_class=GuardedServer, admission=admission, tls=tls
            )
        except OSError as exc:
            raise CacnodeError(f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}") from None
        threading.Thread(target=self._server.serve_forever, name="cacnode-acceptor", daemon=True).start()
        if self.run_worker:
            self.worker.start()
            self.delivery.start()
        if c.metrics_port:
            self.counters.add_process_metrics()
            web = WebContext(
                db=self.db, counters=self.counters, health=self.health, model=self.model_identity,
                admin_token=admin_token, show_phi=c.log_phi,
            )
            self.web = WebServer(c.metrics_host, c.metrics_port, make_app(web))
            self.web.start()
        log.info(
            "listening as %s on %s:%d%s; quiet period %.1f s; %d destination(s); database %s%s",
            c.ae_title, c.host, c.port, " (TLS)" if c.tls else "", self.config.series.quiet_seconds,
            len(self.config.destinations), self.db.describe(), "" if self.run_worker else "; no worker (receiving only)",
        )

    def tick(self) -> None:
        """Queue a job for every series that became complete; keep the worker alive and take up a dead one's job."""
        now = self.clock()
        try:
            # from the database, not this process's memory: other receivers may hold part of a series
            due = self.policy.due(self.db.open_series(), now)
        except UNAVAILABLE as exc:  # the database server is away: the next tick tries again
            if not self._open_failing:
                log.error("cannot read the open series from the database (%s); trying again", exc)
                self._open_failing = True
            due = []
        else:
            self._open_failing = False
        for series_uid in due:
            try:
                job_id = self.db.complete_series(series_uid, now)
            except UNAVAILABLE as exc:  # a full disk: the series waits another quiet period
                self.policy.hold(series_uid, now)
                log.error("series %s: complete, but cannot queue it (%s); trying again later", series_uid, exc)
                continue
            if job_id is not None:
                self.counters.inc("series_completed_total")
                log.info("series %s: complete; queued as job %d", series_uid, job_id)
        if self._orphaned_by is not None:
            self._take_up_orphaned_jobs(now)
        # no new worker while a dead one's job is still marked running: it could never be claimed
        died = None if self._stopping else self.worker.supervise(now, may_restart=self._orphaned_by is None)
        if died is not None:
            self._orphaned_by = died
            self._take_up_orphaned_jobs(now)
        if now - self._watched >= JOB_WATCH_SECONDS:
            self._watched = now
            self.jobs_watch.poll()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            removed = self.spool.sweep_receiving(self._stale_before())
            if removed:
                log.info("removed %d partial data set(s) of transfers aborted mid-instance", removed)

    def _stale_before(self) -> float:
        """Partial data sets last written before this (epoch seconds, as file times) belong to no live transfer."""
        c = self.config.scp
        # pynetdicom aborts an association idle for network_timeout; its data set is stale after that
        return time.time() - max(c.network_timeout_seconds, c.dimse_timeout_seconds) - 60

    def _take_up_orphaned_jobs(self, now: float) -> None:
        """The worker died: its job goes back to the queue, or fails after scp.job_max_attempts starts.

        Called while no worker runs (the next one starts only once this
        succeeded), so a job still ``running`` has nobody to finish it.
        """
        how = self._orphaned_by
        try:
            released = self.db.release_running(
                now, self.config.scp.job_max_attempts, f"the worker {how}", owner_prefix=self.worker.owner_prefix
            )
        except UNAVAILABLE as exc:  # a full disk: tried again at the next tick
            if not self._requeue_failing:
                log.error("cannot re-queue the job of the worker that died (%s); trying again", exc)
                self._requeue_failing = True
            return
        self._orphaned_by = None
        self._requeue_failing = False
        for job in released:
            self.counters.inc("jobs_orphaned_total")
            if job.state == "complete":
                log.warning(
                    "series %s: job %d re-queued: the worker %s while scoring it (attempt %d of %d)",
                    job.series_uid, job.id, how, job.attempts, self.config.scp.job_max_attempts,
                )
            elif job.state == "failed":
                log.error(
                    "series %s: job %d failed: the worker %s while scoring it, %d times (scp.job_max_attempts)",
                    job.series_uid, job.id, how, job.attempts,
                )
            else:
                log.info("series %s: job %d of the dead worker superseded (the series was re-opened)",
                         job.series_uid, job.id)

    def request_stop(self) -> None:
        """A stop is coming: from now on a worker that dies is not restarted nor its job counted as an attempt.

        A stop signal sent to the whole process group (Ctrl-C, ``kill -- -PGID``, a service
        manager) reaches the worker too; its job is re-queued at the next start, as after any stop.
        """
        self._stopping = True

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting, let open associations finish, then the delivery, the worker and the web side."""
        self.request_stop()
        if self._server is not None:
            self._server.shutdown()  # the listening socket closes; open associations go on
            deadline = time.monotonic() + grace
            while self.ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            self.ae.shutdown()  # aborts what is still open: those instances were never acknowledged
        self.tick()  # a series that became due while stopping is queued, not forgotten
        if self.run_worker:
            self.delivery.stop(grace)
            self.worker.stop(grace)
        if self.web is not None:
            self.web.stop()
        self.db.close()
        tempfile.tempdir = None
        log.info("stopped")

    def model_identity(self) -> ModelIdentity | None:
        """Name, version and UID of the configured weights, read once (for the status page)."""
        if self._model_identity is None:
            try:
                w = load_weights(self.config.model.weights)
            except CacnodeError as exc:
                log.warning("status page: %s", exc)
                return None
            self._model_identity = ModelIdentity(w.name, w.version, w.uid)
        return self._model_identity

    def health(self) -> tuple[bool, dict[str, object]]:
        listening = self._server is not None
        if not self.run_worker:  # workers elsewhere score and deliver
            return listening, {"listener": "up" if listening else "down", "worker": "elsewhere",
                               "delivery": "elsewhere"}
        worker = "ready" if self.worker.ready() else ("loading" if self.worker.alive() else "down")
        ok = listening and worker == "ready" and self.delivery.is_alive()
        return ok, {"listener": "up" if listening else "down", "worker": worker,
                    "delivery": "up" if self.delivery.is_alive() else "down"}


def serve(config: Config, run_worker: bool = True) -> int:
    """Run the node in the foreground until SIGINT or SIGTERM; return the exit code.

    ``run_worker`` False: receive only (``cacnode serve --no-worker``).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        if node is not None:
            node.request_stop()
        stop.set()

    if run_worker and not config.model.weights.is_file():  # fail before opening a port, not in the worker's loop
        raise CacnodeError(f"model weights {config.model.weights} not found ([model] weights)")
    for destination in web_destinations(config):  # a secret file unreadable by the node's user fails now, not later
        problem = check_secret_files(destination)
        if problem is not None:
            raise CacnodeError(f"destination {problem}")
        if destination.auth != "none" and destination.key.lower().startswith("http://"):
            log.warning("destination %s: credentials go unencrypted over plain http", destination.key)
    node: Node | None = None
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    quiet_chatty_libraries()
    try:
        node = Node(config, run_worker=run_worker)
    except DATABASE_ERRORS as exc:  # PostgreSQL unreachable, or a SQLite file it cannot open
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise CacnodeError(cannot_open(config.database.target(config.storage), exc)) from None
    try:
        node.start()
        while not stop.is_set():
            node.tick()
            stop.wait(SCHEDULER_TICK_SECONDS)
    finally:
        node.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
