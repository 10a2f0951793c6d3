"""Unit tests of the node's defences without a network: job attempts, bookkeeping on a full disk, limits, reading."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from node_support import small_series, write_first_jobs_table, write_series
from pydicom.uid import ExplicitVRLittleEndian

from cacnode.config import load_config
from cacnode.settings import ConfigError
from pipeline.reading.loader import load_series, read_headers
from scp.db import Database
from scp.spool import InstanceKey, Spool, SpoolError

STUDY, SERIES = "1.2.3", "1.2.3.4"


def key(n: int, series: str = SERIES) -> InstanceKey:
    return InstanceKey(STUDY, series, f"{series}.{n}")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "db.sqlite3")
    yield d
    d.close()


def _running_job(db: Database, tmp_path: Path) -> int:
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    job_id = db.complete_series(SERIES, 2.0)
    assert db.claim_job(3.0).id == job_id
    return job_id


def test_job_of_a_dead_worker_is_queued_again_then_failed_after_its_attempts(db, tmp_path):
    job_id = _running_job(db, tmp_path)
    (released,) = db.release_running(4.0, 2, "the worker was killed by SIGKILL")
    assert (released.id, released.attempts, released.state) == (job_id, 1, "complete")
    assert db.series_state(SERIES) == "complete"
    assert db.claim_job(5.0).id == job_id  # attempt 2
    (released,) = db.release_running(6.0, 2, "the worker was killed by SIGKILL")
    assert released.state == "failed"
    assert db.series_state(SERIES) == "failed" and db.claim_job(7.0) is None
    row = db.series_rows()[0]
    assert "given up after 2 attempts" in row["reason"] and "SIGKILL" in row["reason"]


def test_restart_requeues_whatever_the_attempts(db, tmp_path):
    job_id = _running_job(db, tmp_path)  # attempt 1
    assert db.recover(4.0) == 1  # a stop cut it short: not held against it
    db.claim_job(5.0)
    assert db.recover(6.0) == 1
    assert db.claim_job(7.0).id == job_id  # attempt 3
    assert db.release_running(8.0, 3, "died")[0].state == "failed"  # a worker's death is


def test_database_of_an_older_version_gains_the_attempts_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    write_first_jobs_table(path)
    d = Database(path)
    try:
        _running_job(d, tmp_path)
        assert d.release_running(4.0, 3, "died")[0].attempts == 1
    finally:
        d.close()


def test_failed_commit_leaves_no_transaction_open(db, tmp_path):
    _running_job(db, tmp_path)
    # A COMMIT that fails (SQLITE_FULL on a full disk; here a deferred foreign key) can leave
    # SQLite's transaction open, and every later BEGIN would fail.
    with pytest.raises(sqlite3.IntegrityError), db._tx() as c:
        c.execute("PRAGMA defer_foreign_keys = ON")
        c.execute("INSERT INTO jobs (series_uid, study_uid, generation, state, created)"
                  " VALUES ('9.9', '9', 1, 'complete', 0)")
    assert not db._conn.in_transaction
    db.end_job(1, "failed", "recorded later", 9.0)  # the next write works
    assert db.series_state(SERIES) == "failed"


def test_spool_adopts_a_received_file_without_copying_it(tmp_path):
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "tmp123.dcm"
    received.write_bytes(b"DICM data")
    path = spool.adopt(key(1), received)
    assert path.read_bytes() == b"DICM data" and path.stat().st_ino == received.stat().st_ino
    assert list(spool.tmp.iterdir()) == []
    full = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    with pytest.raises(SpoolError, match="in reserve"):
        full.adopt(key(2), received)


def test_spool_sweeps_only_data_sets_no_longer_written(tmp_path):
    import os

    spool = Spool(tmp_path / "spool")
    old, fresh = spool.receiving / "old.dcm", spool.receiving / "fresh.dcm"
    old_part, fresh_part = spool.tmp / "a.part", spool.tmp / "b.part"  # a crashed write, one going on
    for path in (old, fresh, old_part, fresh_part):
        path.write_bytes(b"x")
    for path in (old, old_part):
        os.utime(path, (1000.0, 1000.0))
    assert spool.sweep_receiving(idle_since=2000.0) == 2
    assert [p.name for p in spool.receiving.iterdir()] == ["fresh.dcm"]
    assert [p.name for p in spool.tmp.iterdir()] == ["b.part"]
    assert spool.clear_incoming() == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[scp]\nrequest_timeout_seconds = 0\n", "request_timeout_seconds must be > 0"),
        ("[scp]\nrequest_timeout_seconds = 40.0\n", "must not exceed scp.acse_timeout_seconds"),
        ("[scp]\nmax_pending_connections = 0\n", "max_pending_connections must be >= 1"),
        ("[scp]\njob_max_attempts = 0\n", "job_max_attempts must be >= 1"),
    ],
)
def test_bad_limits_are_refused_at_load(tmp_path, body, fragment):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_limits_have_their_documented_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    c = load_config(path).scp
    assert (c.request_timeout_seconds, c.max_pending_connections, c.job_max_attempts) == (5.0, 50, 3)


# -- reading: an acknowledged file that cannot be read is skipped, not fatal ---------------


def _series_with_a_bad_top_slice(folder: Path, corrupt: str) -> tuple[str, str]:
    *good, top = small_series()
    write_series(good, folder)
    top.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "top.dcm"
    if corrupt == "unknown-vr":
        top.save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        at = raw.index(b"\x08\x00\x08\x00CS")  # Image Type's VR becomes "ZZ"
        path.write_bytes(raw[: at + 4] + b"ZZ" + raw[at + 6:])
    else:
        top["PixelData"].VR = "OW"
        del top.BitsAllocated
        top.save_as(path, enforce_file_format=True)
    return str(top.SeriesInstanceUID), path.name


@pytest.mark.parametrize("corrupt", ["unknown-vr", "no-bits-allocated"])
def test_unreadable_file_is_skipped_with_a_warning(tmp_path, caplog, corrupt):
    series_uid, name = _series_with_a_bad_top_slice(tmp_path / "series", corrupt)
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.loader"):
        headers = read_headers(tmp_path / "series")[series_uid]
        for ds in headers:
            str(ds.ImageType)  # what eligibility reads
        series = load_series(tmp_path / "series", series_uid=series_uid)
    assert series.hu.shape[0] == 23
    assert any(name in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)


def test_the_delivery_loop_outlives_a_database_outage(caplog):
    """A database that cannot be read (server away, disk full) makes the reports wait; the loop goes on."""
    import threading
    import time

    from scp.db_engine import DatabaseUnavailable
    from scp.delivery import DeliveryLoop, DeliveryPolicy
    from scp.metrics import Counters

    class Flaky:
        """Fails its first three polls, as PostgreSQL during a restart, then has nothing due."""

        def __init__(self) -> None:
            self.polls = 0
            self.recovered = threading.Event()

        def due_deliveries(self, now: float) -> list:
            self.polls += 1
            if self.polls <= 3:
                raise DatabaseUnavailable("OperationalError: connection refused")
            self.recovered.set()
            return []

    db = Flaky()
    loop = DeliveryLoop(db, DeliveryPolicy("CACNODE", 3, 1.0), time.time, Counters(), poll_seconds=0.01)
    with caplog.at_level(logging.ERROR, logger="scp.delivery"):
        loop.start()
        assert db.recovered.wait(5)
        assert loop.is_alive()
        loop.stop()
    outage = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(outage) == 1  # once per outage, not at every poll
