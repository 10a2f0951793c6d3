"""Sending reports by STOW-RS (PS3.18 10.5): the DICOMweb counterpart of ``scp.delivery.send_files``.

All report files of one delivery go in one ``multipart/related;
type="application/dicom"`` POST to ``{url}/studies``, built and sent by
dicomweb-client.  Like ``send_files``, :func:`stow_files` returns None when the
origin server stored every instance and a one-line reason otherwise, and
``scp.delivery.attempt`` does the retries and back-off for both kinds.

The response status decides (PS3.18 10.5.3): 200 all stored; 202 some
stored, with warnings or failures (a Failed SOP Sequence, failures count as a
failed attempt); 4xx or 5xx none stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from scp.config import DicomWebDestination

log = logging.getLogger(__name__)

# dicomweb-client builds the whole body in memory either way; above its chunk
# size it switches to chunked transfer encoding, which some servers and
# proxies refuse, so a body of any size goes with a Content-Length.
_ONE_CHUNK = 2**62

_FAILURE_NAMES = {code: name for code, (_, name) in {**GENERAL_STATUS, **STORAGE_SERVICE_CLASS_STATUS}.items()}


class _ConfiguredSession(requests.Session):
    """A session whose configured ``verify`` (a CA bundle, or off) wins over ``REQUESTS_CA_BUNDLE``.

    requests lets that environment variable replace a session's own ``verify``
    when the request gives none, which is how dicomweb-client sends.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.verify is not True:
            settings["verify"] = self.verify
        return settings


def read_secret(inline: str, file: Path | None) -> str:
    """The inline secret, else the first line of its file (read at each use, so it may be rotated).

    Raises
    ------
    OSError
        The file cannot be read.
    """
    if file is None:
        return inline
    lines = file.read_text().splitlines()
    return lines[0].strip() if lines else ""


def check_secret_files(destination: DicomWebDestination) -> str | None:
    """Why the destination's secret file cannot be read, or None (checked before the node starts)."""
    for name, path in (("password_file", destination.password_file), ("token_file", destination.token_file)):
        if path is None:
            continue
        try:
            if not read_secret("", path):
                return f"{destination.key}: {name} {path} is empty"
        except OSError as exc:
            return f"{destination.key}: cannot read {name} {path}: {exc.strerror or exc}"
    return None


def _session(destination: DicomWebDestination) -> requests.Session:
    session = _ConfiguredSession()
    session.verify = str(destination.ca_bundle) if destination.ca_bundle is not None else destination.tls_verify
    if destination.auth == "basic":
        session.auth = (destination.username, read_secret(destination.password, destination.password_file))
    elif destination.auth == "bearer":
        token = read_secret(destination.token, destination.token_file)
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def stow_files(destination: DicomWebDestination, files: Sequence[Path], connect_timeout: float,
               read_timeout: float) -> str | None:
    """POST ``files`` to the destination in one STOW-RS request; return None when all were stored, else why not."""
    try:
        session = _session(destination)
    except OSError as exc:
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    with session:  # closes its connections when done
        return _post(destination, session, files, connect_timeout, read_timeout)


def _post(destination: DicomWebDestination, session: requests.Session, files: Sequence[Path],
          connect_timeout: float, read_timeout: float) -> str | None:
    responses: list[requests.Response] = []
    client = DICOMwebClient(
        destination.key,
        session=session,
        callback=lambda response, *args, **kwargs: responses.append(response),
        timeout=(connect_timeout, read_timeout),
        chunk_size=_ONE_CHUNK,
    )
    client.set_http_retry_params(retry=False)  # scp.delivery retries, with the node's back-off and limit
    datasets = [dcmread(f) for f in files]
    names = {str(ds.SOPInstanceUID): f.name for ds, f in zip(datasets, files)}
    try:
        client.store_instances(datasets)
    except requests.HTTPError as exc:
        return http_error(exc.response.status_code, exc.response.reason, _json_body(exc.response), names)
    except requests.exceptions.SSLError as exc:
        return f"TLS error: {_root_cause(exc)}"
    except requests.Timeout as exc:
        return f"timed out: {_root_cause(exc)}"
    except requests.ConnectionError as exc:
        return f"connection failed: {_root_cause(exc)}"
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {_root_cause(exc)}"
    response = responses[-1]
    return stored_or_why_not(response.status_code, _json_body(response), names, destination.key)


def stored_or_why_not(status: int, body: Mapping[str, Any] | None, names: Mapping[str, str],
                      where: str = "the server") -> str | None:
    """None when a 2xx STOW-RS response says every instance was stored, else the reason.

    ``body`` is the DICOM JSON response (the Store Instances Response Module,
    PS3.18 10.5.3.1); ``names`` maps each sent SOP Instance UID to its file name.
    """
    failed = _failures(body, names)
    if failed:
        return f"HTTP {status}: not stored: {'; '.join(failed)}"
    if status == 202:
        # Accepted with warnings only (coerced or discarded elements): stored, as a DIMSE Warning status.
        log.info("%s stored the report with warnings (HTTP 202)", where)
    return None


def http_error(status: int, reason: str, body: Mapping[str, Any] | None, names: Mapping[str, str]) -> str:
    """One line for a 4xx or 5xx STOW-RS response, with the failures it lists (409 Conflict lists them)."""
    failed = _failures(body, names)
    return f"HTTP {status} {reason}".rstrip() + (f": {'; '.join(failed)}" if failed else "")


def _failures(body: Mapping[str, Any] | None, names: Mapping[str, str]) -> list[str]:
    """``file: 0xCODE (meaning)`` for each item of the response's Failed SOP Sequence (0008,1198)."""
    if not body:
        return []
    try:
        response = Dataset.from_json(dict(body))
    except (ValueError, TypeError, KeyError) as exc:
        return [f"unreadable STOW-RS response ({exc})"]
    out = []
    for item in response.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", "?"))
        code = item.get("FailureReason")
        meaning = f"0x{code:04X} ({_FAILURE_NAMES.get(code, 'unknown reason')})" if code is not None else "no reason"
        out.append(f"{names.get(uid, uid)}: {meaning}")
    return out


def _json_body(response: requests.Response | None) -> Mapping[str, Any] | None:
    """The DICOM JSON body of a response, or None when it has none (or another media type).

    Tolerant when reading: a body without a Content-Type (Orthanc's error
    responses) is tried as JSON too.
    """
    if response is None or not response.content:
        return None
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type not in ("", "application/dicom+json", "application/json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    # a DICOM JSON object; some servers wrap the one response in a list
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    return body if isinstance(body, dict) else None


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a requests exception, which names what went wrong without the pool's wrapping."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError keeps its cause here
        inner = exc.__cause__ or exc.__context__ or (reason if isinstance(reason, BaseException) else None)
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]  # requests wraps urllib3's error as its first argument
        if inner is None:
            break
        exc = inner
    return " ".join(str(exc).split()) or type(exc).__name__
