"""Sending reports: the SR, SEG and summary to each destination, by C-STORE or STOW-RS, with retries.

Each (report, destination) pair is one row of the ``deliveries`` table.  An
attempt that does not end in every file stored -- connection refused,
association rejected or aborted, a timeout, a Failure or Refused status, an
HTTP error or a STOW-RS response listing failures (``scp.stow``) -- is
retried after ``backoff * 2**(attempt - 1)`` seconds, up to
``retry_max_attempts``; then the delivery is ``failed`` and waits for
``cacnode retry``.  Warning statuses (0xB000, 0xB007, 0xB006: stored with
coercion, PS3.4 B.2.3) mean the peer kept the instance, so they count as sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category, STATUS_SUCCESS, STATUS_WARNING

from scp.config import DicomWebDestination
from scp.db import Database, Delivery
from scp.db_engine import UNAVAILABLE
from scp.metrics import Counters
from scp.stow import stow_files

log = logging.getLogger(__name__)

# The files a job leaves in its result folder, in the order they are sent:
# the evidence (SEG, summary) before the SR that references them.
REPORT_FILES = ("seg.dcm", "summary.dcm", "sr.dcm")
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try (from ``[scp]``)."""

    calling_ae_title: str
    max_attempts: int
    backoff_seconds: float
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    connect_timeout: float = 10.0

    def next_attempt(self, attempts_done: int, now: float) -> float | None:
        """When to try again after ``attempts_done`` failed attempts; None when none are left."""
        if attempts_done >= self.max_attempts:
            return None
        return now + self.backoff_seconds * 2 ** (attempts_done - 1)


def send_files(policy: DeliveryPolicy, ae_title: str, host: str, port: int, files: Sequence[Path]) -> str | None:
    """C-STORE ``files`` to one peer over one association; return None when all were stored, else why not.

    Each file is proposed in the transfer syntax it was written in; a
    compressed one (the JPEG-LS summary image) is also proposed as Explicit VR
    Little Endian, in a context of its own, and sent decompressed when the
    peer accepts only that: a PACS without the codec still gets the image.
    """
    ae = AE(ae_title=policy.calling_ae_title)
    ae.acse_timeout = policy.acse_timeout
    ae.dimse_timeout = policy.dimse_timeout
    ae.network_timeout = policy.network_timeout
    ae.connection_timeout = policy.connect_timeout
    written = {}  # file -> (SOP class, transfer syntax)
    for f in files:
        meta = dcmread(f, stop_before_pixels=True).file_meta
        written[f] = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    for sop_class, syntax in sorted(set(written.values())):
        ae.add_requested_context(sop_class, syntax)
        if syntax not in UNCOMPRESSED:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            return "association rejected"
        if assoc.is_aborted:
            return "association aborted"
        return "connection refused or timed out"
    try:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for f in files:
            sop_class, syntax = written[f]
            if (sop_class, syntax) in accepted:
                status = assoc.send_c_store(f)
            elif (sop_class, ExplicitVRLittleEndian) in accepted:
                ds = dcmread(f)
                ds.decompress()  # to Explicit VR Little Endian, the context the peer took
                log.info("%s@%s:%d takes no %s: sending %s decompressed", ae_title, host, port, UID(syntax).name,
                         f.name)
                status = assoc.send_c_store(ds)
            else:
                return f"{f.name}: the peer accepted no presentation context for it ({sop_class}, {syntax})"
            code = getattr(status, "Status", None)
            if code is None:
                return f"{f.name}: no response (timeout or abort)"
            if code_to_category(code) not in (STATUS_SUCCESS, STATUS_WARNING):
                return f"{f.name}: status 0x{code:04X} ({code_to_category(code)})"
            if code_to_category(code) == STATUS_WARNING:
                log.info("%s@%s:%d stored %s with warning 0x%04X", ae_title, host, port, f.name, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return None


def report_files(result_dir: Path) -> list[Path]:
    return [result_dir / name for name in REPORT_FILES if (result_dir / name).is_file()]


def send(
    policy: DeliveryPolicy, d: Delivery, files: Sequence[Path], web_destinations: Mapping[str, DicomWebDestination]
) -> str | None:
    """Send ``files`` the way the delivery's destination takes them; return None when all were stored, else why not."""
    if d.kind == "dicomweb":
        destination = web_destinations.get(d.destination)
        if destination is None:  # queued before a config change that removed it
            return f"{d.destination} is no longer a configured destination"
        return stow_files(destination, files, policy.connect_timeout, policy.network_timeout)
    return send_files(policy, d.ae_title, d.host, d.port, files)


def attempt(
    db: Database,
    policy: DeliveryPolicy,
    d: Delivery,
    clock: Callable[[], float],
    counters: Counters,
    web_destinations: Mapping[str, DicomWebDestination],
) -> str:
    """Try one delivery once and record the outcome; return its new state.

    ``web_destinations`` are the configured STOW-RS destinations by key, where
    a ``dicomweb`` delivery finds its URL, credentials and TLS settings.
    """
    files = report_files(Path(d.result_dir))
    if not files:
        error: str | None = f"no report files in {d.result_dir}"
    else:
        try:
            error = send(policy, d, files, web_destinations)
        except (OSError, RuntimeError, ValueError) as exc:  # socket, pynetdicom and unreadable-file failures
            error = f"{type(exc).__name__}: {exc}"
    now = clock()
    done = d.attempts + 1
    if error is None:
        state = db.delivery_attempted(d.id, now, error=None, next_attempt=None)
        counters.inc("deliveries_sent_total")
        built = db.report_built(d.job_id)
        if built is not None:
            counters.delivery_seconds.observe(max(0.0, now - built))
        log.info("series %s: report delivered to %s (attempt %d)", d.series_uid, d.destination, done)
        return state
    later = policy.next_attempt(done, now)
    state = db.delivery_attempted(d.id, now, error=error, next_attempt=later)
    counters.inc("delivery_attempts_failed_total")
    if later is None:
        counters.fail("delivery")
        log.error("series %s: delivery to %s failed after %d attempts: %s", d.series_uid, d.destination, done, error)
    else:
        log.warning(
            "series %s: delivery to %s attempt %d failed (%s); retry in %.1f s",
            d.series_uid, d.destination, done, error, later - now,
        )
    return state


class DeliveryLoop:
    """A thread that sends due deliveries one at a time, polling the database.

    Polling (every ``poll_seconds``) is what lets the worker, a separate
    process, hand over reports through the database alone.
    ``web_destinations`` are the configured STOW-RS destinations.
    """

    def __init__(
        self,
        db: Database,
        policy: DeliveryPolicy,
        clock: Callable[[], float],
        counters: Counters,
        poll_seconds: float = 0.05,
        web_destinations: Sequence[DicomWebDestination] = (),
    ) -> None:
        self.db = db
        self.policy = policy
        self.web_destinations = {d.key: d for d in web_destinations}
        self.clock = clock
        self.counters = counters
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # never started (the node failed to start): nothing to join
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failing = False  # logged once per outage, not at every poll
        while not self._stop.is_set():
            try:
                for d in self.db.due_deliveries(self.clock()):
                    if self._stop.is_set():
                        return
                    attempt(self.db, self.policy, d, self.clock, self.counters, self.web_destinations)
                failing = False
            except UNAVAILABLE as exc:  # a full disk, a database server away: the reports wait, the loop lives
                if not failing:
                    log.error("deliveries: the database cannot be used (%s); trying again", exc)
                    failing = True
            self._stop.wait(self.poll_seconds)
