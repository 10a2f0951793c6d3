"""Helpers for the node tests: a node subprocess, real peers, small series, polling with deadlines.

No fixed sleeps anywhere: every wait polls a condition until a deadline and
fails with what it was waiting for.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import dcmtk, free_port, simple_hu_volume
from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # a poll interval, not a wait for an event


def echo(port: int, called: str = "CACNODE", calling: str = "ECHOSCU") -> bool:
    """True when a C-ECHO to 127.0.0.1:``port`` succeeds."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return getattr(status, "Status", None) == 0
    finally:
        assoc.release()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_node_config(
    path: Path,
    *,
    port: int,
    storage: Path,
    weights: Path,
    destinations: Sequence[tuple[str, int]] = (),
    web_destinations: Sequence[dict[str, Any]] = (),
    quiet_seconds: float = 1.0,
    allowed_calling_aets: Sequence[str] = (),
    scp: dict[str, Any] | None = None,
    eligibility: dict[str, Any] | None = None,
) -> Path:
    """A test config: short quiet period and back-off, CPU model, peers on 127.0.0.1.

    ``destinations`` are C-STORE peers (AE title, port); each of ``web_destinations``
    is the table of one STOW-RS destination (``url`` and its auth keys).
    """
    sections: dict[str, dict[str, Any]] = {
        "scp": {
            "ae_title": "CACNODE",
            "host": "127.0.0.1",
            "port": port,
            "allowed_calling_aets": list(allowed_calling_aets),
            "retry_backoff_seconds": 0.5,
            "retry_max_attempts": 3,
            "min_free_disk_bytes": 0,
            **(scp or {}),
        },
        "series": {"quiet_seconds": quiet_seconds},
        "storage": {"directory": storage},
        "model": {"weights": weights, "device": "cpu", "cpu_threads": 1},
        # the small test series are 24 slices of 3 mm
        "eligibility": {"min_slices": 10, **(eligibility or {})},
    }
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    for aet, dport in destinations:
        lines += ["[[destinations]]", f'ae_title = "{aet}"', 'host = "127.0.0.1"', f"port = {dport}", ""]
    for table in web_destinations:
        lines += ["[[destinations]]", 'kind = "dicomweb"', *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines))
    return path


def node_env() -> dict[str, str]:
    """The environment for node subprocesses: the checkout importable whatever the install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cacnode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cacnode.cli", *args],
        capture_output=True, text=True, cwd=REPO, env=node_env(), timeout=timeout,
    )


class CacnodeProcess:
    """Any ``cacnode`` command as a long-running subprocess (``serve --no-worker``, ``worker``), its log in a file."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = list(args)
        self.log_path = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> CacnodeProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cacnode.cli", *self.args], cwd=REPO, env=node_env(),
                stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NodeProcess(CacnodeProcess):
    """``cacnode serve --config <config>`` as a subprocess, its log in a file, ready once it answers C-ECHO."""

    def __init__(self, config: Path, port: int, log: Path, own_process_group: bool = False) -> None:
        super().__init__(["serve", "--config", str(config)], log)
        self.config = config
        self.port = port
        self.own_process_group = own_process_group  # as a service manager starts it: signals can reach the group

    def start(self, timeout: float = 60, ready: Callable[[], bool] | None = None) -> NodeProcess:
        """Start the node and wait until ``ready()`` (default: a plain C-ECHO succeeds)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cacnode.cli", *self.args],
                cwd=REPO, env=node_env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.own_process_group,
            )
        ready = ready or (lambda: echo(self.port))
        wait_for(lambda: self._exited_early() or ready(), timeout, f"node on port {self.port}")
        return self

    def _exited_early(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def status(self) -> dict[str, Any]:
        result = cacnode("status", "--json", "--config", str(self.config))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def series_state(self, series_uid: str) -> str | None:
        """The series' state, read straight from the database (``cacnode status`` takes a second to start)."""
        rows = self.query("SELECT state FROM series WHERE series_uid = ?", (series_uid,))
        return rows[0]["state"] if rows else None

    def deliveries(self, series_uid: str) -> list[dict[str, Any]]:
        """The series' deliveries (destination, state, attempts, last_error, ...), straight from the database."""
        return [dict(r) for r in self.query("SELECT * FROM deliveries WHERE series_uid = ? ORDER BY id", (series_uid,))]

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only query on the node's database ([] before it exists)."""
        import sqlite3
        import tomllib

        storage = Path(tomllib.loads(self.config.read_text())["storage"]["directory"])
        path = storage / "cacnode.sqlite3"
        if not path.is_file():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


class DcmtkStoreSCP:
    """dcmtk ``storescp`` as the PACS, writing what it receives into ``folder``."""

    def __init__(self, folder: Path, aet: str = "PACS", port: int | None = None, accept_compressed: bool = True) -> None:
        self.folder = folder
        self.aet = aet
        self.port = port or free_port()
        self.accept_compressed = accept_compressed  # False: uncompressed transfer syntaxes only, as a codec-less PACS
        self.proc: subprocess.Popen | None = None

    @property
    def done(self) -> Path:
        return self.folder / ".complete"

    def start(self, timeout: float = 30) -> DcmtkStoreSCP:
        self.done.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            # storescp writes under the final name as data arrives: a marker, touched
            # once a file is complete, tells a finished report from a half-written one.
            [dcmtk("storescp"), "-aet", self.aet, "-od", str(self.folder), *(["+xa"] if self.accept_compressed else []),
             "-xcr", f"touch {self.done}/#f", "-xs", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: echo(self.port, called=self.aet), timeout, f"dcmtk storescp on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def files(self) -> list[Path]:
        """The files received completely so far."""
        return sorted(p for p in self.folder.iterdir() if p.is_file() and (self.done / p.name).exists())


def storescu(port: int, paths: Sequence[Path], calling: str = "SCANNER", called: str = "CACNODE",
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """dcmtk ``storescu`` sending files or folders (scanned recursively) to the node."""
    return subprocess.run(
        [dcmtk("storescu"), "-aet", calling, "-aec", called, "+sd", "+r", *extra, "127.0.0.1", str(port),
         *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )


def small_series(
    n_slices: int = 24,
    size: int = 64,
    *,
    study_uid: str | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    thickness_mm: float = 3.0,
    series_number: int = 2,
    description: str = "Calcium Score 3.0 mm",
    hu: np.ndarray | None = None,
) -> list[Dataset]:
    """A small CT series (the conftest volume) with its own series UID."""
    header = CTHeader(
        image_type=image_type, series_number=series_number, series_description=description,
        **({"study_uid": study_uid} if study_uid else {}),
    )
    volume = simple_hu_volume(n_slices, size) if hu is None else hu
    return build_ct_datasets(
        volume, pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=thickness_mm, increment_mm=thickness_mm,
        origin_mm=(-22.4, -22.4, -100.0), header=header,
    )


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    return write_datasets(datasets, folder)


@pytest.fixture(scope="session")
def node_weights() -> Path:
    """The model the node tests run: the bundled weights, as a hospital would run them."""
    bundled = REPO / "models" / "cacnode-v1.pt"
    assert bundled.is_file(), f"the bundled weights {bundled} are missing"
    return bundled


class OrthancPeer:
    """Orthanc with its own storage, a DICOM port and a REST port on 127.0.0.1.

    Optionally with its DICOMweb plugin (at ``dicomweb_url``), HTTP basic
    authentication for ``users`` (name: password) and HTTPS with
    ``certificate`` (a PEM file holding the certificate and its key).  The
    ports stay the same across ``stop`` and ``start``.
    """

    def __init__(
        self,
        root: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, int]] | None = None,
        *,
        dicomweb: bool = False,
        users: dict[str, str] | None = None,
        certificate: Path | None = None,
    ) -> None:
        self.root = root
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.plugins = [str(orthanc_dicomweb_plugin())] if dicomweb else []
        self.users = users or {}
        self.certificate = certificate
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def start(self, timeout: float = 60) -> OrthancPeer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cacnode-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "SslEnabled": self.certificate is not None,
            "SslCertificate": str(self.certificate) if self.certificate else None,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in self.modalities.items()},
            "Plugins": self.plugins,
            "SaveJobs": False,
            "StorageCompression": False,
            "OverwriteInstances": True,
        }
        config = {k: v for k, v in config.items() if v is not None}
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        with open(self.root / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen([orthanc_binary(), str(path)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up, timeout, f"Orthanc REST on {self.http_port}")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.proc.returncode}")
        try:
            self.rest("GET", "/system")
            return True
        except OSError:
            return False

    def rest(self, method: str, path: str, body: bytes | dict | str | None = None) -> Any:
        import base64
        import ssl
        import urllib.request

        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else (
            body.encode() if isinstance(body, str) else body)
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        context = ssl.create_default_context(cafile=str(self.certificate)) if self.certificate else None
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            text = response.read()
        return json.loads(text) if text else None

    def upload(self, files: Sequence[Path]) -> list[dict]:
        return [self.rest("POST", "/instances", f.read_bytes()) for f in files]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def orthanc_binary() -> str:
    for candidate in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if Path(candidate).is_file():
            return candidate
    pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    raise AssertionError  # unreachable


def orthanc_dicomweb_plugin() -> Path:
    """Orthanc's DICOMweb plugin (Debian: orthanc-dicomweb), skipping the test when it is not installed."""
    for folder in (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc")):
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    raise AssertionError  # unreachable


def write_first_jobs_table(path: Path) -> None:
    """A SQLite file holding the jobs table as the node's first version made it (no attempts, no leases)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,"
                 " generation INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT, created REAL NOT NULL,"
                 " started REAL, finished REAL, result_dir TEXT, sr_uid TEXT, total_agatston REAL)")
    conn.commit()
    conn.close()


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<version>/bin), newest first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found:
        return found[0].parent
    return None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1 and a free port, in a folder of its own.

    PostgreSQL refuses to run as root, so as root (the CI machine) it runs as
    the ``postgres`` system user, else ``nobody``, in a folder that user owns.
    Trust authentication on the loopback only; fsync off: a test cluster need
    not survive a power loss.
    """

    def __init__(self, bin_dir: Path, user: str = "cacnode") -> None:
        import tempfile

        self.bin_dir = bin_dir
        self.user = user
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cacnode-pg-"))
        self.data = self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() != 0:
            return list(args)
        return ["runuser", "-u", self._system_user(), "--", *args]

    @staticmethod
    def _system_user() -> str:
        import pwd

        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise AssertionError("neither a postgres nor a nobody user to run PostgreSQL as")

    def start(self, timeout: float = 60) -> PostgresServer:
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.root, self._system_user())

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(self._as_owner(*args), capture_output=True, text=True, timeout=timeout)

        done = run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
                   "--no-sync", "-E", "UTF8", "--locale=C")
        assert done.returncode == 0, f"initdb failed: {done.stdout}\n{done.stderr}"
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                   "-o", options, "-w", "-t", str(int(timeout)), "start")
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}\n{done.stderr}\n{self.log()}"
        return self

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        import shutil

        subprocess.run(self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                      "stop"), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
