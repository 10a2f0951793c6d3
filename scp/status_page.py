"""The status page: what ``cacnode status`` shows, as server-rendered HTML.

The page reads the database through the same queries as ``cacnode status``
(``scp.admin.status_document``), adds what an admin looks for from the
result folders (risk category, CAC-DRS, the review flag of calcium the
score does not count, the summary image) and the first
instance of each series (its description), and offers a retry button for
failed deliveries when an admin token is configured.  Patient name and ID
appear only with ``scp.log_phi`` on.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from scp.admin import status_document
from scp.db import Database

log = logging.getLogger(__name__)

SERIES_SHOWN = 50
STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;font-size:.9em}"
    "th{background:#eee}.state-failed{color:#b00}.state-sent{color:#070}.review{color:#b00;font-weight:bold}"
)
_HEADER_TAGS = ["SeriesDescription", "PatientName", "PatientID"]


@dataclass(frozen=True)
class ModelIdentity:
    """The model the worker runs, as its weights file names it (TID 4019 Algorithm Identification)."""

    name: str
    version: str
    uid: str


@dataclass(frozen=True)
class PageSettings:
    """What the page shows and offers, fixed when the node starts."""

    retry_enabled: bool  # an admin token is configured
    show_phi: bool  # scp.log_phi


@functools.lru_cache(maxsize=1024)
def _instance_header(path: str) -> dict[str, str]:
    """Description and patient of a series, from one of its instances (headers only; they never change)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        log.debug("cannot read the header of %s: %s", path, exc)
        return {}
    return {tag: str(ds.get(tag, "") or "") for tag in _HEADER_TAGS}


def _result(result_dir: str | None) -> dict[str, Any]:
    """The job's ``result.json`` (risk category, CAC-DRS, uncounted calcium), or {} when there is none."""
    if not result_dir:
        return {}
    try:
        return json.loads((Path(result_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def page_rows(db: Database, show_phi: bool) -> dict[str, Any]:
    """The status document with, per series, its description, result and summary image."""
    doc = status_document(db, SERIES_SHOWN)
    for row in doc["series"]:
        first = db.first_instance_path(row["series_uid"])
        header = _instance_header(str(first)) if first else {}
        row["description"] = header.get("SeriesDescription", "")
        if show_phi:
            row["patient"] = f"{header.get('PatientName', '')} ({header.get('PatientID', '')})"
        result = _result(row["result_dir"])
        row["risk_category"] = result.get("risk_category")
        row["cac_drs"] = result.get("cac_drs")
        row["review"] = review_text(result)
        row["has_summary"] = bool(row["result_dir"]) and (Path(row["result_dir"]) / "summary.dcm").is_file()
    return doc


def review_text(result: dict[str, Any]) -> str | None:
    """The review flag's sentence when the series' uncounted calcium raised it (``pipeline.scoring.uncounted``),
    else None."""
    uncounted = result.get("uncounted_calcium")
    if not isinstance(uncounted, dict) or not uncounted.get("review"):
        return None
    return str(uncounted.get("review_text") or "review the images: calcium was found that the score does not count")


def summary_png(db: Database, job_id: int) -> bytes | None:
    """The job's summary Secondary Capture rendered as PNG; None when the job has none."""
    result_dir = db.job_result_dir(job_id)
    if result_dir is None or not (result_dir / "summary.dcm").is_file():
        return None
    ds = pydicom.dcmread(result_dir / "summary.dcm")
    pixels = ds.pixel_array
    if ds.PhotometricInterpretation != "RGB":  # grey: window the stored range into 8 bits
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / max(high - low, 1.0) * 255).astype(np.uint8)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 255 - pixels
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: object) -> str:
    return f"<td>{escape('-' if value is None or value == '' else str(value))}</td>"


def render_page(doc: dict[str, Any], model: ModelIdentity | None, settings: PageSettings, notice: str = "") -> str:
    """The whole page as HTML; every value from the database or a file is escaped."""
    counts = doc["counts"]
    queue = counts["jobs"].get("complete", 0)
    pending = counts["deliveries"].get("pending", 0)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cacnode status</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>cacnode status</h1>",
    ]
    if notice:
        parts.append(f"<p id='notice'><strong>{escape(notice)}</strong></p>")
    model_text = "unknown" if model is None else f"{model.name} {model.version} (UID {model.uid})"
    parts.append(
        f"<p>Model: <span id='model'>{escape(model_text)}</span><br>"
        f"Queue: <span id='queue-depth'>{queue}</span> job(s) waiting to be scored, "
        f"{pending} deliver{'y' if pending == 1 else 'ies'} pending<br>"
        f"Instances: {counts['instances']['total']} &middot; <a href='/'>refresh</a> &middot; "
        "<a href='/metrics'>metrics</a> &middot; <a href='/health'>health</a></p>"
    )
    parts.append("<h2>Series</h2><table id='series'><tr><th>Last arrival</th><th>Series Instance UID</th>"
                 "<th>Description</th>" + ("<th>Patient</th>" if settings.show_phi else "")
                 + "<th>Instances</th><th>State</th><th>Agatston</th><th>Risk category</th><th>CAC-DRS</th>"
                 "<th>Review</th><th>Summary</th><th>Reason</th></tr>")
    for r in doc["series"]:
        agatston = None if r["total_agatston"] is None else f"{r['total_agatston']:.1f}"
        summary = (f"<td><a href='/summary/{int(r['job_id'])}.png'>image</a></td>"
                   if r["has_summary"] else "<td>-</td>")
        reason = r["reason"] or ("no destination; report kept in its result folder" if r["state"] == "kept" else "")
        review = f"<td class='review'>{escape(r['review'])}</td>" if r["review"] else "<td>-</td>"
        parts.append(
            f"<tr data-series='{escape(r['series_uid'])}'>" + _cell(_when(r["last_received"]))
            + _cell(r["series_uid"]) + _cell(r["description"])
            + (_cell(r["patient"]) if settings.show_phi else "") + _cell(r["n_instances"])
            + f"<td class='state state-{escape(r['state'])}'>{escape(r['state'])}</td>"
            + _cell(agatston) + _cell(r["risk_category"]) + _cell(r["cac_drs"]) + review + summary + _cell(reason)
            + "</tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Deliveries</h2><table id='deliveries'><tr><th>Series Instance UID</th><th>Destination</th>"
                 "<th>State</th><th>Attempts</th><th>Last error</th><th>Updated</th><th></th></tr>")
    for d in doc["deliveries"]:
        action = "<td></td>"
        if d["state"] == "failed" and settings.retry_enabled:
            action = (
                "<td><form method='post' action='/retry' class='retry'>"
                f"<input type='hidden' name='series_uid' value='{escape(d['series_uid'])}'>"
                "<input type='password' name='token' placeholder='admin token' required>"
                "<button type='submit'>Retry</button></form></td>"
            )
        parts.append(
            f"<tr data-series='{escape(d['series_uid'])}'>" + _cell(d["series_uid"]) + _cell(d["destination"])
            + f"<td class='state state-{escape(d['state'])}'>{escape(d['state'])}</td>"
            + _cell(d["attempts"]) + _cell(d["last_error"]) + _cell(_when(d["updated"])) + action + "</tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
