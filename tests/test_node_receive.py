"""The listener against real peers: dcmtk echoscu/storescu and pynetdicom SCUs, one node for the module."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from node_support import NodeProcess, echo, node_weights, small_series, storescu, wait_for, write_node_config, write_series
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from conftest import dcmtk, free_port
from scp.handlers import handle_rejected
from scp.metrics import Counters
from scp.sources import SourceFilter

__all__ = ["node_weights"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.network
ALLOWED = ("SCANNER", "SENDER2", "ECHOSCU", "TESTSCU")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, node_weights: Path) -> NodeProcess:
    root = tmp_path_factory.mktemp("node")
    port = free_port()
    config = write_node_config(
        root / "config.toml", port=port, storage=root / "var", weights=node_weights,
        allowed_calling_aets=ALLOWED, quiet_seconds=1.0,
        scp={"max_instance_bytes": 4_000_000, "metrics_port": free_port()},
    )
    n = NodeProcess(config, port, root / "node.log").start()
    yield n
    assert n.stop() == 0, n.log()


def spooled(node: NodeProcess, series_uid: str) -> list[Path]:
    var = node.config.parent / "var" / "spool"
    return sorted(var.glob(f"*/{series_uid}/*.dcm"))


def test_dcmtk_echoscu(node):
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "CACNODE", "127.0.0.1", str(node.port)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_series_is_spooled_as_sent_and_completed(node, tmp_path):
    datasets = small_series()
    files = write_series(datasets, tmp_path / "series")
    result = storescu(node.port, [tmp_path / "series"])
    assert result.returncode == 0, result.stderr
    series_uid = str(datasets[0].SeriesInstanceUID)
    stored = spooled(node, series_uid)
    assert len(stored) == len(files)  # acknowledged means on disk, before the answer
    sent = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for path in stored:
        ds = pydicom.dcmread(path)
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData
    # the quiet period (1 s) completes it; then the worker takes it, whatever the outcome
    state = wait_for(lambda: node.series_state(series_uid) not in (None, "received") and node.series_state(series_uid),
                     60, "the series to complete")
    assert state in ("complete", "running", "reported", "sent", "failed", "skipped")
    rows = [r for r in node.status()["series"] if r["series_uid"] == series_uid]
    assert rows[0]["n_instances"] == len(files)


def test_unknown_calling_ae_is_refused(node, tmp_path):
    datasets = small_series(n_slices=2)
    write_series(datasets, tmp_path / "s")
    result = storescu(node.port, [tmp_path / "s"], calling="INTRUDER")
    assert result.returncode != 0
    assert spooled(node, str(datasets[0].SeriesInstanceUID)) == []
    wait_for(lambda: "'INTRUDER'" in node.log() and "rejected" in node.log(), 10, "the rejection log line")


def test_non_ct_sop_class_is_refused_at_negotiation(node):
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CACNODE")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert MRImageStorage not in accepted and MRImageStorage in rejected
    assert Verification in accepted


def _send_file(port: int, path: Path) -> int | None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return getattr(status, "Status", None)
    finally:
        assoc.release()


def test_malformed_dataset_gets_a_failure_status_and_node_keeps_serving(node, tmp_path, monkeypatch):
    # stream the file's bytes as they are (pynetdicom would otherwise parse and re-encode them)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    (ds,) = small_series(n_slices=1)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    # keep the file meta (so the SCU can propose a context) and replace the dataset with junk
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xff" + b"\x00" * 10)
    status = _send_file(node.port, bad)
    assert status is not None and (status & 0xF000) in (0xA000, 0xC000), hex(status or 0)
    assert echo(node.port)
    assert _send_file(node.port, good) == 0x0000
    assert len(spooled(node, str(ds.SeriesInstanceUID))) == 1


def test_instance_over_the_size_limit_is_refused_out_of_resources(node, tmp_path):
    (ds,) = small_series(n_slices=1, size=1536)  # 4.7 MB > scp.max_instance_bytes
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _send_file(node.port, path) == 0xA700
    assert spooled(node, str(ds.SeriesInstanceUID)) == []


def test_two_senders_at_once(node, tmp_path):
    a, b = small_series(), small_series()
    write_series(a, tmp_path / "a")
    write_series(b, tmp_path / "b")
    procs = [
        subprocess.Popen([dcmtk("storescu"), "-aet", aet, "-aec", "CACNODE", "+sd", "127.0.0.1", str(node.port),
                          str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for aet, folder in (("SCANNER", tmp_path / "a"), ("SENDER2", tmp_path / "b"))
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for datasets in (a, b):
        assert len(spooled(node, str(datasets[0].SeriesInstanceUID))) == len(datasets)


def test_health_metrics_and_status(node):
    import tomllib
    import urllib.error
    import urllib.request

    port = tomllib.loads(node.config.read_text())["scp"]["metrics_port"]

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:  # 503 while the worker loads
            return exc.code, exc.read().decode()

    code, body = wait_for(lambda: (got := get("/health"))[0] == 200 and got, 60, "a healthy node")
    assert json.loads(body) == {"status": "ok", "listener": "up", "worker": "ready", "delivery": "up"}
    code, text = get("/metrics")
    assert code == 200
    received = [line for line in text.splitlines() if line.startswith("cacnode_instances_received_total ")]
    assert received and float(received[0].split()[1]) >= 24  # prometheus_client writes floats
    assert 'cacnode_instances{state="total"}' in text
    assert node.status()["counts"]["instances"]["total"] >= 24


def test_source_address_not_allowed_is_rejected_before_negotiation():
    counters = Counters()
    scp = AE(ae_title="CACNODE")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False,
        evt_handlers=[(evt.EVT_REQUESTED, SourceFilter(("10.0.0.0/8",)).handle_requested, [counters])],
    )
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE")
        assert assoc.is_rejected and not assoc.is_established
        assert counters.snapshot()["associations_rejected_total"] == 1
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("calling", "called", "limit", "cause"),
    [
        ("INTRUDER", "CACNODE", 10, "calling AE title is not in scp.allowed_calling_aets (CT1, PACS)"),
        ("CT1", "OTHER", 10, "it called AE title 'OTHER', not this node's 'CACNODE' (scp.ae_title)"),
        ("INTRUDER", "OTHER", 10, ("it called AE title 'OTHER', not this node's 'CACNODE' (scp.ae_title);"
                                   " its calling AE title is not in scp.allowed_calling_aets (CT1, PACS)")),
        ("CT1", "CACNODE", 1, ("more connections open at once than the 1 allowed"
                               " (scp.max_associations + scp.max_pending_connections)")),
    ],
    ids=["calling", "called", "both", "limit"],
)
def test_rejection_is_logged_with_its_actual_cause(caplog, calling, called, limit, cause):
    allowed = ("CT1", "PACS")

    def ours() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "scp.handlers"]

    scp = AE(ae_title="CACNODE")
    scp.require_called_aet = True
    scp.require_calling_aet = list(allowed)
    scp.maximum_associations = limit
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_REJECTED, handle_rejected, [allowed, Counters()])]
    )
    idle = socket.create_connection(("127.0.0.1", port))  # holds a connection, as a sender that has not asked yet
    try:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        with caplog.at_level(logging.WARNING, logger="scp.handlers"):
            assoc = ae.associate("127.0.0.1", port, ae_title=called)
            assert assoc.is_rejected
            wait_for(lambda: ours(), 10, "the rejection log line")
    finally:
        idle.close()
        server.shutdown()
    (record,) = ours()
    assert record.getMessage().startswith(f"association from {calling!r} at 127.0.0.1:")
    assert record.getMessage().endswith(f" rejected: {cause}")


def test_dicom_tls_listener_accepts_tls_and_refuses_plain(tmp_path):
    import ssl

    from cacnode.config import Config
    from scp.app import build_ae, tls_context
    from scp.config import ScpConfig
    from scp.handlers import handle_echo

    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True, text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.strip()}")
    port = free_port()
    config = Config(scp=ScpConfig(port=port, tls_certificate=cert, tls_key=key))
    server = build_ae(config).start_server(("127.0.0.1", port), block=False, ssl_context=tls_context(config),
                                           evt_handlers=[(evt.EVT_C_ECHO, handle_echo)])
    try:
        client_tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
        assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE", tls_args=(client_tls, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert not echo(port)  # the same port without TLS
    finally:
        server.shutdown()


def test_series_sent_twice_is_not_scored_twice(node, tmp_path):
    datasets = small_series()
    write_series(datasets, tmp_path / "series")
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert storescu(node.port, [tmp_path / "series"]).returncode == 0
    done = ("sent", "failed", "skipped", "reported")
    wait_for(lambda: node.series_state(series_uid) in done, 60, "the first scoring")
    assert storescu(node.port, [tmp_path / "series"]).returncode == 0
    # a series sent afterwards completes after its own quiet period, so the duplicates' has passed too
    marker = small_series(n_slices=2)
    write_series(marker, tmp_path / "marker")
    assert storescu(node.port, [tmp_path / "marker"]).returncode == 0
    wait_for(lambda: node.series_state(str(marker[0].SeriesInstanceUID)) in done, 60, "the marker series")
    row = next(r for r in node.status()["series"] if r["series_uid"] == series_uid)
    assert row["generation"] == 1 and row["n_instances"] == len(datasets)
    assert node.log().count("received again; no new work") >= 1
