"""``cacnode worker``: a scoring and delivering process on its own, for several machines.

It is the worker ``cacnode serve`` runs as its child, run instead by a
service manager on any machine that sees the shared database (PostgreSQL,
``[database] url``) and the shared storage ``[storage] directory``.  It
loads the model once, takes jobs under a lease (``scp.lease``), takes up the
jobs of workers whose lease expired, and sends the reports (``scp.delivery``,
each delivery leased so that no two processes send it at once).  SIGINT or
SIGTERM lets the current job finish; a job cut short is taken up by another
worker once its lease expires.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from cacnode.config import Config
from pipeline.errors import CacnodeError
from scp.app import delivery_policy, quiet_chatty_libraries, web_destinations, worker_settings
from scp.db import default_owner
from scp.db_engine import DATABASE_ERRORS, cannot_open
from scp.delivery import DeliveryLoop
from scp.metrics import Counters
from scp.worker import load_labeller, work

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0  # how long a stop waits for the delivery in flight


def run_worker_service(config: Config) -> int:
    """Run one worker in the foreground until SIGINT or SIGTERM; return the exit code."""
    if not config.model.weights.is_file():
        raise CacnodeError(f"model weights {config.model.weights} not found ([model] weights)")
    if not config.database.url:
        log.warning("no [database] url: this worker shares the SQLite file %s, so it must run on the receiver's"
                    " machine", config.storage.database)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping after the current job", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    quiet_chatty_libraries()
    settings = worker_settings(config)
    labeller = load_labeller(settings)
    if labeller is None:
        return 2
    try:
        db = settings.open_database(default_owner("worker"))
    except DATABASE_ERRORS as exc:  # PostgreSQL unreachable, or a SQLite file it cannot open
        raise CacnodeError(cannot_open(config.database.target(config.storage), exc)) from None
    delivery = DeliveryLoop(db, delivery_policy(config), time.time, Counters(),
                            web_destinations=web_destinations(config))
    log.info("worker %s: taking jobs from %s (lease %.0f s)", db.owner, db.describe(), db.lease_seconds)
    try:
        delivery.start()
        work(settings, db, labeller, stop.wait)
    finally:
        delivery.stop(STOP_GRACE_SECONDS)
        db.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("stopped")
    return 0
