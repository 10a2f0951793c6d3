"""Unit tests of the node's parts without a network: spool, completion policy, database, retries."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cacnode.config import load_config
from cacnode.settings import ConfigError
from scp.admin import format_status, status_document
from scp.completion import CompletionPolicy
from scp.db import Database
from scp.delivery import DeliveryPolicy
from scp.metrics import Counters, DatabaseCollector, JobWatch
from scp.sources import SourceFilter
from scp.spool import InstanceKey, Spool, SpoolError, is_valid_uid

STUDY, SERIES = "1.2.3", "1.2.3.4"


def key(n: int, series: str = SERIES) -> InstanceKey:
    return InstanceKey(STUDY, series, f"{series}.{n}")


# -- spool ---------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0", "2.25.1234567890"])
def test_valid_uids(uid):
    assert is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["", "../etc", "1..2", "1.02", "1.2.", "1/2", "a.b", "1" * 65, None, 1.2])
def test_invalid_uids_never_become_paths(uid, tmp_path):
    assert not is_valid_uid(uid)
    with pytest.raises(ValueError):
        InstanceKey(STUDY, SERIES, uid)


def test_spool_write_is_complete_and_leaves_no_temp(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = spool.write(key(1), b"DICM-bytes")
    assert path == tmp_path / "spool" / STUDY / SERIES / f"{SERIES}.1.dcm"
    assert path.read_bytes() == b"DICM-bytes"
    assert list(spool.tmp.iterdir()) == []
    assert [k for k, _ in spool.scan()] == [key(1)]


def test_spool_refuses_when_disk_reserve_would_be_used(tmp_path):
    spool = Spool(tmp_path / "spool", min_free_bytes=2**62)
    with pytest.raises(SpoolError, match="free"):
        spool.write(key(1), b"x")
    assert spool.scan() == []


def test_spool_clears_partial_files_of_a_crash(tmp_path):
    spool = Spool(tmp_path / "spool")
    (spool.tmp / "abc.part").write_bytes(b"half")
    assert spool.clear_incoming() == 1
    assert list(spool.tmp.iterdir()) == []


# -- completion policy (injected clock, no sleeps) -----------------------------------


def test_series_due_after_quiet_period_only():
    policy = CompletionPolicy(quiet_seconds=5.0, early_completion=False)
    policy.seen("a", 100.0)
    policy.seen("a", 103.0)
    assert policy.due(107.9) == []
    assert policy.next_due() == 108.0
    assert policy.due(108.0) == ["a"]
    assert "a" not in policy and policy.due(200.0) == []


def test_early_completion_when_all_expected_slices_are_in():
    policy = CompletionPolicy(quiet_seconds=60.0)
    for i in range(3):
        policy.seen("a", 10.0 + i, expected=3)
    assert policy.due(12.0) == ["a"]


def test_duplicate_instances_do_not_count_towards_expected():
    policy = CompletionPolicy(quiet_seconds=60.0)
    policy.seen("a", 1.0, expected=3)
    policy.seen("a", 2.0, new=False, expected=3)
    policy.seen("a", 3.0, new=False, expected=3)
    assert policy.due(3.0) == []


def test_inconsistent_slice_count_hint_falls_back_to_quiet_period():
    policy = CompletionPolicy(quiet_seconds=60.0)
    policy.seen("a", 1.0, expected=2)
    policy.seen("a", 2.0, expected=5)
    assert policy.due(3.0) == []
    assert policy.due(62.0) == ["a"]


def test_restored_series_waits_a_full_quiet_period_from_restart():
    policy = CompletionPolicy(quiet_seconds=5.0)
    policy.restore("a", 1000.0, received=10, expected=None)
    assert policy.due(1004.0) == [] and policy.due(1005.0) == ["a"]


# -- database state machine ------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "db.sqlite3")
    yield d
    d.close()


def test_instance_sent_twice_causes_no_new_work(db, tmp_path):
    assert db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0) == (True, False)
    assert db.record_instance(key(1), "1.2", tmp_path / "x", 10, 2.0) == (False, False)
    assert db.state_counts()["instances"]["total"] == 1
    assert db.open_series()[0].n_instances == 1


def test_job_lifecycle_to_sent(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0, calling_aet="CT1", calling_host="10.0.0.5")
    job_id = db.complete_series(SERIES, 2.0)
    assert db.complete_series(SERIES, 2.0) is None  # not open any more
    job = db.claim_job(3.0)
    assert (job.id, job.calling_aet, job.generation) == (job_id, "CT1", 1)
    assert db.series_state(SERIES) == "running"
    db.finish_job(job_id, 4.0, result_dir=tmp_path, sr_uid="1.9", total_agatston=12.5,
                  destinations=[("PACS", "127.0.0.1", 104), ("ARCH", "127.0.0.1", 105)])
    assert db.series_state(SERIES) == "reported"
    deliveries = db.due_deliveries(4.0)
    assert [d.ae_title for d in deliveries] == ["PACS", "ARCH"]
    db.delivery_attempted(deliveries[0].id, 5.0, error=None, next_attempt=None)
    assert db.series_state(SERIES) == "reported"  # one destination still pending
    db.delivery_attempted(deliveries[1].id, 5.0, error=None, next_attempt=None)
    assert db.series_state(SERIES) == "sent"
    assert db.due_deliveries(100.0) == []


def test_status_says_a_report_without_destination_was_kept_and_where(db, tmp_path):
    kept_dir = tmp_path / "results" / "kept"
    for n, (series, destinations) in enumerate([(SERIES, []), ("1.2.3.5", [("PACS", "127.0.0.1", 104)])], start=1):
        db.record_instance(key(n, series), "1.2", tmp_path / "x", 10, 1.0)
        job_id = db.complete_series(series, 2.0)
        db.claim_job(3.0)
        db.finish_job(job_id, 4.0, result_dir=kept_dir if not destinations else tmp_path / "sent", sr_uid="1.9",
                      total_agatston=0.0, destinations=destinations)  # fmt: skip
    (delivery,) = db.due_deliveries(4.0)
    db.delivery_attempted(delivery.id, 5.0, error=None, next_attempt=None)
    doc = status_document(db)
    assert doc["counts"]["series"] == {"kept": 1, "sent": 1} and doc["counts"]["jobs"] == {"kept": 1, "sent": 1}
    rows = {r["series_uid"]: r for r in doc["series"]}
    assert rows[SERIES]["state"] == "kept" and rows[SERIES]["result_dir"] == str(kept_dir)
    assert rows["1.2.3.5"]["state"] == "sent"
    (line,) = [line for line in format_status(doc).splitlines() if line.startswith(SERIES + " ")]
    assert line.split()[1] == "kept" and line.endswith(f"no destination; report kept in {kept_dir}")
    assert db.series_state(SERIES) == "sent"  # stored as before: nothing is left to deliver


def test_node_report_files_get_the_mode_the_umask_gives(tmp_path):
    from node_support import small_series
    from scp.worker import write_results

    (ds,) = small_series(n_slices=1)  # any valid DICOM object stands in for the SR here
    previous = os.umask(0o022)
    try:
        write_results(tmp_path / "r", [("sr.dcm", ds), ("seg.dcm", None)], {"total": 0})
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir()}
    assert modes == {"sr.dcm": 0o644, "result.json": 0o644}


def test_failed_delivery_waits_for_manual_retry(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    job_id = db.complete_series(SERIES, 2.0)
    db.claim_job(2.0)
    db.finish_job(job_id, 3.0, result_dir=tmp_path, sr_uid="1.9", total_agatston=0.0,
                  destinations=[("PACS", "127.0.0.1", 104)])
    (d,) = db.due_deliveries(3.0)
    assert db.delivery_attempted(d.id, 4.0, error="refused", next_attempt=9.0) == "pending"
    assert db.due_deliveries(8.9) == [] and len(db.due_deliveries(9.0)) == 1
    assert db.delivery_attempted(d.id, 9.0, error="refused again", next_attempt=None) == "failed"
    assert db.series_state(SERIES) == "failed"
    assert db.due_deliveries(1e9) == []
    assert db.retry_failed(10.0, "9.9.9") == 0
    assert db.retry_failed(10.0, SERIES) == 1
    assert db.series_state(SERIES) == "reported"
    (again,) = db.due_deliveries(10.0)
    assert again.attempts == 0


def test_late_instance_reopens_and_supersedes_queued_job(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    first = db.complete_series(SERIES, 2.0)
    assert db.record_instance(key(2), "1.2", tmp_path / "y", 10, 3.0) == (True, True)
    assert db.series_state(SERIES) == "received"
    second = db.complete_series(SERIES, 4.0)
    job = db.claim_job(5.0)
    assert job.id == second != first and job.generation == 2
    assert db.claim_job(5.0) is None  # the first job was superseded, not run


def test_late_instance_during_processing_keeps_series_open(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    job_id = db.complete_series(SERIES, 2.0)
    db.claim_job(2.0)
    db.record_instance(key(2), "1.2", tmp_path / "y", 10, 3.0)
    db.finish_job(job_id, 4.0, result_dir=tmp_path, sr_uid="1.9", total_agatston=0.0, destinations=[])
    assert db.series_state(SERIES) == "received"  # the old job's outcome does not close the newer generation


def test_recover_drops_an_interrupted_job_of_a_reopened_series(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    db.complete_series(SERIES, 2.0)
    db.claim_job(3.0)
    db.record_instance(key(2), "1.2", tmp_path / "y", 10, 3.5)  # late instance while running
    assert db.recover(4.0) == 0
    assert db.claim_job(5.0) is None and db.series_state(SERIES) == "received"


def test_recover_requeues_interrupted_jobs_and_spooled_files(db, tmp_path):
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    db.complete_series(SERIES, 2.0)
    db.claim_job(3.0)
    assert db.recover(4.0) == 1
    assert db.series_state(SERIES) == "complete" and db.claim_job(5.0) is not None
    spool = Spool(tmp_path / "spool")
    spool.write(key(7, "1.2.3.5"), b"x")  # on disk, but the crash came before the database commit
    assert db.add_spooled(spool.scan(), 6.0) == ["1.2.3.5"]
    assert db.add_spooled(spool.scan(), 7.0) == []


# -- delivery back-off, metrics, sources, config --------------------------------------


def test_backoff_doubles_then_gives_up():
    policy = DeliveryPolicy(calling_ae_title="CACNODE", max_attempts=4, backoff_seconds=2.0)
    assert [policy.next_attempt(n, 100.0) for n in (1, 2, 3)] == [102.0, 104.0, 108.0]
    assert policy.next_attempt(4, 100.0) is None


def test_metrics_keep_their_names_and_add_failures_and_queue_depth(db, tmp_path):
    counters = Counters()
    counters.registry.register(DatabaseCollector(db))
    counters.inc("instances_received_total", 3)
    counters.inc("store_refused_total")
    counters.fail("delivery")
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    db.complete_series(SERIES, 2.0)
    text = counters.exposition().decode()
    assert "cacnode_instances_received_total 3.0" in text
    assert 'cacnode_failures_total{kind="store_refused"} 1.0' in text
    assert 'cacnode_failures_total{kind="delivery"} 1.0' in text
    assert 'cacnode_jobs{state="complete"} 1.0' in text and "# TYPE cacnode_jobs gauge" in text
    assert 'cacnode_queue_depth{queue="jobs"} 1.0' in text
    assert 'cacnode_instances{state="total"} 1.0' in text
    assert counters.snapshot()["instances_received_total"] == 3
    with pytest.raises(KeyError):
        counters.inc("no_such_event_total")  # a typo must not create a metric nobody watches


def test_job_watch_times_series_complete_to_report(db, tmp_path):
    counters = Counters()
    watch = JobWatch(db, counters, since=0.0)
    db.record_instance(key(1), "1.2", tmp_path / "x", 10, 1.0)
    job_id = db.complete_series(SERIES, 10.0)
    db.claim_job(11.0)
    watch.poll()  # still running: nothing to observe
    assert counters.registry.get_sample_value("cacnode_series_to_report_seconds_count") == 0
    db.finish_job(job_id, 40.0, result_dir=tmp_path, sr_uid="1.9", total_agatston=0.0, destinations=[])
    watch.poll()
    watch.poll()  # observed once
    assert counters.registry.get_sample_value("cacnode_series_to_report_seconds_count") == 1
    assert counters.registry.get_sample_value("cacnode_series_to_report_seconds_sum") == 30.0


def test_source_filter():
    assert SourceFilter(()).admits("192.0.2.7")
    f = SourceFilter(("10.0.0.0/8", "127.0.0.1"))
    assert f.admits("10.1.2.3") and f.admits("127.0.0.1")
    assert not f.admits("127.0.0.2") and not f.admits("not-an-ip")


def test_contract_keys_alone_are_a_valid_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[scp]\nae_title = "NODE"\nhost = "0.0.0.0"\nport = 4000\nallowed_calling_aets = ["CT1"]\n'
        '[series]\nquiet_seconds = 5\n[storage]\ndirectory = "data"\n'
        '[[destinations]]\nae_title = "PACS"\nhost = "pacs.local"\nport = 104\n'
    )
    config = load_config(path)
    assert config.scp.allowed_calling_aets == ("CT1",)
    assert config.storage.directory == tmp_path / "data"
    assert config.storage.database.parent == tmp_path / "data"
    assert config.destinations[0].key == "PACS@pacs.local:104"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('[scp]\nae_title = "A_TITLE_LONGER_THAN_16"\n', "longer than 16"),
        ("[scp]\nport = 70000\n", "scp.port"),
        ('[scp]\nallowed_addresses = ["nowhere"]\n', "allowed_addresses"),
        ('[scp]\ntls_certificate = "c.pem"\n', "together"),
        ("[series]\nquiet_seconds = 0\n", "quiet_seconds"),
        ('[[destinations]]\nae_title = "PACS"\nhost = "h"\n', "port"),
        ("[scp]\nport_number = 1\n", "unknown"),
    ],
)
def test_bad_node_config_is_refused_at_load(tmp_path, body, fragment):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_bundled_config_documents_every_node_key_with_its_default():
    import dataclasses

    from scp.config import ScpConfig, SeriesConfig, StorageConfig

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "config.toml").read_text()
    config = load_config(repo / "config.toml")
    assert config.scp == ScpConfig() and config.series == SeriesConfig()
    assert config.storage.fsync_directory == StorageConfig().fsync_directory
    for cls in (ScpConfig, SeriesConfig, StorageConfig):
        for f in dataclasses.fields(cls):
            assert f"{f.name} = " in text, f"config.toml does not document {cls.__name__}.{f.name}"


def test_images_in_acquisition_hint_is_read_only_when_usable():
    from pydicom.dataset import Dataset

    from scp.handlers import _images_in_acquisition

    for value, expected in (("24", 24), (24, 24), ("0", None), ("", None), (None, None), ("x", None)):
        ds = Dataset()
        if value is not None:
            ds.ImagesInAcquisition = value if value != "x" else None
            if value == "x":
                ds["ImagesInAcquisition"]._value = "x"  # as a sloppy sender might write it
        assert _images_in_acquisition(ds) == expected, value


def test_reports_go_back_to_the_caller_only_when_configured():
    from dicom_sr.config import ReportConfig
    from pipeline.reading.eligibility import EligibilityRules
    from pipeline.model.inference import ModelConfig
    from pipeline.scoring.agatston import ScoringProfile
    from scp.config import Destination, StorageConfig
    from scp.db_schema import Job
    from scp.worker import WorkerSettings, destinations_for

    job = Job(1, SERIES, STUDY, 1, "CT1", "10.0.0.5")
    common = dict(storage=StorageConfig(), model=ModelConfig(), eligibility=EligibilityRules(),
                  scoring=ScoringProfile(), report=ReportConfig(),
                  destinations=(Destination("PACS", "pacs", 104),), return_port=4006)
    assert destinations_for(WorkerSettings(return_to_caller=False, **common), job) == [("PACS", "pacs", 104)]
    assert destinations_for(WorkerSettings(return_to_caller=True, **common), job) == [
        ("PACS", "pacs", 104), ("CT1", "10.0.0.5", 4006)]
