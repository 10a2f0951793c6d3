"""Job and delivery leases, on SQLite and on a throw-away PostgreSQL, and completion from the shared database."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest
from node_support import write_first_jobs_table

from scp.completion import SharedCompletion
from scp.db import Database, LeaseLost
from scp.db_schema import SCHEMA_VERSION, OpenSeries
from scp.spool import InstanceKey

STUDY, SERIES = "1.2.3", "1.2.3.4"
_names = itertools.count()


def key(n: int, series: str = SERIES) -> InstanceKey:
    return InstanceKey(STUDY, series, f"{series}.{n}")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A fresh database of each backend: a SQLite file, or a new database on the test cluster."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    server = request.getfixturevalue("postgres")
    from sqlalchemy import create_engine, text

    name = f"t{next(_names)}"
    engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def two(target: Path | str) -> tuple[Database, Database]:
    """Two workers' views of one database, with a 10 s lease."""
    a = Database(target, owner="host-a:1/worker#a", lease_seconds=10.0)
    b = Database(target, owner="host-b:2/worker#b", lease_seconds=10.0)
    yield a, b
    a.close()
    b.close()


def _queued(db: Database, series: str = SERIES, tmp: Path = Path("/spool")) -> int:
    db.record_instance(key(1, series), "1.2", tmp / series, 10, 1.0)
    return db.complete_series(series, 2.0)


def test_each_job_is_claimed_by_one_worker(two):
    a, b = two
    first, second = _queued(a, "1.2.3.4"), _queued(a, "1.2.3.5")
    assert a.claim_job(3.0).id == first
    assert b.claim_job(3.0).id == second  # not the one a holds
    assert a.claim_job(3.0) is None and b.claim_job(3.0) is None


def test_concurrent_claims_never_share_a_job(target):
    seed = Database(target)
    for i in range(12):
        _queued(seed, f"1.2.3.{100 + i}")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        db = Database(target, owner=f"w{n}")
        try:
            while (job := db.claim_job(3.0)) is not None:
                with lock:
                    claimed.append(job.id)
        finally:
            db.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seed.close()
    assert sorted(claimed) == list(range(1, 13))


def test_expired_lease_lets_another_worker_finish_and_fences_the_first(two, tmp_path):
    a, b = two
    job_id = _queued(a)
    job = a.claim_job(3.0)
    assert a.heartbeat(job_id, 8.0)  # renewed until 18
    assert b.release_expired(17.0, 3) == []
    (released,) = b.release_expired(19.0, 3)
    assert (released.id, released.state, released.attempts) == (job_id, "complete", 1)
    again = b.claim_job(19.0)
    assert (again.id, again.attempt, job.attempt) == (job_id, 2, 1)
    assert not a.heartbeat(job_id, 20.0)  # a learns it lost the job
    with pytest.raises(LeaseLost):
        a.finish_job(job_id, 21.0, result_dir=tmp_path / "a", sr_uid="1.9.1", total_agatston=0.0,
                     destinations=[("PACS", "127.0.0.1", 104)])
    b.finish_job(job_id, 22.0, result_dir=tmp_path / "b", sr_uid="1.9.2", total_agatston=0.0,
                 destinations=[("PACS", "127.0.0.1", 104)])
    (delivery,) = b.due_deliveries(23.0)
    assert delivery.result_dir == str(tmp_path / "b")


def test_expired_leases_count_attempts_then_fail(two):
    a, b = two
    job_id = _queued(a)
    for attempt in (1, 2):
        job = a.claim_job(10.0 * attempt)
        assert (job.id, job.attempt) == (job_id, attempt)
        assert b.release_expired(10.0 * attempt + 11, 2)[0].state == ("complete" if attempt == 1 else "failed")
    assert a.series_state(SERIES) == "failed" and a.claim_job(100.0) is None
    assert b.release_expired(200.0, 2) == []


def test_a_delivery_is_sent_by_one_process_at_a_time(two, tmp_path):
    a, b = two
    job_id = _queued(a)
    a.claim_job(3.0)
    a.finish_job(job_id, 4.0, result_dir=tmp_path, sr_uid="1.9", total_agatston=0.0,
                 destinations=[("PACS", "127.0.0.1", 104)])
    (d,) = a.due_deliveries(5.0)
    assert b.due_deliveries(6.0) == []  # a is sending it
    assert len(b.due_deliveries(16.0)) == 1  # a's lease ran out (killed mid-send): b takes it over
    assert a.delivery_attempted(d.id, 17.0, error=None, next_attempt=None) == "sent"
    assert b.due_deliveries(30.0) == []


def test_release_running_spares_other_workers_jobs(two):
    a, b = two
    mine, theirs = _queued(a, "1.2.3.4"), _queued(a, "1.2.3.5")
    a.claim_job(3.0)
    b.claim_job(3.0)
    released = a.release_running(4.0, 3, "the worker died", owner_prefix="host-a:")
    assert [j.id for j in released] == [mine] and theirs != mine
    assert b.series_state("1.2.3.5") == "running"


def test_completion_from_instances_recorded_by_two_receivers(two):
    a, b = two
    for n in range(1, 4):
        (a if n % 2 else b).record_instance(key(n), "1.2", Path("/x"), 10, float(n), expected=4)
    policy = SharedCompletion(quiet_seconds=30.0)
    assert policy.due(a.open_series(), 5.0) == []
    b.record_instance(key(4), "1.2", Path("/x"), 10, 4.0, expected=4)
    assert policy.due(a.open_series(), 5.0) == [SERIES]  # all 4 in, through both receivers
    assert a.complete_series(SERIES, 5.0) is not None and b.complete_series(SERIES, 5.0) is None


def test_schema_version_and_upgrade_of_an_older_sqlite_file(tmp_path):
    path = tmp_path / "old.sqlite3"
    write_first_jobs_table(path)
    Database(path).close()
    conn = sqlite3.connect(path)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    version = conn.execute("SELECT version FROM schema_version").fetchall()
    conn.close()
    assert {"attempts", "lease_owner", "lease_expires"} <= columns
    assert version == [(SCHEMA_VERSION,)]


def test_shared_completion_rules():
    policy = SharedCompletion(quiet_seconds=5.0, started=100.0)
    quiet = OpenSeries("a", 3, None, 90.0)
    counted = OpenSeries("b", 4, 4, 103.0)
    mixed = OpenSeries("c", 4, 4, 103.0, expected_mixed=True)
    too_many = OpenSeries("d", 5, 4, 103.0)
    # the quiet period restarts at start; the announced count completes early, unless instances disagree
    assert policy.due([quiet, counted, mixed, too_many], 104.0) == ["b"]
    assert policy.due([quiet, mixed, too_many], 108.0) == ["a", "c", "d"]
    policy.hold("a", 108.0)
    assert policy.due([quiet], 110.0) == [] and policy.due([quiet], 113.0) == ["a"]


def test_a_database_server_that_is_away_is_one_line_of_error():
    """psycopg's message spans lines ("Is the server running ..."); the node says it in one."""
    from scp.db_engine import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable) as raised:
        Database("postgresql://nobody@127.0.0.1:1/cacnode")
    message = str(raised.value)
    assert "Connection refused" in message or "connection failed" in message, message
    assert "\n" not in message
