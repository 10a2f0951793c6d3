"""Config sections of the node: ``[scp]``, ``[series]``, ``[storage]``, ``[database]``, ``[[destinations]]``.

Every key has a default, so a file holding only the contract keys
(``scp.ae_title/host/port/allowed_calling_aets``, ``series.quiet_seconds``,
``storage.directory`` and ``[[destinations]] ae_title/host/port``) is a valid
config.  Values are checked here, at load, so a bad file fails before the node
opens a port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

# PS3.8 9.3.2: an AE title is at most 16 characters of the default character
# repertoire, without backslash or control characters; all spaces is not a title.
AE_TITLE_MAX = 16


def check_ae_title(value: str, key: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a usable AE title."""
    if not value.strip():
        raise ValueError(f"{key} must not be blank")
    if len(value) > AE_TITLE_MAX:
        raise ValueError(f"{key} {value!r} is longer than {AE_TITLE_MAX} characters")
    if any(ch == "\\" or not (" " <= ch <= "~") for ch in value):
        raise ValueError(f"{key} {value!r} may hold only printable ASCII without backslash")


def check_port(value: int, key: str, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a TCP port (1-65535, or 0 for "off")."""
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ValueError(f"{key} must be {low}-65535, got {value}")


def _positive(value: float, key: str) -> None:
    if not value > 0:
        raise ValueError(f"{key} must be > 0, got {value}")


@dataclass(frozen=True)
class ScpConfig:
    """The listener, its limits and the delivery of reports (``[scp]``)."""

    ae_title: str = "CACNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty admits any caller (a warning is logged)
    allowed_addresses: tuple[str, ...] = ()  # source IPs or networks (CIDR); empty admits any
    # DICOM TLS (PS3.15 B.1): both certificate and key turn it on; a CA makes
    # the node require and verify client certificates.
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_associations: int = 10  # simultaneous associations; a connection takes a slot once it asks to associate
    # A connection must send its A-ASSOCIATE-RQ (and finish its TLS handshake)
    # within this time, so one that never does (a port scanner, a health
    # check) is closed after seconds, not after the ACSE timeout.
    request_timeout_seconds: float = 5.0
    # Connections still waiting for their request, beyond the associations:
    # each is a thread for at most request_timeout_seconds; more are closed at once.
    max_pending_connections: int = 50
    max_pdu: int = 262144  # maximum P-DATA-TF we receive, bytes; a longer one closes the connection (0 = unlimited)
    # Larger C-STORE datasets are refused (0xA700).  Datasets stream to disk as
    # they arrive, never whole into memory; one still arriving at twice this
    # size is cut off (the association aborted), so it cannot fill the disk.
    max_instance_bytes: int = 268435456
    min_free_disk_bytes: int = 1073741824  # below this free space, C-STORE answers 0xA700
    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 60.0
    network_timeout_seconds: float = 60.0
    return_to_caller: bool = False  # also send reports to the AE that sent the series
    return_port: int = 104  # port of the calling AE's storage SCP for return_to_caller
    retry_max_attempts: int = 5  # delivery attempts (C-STORE or STOW-RS) per destination before "failed"
    retry_backoff_seconds: float = 10.0  # first retry delay; doubles each attempt
    # Times a job is started; a job whose worker died (killed, out of memory)
    # this often is failed with the reason instead of being taken up again.
    job_max_attempts: int = 3
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # status page, health and Prometheus metrics over HTTP; 0 = off
    # A file holding the token the status page asks for before a state change
    # (retrying failed deliveries); without one the page is read-only.
    admin_token_file: Path | None = None
    log_phi: bool = False  # patient name/ID in log lines

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "scp.ae_title")
        if not self.host:
            raise ValueError("scp.host must not be empty")
        check_port(self.port, "scp.port")
        for i, aet in enumerate(self.allowed_calling_aets):
            check_ae_title(aet, f"scp.allowed_calling_aets[{i}]")
        for i, addr in enumerate(self.allowed_addresses):
            try:
                ipaddress.ip_network(addr, strict=False)
            except ValueError:
                raise ValueError(f"scp.allowed_addresses[{i}] {addr!r} is not an IP address or network") from None
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("scp.tls_certificate and scp.tls_key must be given together")
        if self.tls_ca is not None and self.tls_certificate is None:
            raise ValueError("scp.tls_ca needs scp.tls_certificate and scp.tls_key")
        if self.max_associations < 1:
            raise ValueError(f"scp.max_associations must be >= 1, got {self.max_associations}")
        _positive(self.request_timeout_seconds, "scp.request_timeout_seconds")
        if self.request_timeout_seconds > self.acse_timeout_seconds:
            raise ValueError(
                f"scp.request_timeout_seconds ({self.request_timeout_seconds}) must not exceed"
                f" scp.acse_timeout_seconds ({self.acse_timeout_seconds})"
            )
        if self.max_pending_connections < 1:
            raise ValueError(f"scp.max_pending_connections must be >= 1, got {self.max_pending_connections}")
        # PS3.8 D.3.3.2.1: a maximum length below the PDU header is meaningless
        if self.max_pdu != 0 and self.max_pdu < 4096:
            raise ValueError(f"scp.max_pdu must be 0 (unlimited) or >= 4096, got {self.max_pdu}")
        if self.max_instance_bytes < 1:
            raise ValueError(f"scp.max_instance_bytes must be >= 1, got {self.max_instance_bytes}")
        if self.min_free_disk_bytes < 0:
            raise ValueError(f"scp.min_free_disk_bytes must be >= 0, got {self.min_free_disk_bytes}")
        _positive(self.acse_timeout_seconds, "scp.acse_timeout_seconds")
        _positive(self.dimse_timeout_seconds, "scp.dimse_timeout_seconds")
        _positive(self.network_timeout_seconds, "scp.network_timeout_seconds")
        check_port(self.return_port, "scp.return_port")
        if self.retry_max_attempts < 1:
            raise ValueError(f"scp.retry_max_attempts must be >= 1, got {self.retry_max_attempts}")
        _positive(self.retry_backoff_seconds, "scp.retry_backoff_seconds")
        if self.job_max_attempts < 1:
            raise ValueError(f"scp.job_max_attempts must be >= 1, got {self.job_max_attempts}")
        check_port(self.metrics_port, "scp.metrics_port", allow_zero=True)

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None


@dataclass(frozen=True)
class SeriesConfig:
    """When a series counts as complete (``[series]``)."""

    # Orthanc's "stable series" idea: complete once nothing arrived for this long.
    quiet_seconds: float = 10.0
    # Complete before the quiet period when Images in Acquisition (0020,1002)
    # says how many slices to expect and all of them are in.
    early_completion: bool = True

    def __post_init__(self) -> None:
        _positive(self.quiet_seconds, "series.quiet_seconds")


@dataclass(frozen=True)
class StorageConfig:
    """Where the spool, the database and the results live (``[storage]``)."""

    directory: Path = Path("var/cacnode")
    # Also fsync the series folder after each instance's rename: POSIX-strict
    # durability on file systems without an ordered-data journal (ext4 and XFS
    # commit the rename with the file's own fsync); about twice the cost per instance.
    fsync_directory: bool = False

    @property
    def spool(self) -> Path:
        return self.directory / "spool"

    @property
    def results(self) -> Path:
        return self.directory / "results"

    @property
    def database(self) -> Path:
        return self.directory / "cacnode.sqlite3"


@dataclass(frozen=True)
class DatabaseConfig:
    """Which database the node's processes share, and how long a worker's claim on a job lasts (``[database]``)."""

    # Empty: the embedded SQLite file under [storage] directory (one machine).
    # "postgresql://user@host:5432/cacnode": receivers and workers on several
    # machines share it (psycopg 3; a password is best kept in ~/.pgpass).
    url: str = ""
    # A worker renews its lease on a job every third of this while it scores;
    # a job whose lease ran out (worker killed, machine down) is taken by
    # another worker.  Longer than the longest pause a live worker may have
    # (a stalled shared file system), far shorter than a radiologist's patience.
    lease_seconds: float = 60.0

    def __post_init__(self) -> None:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "(no scheme)"
        if self.url and scheme not in ("postgresql", "postgresql+psycopg"):
            # the scheme only: the rest may hold a password
            raise ValueError(f"database.url must be a postgresql:// URL (or empty for SQLite), not {scheme!r}")
        if self.lease_seconds < 3:
            raise ValueError(f"database.lease_seconds must be >= 3, got {self.lease_seconds}")

    def target(self, storage: StorageConfig) -> Path | str:
        """The URL, or the SQLite file of ``storage``."""
        return self.url or storage.database


@dataclass(frozen=True)
class Destination:
    """A storage SCP that receives the reports by C-STORE (``[[destinations]]``, ``kind = "dimse"``)."""

    ae_title: str
    host: str
    port: int
    kind: Literal["dimse"] = "dimse"  # the default kind, so entries written before DICOMweb stay valid

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "destinations.ae_title")
        if not self.host:
            raise ValueError("destinations.host must not be empty")
        check_port(self.port, "destinations.port")

    @property
    def key(self) -> str:
        """The name of this destination in the database and the logs."""
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DicomWebDestination:
    """A DICOMweb origin server that receives the reports by STOW-RS (``[[destinations]]``, ``kind = "dicomweb"``).

    Secrets are best kept in files (``password_file``, ``token_file``) that
    only the node's user can read; they are read at each attempt, so a
    rotated token needs no restart.  The inline ``password`` and ``token``
    are kept out of ``repr`` and therefore out of logs and tracebacks.
    """

    kind: Literal["dicomweb"]
    url: str  # the DICOMweb base URL; STOW-RS posts to {url}/studies (PS3.18 10.5)
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str = ""  # basic
    password: str = field(default="", repr=False)  # basic, or password_file
    password_file: Path | None = None
    token: str = field(default="", repr=False)  # bearer, or token_file
    token_file: Path | None = None
    tls_verify: bool = True  # check the server's certificate and name (https); off only for a test bench
    ca_bundle: Path | None = None  # PEM file of the CAs to trust instead of the system's (a hospital's own CA)

    def __post_init__(self) -> None:
        check_dicomweb_url(self.url, "destinations.url")
        basic = {"username": self.username, "password": self.password, "password_file": self.password_file}
        bearer = {"token": self.token, "token_file": self.token_file}
        if self.auth != "basic":
            _unused(basic, f"auth is {self.auth!r}")
        if self.auth != "bearer":
            _unused(bearer, f"auth is {self.auth!r}")
        if self.auth == "basic":
            if not self.username:
                raise ValueError("destinations.username is needed for auth = 'basic'")
            _exactly_one(basic, "password", "password_file", "auth = 'basic'")
        if self.auth == "bearer":
            _exactly_one(bearer, "token", "token_file", "auth = 'bearer'")
        https = self.url.lower().startswith("https://")
        if self.ca_bundle is not None and not self.tls_verify:
            raise ValueError("destinations.ca_bundle is given but destinations.tls_verify is false")
        if not https and (self.ca_bundle is not None or not self.tls_verify):
            raise ValueError(f"destinations.ca_bundle and destinations.tls_verify apply to https only, not {self.url}")

    @property
    def key(self) -> str:
        """The name of this destination in the database and the logs: its URL, which holds no secret."""
        return self.url.rstrip("/")


def check_dicomweb_url(value: str, key: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an http(s) base URL without credentials, query or fragment."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} must be an http:// or https:// URL with a host, got {value!r}")
    if parts.username is not None or parts.password is not None:
        # the URL is the destination's name in the database and logs
        raise ValueError(f"{key} must not hold a user name or password; use username and password_file")
    if ":" in parts.hostname:  # dicomweb-client parses the host as text up to the first colon
        raise ValueError(f"{key}: an IPv6 address cannot be used here; give a host name, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{key} must be a base URL without query or fragment, got {value!r}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ValueError(f"{key} has an invalid port: {value!r}")


def _unused(values: dict[str, object], why: str) -> None:
    given = [name for name, value in values.items() if value]
    if given:
        raise ValueError(f"destinations.{given[0]} is set but {why}")


def _exactly_one(values: dict[str, object], inline: str, file: str, what: str) -> None:
    if bool(values[inline]) == bool(values[file]):
        raise ValueError(f"{what} needs exactly one of destinations.{inline} or destinations.{file}")
