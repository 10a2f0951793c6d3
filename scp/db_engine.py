"""Connections to the node database: SQLite (the embedded default) or PostgreSQL (several machines).

This module knows the two backends apart so that ``scp.db`` does not: it
opens the engine, runs one transaction or one query, and turns a backend's
failures into the errors the node's callers already handle.

SQLite keeps one connection per process behind a lock, in WAL mode, and
takes its write lock at ``BEGIN IMMEDIATE`` so concurrent writers queue
instead of deadlocking.  PostgreSQL uses a small pool: each transaction
takes a connection, so the receiver's association threads write in parallel.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, create_engine, exc, make_url, text
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.base import Executable


class DatabaseUnavailable(Exception):
    """PostgreSQL could not take a statement (connection lost, server down, deadlock, disk full)."""


# What a caller catches to wait and try again rather than fail: SQLite's "database or disk
# is full" or "locked", and a database server that is away.  The C-STORE handler answers
# Out of Resources, the scheduler and the worker try again at their next turn.
UNAVAILABLE: tuple[type[Exception], ...] = (sqlite3.OperationalError, DatabaseUnavailable)
# Any failure of either backend: what the worker waits out (it never dies of the database) and what
# opening the database at start-up reports in one line (``cannot_open``).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, DatabaseUnavailable)


def is_url(target: Path | str) -> bool:
    """Whether ``target`` names a database server (``postgresql://...``) rather than a SQLite file."""
    return isinstance(target, str) and "://" in target


def redacted(target: Path | str) -> str:
    """``target`` fit for a log line: a URL without its password."""
    if is_url(target):
        return make_url(str(target)).render_as_string(hide_password=True)
    return str(target)


def cannot_open(target: Path | str, error: Exception) -> str:
    """The one-line message of a database that could not be opened at start-up (no password in it)."""
    return f"cannot open the database {redacted(target)}: {error}"


class Tx:
    """One open transaction: ``execute`` takes SQL text with ``:name`` parameters, or a Core statement."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str | Executable, params: Mapping[str, Any] | None = None) -> CursorResult:
        statement = text(sql) if isinstance(sql, str) else sql
        return self.conn.execute(statement, dict(params or {}))


class Backend:
    """The engine of one node database and how to run a transaction on it.

    Parameters
    ----------
    target
        A SQLite file path, or a ``postgresql://`` URL (psycopg 3 is used).
    """

    def __init__(self, target: Path | str) -> None:
        self.postgres = is_url(target)
        self._lock = threading.Lock()
        self.raw_sqlite: sqlite3.Connection | None = None
        if self.postgres:
            url = make_url(str(target))
            if url.drivername == "postgresql":
                url = url.set(drivername="postgresql+psycopg")
            if not url.drivername.startswith("postgresql"):
                raise ValueError(f"database.url: only postgresql:// is supported, got {url.drivername}://")
            # pre-ping: a connection the server dropped (restart, failover) is replaced, not handed out
            self.engine: Engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
            self._conn: Connection | None = None
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
            raw.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); after a power
            # loss the last commits may roll back, and the spool scan at start
            # (Database.add_spooled) re-records any instance whose file is there.
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute("PRAGMA foreign_keys=ON")
            self.raw_sqlite = raw
            # One connection for the process; we issue BEGIN/COMMIT ourselves, so
            # SQLAlchemy must not (AUTOCOMMIT leaves the driver's transactions alone).
            self.engine = create_engine(
                "sqlite://", creator=lambda: raw, poolclass=StaticPool
            ).execution_options(isolation_level="AUTOCOMMIT")
            self._conn = self.engine.connect()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self.engine.dispose()
            if self.raw_sqlite is not None:
                self.raw_sqlite.close()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One write transaction; on PostgreSQL rows are locked explicitly where needed (``FOR UPDATE``)."""
        if self.postgres:
            with self._translated(), self.engine.begin() as conn:
                yield Tx(conn)
            return
        with self._lock, self._translated():
            conn, raw = self._conn, self.raw_sqlite
            assert conn is not None and raw is not None
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield Tx(conn)
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                # A COMMIT that failed (SQLITE_FULL: disk full) may leave the
                # transaction open; the next BEGIN would fail for ever after.
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

    def query(self, sql: str | Executable, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The rows of one read."""
        if self.postgres:
            with self._translated(), self.engine.connect() as conn:
                return list(Tx(conn).execute(sql, params).fetchall())
        with self._lock, self._translated():
            assert self._conn is not None
            return list(Tx(self._conn).execute(sql, params).fetchall())

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Raise what callers catch: SQLite's own errors as before; PostgreSQL outages as ``DatabaseUnavailable``."""
        try:
            yield
        except exc.DBAPIError as error:
            if not self.postgres and isinstance(error.orig, sqlite3.Error):
                raise error.orig from None
            if isinstance(error, (exc.OperationalError, exc.InterfaceError)) or error.connection_invalidated:
                # psycopg spreads a message over lines ("Is the server running ..."): one line for the log and the CLI
                message = " ".join(str(error.orig).split())
                raise DatabaseUnavailable(f"{type(error.orig).__name__}: {message}") from error
            raise
