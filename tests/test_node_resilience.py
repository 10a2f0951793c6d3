"""The node against an attacker and an unlucky hospital: dying workers, a full disk, idle and hostile connections.

Each test starts the real node (``cacnode serve`` as a subprocess) and talks
to it with dcmtk, pynetdicom or raw sockets; the worker is killed with -9
by its PID, as the OOM killer would.  The full-disk test mounts a small tmpfs
and so runs only as root.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from node_support import (
    DcmtkStoreSCP,
    NodeProcess,
    echo,
    node_weights,
    small_series,
    storescu,
    wait_for,
    write_node_config,
    write_series,
)
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from conftest import free_port

__all__ = ["node_weights"]

pytestmark = [pytest.mark.network, pytest.mark.slow]

DONE = ("sent", "reported", "failed", "skipped")
NodeFactory = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmtkStoreSCP]:
    p = DcmtkStoreSCP(tmp_path_factory.mktemp("pacs")).start()
    yield p
    p.stop()


@pytest.fixture
def make_node(tmp_path: Path, node_weights: Path) -> Iterator[NodeFactory]:
    """Start nodes with a test config (``storage`` and config keys as keywords); stop them at the end."""
    started: list[NodeProcess] = []

    def make(storage: Path | None = None, ready: Callable[[int], bool] | None = None, **options: Any) -> NodeProcess:
        port = free_port()
        root = tmp_path / f"node{len(started)}"
        root.mkdir()
        config = write_node_config(root / "config.toml", port=port, storage=storage or root / "var",
                                   weights=node_weights, **options)
        node = NodeProcess(config, port, root / "node.log")
        started.append(node)
        return node.start(ready=(lambda: ready(port)) if ready else None)

    yield make
    for node in started:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()


def query(node: NodeProcess, sql: str, *args: object) -> list[tuple]:
    """Rows from the node's database, opened read-only."""
    path = _storage(node) / "cacnode.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _storage(node: NodeProcess) -> Path:
    import tomllib

    return Path(tomllib.loads(node.config.read_text())["storage"]["directory"])


def worker_pid(node: NodeProcess) -> int:
    """The PID of the node's current worker process (from the log), checked to be the node's child."""
    pids = re.findall(r"worker started \(pid (\d+)\)", node.log())
    assert pids, node.log()
    pid = int(pids[-1])
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"^PPid:\s+{node.proc.pid}$", status, re.MULTILINE), f"{pid} is not the node's worker"
    return pid


def processing_count(node: NodeProcess, series_uid: str) -> int:
    return node.log().count(f"series {series_uid}: processing (job")


def send_and_catch_running(node: NodeProcess, folder: Path, series_uid: str) -> bool:
    """Send a series and wait until its job runs; False when it was done before we could see it running."""
    assert storescu(node.port, [folder]).returncode == 0
    state = wait_for(lambda: (s := node.series_state(series_uid)) in ("running", *DONE) and s, 60,
                     "the job to be taken", interval=0.005)
    return state == "running"


# -- (1) a worker that dies mid-job --------------------------------------------


def test_worker_killed_mid_job_is_replaced_and_its_job_reported(make_node, pacs, tmp_path):
    node = make_node(destinations=[("PACS", pacs.port)])
    for attempt in range(5):  # the job takes about a second: retried if it finished before the kill
        datasets = small_series(n_slices=40, size=128)
        series_uid = str(datasets[0].SeriesInstanceUID)
        write_series(datasets, tmp_path / f"series{attempt}")
        pid = worker_pid(node)
        if send_and_catch_running(node, tmp_path / f"series{attempt}", series_uid):
            os.kill(pid, signal.SIGKILL)
            if f"series {series_uid}: reported" not in node.log():
                break
        wait_for(lambda uid=series_uid: node.series_state(uid) in DONE, 60, "the uncaught job to end")
    else:
        pytest.skip("every job finished before the worker could be killed")
    wait_for(lambda: node.series_state(series_uid) == "sent", 60, "the series to be sent after the worker died")
    study_uid = str(datasets[0].StudyInstanceUID)
    srs = [ds for ds in map(pydicom.dcmread, pacs.files()) if ds.StudyInstanceUID == study_uid and ds.Modality == "SR"]
    assert len(srs) == 1
    assert [r[0] for r in query(node, "SELECT state FROM jobs WHERE series_uid = ?", series_uid)] == ["sent"]
    assert worker_pid(node) != pid
    assert "re-queued" in node.log()


def test_job_whose_worker_keeps_dying_fails_with_the_reason(make_node, tmp_path):
    node = make_node()
    datasets = small_series(n_slices=40, size=128)
    series_uid = str(datasets[0].SeriesInstanceUID)
    write_series(datasets, tmp_path / "series")
    assert storescu(node.port, [tmp_path / "series"]).returncode == 0
    kills = 0
    while node.series_state(series_uid) != "failed":
        assert kills < 5, "the job was never given up"
        wait_for(lambda done=kills: processing_count(node, series_uid) > done
                 or node.series_state(series_uid) == "failed",
                 60, f"the job to be taken (attempt {kills + 1})", interval=0.005)
        if node.series_state(series_uid) == "failed":
            break
        os.kill(worker_pid(node), signal.SIGKILL)
        kills += 1
        wait_for(lambda: node.series_state(series_uid) != "running", 10, "the job to leave 'running'")
    assert node.series_state(series_uid) != "sent", "a kill came too late: the job finished"
    (state, reason), = query(node, "SELECT state, reason FROM jobs WHERE series_uid = ?", series_uid)
    assert state == "failed" and "worker" in reason and "3" in reason, reason
    assert kills == 3
    assert echo(node.port)


def test_a_stop_signal_to_the_whole_process_group_is_a_clean_stop(tmp_path, node_weights):
    # Ctrl-C or a service manager signals the node and its worker at once: the worker's death is
    # part of the stop, not a crash to restart and count against a job.
    port = free_port()
    config = write_node_config(tmp_path / "config.toml", port=port, storage=tmp_path / "var", weights=node_weights)
    node = NodeProcess(config, port, tmp_path / "node.log", own_process_group=True).start()
    try:
        wait_for(lambda: "worker: model" in node.log(), 60, "the worker to load the model")
        os.killpg(node.proc.pid, signal.SIGTERM)
        assert node.proc.wait(60) == 0
    finally:
        if node.proc.poll() is None:
            node.kill()
    log = node.log()
    assert "stopped" in log.splitlines()[-1], log
    assert "restarting" not in log and " ERROR " not in log, log


# -- (2) a full disk while the report is written -----------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, so the node's storage can be filled without filling the machine's disk."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Take every free block of ``mount``; delete the returned file to free them."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        stat = os.statvfs(mount)
        os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0
    return filler


def test_disk_full_while_reporting_fails_the_job_and_the_worker_lives(make_node, small_disk, tmp_path):
    node = make_node(storage=small_disk / "var")
    first_worker = worker_pid(node)
    for attempt in range(5):
        datasets = small_series(n_slices=40, size=128)
        series_uid = str(datasets[0].SeriesInstanceUID)
        write_series(datasets, tmp_path / f"series{attempt}")
        if send_and_catch_running(node, tmp_path / f"series{attempt}", series_uid):
            filler = fill(small_disk)
            reported = f"series {series_uid}: reported"
            outcome = wait_for(lambda done=reported: ("full" if "No space left on device" in node.log() else "")
                               or ("reported" if done in node.log() else ""), 60, "the report to hit the full disk")
            if outcome == "full":
                break
            filler.unlink()
        wait_for(lambda uid=series_uid: node.series_state(uid) in DONE, 60, "the uncaught job to end")
    else:
        pytest.skip("every job finished before the disk could be filled")
    filler.unlink()
    wait_for(lambda: node.series_state(series_uid) == "failed", 60, "the failure to be recorded once space is back")
    (reason,), = query(node, "SELECT reason FROM jobs WHERE series_uid = ?", series_uid)
    assert "No space left on device" in reason
    log = node.log()
    assert not re.search(r"worker (\(pid \d+\) )?(exited|was killed)", log) and worker_pid(node) == first_worker, log
    # the node goes on: the next series is reported
    datasets = small_series()
    write_series(datasets, tmp_path / "after")
    assert storescu(node.port, [tmp_path / "after"]).returncode == 0
    wait_for(lambda: node.series_state(str(datasets[0].SeriesInstanceUID)) == "sent", 60, "the next series")


# -- (3) connections that never send an association request -------------------------


def test_connections_that_never_associate_do_not_lock_senders_out(make_node, tmp_path):
    node = make_node()  # the default limits: 10 associations, a 30 s ACSE timeout
    for _ in range(11):  # a port scanner, a load balancer's health checks
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(11)]
    try:
        datasets = small_series()
        write_series(datasets, tmp_path / "series")
        result = storescu(node.port, [tmp_path / "series"])
        assert result.returncode == 0, result.stderr
        # the idle connections are closed by the node within a few seconds, not the ACSE timeout
        started = time.monotonic()
        for s in idle:
            s.settimeout(max(0.1, 15 - (time.monotonic() - started)))
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 15
    finally:
        for s in idle:
            s.close()
    series_uid = str(datasets[0].SeriesInstanceUID)
    wait_for(lambda: node.series_state(series_uid) == "sent", 60, "the series to be scored")


def test_slots_count_associations_and_waiting_connections_are_capped(make_node):
    node = make_node(scp={"max_associations": 2, "max_pending_connections": 3})
    held = [_associate(node.port) for _ in range(2)]
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", node.port, ae_title="CACNODE")
        assert third.is_rejected  # local-limit-exceeded, as before
    finally:
        for assoc in held:
            assoc.release()
    assert wait_for(lambda: echo(node.port), 10, "a free slot")
    opened = time.monotonic()
    waiting = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(3)]
    try:
        wait_for(lambda: "connections_refused" in _refuse_one(node.port), 10, "a connection over the cap")
        for s in waiting:  # let in to wait, then given up after the request timeout, 5 s
            s.settimeout(15)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        assert 3 < time.monotonic() - opened < 20
    finally:
        for s in waiting:
            s.close()
    assert "scp.max_pending_connections" in node.log()
    assert wait_for(lambda: echo(node.port), 10, "a slot once the waiting connections are gone")


def _refuse_one(port: int) -> str:
    """Open one more connection: "connections_refused" when the node closes it at once, else ""."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(1)
        try:
            return "connections_refused" if s.recv(1) == b"" else ""
        except ConnectionResetError:
            return "connections_refused"
        except TimeoutError:
            return ""  # it was let in to wait: the cap is not reached yet


# -- (4) an idle connection to the TLS port ------------------------------------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "node.crt", folder / "node.key"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True, text=True, check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.strip()}")
    return cert, key


def tls_echo(port: int, cert: Path) -> bool:
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE", tls_args=(client, "localhost"))
    if not assoc.is_established:
        return False
    try:
        return getattr(assoc.send_c_echo(), "Status", None) == 0
    finally:
        assoc.release()


def test_idle_connection_to_the_tls_port_does_not_stop_tls_clients(make_node, tmp_path):
    cert, key = _certificate(tmp_path)
    node = make_node(scp={"tls_certificate": cert, "tls_key": key}, ready=lambda port: tls_echo(port, cert))
    idle = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        started = time.monotonic()
        assert tls_echo(node.port, cert)
        assert tls_echo(node.port, cert)
        assert time.monotonic() - started < 5
        idle.settimeout(15)
        try:
            assert idle.recv(1) == b""  # given up by the node after its handshake timeout
        except ConnectionResetError:
            pass
    finally:
        idle.close()


# -- memory under hostile input: the maximum PDU and the maximum instance size ------------


def _associate(port: int) -> pynetdicom.association.Association:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE")
    assert assoc.is_established
    return assoc


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024


def test_pdu_longer_than_the_negotiated_maximum_is_cut_off(make_node):
    node = make_node()  # scp.max_pdu 262144
    assoc = _associate(node.port)
    raw = assoc.dul.socket.socket  # the TCP socket under the association: write a P-DATA-TF by hand
    chunk = b"\0" * (1 << 20)
    sent = 0
    before = peak_rss(node.proc.pid)
    with pytest.raises(OSError):
        raw.sendall(struct.pack(">BBL", 0x04, 0, 1 << 30))  # PS3.8 9.3.5: type 4, reserved, length
        while sent < 128 << 20:
            raw.sendall(chunk)
            sent += len(chunk)
    assoc.abort()
    assert sent < 32 << 20
    assert peak_rss(node.proc.pid) - before < 16 << 20
    assert echo(node.port)


def test_instance_far_over_the_size_limit_is_not_held_in_memory(make_node):
    node = make_node(scp={"max_instance_bytes": 4_000_000})
    (ds,) = small_series(n_slices=1, size=4096)  # 32 MiB of pixel data
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = _associate(node.port)
    before = peak_rss(node.proc.pid)
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert getattr(status, "Status", None) in (None, 0xA700)
    assert peak_rss(node.proc.pid) - before < 16 << 20
    assert not list((_storage(node) / "spool").glob(f"*/{ds.SeriesInstanceUID}/*.dcm"))
    assert echo(node.port)


# -- (5) corrupt files that were acknowledged ------------------------------------------


def _send_raw(port: int, path: Path) -> int | None:
    """C-STORE a file's bytes exactly as they are (pynetdicom would otherwise parse and re-encode them)."""
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = _associate(port)
        try:
            return getattr(assoc.send_c_store(path), "Status", None)
        finally:
            assoc.release()
    finally:
        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = False


def _with_unknown_vr(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    at = raw.index(b"\x08\x00\x08\x00CS")  # Image Type, explicit VR: its VR becomes "ZZ"
    path.write_bytes(raw[: at + 4] + b"ZZ" + raw[at + 6:])
    return path


def _without_bits_allocated(ds: pydicom.Dataset, path: Path) -> Path:
    ds["PixelData"].VR = "OW"  # pydicom would take OB or OW from Bits Allocated
    del ds.BitsAllocated
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("corrupt", [_with_unknown_vr, _without_bits_allocated],
                         ids=["unknown-vr", "no-bits-allocated"])
def test_acknowledged_corrupt_file_is_skipped_not_fatal(make_node, tmp_path, corrupt):
    node = make_node()
    datasets = small_series()
    series_uid = str(datasets[0].SeriesInstanceUID)
    *good, top = datasets  # the top slice: without it the stack stays regular
    write_series(good, tmp_path / "series")
    top.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert _send_raw(node.port, corrupt(top, tmp_path / "corrupt.dcm")) == 0x0000
    assert storescu(node.port, [tmp_path / "series"]).returncode == 0
    wait_for(lambda: node.series_state(series_uid) in DONE, 60, "the series to be scored")
    rows = query(node, "SELECT state, reason FROM jobs WHERE series_uid = ?", series_uid)
    assert rows == [("sent", None)], rows
    assert re.search(rf"WARNING .*skipping .*{top.SOPInstanceUID}", node.log())
