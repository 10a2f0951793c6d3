"""The node's embedded database (SQLite, WAL): instances, series, jobs, deliveries.

All SQL of the node is here (the table definitions in ``scp.db_schema``).  State machines:

- series: ``received`` -> ``complete`` -> ``running`` -> ``reported`` -> ``sent``,
  or ``skipped`` (not eligible) / ``failed`` (with a reason).  A new instance
  for a series in any later state re-opens it (back to ``received``).  A
  report with no destination is stored ``sent`` (nothing is left to deliver)
  but shown ``kept`` by :meth:`Database.state_counts` and
  :meth:`Database.series_rows`: it went nowhere and stays in its result folder.
- jobs (one per completion of a series, numbered by ``generation``): the same
  states from ``complete`` on, plus ``superseded`` when a re-opened series
  makes a queued job pointless.  A job counts its starts (``attempts``): one
  left ``running`` by a worker that died goes back to ``complete``, or to
  ``failed`` once it has used its attempts (:meth:`Database.release_running`).
- deliveries (one per job and destination): ``pending`` -> ``sent``, or
  ``failed`` after the configured attempts, or ``superseded`` by a newer report.

Several threads of the listener process and the worker process use the file at
once; each process holds one connection behind a lock, and WAL lets readers
and the single writer proceed together.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scp.db_schema import ADDED_COLUMNS, SCHEMA, Delivery, Job, OpenSeries, ReleasedJob
from scp.spool import InstanceKey

# The state shown for a series or job: ``kept`` for a report stored ``sent``
# that had no destination to go to (see the module docstring).
_SHOWN_STATE = (
    "CASE WHEN {state} = 'sent' AND {job} IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = {job}) THEN 'kept' ELSE {state} END"
)


class Database:
    """The node's state, in one SQLite file.

    Parameters
    ----------
    path
        The database file (created with its tables if missing).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); after a power
        # loss the last commits may roll back, and the spool scan at start
        # (Database.add_spooled) re-records any instance whose file is there.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a database made by an older version up to the current tables."""
        with self._tx() as c:
            for table, column, definition in ADDED_COLUMNS:
                if column not in {r[1] for r in c.execute(f"PRAGMA table_info({table})")}:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately so concurrent writers queue instead of deadlocking."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (SQLITE_FULL: disk full) may leave the
                # transaction open; the next BEGIN would fail for ever after.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

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
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO series (series_uid, study_uid, state, first_received, last_received, updated)"
                " VALUES (?, ?, 'received', ?, ?, ?)",
                (key.series_uid, key.study_uid, now, now, now),
            )
            cur = c.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, path, size, received)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.sop_uid, key.series_uid, key.study_uid, sop_class_uid, str(path), size, now),
            )
            new = cur.rowcount == 1
            if not new:
                return False, False
            state = c.execute("SELECT state FROM series WHERE series_uid = ?", (key.series_uid,)).fetchone()[0]
            reopened = state != "received"
            c.execute(
                "UPDATE series SET state = 'received', reason = NULL, n_instances = n_instances + 1,"
                " last_received = ?, updated = ?, expected = COALESCE(?, expected),"
                " calling_aet = COALESCE(?, calling_aet), calling_host = COALESCE(?, calling_host)"
                " WHERE series_uid = ?",
                (now, now, expected, calling_aet, calling_host, key.series_uid),
            )
            if reopened:
                # a queued job would score an incomplete series: the next one replaces it
                c.execute(
                    "UPDATE jobs SET state = 'superseded', finished = ? WHERE series_uid = ? AND state = 'complete'",
                    (now, key.series_uid),
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
        """Series still collecting instances (state ``received``)."""
        rows = self._query(
            "SELECT series_uid, n_instances, expected, last_received FROM series WHERE state = 'received'"
        )
        return [OpenSeries(r[0], r[1], r[2], r[3]) for r in rows]

    def complete_series(self, series_uid: str, now: float) -> int | None:
        """Close a series and queue a job for it; ``None`` if it was not open."""
        with self._tx() as c:
            row = c.execute(
                "SELECT study_uid, generation FROM series WHERE series_uid = ? AND state = 'received'", (series_uid,)
            ).fetchone()
            if row is None:
                return None
            generation = row[1] + 1
            c.execute(
                "UPDATE series SET state = 'complete', generation = ?, updated = ? WHERE series_uid = ?",
                (generation, now, series_uid),
            )
            cur = c.execute(
                "INSERT INTO jobs (series_uid, study_uid, generation, state, created) VALUES (?, ?, ?, 'complete', ?)",
                (series_uid, row[0], generation, now),
            )
            return cur.lastrowid

    # -- processing ------------------------------------------------------------

    def claim_job(self, now: float) -> Job | None:
        """Take the oldest queued job, mark it running and count the attempt."""
        with self._tx() as c:
            row = c.execute(
                "SELECT j.id, j.series_uid, j.study_uid, j.generation, s.calling_aet, s.calling_host"
                " FROM jobs j JOIN series s USING (series_uid) WHERE j.state = 'complete' ORDER BY j.id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 WHERE id = ?", (now, row[0])
            )
            self._series_follows(c, row[0], "running", None, now)
            return Job(*row)

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
        """
        with self._tx() as c:
            series_uid = c.execute("SELECT series_uid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            c.execute(
                "UPDATE deliveries SET state = 'superseded', updated = ? WHERE series_uid = ? AND state = 'pending'",
                (now, series_uid),
            )
            state = "reported" if destinations or web_destinations else "sent"
            c.execute(
                "UPDATE jobs SET state = ?, finished = ?, result_dir = ?, sr_uid = ?, total_agatston = ? WHERE id = ?",
                (state, now, str(result_dir), sr_uid, total_agatston, job_id),
            )
            for ae_title, host, port in destinations:
                c.execute(
                    "INSERT INTO deliveries (job_id, series_uid, destination, ae_title, host, port, state,"
                    " next_attempt, updated) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (job_id, series_uid, f"{ae_title}@{host}:{port}", ae_title, host, port, now, now),
                )
            for url in web_destinations:
                c.execute(
                    "INSERT INTO deliveries (job_id, series_uid, destination, kind, ae_title, host, port, state,"
                    " next_attempt, updated) VALUES (?, ?, ?, 'dicomweb', '', '', 0, 'pending', ?, ?)",
                    (job_id, series_uid, url, now, now),
                )
            self._series_follows(c, job_id, state, None, now)

    def end_job(self, job_id: int, state: str, reason: str, now: float) -> None:
        """Mark a job ``skipped`` or ``failed`` with its reason."""
        if state not in ("skipped", "failed"):
            raise ValueError(f"end_job: state must be skipped or failed, got {state!r}")
        with self._tx() as c:
            c.execute("UPDATE jobs SET state = ?, reason = ?, finished = ? WHERE id = ?", (state, reason, now, job_id))
            self._series_follows(c, job_id, state, reason, now)

    @staticmethod
    def _series_follows(c: sqlite3.Connection, job_id: int, state: str, reason: str | None, now: float) -> None:
        """Copy a job's state to its series, unless the series was re-opened since (newer generation)."""
        c.execute(
            "UPDATE series SET state = ?, reason = ?, updated = ? WHERE series_uid ="
            " (SELECT series_uid FROM jobs WHERE id = ?) AND generation = (SELECT generation FROM jobs WHERE id = ?)"
            " AND state != 'received'",
            (state, reason, now, job_id, job_id),
        )

    # -- delivery --------------------------------------------------------------

    def due_deliveries(self, now: float) -> list[Delivery]:
        rows = self._query(
            "SELECT d.id, d.job_id, d.series_uid, d.destination, d.ae_title, d.host, d.port, d.attempts, j.result_dir,"
            " d.kind"
            " FROM deliveries d JOIN jobs j ON j.id = d.job_id"
            " WHERE d.state = 'pending' AND d.next_attempt <= ? ORDER BY d.next_attempt, d.id",
            (now,),
        )
        return [Delivery(*r) for r in rows]

    def next_delivery_time(self) -> float | None:
        rows = self._query("SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'")
        return rows[0][0]

    def delivery_attempted(self, delivery_id: int, now: float, *, error: str | None, next_attempt: float | None) -> str:
        """Record one attempt; returns the delivery's new state.

        ``error`` None means sent.  With an error, ``next_attempt`` None means
        no attempts are left (``failed``), else it stays ``pending`` until then.
        """
        if error is None:
            state = "sent"
        else:
            state = "failed" if next_attempt is None else "pending"
        with self._tx() as c:
            c.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt = COALESCE(?, next_attempt), updated = ? WHERE id = ? AND state = 'pending'",
                (state, error, next_attempt, now, delivery_id),
            )
            job_id = c.execute("SELECT job_id FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
            self._job_from_deliveries(c, job_id, now)
        return state

    def _job_from_deliveries(self, c: sqlite3.Connection, job_id: int, now: float) -> None:
        """A job is ``sent`` when every live delivery is sent, ``failed`` when one failed and none is pending."""
        states = [
            r[0]
            for r in c.execute("SELECT state FROM deliveries WHERE job_id = ? AND state != 'superseded'", (job_id,))
        ]
        if not states or "pending" in states:
            return
        if all(s == "sent" for s in states):
            state, reason = "sent", None
        else:
            failed = [
                r[0]
                for r in c.execute(
                    "SELECT destination FROM deliveries WHERE job_id = ? AND state = 'failed'", (job_id,)
                )
            ]
            state, reason = "failed", f"delivery failed to {', '.join(failed)}"
        c.execute("UPDATE jobs SET state = ?, reason = ? WHERE id = ?", (state, reason, job_id))
        self._series_follows(c, job_id, state, reason, now)

    def retry_failed(self, now: float, series_uid: str | None = None) -> int:
        """Put failed deliveries back in the queue with fresh attempts; return how many."""
        with self._tx() as c:
            where = "state = 'failed'" + (" AND series_uid = ?" if series_uid else "")
            args: tuple[Any, ...] = (series_uid,) if series_uid else ()
            job_ids = [r[0] for r in c.execute(f"SELECT DISTINCT job_id FROM deliveries WHERE {where}", args)]
            cur = c.execute(
                f"UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = ?, updated = ? WHERE {where}",
                (now, now, *args),
            )
            for job_id in job_ids:
                c.execute("UPDATE jobs SET state = 'reported', reason = NULL WHERE id = ?", (job_id,))
                self._series_follows(c, job_id, "reported", None, now)
            return cur.rowcount

    # -- restart and status ----------------------------------------------------

    def recover(self, now: float) -> int:
        """After a restart: jobs left running go back to the queue; return how many.

        A stop may cut any job short, so the attempts a job already used do
        not count against it here (compare :meth:`release_running`).
        """
        return sum(1 for j in self.release_running(now, None, "") if j.state == "complete")

    def release_running(self, now: float, max_attempts: int | None, cause: str) -> list[ReleasedJob]:
        """Jobs left ``running`` by a worker that is gone: queue them again, or fail them.

        Only call this when no worker is alive (the listener does, as soon as
        it sees its worker dead): a running job then has nobody to finish it.

        Parameters
        ----------
        max_attempts
            A job already started this many times is ``failed`` with
            ``cause`` in its reason instead of being queued again (a series
            that kills the worker, e.g. out of memory, must not do so for
            ever); None queues every one again.
        cause
            Why the worker is gone, for the reason of a failed job.

        A job whose series was re-opened meanwhile is superseded instead: the
        series' next completion queues a job with all its instances.
        """
        released = []
        with self._tx() as c:
            rows = c.execute(
                "SELECT j.id, j.series_uid, j.attempts, s.state FROM jobs j JOIN series s USING (series_uid)"
                " WHERE j.state = 'running' ORDER BY j.id"
            ).fetchall()
            for job_id, series_uid, attempts, series_state in rows:
                if series_state == "received":
                    state = "superseded"
                    c.execute("UPDATE jobs SET state = 'superseded', finished = ? WHERE id = ?", (now, job_id))
                elif max_attempts is not None and attempts >= max_attempts:
                    state = "failed"
                    reason = f"given up after {attempts} attempts (scp.job_max_attempts): {cause}"
                    c.execute(
                        "UPDATE jobs SET state = 'failed', reason = ?, finished = ? WHERE id = ?",
                        (reason, now, job_id),
                    )
                    self._series_follows(c, job_id, state, reason, now)
                else:
                    state = "complete"
                    c.execute("UPDATE jobs SET state = 'complete', started = NULL WHERE id = ?", (job_id,))
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
            " ORDER BY s.last_received DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def delivery_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, job_id, series_uid, destination, state, attempts, last_error, updated FROM deliveries"
            " WHERE state != 'superseded' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def report_built(self, job_id: int) -> float | None:
        """When the job's report was written (None while it has none)."""
        rows = self._query("SELECT finished FROM jobs WHERE id = ? AND sr_uid IS NOT NULL", (job_id,))
        return rows[0][0] if rows else None

    def jobs_finished_since(self, after: float) -> list[dict[str, Any]]:
        """Jobs that ended (report written, skipped or failed) after ``after``, oldest first.

        ``built`` tells a written report (its job may since be ``failed`` for a
        delivery) from a job that failed before writing one.
        """
        rows = self._query(
            "SELECT id, state, created, finished, sr_uid IS NOT NULL AS built FROM jobs"
            " WHERE finished > ? AND state NOT IN ('superseded', 'complete', 'running') ORDER BY finished",
            (after,),
        )
        return [dict(r) for r in rows]

    def job_result_dir(self, job_id: int) -> Path | None:
        rows = self._query("SELECT result_dir FROM jobs WHERE id = ? AND result_dir IS NOT NULL", (job_id,))
        return Path(rows[0][0]) if rows else None

    def series_state(self, series_uid: str) -> str | None:
        rows = self._query("SELECT state FROM series WHERE series_uid = ?", (series_uid,))
        return rows[0][0] if rows else None

    def first_instance_path(self, series_uid: str) -> Path | None:
        rows = self._query("SELECT path FROM instances WHERE series_uid = ? LIMIT 1", (series_uid,))
        return Path(rows[0][0]) if rows else None

    def instance_paths(self, series_uid: str) -> list[Path]:
        return [Path(r[0]) for r in self._query("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))]
