"""The node database's tables, its schema version and the rows other modules read from it (see ``scp.db``).

One SQLAlchemy ``MetaData`` describes the tables for both backends (SQLite,
PostgreSQL).  Times are seconds since the epoch in double precision: a
PostgreSQL ``REAL`` is single precision, which would round today's
timestamps to minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, Double, ForeignKey, Index, Integer, MetaData, Table, Text, text

# Bumped when a table or column is added; ``scp.db_upgrade`` brings an older database up to it.
SCHEMA_VERSION = 2

metadata = MetaData()

series = Table(
    "series",
    metadata,
    Column("series_uid", Text, primary_key=True),
    Column("study_uid", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("n_instances", Integer, nullable=False, server_default=text("0")),
    Column("expected", Integer),
    # 1 once two instances disagree on Images in Acquisition: the hint is not trusted (scp.completion)
    Column("expected_mixed", Integer, nullable=False, server_default=text("0")),
    Column("calling_aet", Text),
    Column("calling_host", Text),
    Column("first_received", Double, nullable=False),
    Column("last_received", Double, nullable=False),
    Column("updated", Double, nullable=False),
    Index("series_state", "state"),
)

instances = Table(
    "instances",
    metadata,
    Column("sop_uid", Text, primary_key=True),
    Column("series_uid", Text, ForeignKey("series.series_uid"), nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("sop_class_uid", Text),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("received", Double, nullable=False),
    Index("instances_series", "series_uid"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series_uid", Text, ForeignKey("series.series_uid"), nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("created", Double, nullable=False),
    Column("started", Double),
    Column("finished", Double),
    Column("result_dir", Text),
    Column("sr_uid", Text),
    Column("total_agatston", Double),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # The worker holding a running job and until when; it renews the lease
    # while it scores, and another worker may take the job once it expired.
    Column("lease_owner", Text),
    Column("lease_expires", Double),
    Index("jobs_state", "state"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("series_uid", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("kind", Text, nullable=False, server_default=text("'dimse'")),
    Column("ae_title", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt", Double, nullable=False),
    Column("last_error", Text),
    Column("updated", Double, nullable=False),
    # the process sending it now, so two senders never send one report at once
    Column("lease_owner", Text),
    Column("lease_expires", Double),
    Index("deliveries_state", "state"),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
    Column("upgraded", Double, nullable=False),
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
    attempt: int = 1  # which start this is: names the result folder, so a stale worker never writes over a live one's


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
    expected_mixed: bool = False  # instances disagree on Images in Acquisition


@dataclass(frozen=True)
class ReleasedJob:
    """A job found ``running`` with no worker left to finish it, and what became of it."""

    id: int
    series_uid: str
    attempts: int  # times it was started
    state: str  # "complete" (queued again), "failed" (attempts used up) or "superseded" (series re-opened)
