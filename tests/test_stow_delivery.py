"""Delivery by STOW-RS to a real Orthanc with its DICOMweb plugin.

The node stores a scored phantom's reports in Orthanc; a wrong password is a
failed attempt that names the cause; an Orthanc that is down is retried with
back-off until ``failed``, and ``cacnode retry`` sends once it is up; TLS
verification against the server's certificate.  The STOW-RS response rules
(PS3.18 10.5.3) are checked on bodies as Orthanc answers them.  Each Orthanc
test is skipped when the DICOMweb plugin is not installed
(``OrthancPeer(dicomweb=True)`` skips).
"""

from __future__ import annotations

import re
import socket
import sqlite3
import ssl
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from node_support import (
    NodeProcess,
    OrthancPeer,
    cacnode,
    node_weights,
    small_series,
    storescu,
    wait_for,
    write_node_config,
    write_series,
)

from conftest import free_port
from scp.config import DicomWebDestination
from scp.db import Database
from scp.delivery import DeliveryPolicy, attempt, report_files
from scp.metrics import Counters
from scp.spool import InstanceKey
from scp.stow import http_error, stored_or_why_not, stow_files

__all__ = ["node_weights"]

SERIES = "1.2.826.0.1.3680043.8.498.1"


def start_node(root: Path, weights: Path, destination: dict, **scp: object) -> NodeProcess:
    port = free_port()
    config = write_node_config(root / "config.toml", port=port, storage=root / "var", weights=weights,
                               web_destinations=[destination], scp=scp)
    return NodeProcess(config, port, root / "node.log").start()


def send_series(node: NodeProcess, datasets: list[pydicom.Dataset], folder: Path) -> str:
    """C-STORE a series to the node; return its series UID."""
    write_series(datasets, folder)
    result = storescu(node.port, [folder])
    assert result.returncode == 0, result.stderr
    return str(datasets[0].SeriesInstanceUID)


def delivery_of(node: NodeProcess, series_uid: str) -> dict:
    """The series' one delivery (the report to the one destination), or {} before the report exists."""
    rows = node.deliveries(series_uid)
    assert len(rows) <= 1, rows
    return rows[0] if rows else {}


def wait_for_delivery(node: NodeProcess, series_uid: str, state: str, timeout: float = 180) -> dict:
    try:
        return wait_for(lambda: (d := delivery_of(node, series_uid)).get("state") == state and d, timeout,
                        f"the delivery of series {series_uid} to be {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the node's log ends:\n{node.log()[-3000:]}") from None


def instances_in(orthanc: OrthancPeer, study_uid: str, session: requests.Session | None = None) -> dict[str, str]:
    """SOP Instance UID -> modality of what Orthanc holds in the study, asked by QIDO-RS."""
    client = DICOMwebClient(orthanc.dicomweb_url, session=session)
    found = client.search_for_instances(study_instance_uid=study_uid, fields=["Modality"])
    return {item["00080018"]["Value"][0]: item["00080060"]["Value"][0] for item in found}


def report_uids(node: NodeProcess, series_uid: str) -> dict[str, str]:
    """SOP Instance UID -> modality of the report files the node kept for the series."""
    (row,) = node.query("SELECT result_dir FROM jobs WHERE series_uid = ? AND result_dir IS NOT NULL", (series_uid,))
    files = report_files(Path(row["result_dir"]))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return {str(ds.SOPInstanceUID): str(ds.Modality) for ds in headers}


# -- (1) a scored phantom's reports in Orthanc ----------------------------------------


@pytest.mark.network
@pytest.mark.slow
def test_phantom_reports_are_stored_in_orthanc_by_stow_rs(tmp_path, node_weights, request):
    from training.phantom.generate import generate_case

    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True)
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    node = start_node(tmp_path, node_weights, {"url": orthanc.dicomweb_url + "/"})  # a trailing slash is allowed
    try:
        case = generate_case(seed=11)
        series_uid = send_series(node, case.datasets, tmp_path / "phantom")
        delivery = wait_for_delivery(node, series_uid, "sent")
        assert delivery["destination"] == orthanc.dicomweb_url and delivery["kind"] == "dicomweb"
        assert delivery["attempts"] == 1 and delivery["last_error"] is None
        sent = report_uids(node, series_uid)
        assert {"SR", "SEG", "OT"} <= set(sent.values())  # the phantom has calcium: a SEG too
        held = instances_in(orthanc, str(case.datasets[0].StudyInstanceUID))
        assert held == sent  # every report object, and only those (the CT stays with the sender)
        assert node.series_state(series_uid) == "sent"
    finally:
        assert node.stop() == 0, node.log()


# -- (2) basic authentication: a wrong password, then the right one ------------------------


@pytest.mark.network
@pytest.mark.slow
def test_wrong_password_fails_with_the_reason_and_the_right_one_delivers(tmp_path, node_weights, request):
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True, users={"cacnode": "right-password"})
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    password = tmp_path / "password"
    password.write_text("wrong-password\n")
    node = start_node(tmp_path, node_weights, {"url": orthanc.dicomweb_url, "auth": "basic", "username": "cacnode",
                                               "password_file": password}, retry_max_attempts=1)
    try:
        datasets = small_series()
        series_uid = send_series(node, datasets, tmp_path / "series")
        failed = wait_for_delivery(node, series_uid, "failed")
        assert failed["attempts"] == 1 and failed["last_error"] == "HTTP 401 Unauthorized"
        assert "wrong-password" not in node.log() and "wrong-password" not in failed["destination"]
        password.write_text("right-password\n")  # read at each attempt: no restart needed
        retry = cacnode("retry", "--config", str(node.config))
        assert retry.returncode == 0, retry.stderr
        sent = wait_for_delivery(node, series_uid, "sent")
        assert sent["attempts"] == 1 and sent["last_error"] is None
        auth = requests.Session()
        auth.auth = ("cacnode", "right-password")
        assert instances_in(orthanc, str(datasets[0].StudyInstanceUID), auth) == report_uids(node, series_uid)
    finally:
        assert node.stop() == 0, node.log()


# -- (3) Orthanc down: retried with back-off, failed, then cacnode retry --------------------


@pytest.mark.network
@pytest.mark.slow
def test_orthanc_down_is_retried_with_backoff_until_failed_then_retry_sends(tmp_path, node_weights, request):
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True)
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    orthanc.stop()  # started again below, on the same ports
    node = start_node(tmp_path, node_weights, {"url": orthanc.dicomweb_url},
                      retry_max_attempts=3, retry_backoff_seconds=0.5)
    try:
        datasets = small_series()
        series_uid = send_series(node, datasets, tmp_path / "series")
        failed = wait_for_delivery(node, series_uid, "failed")
        assert failed["attempts"] == 3
        assert failed["last_error"] == "connection failed: [Errno 111] Connection refused"
        delays = [float(s) for s in re.findall(r"delivery to \S+ attempt \d failed \(.*\); retry in ([\d.]+) s",
                                              node.log())]
        assert delays == [0.5, 1.0]  # scp.retry_backoff_seconds, doubled
        assert f"delivery to {orthanc.dicomweb_url} failed after 3 attempts" in node.log()
        orthanc.start()
        retry = cacnode("retry", "--config", str(node.config))
        assert retry.returncode == 0, retry.stderr
        wait_for_delivery(node, series_uid, "sent")
        assert instances_in(orthanc, str(datasets[0].StudyInstanceUID)) == report_uids(node, series_uid)
        assert node.series_state(series_uid) == "sent"
    finally:
        assert node.stop() == 0, node.log()


# -- TLS: the server's certificate is checked, against ca_bundle when given -----------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = folder / "server.crt", folder / "server.key"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True, check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.strip()}")
    return cert, key


class TlsFront:
    """HTTPS on a free port, passed on as plain HTTP to ``target_port``: a TLS-terminating proxy.

    Orthanc's own HTTPS (civetweb with OpenSSL 3, as Debian 12 builds it)
    crashes on the first handshake, so the test puts this in front of it.
    """

    def __init__(self, cert: Path, key: Path, target_port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused our certificate
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pipe, args=(upstream, secure), daemon=True).start()
        self._pipe(secure, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.network
def test_tls_certificate_is_verified_and_ca_bundle_trusts_it(tmp_path, monkeypatch, request):
    # requests would let this variable replace the configured bundle; the node must not
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    cert, key = _certificate(tmp_path)
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True)
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    front = TlsFront(cert, key, orthanc.http_port)
    request.addfinalizer(front.close)
    url = f"https://127.0.0.1:{front.port}/dicom-web"
    files = write_series(small_series(n_slices=2), tmp_path / "series")
    error = stow_files(DicomWebDestination("dicomweb", url), files, connect_timeout=5, read_timeout=30)
    assert error is not None and error.startswith("TLS error:") and "certificate verify failed" in error
    assert orthanc.rest("GET", "/instances") == []
    # trusted through ca_bundle, REQUESTS_CA_BUNDLE notwithstanding
    trusted = DicomWebDestination("dicomweb", url, ca_bundle=cert)
    assert stow_files(trusted, files, connect_timeout=5, read_timeout=30) is None
    assert len(orthanc.rest("GET", "/instances")) == 2


# -- the response rules, on the bodies Orthanc answers with ------------------------------------

# Orthanc's answer to a STOW-RS request whose instance is not of the study in the URL:
# 409 Conflict, no Content-Type, one Failed SOP Sequence item with reason 0x0110.
FAILED_BODY = {
    "00080005": {"Value": ["ISO_IR 100"], "vr": "CS"},
    "00081198": {"vr": "SQ", "Value": [{
        "00081150": {"Value": ["1.2.840.10008.5.1.4.1.1.88.22"], "vr": "UI"},
        "00081155": {"Value": ["1.2.3.4"], "vr": "UI"},
        "00081197": {"Value": [0x0110], "vr": "US"},
    }]},
    "00081199": {"vr": "SQ"},
}
STORED_BODY = {
    "00081198": {"vr": "SQ"},
    "00081199": {"vr": "SQ", "Value": [{
        "00081150": {"Value": ["1.2.840.10008.5.1.4.1.1.88.22"], "vr": "UI"},
        "00081155": {"Value": ["1.2.3.4"], "vr": "UI"},
    }]},
}


def test_response_200_and_202_without_failures_count_as_stored():
    assert stored_or_why_not(200, STORED_BODY, {"1.2.3.4": "sr.dcm"}) is None
    assert stored_or_why_not(200, None, {}) is None
    assert stored_or_why_not(202, STORED_BODY, {"1.2.3.4": "sr.dcm"}) is None  # warnings only, as DIMSE 0xB000


def test_response_202_with_failures_is_a_failed_attempt_naming_the_file_and_reason():
    reason = stored_or_why_not(202, FAILED_BODY, {"1.2.3.4": "sr.dcm"})
    assert reason == "HTTP 202: not stored: sr.dcm: 0x0110 (Processing Failure)"


def test_http_error_is_one_line_with_the_failures_it_lists():
    assert http_error(409, "Conflict", FAILED_BODY, {}) == "HTTP 409 Conflict: 1.2.3.4: 0x0110 (Processing Failure)"
    assert http_error(503, "Service Unavailable", None, {}) == "HTTP 503 Service Unavailable"


# -- the queue: a dicomweb delivery holds its URL only, and finds the rest in the config -------


def _reported_job(tmp_path: Path, web_destinations: list[str]) -> Database:
    """A database with one reported job of one series (its report: one file) queued to ``web_destinations``."""
    db = Database(tmp_path / "cacnode.sqlite3")
    result_dir = tmp_path / "results" / "r1"
    result_dir.mkdir(parents=True)
    (ds,) = small_series(n_slices=1)  # any valid DICOM file stands in for the SR here
    ds.save_as(result_dir / "sr.dcm", enforce_file_format=True)
    db.record_instance(InstanceKey("1.2.3", SERIES, "1.2.3.9"), None, result_dir / "x", 1, 1.0)
    job_id = db.complete_series(SERIES, 1.0)
    db.claim_job(1.0)
    db.finish_job(job_id, 1.0, result_dir=result_dir, sr_uid=str(ds.SOPInstanceUID), total_agatston=0.0,
                  destinations=[], web_destinations=web_destinations)
    return db


def test_dicomweb_delivery_is_queued_by_url_and_one_no_longer_configured_fails_with_the_reason(tmp_path):
    url = "https://pacs.example/dicom-web"
    db = _reported_job(tmp_path, [url])
    try:
        (d,) = db.due_deliveries(2.0)
        assert (d.kind, d.destination, d.ae_title, d.port) == ("dicomweb", url, "", 0)
        assert db.series_state(SERIES) == "reported"
        policy = DeliveryPolicy(calling_ae_title="CACNODE", max_attempts=1, backoff_seconds=1.0)
        assert attempt(db, policy, d, lambda: 3.0, Counters(), web_destinations={}) == "failed"
        (row,) = db.delivery_rows()
        assert row["last_error"] == f"{url} is no longer a configured destination"
    finally:
        db.close()


def test_a_database_from_before_dicomweb_gets_the_kind_column(tmp_path):
    db = _reported_job(tmp_path, [])
    db.close()
    with sqlite3.connect(tmp_path / "cacnode.sqlite3") as conn:
        conn.execute("ALTER TABLE deliveries DROP COLUMN kind")
        conn.execute(
            "INSERT INTO deliveries (job_id, series_uid, destination, ae_title, host, port, state, next_attempt,"
            " updated) VALUES (1, ?, 'PACS@h:104', 'PACS', 'h', 104, 'pending', 1, 1)", (SERIES,),
        )
    conn.close()
    db = Database(tmp_path / "cacnode.sqlite3")
    try:
        (d,) = db.due_deliveries(2.0)
        assert d.kind == "dimse" and (d.ae_title, d.host, d.port) == ("PACS", "h", 104)
    finally:
        db.close()
