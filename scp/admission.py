"""Admission of connections: what a peer gets before it has proved to be a DICOM sender.

pynetdicom's server wraps an accepted connection in TLS on its one accepting
thread (blocking, with no timeout), then gives it an association thread that
waits up to the ACSE timeout for the A-ASSOCIATE-RQ while counting against
``maximum_associations``.  So one idle connection to the TLS port stops every
TLS client, and eleven bare connections (a port scanner, a load balancer's
health checks) lock every sender out for 30 s.  Here, instead:

- the TLS handshake runs on the connection's own thread, within
  ``scp.request_timeout_seconds``;
- a connection must send its A-ASSOCIATE-RQ within that time too, and until
  it has, it counts against ``scp.max_pending_connections`` (a connection
  beyond that is closed at once), not against the association slots;
- ``scp.max_associations`` counts associations that have asked; one more is
  rejected "local-limit-exceeded" (PS3.8 9.3.4), as pynetdicom would;
- a PDU is measured from its header before its body is read: a P-DATA-TF
  longer than the maximum we negotiated (PS3.8 D.3.3.2.1), or any other PDU
  over 1 MiB, closes the connection; so does a C-STORE data set still arriving
  at the cut-off size (the data set itself streams to disk, see ``scp.app``).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from scp.config import ScpConfig
from scp.metrics import Counters

log = logging.getLogger(__name__)

# PS3.8 9.3.1: PDU types, and the A-ASSOCIATE-RJ of a local limit (9.3.4, Table 9-21):
# result rejected-transient, source service-provider (presentation), reason local-limit-exceeded.
_PDU_TYPES = range(0x01, 0x08)
_P_DATA_TF = 0x04
_REJECTED_TRANSIENT = 0x02
_SOURCE_PROVIDER_PRESENTATION = 0x03
_LOCAL_LIMIT_EXCEEDED = 0x02
# Any PDU other than P-DATA-TF, and the command set of one DIMSE message: real
# ones are a few kilobytes (an A-ASSOCIATE-RQ with 128 presentation contexts is ~20 KB).
MAX_CONTROL_BYTES = 1 << 20
REFUSAL_LOG_SECONDS = 10.0  # at most one log line per this long about connections refused for pending ones


@dataclass(frozen=True)
class AdmissionLimits:
    """The limits of ``[scp]`` that apply before and around an association."""

    max_associations: int
    max_pending: int
    request_timeout: float
    acse_timeout: float
    max_pdu: int  # 0 = unlimited (P-DATA-TF only)
    max_dataset_bytes: int  # a C-STORE data set still arriving beyond this is cut off

    @classmethod
    def from_config(cls, c: ScpConfig) -> AdmissionLimits:
        return cls(
            max_associations=c.max_associations,
            max_pending=c.max_pending_connections,
            request_timeout=c.request_timeout_seconds,
            acse_timeout=c.acse_timeout_seconds,
            max_pdu=c.max_pdu,
            # up to max_instance_bytes the handler answers 0xA700 (the sender may
            # retry later); far beyond it only cutting the connection saves the disk
            max_dataset_bytes=2 * c.max_instance_bytes,
        )


class Admission:
    """Counts connections waiting for their request and the associations holding a slot.

    Both counts come from live threads (pynetdicom's association threads),
    so a connection that dies in any way frees what it held.
    """

    def __init__(self, ae: AE, limits: AdmissionLimits, counters: Counters) -> None:
        self.ae = ae
        self.limits = limits
        self.counters = counters
        self._lock = threading.Lock()
        self._starting = 0  # accepted; handshake running or association thread not yet started
        self._admitted: weakref.WeakSet[Association] = weakref.WeakSet()
        self._refused = 0
        self._refusal_logged = 0.0

    def _waiting(self) -> int:
        """Connections that have not sent an A-ASSOCIATE-RQ yet."""
        waiting = sum(1 for a in self.ae.active_associations if a.is_acceptor and a.requestor.primitive is None)
        return self._starting + waiting

    def reserve(self, address: tuple[str, int]) -> bool:
        """A connection was accepted: True when it may wait for its request, False to close it now."""
        with self._lock:
            if self._waiting() < self.limits.max_pending:
                self._starting += 1
                return True
            self._refused += 1
            refused = 0  # logged now: the refusals since the last line
            now = time.monotonic()
            if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
                refused, self._refused, self._refusal_logged = self._refused, 0, now
        self.counters.inc("connections_refused_total")
        if refused:
            log.warning(
                "connection from %s closed at once: %d connections are already waiting to send an association"
                " request (scp.max_pending_connections); %d refused so", address[0], self.limits.max_pending, refused,
            )
        return False

    def started(self) -> None:
        """The connection's association thread runs (or its TLS handshake failed)."""
        with self._lock:
            self._starting -= 1

    def handle_requested(self, event: Event) -> None:
        """``EVT_REQUESTED``: give the association a slot, or reject it "local-limit-exceeded"."""
        assoc = event.assoc
        assoc.acse_timeout = self.limits.acse_timeout  # the short request timeout is over
        if assoc.is_rejected or assoc.is_aborted:  # refused already (scp.allowed_addresses)
            return
        with self._lock:
            held = sum(1 for a in self._admitted if a.is_alive())
            if held < self.limits.max_associations:
                self._admitted.add(assoc)
                return
        self.counters.inc("associations_rejected_total")
        peer = assoc.requestor
        calling = getattr(peer.primitive, "calling_ae_title", "")
        log.warning(
            "association from %r at %s:%s rejected: %d associations already open (scp.max_associations)",
            calling, peer.address, peer.port, held,
        )
        assoc.acse.send_reject(_REJECTED_TRANSIENT, _SOURCE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED)
        assoc.is_rejected = True  # as pynetdicom does for its own rejections: the thread then ends
        assoc.kill()


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the admission rules of this module.

    Made by ``AE.make_server(..., server_class=GuardedServer, admission=..., tls=...)``;
    ``tls`` replaces pynetdicom's ``ssl_context`` so the handshake runs off the accepting thread.
    """

    def __init__(self, *args: Any, admission: Admission, tls: ssl.SSLContext | None, **kwargs: Any) -> None:
        self.admission = admission
        self.tls = tls
        super().__init__(*args, request_handler=GuardedRequestHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()  # no TLS here: see process_request_thread

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.admission.reserve(client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)  # starts process_request_thread
        except BaseException:
            self.admission.started()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.admission.started()

    def _handshake(self, sock: socket.socket, address: Any) -> ssl.SSLSocket | None:
        """The server side of the TLS handshake, within the request timeout; None (socket closed) on failure."""
        sock.settimeout(self.admission.limits.request_timeout)
        try:
            tls = self.tls.wrap_socket(sock, server_side=True)  # type: ignore[union-attr]
        except OSError as exc:  # ssl.SSLError and socket timeouts included
            log.info("TLS handshake with %s:%s failed: %s", address[0], address[1], exc)
            self.admission.counters.inc("tls_handshakes_failed_total")
            sock.close()
            return None
        tls.settimeout(None)  # blocking, as pynetdicom's own accepted sockets are
        return tls

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket (open associations go on)."""
        # pynetdicom's shutdown also takes the server off the AE's list, where
        # only AE.start_server puts it; this one was made with AE.make_server.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with the request timeout and a measuring socket."""

    server: GuardedServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        limits = self.server.admission.limits
        # pynetdicom makes the AssociationSocket here with no way to choose its
        # class; GuardedSocket only overrides recv and keeps its state in arm().
        sock = assoc.dul.socket
        sock.__class__ = GuardedSocket
        sock.arm(limits, self.client_address)
        assoc.acse_timeout = limits.request_timeout  # until the A-ASSOCIATE-RQ is in (Admission.handle_requested)
        return assoc


class GuardedSocket(AssociationSocket):
    """An acceptor's socket that measures each PDU before the DUL reads it whole.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (type, reserved, length;
    PS3.8 9.3.1) then ``recv(length)``; a length over the limit would be read
    into memory however large.  Here it closes the connection instead, and
    returns nothing, which the DUL treats as a closed connection.
    """

    def arm(self, limits: AdmissionLimits, peer: Any) -> None:
        self._limits = limits
        self._peer = f"{peer[0]}:{peer[1]}"
        self._pending_body: tuple[int, int] | None = None  # (type, length) of the PDU whose body comes next
        self._dataset_bytes = 0  # of the DIMSE message being received
        self._command_bytes = 0

    def recv(self, nr_bytes: int) -> bytearray:
        header = self._pending_body
        self._pending_body = None
        if header is None or nr_bytes != header[1]:
            data = super().recv(nr_bytes)
            if nr_bytes == 6 and len(data) == 6:
                pdu_type, length = struct.unpack(">BxL", data)
                if pdu_type in _PDU_TYPES:
                    self._pending_body = (pdu_type, length)
            return data
        pdu_type, length = header
        limit = self._limits.max_pdu if pdu_type == _P_DATA_TF else MAX_CONTROL_BYTES
        if limit and length > limit:
            return self._cut(f"a PDU of type 0x{pdu_type:02X} is {length} bytes long, over the {limit} negotiated")
        data = super().recv(nr_bytes)
        if pdu_type == _P_DATA_TF and len(data) == length:
            why = self._count_fragments(data)
            if why:
                return self._cut(why)
        return data

    def _count_fragments(self, body: bytearray) -> str | None:
        """Add up the data set and command fragments of a P-DATA-TF (PS3.8 9.3.5, E.2); say why to cut, if so."""
        offset = 0
        while offset + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, offset)
            if item_length < 2:
                break  # malformed: pynetdicom's decoder refuses it
            control = body[offset + 5]
            size = item_length - 2
            if control & 0x01:  # command fragment
                self._command_bytes += size
                if self._command_bytes > MAX_CONTROL_BYTES:
                    return f"a command set is over {MAX_CONTROL_BYTES} bytes"
                if control & 0x02:
                    self._command_bytes = 0
            else:
                self._dataset_bytes += size
                if self._dataset_bytes > self._limits.max_dataset_bytes:
                    return (
                        f"a C-STORE data set is still arriving at {self._dataset_bytes} bytes"
                        f" (cut off at twice scp.max_instance_bytes)"
                    )
                if control & 0x02:
                    self._dataset_bytes = 0
            offset += 4 + item_length
        return None

    def _cut(self, why: str) -> bytearray:
        log.warning("connection from %s closed: %s", self._peer, why)
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except OSError:
            pass
        return bytearray()
