"""One plain function per DIMSE/association event; dependencies bound at registration.

``app.py`` binds them as ``(evt.EVT_C_STORE, handle_store, [context])``.  A
handler's whole error contract is the status it returns (PS3.4 Annex B.2.3 for
C-STORE); nothing heavy runs here, the worker does the scoring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pynetdicom.events import Event

from scp.completion import CompletionPolicy
from scp.db import Database
from scp.db_engine import UNAVAILABLE
from scp.metrics import Counters
from scp.spool import InstanceKey, Spool, SpoolError

log = logging.getLogger(__name__)

# C-STORE statuses, PS3.4 Table B.2-1 (and C.4 for the Verification success).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: the sender should retry later
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error
CANNOT_UNDERSTAND = 0xC210  # Error class 0xCxxx "cannot understand"; as pynetdicom uses for undecodable data
# A-ASSOCIATE-RJ result source and diagnostic, PS3.8 Table 9-21.
_SERVICE_USER = 0x01
_SERVICE_PROVIDER_PRESENTATION = 0x03
_CALLING_AE_NOT_RECOGNISED = 0x03
_CALLED_AE_NOT_RECOGNISED = 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, bound at registration."""

    spool: Spool
    db: Database
    policy: CompletionPolicy
    counters: Counters
    max_instance_bytes: int
    clock: Callable[[], float]
    log_phi: bool = False


def handle_echo(event: Event) -> int:
    """C-ECHO (Verification, PS3.4 A.4): always Success while we are up."""
    return SUCCESS


def handle_store(event: Event, ctx: StoreContext) -> int:
    """Make the received instance durable, record it, then answer (timed: ``cacnode_instance_store_seconds``).

    pynetdicom has streamed the data set to a file in the spool's receiving
    folder as it arrived (``STORE_RECV_CHUNKED_DATASET``, set by the app), with
    a file meta header; that file is taken into the spool as it is (no
    re-encoding, no copy in memory).  Only the identifying UIDs are read from
    it, and they are validated before they become a path.  Success is returned
    only once the file and its directory entry are fsynced.
    """
    started = time.perf_counter()
    try:
        return _store(event, ctx)
    finally:
        ctx.counters.store_seconds.observe(time.perf_counter() - started)


def _store(event: Event, ctx: StoreContext) -> int:
    received = event.dataset_path
    size = received.stat().st_size
    calling = event.assoc.requestor
    if size > ctx.max_instance_bytes:
        ctx.counters.inc("store_refused_total")
        log.warning(
            "instance %s from %s: %d bytes exceeds scp.max_instance_bytes %d; refused",
            event.request.AffectedSOPInstanceUID, calling.ae_title, size, ctx.max_instance_bytes,
        )
        return OUT_OF_RESOURCES
    try:
        ds = identifying_header(received)
        key = InstanceKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        sop_class = str(ds.SOPClassUID)
        expected = _images_in_acquisition(ds)
        patient = f" patient {ds.get('PatientID', '')!s}" if ctx.log_phi else ""
    except Exception as exc:  # pydicom raises many types for a corrupt stream; all mean "cannot understand"
        ctx.counters.inc("store_failed_total")
        log.warning(
            "instance %s from %s: cannot read its identifying UIDs (%s); answered 0x%04X",
            event.request.AffectedSOPInstanceUID, calling.ae_title, _short(exc), CANNOT_UNDERSTAND,
        )
        return CANNOT_UNDERSTAND
    if sop_class != event.request.AffectedSOPClassUID or key.sop_uid != event.request.AffectedSOPInstanceUID:
        ctx.counters.inc("store_failed_total")
        log.warning(
            "series %s: instance %s does not match its C-STORE request (SOP class or instance UID); answered 0x%04X",
            key.series_uid, key.sop_uid, DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
        return DATASET_DOES_NOT_MATCH_SOP_CLASS
    try:
        path = ctx.spool.adopt(key, received)
    except SpoolError as exc:
        ctx.counters.inc("store_refused_total")
        log.error("series %s: instance %s not stored: %s; answered Out of Resources", key.series_uid, key.sop_uid, exc)
        return OUT_OF_RESOURCES
    now = ctx.clock()
    first = key.series_uid not in ctx.policy
    try:
        new, reopened = ctx.db.record_instance(
            key, sop_class, path, size, now,
            calling_aet=calling.ae_title, calling_host=calling.address, expected=expected,
        )
    except UNAVAILABLE as exc:
        # "database or disk is full": the file is in the spool (the next start
        # records it), but not acknowledged, so the sender retries as for a full spool
        ctx.counters.inc("store_refused_total")
        log.error("series %s: instance %s not recorded: %s; answered Out of Resources", key.series_uid, key.sop_uid, exc)
        return OUT_OF_RESOURCES
    ctx.policy.seen(key.series_uid, now, new=new, expected=expected)
    ctx.counters.inc("instances_received_total")
    if reopened:
        log.info("series %s: re-opened by a late instance %s", key.series_uid, key.sop_uid)
    elif first and new:
        log.info("series %s: receiving (study %s) from %s%s", key.series_uid, key.study_uid, calling.ae_title, patient)
    elif not new:
        # once per burst of resent instances, not once per instance
        (log.info if first else log.debug)(
            "series %s: instance %s received again; no new work", key.series_uid, key.sop_uid
        )
    else:
        log.debug("series %s: instance %s stored", key.series_uid, key.sop_uid)
    return SUCCESS


def handle_rejected(event: Event, allowed_aets: tuple[str, ...], counters: Counters) -> None:
    """Log why pynetdicom rejected an association, once, naming the caller and the cause.

    ``EVT_REJECTED`` fires only for pynetdicom's own rejections (the address
    and slot rules log their own); the cause is the A-ASSOCIATE-RJ it sent
    (PS3.8 9.3.4, Table 9-21), read back from the association.
    """
    counters.inc("associations_rejected_total")
    calling = event.assoc.requestor
    log.warning(
        "association from %r at %s:%s rejected: %s",
        calling.ae_title, calling.address, calling.port, rejection_cause(event, allowed_aets),
    )


def rejection_cause(event: Event, allowed_aets: tuple[str, ...]) -> str:
    """Why the association of ``event`` was rejected, in the words of the config key that decided it."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    reply = assoc.acceptor.primitive
    calling_refused = bool(allowed_aets) and assoc.requestor.ae_title not in allowed_aets
    not_allowed = f"calling AE title is not in scp.allowed_calling_aets ({', '.join(allowed_aets)})"
    source, diagnostic = getattr(reply, "result_source", None), getattr(reply, "diagnostic", None)
    if (source, diagnostic) == (_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED):
        return not_allowed
    if (source, diagnostic) == (_SERVICE_USER, _CALLED_AE_NOT_RECOGNISED):
        called = getattr(request, "called_ae_title", "")
        why = f"it called AE title {called!r}, not this node's {assoc.acceptor.ae_title!r} (scp.ae_title)"
        return why + (f"; its {not_allowed}" if calling_refused else "")
    if (source, diagnostic) == (_SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED):
        # pynetdicom's own count, a backstop: the node sets it to the sum of the two keys
        limit = assoc.ae.maximum_associations
        return (
            f"more connections open at once than the {limit} allowed"
            " (scp.max_associations + scp.max_pending_connections)"
        )
    if reply is None:
        return "no reason recorded"
    return f"{reply.reason_str} ({reply.source_str})"


def handle_accepted(event: Event, counters: Counters) -> None:
    """Count and log accepted associations (one line, no PHI)."""
    counters.inc("associations_total")
    calling = event.assoc.requestor
    refused = [cx.abstract_syntax for cx in event.assoc.rejected_contexts]
    if refused:
        # senders such as dcmtk storescu propose dozens of classes they may never use: detail, not news
        log.debug(
            "association from %r at %s: refused presentation contexts for %s",
            calling.ae_title, calling.address, ", ".join(sorted({str(u) for u in refused})),
        )
    log.debug("association from %r at %s accepted", calling.ae_title, calling.address)


def _past_identifying_groups(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > 0x0020


def identifying_header(path: Path) -> Dataset:
    """A received file's elements up to group 0020 (UIDs, Images in Acquisition), parsed without the rest.

    The spool keeps the bytes as they came; parsing the pixel data here would
    only cost time on the association's thread, and values over a kilobyte
    in those groups (none that we read) are left unread.
    """
    with open(path, "rb") as fh:
        return read_partial(fh, stop_when=_past_identifying_groups, defer_size=1024)


def _images_in_acquisition(ds: Dataset) -> int | None:
    """Images in Acquisition (0020,1002) as a count, None when absent or unusable."""
    value = ds.get("ImagesInAcquisition")
    try:
        count = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return count if count and count > 0 else None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 160 else text[:157] + "..."
