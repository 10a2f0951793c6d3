"""Admit associations only from configured source addresses (``scp.allowed_addresses``).

pynetdicom checks calling AE titles itself; it has no address allow-list, so
this handler of ``EVT_REQUESTED`` (fired when the A-ASSOCIATE-RQ has arrived,
before negotiation) answers A-ASSOCIATE-RJ for any other peer: rejected
permanent, by the service user, no reason given (PS3.8 9.3.4, Table 9-21).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from pynetdicom.events import Event

from scp.metrics import Counters

log = logging.getLogger(__name__)

_REJECTED_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_NO_REASON_GIVEN = 0x01


class SourceFilter:
    """Which peer addresses may associate; an empty list admits any.

    Parameters
    ----------
    allowed
        IP addresses or networks in CIDR notation.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(a, strict=False) for a in allowed)

    def admits(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def handle_requested(self, event: Event, counters: Counters) -> None:
        """Reject the association before negotiation when the peer's address is not allowed."""
        peer = event.assoc.requestor
        if self.admits(peer.address):
            return
        counters.inc("associations_rejected_total")
        # requestor.ae_title is filled in only by the negotiation that follows this event
        calling = getattr(peer.primitive, "calling_ae_title", "")
        log.warning(
            "association from %r at %s:%s rejected: address is not in scp.allowed_addresses",
            calling, peer.address, peer.port,
        )
        event.assoc.acse.send_reject(_REJECTED_PERMANENT, _SOURCE_SERVICE_USER, _NO_REASON_GIVEN)
        # as pynetdicom does for its own rejections: the association thread then ends
        event.assoc.is_rejected = True
        event.assoc.kill()
