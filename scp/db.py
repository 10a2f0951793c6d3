"""The node's database: instances, series, jobs, deliveries; SQLite (embedded) or PostgreSQL (shared).

All SQL of the node is here (the tables in ``scp.db_schema``, the connections
in ``scp.db_engine``).  The SQL is written once for both backends; the only
difference is PostgreSQL's row locks (``FOR UPDATE``), which SQLite's single
writer makes unnecessary.  State machines:

- series: ``received`` -> ``complete`` -> ``running`` -> ``reported`` -> ``sent``,
  or ``skipped`` (not eligible) / ``failed`` (with a reason).  A new instance
  for a series in any later state re-opens it (back to ``received``).  A
  report with no destination is stored ``sent`` (nothing is left to deliver)
  but shown ``kept`` by :meth:`Database.state_counts` and
  :meth:`Database.series_rows`: it went nowhere and stays in its result folder.
- jobs (one per completion of a series, numbered by ``generation``): the same
  states from ``complete`` on, plus ``superseded`` when a re-opened series
  makes a queued job pointless.  A job counts its starts (``attempts``).  A
  running job is leased to one worker (``lease_owner``) until
  ``lease_expires``; the worker renews the lease while it scores
  (:meth:`Database.heartbeat`) and records the outcome only while it still
  holds it (else :class:`LeaseLost`).  A job whose worker is gone goes back to
  ``complete``, or to ``failed`` once it has used its attempts
  (:meth:`Database.release_running` when the node saw its own worker die,
  :meth:`Database.release_expired` when nobody renewed the lease).
- deliveries (one per job and destination): ``pending`` -> ``sent``, or
  ``failed`` after the configured attempts, or ``superseded`` by a newer report.
  A sender leases the deliveries it is about to send, so two processes never
  send one report to one destination at once.

With SQLite, the threads of the listener process and the worker process share
the file (WAL lets readers and the single writer proceed together).  With
PostgreSQL, any number of receivers and workers on several machines do.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from scp.db_engine import Backend, DatabaseUnavailable, Tx, redacted
from scp.db_schema import Delivery, Job, OpenSeries, ReleasedJob, deliveries, jobs, series
from scp.db_upgrade import upgrade
from scp.spool import InstanceKey

__all__ = ["Database", "DatabaseUnavailable", "Delivery", "Job", "LeaseLost", "OpenSeries", "ReleasedJob"]

# The state shown for a series or job: ``kept`` for a report stored ``sent``
# that had no destination to go to (see the module docstring).
_SHOWN_STATE = (
    "CASE WHEN {state} = 'sent' AND {job} IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = {job}) THEN 'kept' ELSE {state} END"
)


class LeaseLost(RuntimeError):
    """A worker tried to record a job it no longer holds (its lease expired and another worker took the job)."""


def default_owner(role: str = "worker") -> str:
    """A name for one lease holder, unique across machines and restarts: ``host:pid/role#random``."""
    return f"{socket.gethostname()}:{os.getpid()}/{role}#{uuid.uuid4().hex[:8]}"


class Database:
    """The node's state, in one SQLite file or one PostgreSQL database.

    Parameters
    ----------
    target
        The SQLite file (created with its tables if missing), or a
        ``postgresql://`` URL (tables created or upgraded at start).
    owner
        This process's name on the jobs and deliveries it leases (default:
        host, pid and a random part).
    lease_seconds
        How long a lease lasts without renewal; past it, another process may
        take the job or delivery.
    """


    def __init__(self, target: Path | str, *, owner: str | None = None, lease_seconds: float = 60.0) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.target = target
        self.owner = owner or default_owner()
        self.lease_seconds = lease_seconds
        self._backend = Backend(target)
        self.postgres = self._backend.postgres
        self._conn = self._backend.raw_sqlite  # SQLite only: the process's one connection
        # Row locks for PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the only write lock.
        self._lock_row = " FOR NO KEY UPDATE" if self.postgres else ""
        upgrade(self._backend)

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for a database server."""
        return None if self.postgres else Path(self.target)

    def describe(self) -> str:
        """Where the database is, fit for a log line (no password)."""
        return redacted(self.target)

    def close(self) -> None:
        self._backend.close()

    def _tx(self) -> AbstractContextManager[Tx]:
        """One write transaction (see ``scp.db_engine.Backend.tx``)."""
        return self._backend.tx()

    def _query(self, sql: str, args: dict[str, Any] | None = None) -> list[Any]:
        return self._backend.query(sql, args)

    # -- receiving -------------------------------------------------------------

    def record_instance(
        self,
        key: InstanceKey,
        sop_class_uid: str | None,
        path: Path,
        size: int,
        now: float,
        *,
        calling_aet: str | None = None,
        calling_host: str | None = None,
        expected: int | None = None,
    ) -> tuple[bool, bool]:
        """Record a spooled instance; return ``(new, reopened)``.

        ``new`` is False for an instance already recorded (sent twice): it
        causes no work.  ``reopened`` is True when the instance is new to a
        series that had already been completed.
        """
        expected = expected if expected is not None and expected > 0 else None
        args = {
            "series": key.series_uid, "study": key.study_uid, "sop": key.sop_uid, "cls": sop_class_uid,
            "path": str(path), "size": size, "now": now, "expected": expected, "aet": calling_aet,
            "host": calling_host,
        }
        with self._tx() as c:
            c.execute(
                "INSERT INTO series (series_uid, study_uid, state, first_received, last_received, updated)"
                " VALUES (:series, :study, 'received', :now, :now, :now) ON CONFLICT (series_uid) DO NOTHING",
                args,
            )
            # the series row first: receivers on other machines adding to the same series wait here
            state = c.execute(
                f"SELECT state FROM series WHERE series_uid = :series{self._lock_row}", args
            ).scalar_one()
            cur = c.execute(
                "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, path, size, received)"
                " VALUES (:sop, :series, :study, :cls, :path, :size, :now) ON CONFLICT (sop_uid) DO NOTHING",
                args,
            )
            if cur.rowcount != 1:
                return False, False
            reopened = state != "received"
            c.execute(
                "UPDATE series SET state = 'received', reason = NULL, n_instances = n_instances + 1,"
                " last_received = :now, updated = :now,"
                " expected_mixed = CASE WHEN expected IS NOT NULL AND CAST(:expected AS INTEGER) IS NOT NULL"
                " AND expected != CAST(:expected AS INTEGER) THEN 1 ELSE expected_mixed END,"
                " expected = COALESCE(CAST(:expected AS INTEGER), expected),"
                " calling_aet = COALESCE(CAST(:aet AS TEXT), calling_aet),"
                " calling_host = COALESCE(CAST(:host AS TEXT), calling_host)"
                " WHERE series_uid = :series",
                args,
            )
            if reopened:
                # a queued job would score an incomplete series: the next one replaces it
                c.execute(
                    "UPDATE jobs SET state = 'superseded', finished = :now"
                    " WHERE series_uid = :series AND state = 'complete'",
                    args,
                )
            return True, reopened

    def add_spooled(self, found: Sequence[tuple[InstanceKey, Path]], now: float) -> list[str]:
        """Record spooled files the database does not know (crash between rename and commit).

        Returns the series UIDs that gained instances.
        """
        known = {row[0] for row in self._query("SELECT sop_uid FROM instances")}
        touched = []
        for key, path in found:
            if key.sop_uid in known:
                continue
            new, _ = self.record_instance(key, None, path, path.stat().st_size, now)
            if new and key.series_uid not in touched:
                touched.append(key.series_uid)
        return touched

    def open_series(self) -> list[OpenSeries]:
        """Series still collecting instances (state ``received``), as every receiver sees them."""
        rows = self._query(
            "SELECT series_uid, n_instances, expected, last_received, expected_mixed FROM series"
            " WHERE state = 'received'"
        )
        return [OpenSeries(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def complete_series(self, series_uid: str, now: float) -> int | None:
        """Close a series and queue a job for it; ``None`` if it was not open.

        Two receivers that find a series due at once both call this: the row
        lock makes the second find it no longer open.
        """
        args = {"series": series_uid, "now": now}
        with self._tx() as c:
            row = c.execute(
                "SELECT study_uid, generation FROM series WHERE series_uid = :series AND state = 'received'"
                + self._lock_row,
                args,
            ).fetchone()
            if row is None:
                return None
            generation = row[1] + 1
            c.execute(
                "UPDATE series SET state = 'complete', generation = :gen, updated = :now WHERE series_uid = :series",
                {**args, "gen": generation},
            )
            return c.execute(
                "INSERT INTO jobs (series_uid, study_uid, generation, state, created)"
                " VALUES (:series, :study, :gen, 'complete', :now) RETURNING id",
                {**args, "study": row[0], "gen": generation},
            ).scalar_one()

    # -- processing ------------------------------------------------------------

    def claim_job(self, now: float) -> Job | None:
        """Take the oldest queued job, lease it to this process, mark it running and count the attempt.

        On PostgreSQL the job and its series are locked with ``SKIP LOCKED``:
        workers claiming at once each get a different job, never wait on
        each other, and a series a receiver is adding to right now is left
        for the next poll.
        """
        query = (
            select(
                jobs.c.id, jobs.c.series_uid, jobs.c.study_uid, jobs.c.generation,
                series.c.calling_aet, series.c.calling_host, jobs.c.attempts,
            )
            .join(series, series.c.series_uid == jobs.c.series_uid)
            .where(jobs.c.state == "complete")
            .order_by(jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True, key_share=True)
        )
        with self._tx() as c:
            row = c.execute(query).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET state = 'running', started = :now, attempts = attempts + 1,"
                " lease_owner = :me, lease_expires = :expires WHERE id = :id",
                {"now": now, "me": self.owner, "expires": now + self.lease_seconds, "id": row[0]},
            )
            self._series_follows(c, row[0], "running", None, now)
            return Job(*row[:6], attempt=row[6] + 1)

    def heartbeat(self, job_id: int, now: float) -> bool:
        """Renew this process's lease on a running job; False when it has lost it (expired and taken)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_expires = :expires"
                " WHERE id = :id AND state = 'running' AND lease_owner = :me",
                {"expires": now + self.lease_seconds, "id": job_id, "me": self.owner},
            )
            return cur.rowcount == 1

    def _hold(self, c: Tx, job_id: int) -> str:
        """Lock a job this process is running and return its series, or raise ``LeaseLost``.

        A job claimed before leases existed (no owner) counts as held.
        """
        row = c.execute(
            f"SELECT series_uid, state, lease_owner FROM jobs WHERE id = :id{self._lock_row}", {"id": job_id}
        ).fetchone()
        if row is None or row[1] != "running" or row[2] not in (None, self.owner):
            state = "gone" if row is None else row[1]
            raise LeaseLost(f"job {job_id} is no longer leased to this worker (now {state})")
        return row[0]

    def finish_job(
        self,
        job_id: int,
        now: float,
        *,
        result_dir: Path,
        sr_uid: str,
        total_agatston: float,
        destinations: Sequence[tuple[str, str, int]],
        web_destinations: Sequence[str] = (),
    ) -> None:
        """A report was written: record it and queue one delivery per destination.

        ``destinations`` are C-STORE peers (AE title, host, port);
        ``web_destinations`` are the keys (URLs) of STOW-RS destinations.
        Pending deliveries of older reports of the same series are superseded.

        Raises
        ------
        LeaseLost
            This process no longer holds the job: another worker scores it,
            and only that worker's report is delivered.
        """
        with self._tx() as c:
            series_uid = self._hold(c, job_id)
            base = {"now": now, "series": series_uid, "job": job_id}
            c.execute(
                "UPDATE deliveries SET state = 'superseded', updated = :now"
                " WHERE series_uid = :series AND state = 'pending'",
                base,
            )
            state = "reported" if destinations or web_destinations else "sent"
            c.execute(
                "UPDATE jobs SET state = :state, finished = :now, result_dir = :dir, sr_uid = :sr,"
                " total_agatston = :total, lease_owner = NULL, lease_expires = NULL WHERE id = :job",
                {**base, "state": state, "dir": str(result_dir), "sr": sr_uid, "total": total_agatston},
            )
            insert = (
                "INSERT INTO deliveries (job_id, series_uid, destination, kind, ae_title, host, port, state,"
                " next_attempt, updated) VALUES (:job, :series, :dest, :kind, :aet, :host, :port, 'pending', :now, :now)"
            )
            for ae_title, host, port in destinations:
                c.execute(insert, {**base, "dest": f"{ae_title}@{host}:{port}", "kind": "dimse", "aet": ae_title,
                                   "host": host, "port": port})
            for url in web_destinations:
                c.execute(insert, {**base, "dest": url, "kind": "dicomweb", "aet": "", "host": "", "port": 0})
            self._series_follows(c, job_id, state, None, now)

    def end_job(self, job_id: int, state: str, reason: str, now: float) -> None:
        """Mark a job ``skipped`` or ``failed`` with its reason (``LeaseLost`` as for :meth:`finish_job`)."""
        if state not in ("skipped", "failed"):
            raise ValueError(f"end_job: state must be skipped or failed, got {state!r}")
        with self._tx() as c:
            self._hold(c, job_id)
            c.execute(
                "UPDATE jobs SET state = :state, reason = :reason, finished = :now,"
                " lease_owner = NULL, lease_expires = NULL WHERE id = :id",
                {"state": state, "reason": reason, "now": now, "id": job_id},
            )
            self._series_follows(c, job_id, state, reason, now)

    @staticmethod
    def _series_follows(c: Tx, job_id: int, state: str, reason: str | None, now: float) -> None:
        """Copy a job's state to its series, unless the series was re-opened since (newer generation)."""
        c.execute(
            "UPDATE series SET state = :state, reason = :reason, updated = :now WHERE series_uid ="
            " (SELECT series_uid FROM jobs WHERE id = :id) AND generation = (SELECT generation FROM jobs WHERE id = :id)"
            " AND state != 'received'",
            {"state": state, "reason": reason, "now": now, "id": job_id},
        )

    # -- delivery --------------------------------------------------------------

    def due_deliveries(self, now: float) -> list[Delivery]:
        """Deliveries due at ``now``, leased to this process for ``lease_seconds`` so no other sends them meanwhile.

        Those another process holds an unexpired lease on are left out; this
        process's own are returned again (one sender thread per process).
        """
        d, j = deliveries, jobs
        query = (
            select(d.c.id, d.c.job_id, d.c.series_uid, d.c.destination, d.c.ae_title, d.c.host, d.c.port,
                   d.c.attempts, j.c.result_dir, d.c.kind)
            .join(j, j.c.id == d.c.job_id)
            .where(d.c.state == "pending", d.c.next_attempt <= now)
            .where((d.c.lease_owner.is_(None)) | (d.c.lease_owner == self.owner) | (d.c.lease_expires < now))
            .order_by(d.c.next_attempt, d.c.id)
            .with_for_update(skip_locked=True, of=d, key_share=True)
        )
        with self._tx() as c:
            rows = c.execute(query).fetchall()
            for r in rows:
                c.execute(
                    "UPDATE deliveries SET lease_owner = :me, lease_expires = :expires WHERE id = :id",
                    {"me": self.owner, "expires": now + self.lease_seconds, "id": r[0]},
                )
        return [Delivery(*r) for r in rows]

    def next_delivery_time(self) -> float | None:
        rows = self._query("SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'")
        return rows[0][0]

    def delivery_attempted(self, delivery_id: int, now: float, *, error: str | None, next_attempt: float | None) -> str:
        """Record one attempt and give up the lease; returns the delivery's new state.

        ``error`` None means sent.  With an error, ``next_attempt`` None means
        no attempts are left (``failed``), else it stays ``pending`` until then.
        """
        if error is None:
            state = "sent"
        else:
            state = "failed" if next_attempt is None else "pending"
        with self._tx() as c:
            c.execute(
                "UPDATE deliveries SET state = :state, attempts = attempts + 1, last_error = :error,"
                " next_attempt = COALESCE(CAST(:next AS DOUBLE PRECISION), next_attempt), updated = :now,"
                " lease_owner = NULL, lease_expires = NULL WHERE id = :id AND state = 'pending'",
                {"state": state, "error": error, "next": next_attempt, "now": now, "id": delivery_id},
            )
            job_id = c.execute("SELECT job_id FROM deliveries WHERE id = :id", {"id": delivery_id}).scalar_one()
            self._job_from_deliveries(c, job_id, now)
        return state

    def _job_from_deliveries(self, c: Tx, job_id: int, now: float) -> None:
        """A job is ``sent`` when every live delivery is sent, ``failed`` when one failed and none is pending."""
        states = [
            r[0]
            for r in c.execute(
                "SELECT state FROM deliveries WHERE job_id = :job AND state != 'superseded'", {"job": job_id}
            )
        ]
        if not states or "pending" in states:
            return
        if all(s == "sent" for s in states):
            state, reason = "sent", None
        else:
            failed = [
                r[0]
                for r in c.execute(
                    "SELECT destination FROM deliveries WHERE job_id = :job AND state = 'failed' ORDER BY id",
                    {"job": job_id},
                )
            ]
            state, reason = "failed", f"delivery failed to {', '.join(failed)}"
        c.execute("UPDATE jobs SET state = :state, reason = :reason WHERE id = :job",
                  {"state": state, "reason": reason, "job": job_id})
        self._series_follows(c, job_id, state, reason, now)

    def retry_failed(self, now: float, series_uid: str | None = None) -> int:
        """Put failed deliveries back in the queue with fresh attempts; return how many."""
        with self._tx() as c:
            where = "state = 'failed'" + (" AND series_uid = :series" if series_uid else "")
            args = {"series": series_uid, "now": now}
            job_ids = [r[0] for r in c.execute(f"SELECT DISTINCT job_id FROM deliveries WHERE {where}", args)]
            cur = c.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = :now, updated = :now,"
                f" lease_owner = NULL, lease_expires = NULL WHERE {where}",
                args,
            )
            for job_id in job_ids:
                c.execute("UPDATE jobs SET state = 'reported', reason = NULL WHERE id = :job", {"job": job_id})
                self._series_follows(c, job_id, "reported", None, now)
            return cur.rowcount

    # -- restart, dead workers and status --------------------------------------

    def recover(self, now: float, owner_prefix: str | None = None) -> int:
        """After a restart: jobs left running go back to the queue; return how many.

        A stop may cut any job short, so the attempts a job already used do
        not count against it here (compare :meth:`release_running`).
        ``owner_prefix`` limits this to the jobs of this node's own earlier
        worker (other workers sharing the database may be busy with theirs).
        """
        released = self.release_running(now, None, "", owner_prefix=owner_prefix)
        return sum(1 for j in released if j.state == "complete")

    def release_running(
        self, now: float, max_attempts: int | None, cause: str, *, owner_prefix: str | None = None
    ) -> list[ReleasedJob]:
        """Jobs left ``running`` by a worker that is gone: queue them again, or fail them.

        Only call this when that worker is known to be gone (the listener
        does, as soon as it sees its own worker dead): its job then has
        nobody to finish it.

        Parameters
        ----------
        max_attempts
            A job already started this many times is ``failed`` with
            ``cause`` in its reason instead of being queued again (a series
            that kills the worker, e.g. out of memory, must not do so for
            ever); None queues every one again.
        cause
            Why the worker is gone, for the reason of a failed job.
        owner_prefix
            Only jobs leased under a name starting with this (the node's own
            worker), or with no lease owner; None: every running job.

        A job whose series was re-opened meanwhile is superseded instead: the
        series' next completion queues a job with all its instances.
        """
        where = "j.state = 'running'"
        args: dict[str, Any] = {}
        if owner_prefix is not None:
            where += " AND (j.lease_owner IS NULL OR SUBSTR(j.lease_owner, 1, :n) = :prefix)"
            args = {"n": len(owner_prefix), "prefix": owner_prefix}
        return self._release(now, where, args, max_attempts, cause, skip_locked=False)

    def release_expired(self, now: float, max_attempts: int | None) -> list[ReleasedJob]:
        """Jobs whose worker stopped renewing its lease (killed, machine down, cut off): queue or fail them.

        Any worker may call this; the attempts count as for :meth:`release_running`.
        """
        cause = f"its worker stopped renewing the lease ({self.lease_seconds:.0f} s; killed or cut off?)"
        return self._release(
            now, "j.state = 'running' AND j.lease_expires < :now", {"now": now}, max_attempts, cause, skip_locked=True
        )

    def _release(
        self, now: float, where: str, args: dict[str, Any], max_attempts: int | None, cause: str, *, skip_locked: bool
    ) -> list[ReleasedJob]:
        released = []
        lock = (" FOR UPDATE OF j" + (" SKIP LOCKED" if skip_locked else "")) if self.postgres else ""
        with self._tx() as c:
            rows = c.execute(
                "SELECT j.id, j.series_uid, j.attempts, s.state FROM jobs j JOIN series s ON s.series_uid = j.series_uid"
                f" WHERE {where} ORDER BY j.id{lock}",
                args,
            ).fetchall()
            for job_id, series_uid, attempts, series_state in rows:
                ids = {"id": job_id, "now": now}
                if series_state == "received":
                    state = "superseded"
                    c.execute(
                        "UPDATE jobs SET state = 'superseded', finished = :now, lease_owner = NULL,"
                        " lease_expires = NULL WHERE id = :id",
                        ids,
                    )
                elif max_attempts is not None and attempts >= max_attempts:
                    state = "failed"
                    reason = f"given up after {attempts} attempts (scp.job_max_attempts): {cause}"
                    c.execute(
                        "UPDATE jobs SET state = 'failed', reason = :reason, finished = :now, lease_owner = NULL,"
                        " lease_expires = NULL WHERE id = :id",
                        {**ids, "reason": reason},
                    )
                    self._series_follows(c, job_id, state, reason, now)
                else:
                    state = "complete"
                    c.execute(
                        "UPDATE jobs SET state = 'complete', started = NULL, lease_owner = NULL,"
                        " lease_expires = NULL WHERE id = :id",
                        ids,
                    )
                    self._series_follows(c, job_id, state, None, now)
                released.append(ReleasedJob(job_id, series_uid, attempts, state))
        return released

    def state_counts(self) -> dict[str, dict[str, int]]:
        """Number of series, jobs and deliveries in each state (for status and metrics); see ``kept`` above."""
        shown = {
            "series": f"SELECT {_SHOWN_STATE.format(state='s.state', job='j.id')}, COUNT(*) FROM series s"
            " LEFT JOIN jobs j ON j.series_uid = s.series_uid AND j.generation = s.generation GROUP BY 1",
            "jobs": f"SELECT {_SHOWN_STATE.format(state='jobs.state', job='jobs.id')}, COUNT(*) FROM jobs GROUP BY 1",
            "deliveries": "SELECT state, COUNT(*) FROM deliveries GROUP BY state",
        }
        out: dict[str, dict[str, int]] = {}
        for table, sql in shown.items():
            out[table] = {r[0]: r[1] for r in self._query(sql)}
        out["instances"] = {"total": self._query("SELECT COUNT(*) FROM instances")[0][0]}
        return out

    def series_rows(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._query(
            f"SELECT s.series_uid, s.study_uid, {_SHOWN_STATE.format(state='s.state', job='j.id')} AS state,"
            " s.reason, s.n_instances, s.generation, s.last_received,"
            " j.id AS job_id, j.sr_uid, j.total_agatston, j.result_dir FROM series s"
            " LEFT JOIN jobs j ON j.series_uid = s.series_uid AND j.generation = s.generation"
            " ORDER BY s.last_received DESC LIMIT :limit",
            {"limit": limit},
        )
        return [dict(r._mapping) for r in rows]

    def delivery_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, job_id, series_uid, destination, state, attempts, last_error, updated FROM deliveries"
            " WHERE state != 'superseded' ORDER BY id DESC LIMIT :limit",
            {"limit": limit},
        )
        return [dict(r._mapping) for r in rows]

    def report_built(self, job_id: int) -> float | None:
        """When the job's report was written (None while it has none)."""
        rows = self._query("SELECT finished FROM jobs WHERE id = :id AND sr_uid IS NOT NULL", {"id": job_id})
        return rows[0][0] if rows else None

    def jobs_finished_since(self, after: float) -> list[dict[str, Any]]:
        """Jobs that ended (report written, skipped or failed) after ``after``, oldest first.

        ``built`` tells a written report (its job may since be ``failed`` for a
        delivery) from a job that failed before writing one.
        """
        rows = self._query(
            "SELECT id, state, created, finished, sr_uid IS NOT NULL AS built FROM jobs"
            " WHERE finished > :after AND state NOT IN ('superseded', 'complete', 'running') ORDER BY finished",
            {"after": after},
        )
        return [dict(r._mapping) for r in rows]

    def job_result_dir(self, job_id: int) -> Path | None:
        rows = self._query("SELECT result_dir FROM jobs WHERE id = :id AND result_dir IS NOT NULL", {"id": job_id})
        return Path(rows[0][0]) if rows else None

    def series_state(self, series_uid: str) -> str | None:
        rows = self._query("SELECT state FROM series WHERE series_uid = :s", {"s": series_uid})
        return rows[0][0] if rows else None

    def first_instance_path(self, series_uid: str) -> Path | None:
        rows = self._query("SELECT path FROM instances WHERE series_uid = :s LIMIT 1", {"s": series_uid})
        return Path(rows[0][0]) if rows else None

    def instance_paths(self, series_uid: str) -> list[Path]:
        return [Path(r[0]) for r in self._query("SELECT path FROM instances WHERE series_uid = :s", {"s": series_uid})]
