"""Keep a worker's lease on its job alive while it scores (``Database.heartbeat`` from a thread).

Scoring runs in the worker's main thread for seconds to minutes; this thread
renews the lease meanwhile, so other workers see the job is still being
worked on.  If the renewal finds the lease gone (the worker was paused past
``lease_seconds`` and another took the job), the worker must not record its
outcome: the other worker's report is the one delivered.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from scp.db import Database
from scp.db_engine import DATABASE_ERRORS

log = logging.getLogger(__name__)


class LeaseKeeper:
    """A context manager renewing the lease on ``job_id`` every ``interval`` seconds until it exits.

    Parameters
    ----------
    db
        The worker's database (its ``owner`` holds the lease).
    job_id
        The job being scored.
    interval
        Seconds between renewals; a third of the lease leaves two renewals'
        slack for a slow database.
    """

    def __init__(self, db: Database, job_id: int, interval: float) -> None:
        self._db = db
        self._job_id = job_id
        self._interval = interval
        self._done = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-job{job_id}", daemon=True)

    @property
    def lost(self) -> bool:
        """True once a renewal found the job no longer leased to this worker."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                held = self._db.heartbeat(self._job_id, time.time())
            except DATABASE_ERRORS as exc:  # away for a moment: the lease has slack for that
                log.warning("job %d: cannot renew its lease (%s); trying again", self._job_id, exc)
                continue
            if not held:
                log.warning("job %d: lease lost (it expired and another worker took the job)", self._job_id)
                self._lost.set()
                return
