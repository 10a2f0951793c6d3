"""The node database's tables and the rows other modules read from it (see ``scp.db`` for the states)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    n_instances INTEGER NOT NULL DEFAULT 0,
    expected INTEGER,
    calling_aet TEXT,
    calling_host TEXT,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result_dir TEXT,
    sr_uid TEXT,
    total_agatston REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    series_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'dimse',
    ae_title TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state);
"""

# Columns added since the first release, for databases created before them: (table, column, definition).
ADDED_COLUMNS = (
    ("jobs", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("deliveries", "kind", "TEXT NOT NULL DEFAULT 'dimse'"),
)


@dataclass(frozen=True)
class Job:
    """A queued or running scoring job, with where its series came from (for ``return_to_caller``)."""

    id: int
    series_uid: str
    study_uid: str
    generation: int
    calling_aet: str | None
    calling_host: str | None


@dataclass(frozen=True)
class Delivery:
    """One report to send to one destination.

    A ``dimse`` delivery carries its peer's address (a configured one or the
    calling AE); a ``dicomweb`` one only its ``destination`` key, the URL, so
    that no credential is ever stored: the sender finds them in the config.
    """

    id: int
    job_id: int
    series_uid: str
    destination: str
    ae_title: str  # dimse only ("" for dicomweb), as host and port
    host: str
    port: int
    attempts: int
    result_dir: str
    kind: str = "dimse"  # "dimse" (C-STORE) or "dicomweb" (STOW-RS)


@dataclass(frozen=True)
class OpenSeries:
    """A series still collecting instances."""

    series_uid: str
    n_instances: int
    expected: int | None
    last_received: float


@dataclass(frozen=True)
class ReleasedJob:
    """A job found ``running`` with no worker left to finish it, and what became of it."""

    id: int
    series_uid: str
    attempts: int  # times it was started
    state: str  # "complete" (queued again), "failed" (attempts used up) or "superseded" (series re-opened)
