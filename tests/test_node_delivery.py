"""Delivery to a real dcmtk storescp: PACS down then up, give up after the limit, manual retry."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless
from node_support import DcmtkStoreSCP, cacnode, small_series, wait_for

from conftest import free_port
from scp.db import Database
from scp.delivery import UNCOMPRESSED, DeliveryLoop, DeliveryPolicy, send_files
from scp.metrics import Counters

pytestmark = pytest.mark.network
SERIES = "1.2.826.0.1.3680043.8.498.1"


def queued_report(storage: Path, port: int) -> tuple[Database, Path]:
    """A database holding one reported job with one pending delivery to 127.0.0.1:``port``."""
    db = Database(storage / "cacnode.sqlite3")
    result_dir = storage / "results" / "r1"
    result_dir.mkdir(parents=True)
    (ds,) = small_series(n_slices=1)  # any valid DICOM file stands in for the SR here
    ds.save_as(result_dir / "sr.dcm", enforce_file_format=True)
    from scp.spool import InstanceKey

    now = time.time()
    db.record_instance(InstanceKey("1.2.3", SERIES, "1.2.3.9"), None, result_dir / "x", 1, now)
    job_id = db.complete_series(SERIES, now)
    db.claim_job(now)
    db.finish_job(job_id, now, result_dir=result_dir, sr_uid=str(ds.SOPInstanceUID), total_agatston=1.0,
                  destinations=[("PACS", "127.0.0.1", port)])
    return db, result_dir


def loop(db: Database, attempts: int) -> DeliveryLoop:
    policy = DeliveryPolicy(calling_ae_title="CACNODE", max_attempts=attempts, backoff_seconds=0.2,
                            connect_timeout=2.0, acse_timeout=5.0)
    return DeliveryLoop(db, policy, time.time, Counters(), poll_seconds=0.05)


def delivery(db: Database) -> dict:
    (row,) = db.delivery_rows()
    return row


@pytest.mark.parametrize("codec", [True, False], ids=["peer-with-jpeg-ls", "peer-without"])
def test_a_compressed_report_file_reaches_a_peer_with_or_without_its_codec(tmp_path, codec):
    (ds,) = small_series(n_slices=1)
    ds.compress(JPEGLSLossless)  # as the summary image is written
    path = tmp_path / "summary.dcm"
    ds.save_as(path, enforce_file_format=True)
    pacs = DcmtkStoreSCP(tmp_path / "pacs", accept_compressed=codec).start()
    try:
        policy = DeliveryPolicy(calling_ae_title="CACNODE", max_attempts=1, backoff_seconds=1.0)
        assert send_files(policy, "PACS", "127.0.0.1", pacs.port, [path]) is None
        wait_for(lambda: len(pacs.files()) == 1, 10, "the file at the PACS")
        (received,) = map(dcmread, pacs.files())
    finally:
        pacs.stop()
    syntax = received.file_meta.TransferSyntaxUID
    assert syntax == JPEGLSLossless if codec else syntax in UNCOMPRESSED
    np.testing.assert_array_equal(received.pixel_array, dcmread(path).pixel_array)


def test_pacs_down_then_up_is_delivered_after_retry(tmp_path):
    port = free_port()
    db, _ = queued_report(tmp_path / "var", port)
    sender = loop(db, attempts=20)
    sender.start()
    pacs = DcmtkStoreSCP(tmp_path / "pacs", port=port)
    try:
        wait_for(lambda: delivery(db)["attempts"] >= 2, 30, "two failed attempts while the PACS is down")
        assert delivery(db)["state"] == "pending" and delivery(db)["last_error"]
        pacs.start()
        wait_for(lambda: delivery(db)["state"] == "sent", 60, "delivery once the PACS is up")
        assert len(pacs.files()) == 1
        assert db.series_state(SERIES) == "sent"
    finally:
        sender.stop()
        pacs.stop()
        db.close()


def test_failed_after_limit_then_cacnode_retry_delivers(tmp_path):
    port = free_port()
    storage = tmp_path / "var"
    db, _ = queued_report(storage, port)
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndirectory = "{storage}"\n')
    sender = loop(db, attempts=2)
    sender.start()
    pacs = DcmtkStoreSCP(tmp_path / "pacs", port=port)
    try:
        wait_for(lambda: delivery(db)["state"] == "failed", 30, "the delivery to give up")
        assert delivery(db)["attempts"] == 2
        status = cacnode("status", "--config", str(config))
        assert status.returncode == 0 and "failed" in status.stdout and "PACS@127.0.0.1" in status.stdout
        assert cacnode("retry", "--config", str(config), "--series-uid", "9.9").returncode == 1
        pacs.start()
        retry = cacnode("retry", "--config", str(config))
        assert retry.returncode == 0, retry.stderr
        wait_for(lambda: delivery(db)["state"] == "sent", 60, "delivery after cacnode retry")
        assert len(pacs.files()) == 1
    finally:
        sender.stop()
        pacs.stop()
        db.close()


def test_status_without_a_database_is_a_one_line_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndirectory = "{tmp_path / "nothing"}"\n')
    result = cacnode("status", "--config", str(config))
    assert result.returncode == 1
    assert "no node database" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_without_weights_fails_before_listening(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndirectory = "{tmp_path / "var"}"\n[model]\nweights = "{tmp_path / "none.pt"}"\n')
    result = cacnode("serve", "--config", str(config))
    assert result.returncode == 1
    assert "none.pt not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1
