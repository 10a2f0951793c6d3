"""``cacnode status`` and ``cacnode retry``: read and nudge the node's database.

Both work whether the node is running or not: the database is SQLite in WAL
mode, and a running node's delivery loop polls it, so a retried delivery is
picked up within a fraction of a second.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from cacnode.config import Config
from pipeline.errors import CacnodeError
from scp.db import Database


def _open(config: Config) -> Database:
    target = config.database.target(config.storage)
    if not config.database.url and not config.storage.database.is_file():
        raise CacnodeError(f"no node database at {target} (has `cacnode serve` run with this config?)")
    return Database(target, lease_seconds=config.database.lease_seconds)


def status_document(db: Database, limit: int = 50) -> dict[str, Any]:
    """Counts per state, the latest series with their jobs, and the deliveries."""
    return {
        "counts": db.state_counts(),
        "series": db.series_rows(limit),
        "deliveries": db.delivery_rows(2 * limit),
    }


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def format_status(doc: dict[str, Any]) -> str:
    """The status document as text for a terminal."""
    lines = []
    counts = doc["counts"]
    lines.append(f"instances: {counts['instances']['total']}")
    for table in ("series", "jobs", "deliveries"):
        states = ", ".join(f"{s} {n}" for s, n in sorted(counts[table].items())) or "none"
        lines.append(f"{table}: {states}")
    lines.append("")
    lines.append(f"{'series UID':<64}  {'state':<9}  {'inst':>4}  {'gen':>3}  {'Agatston':>9}  last received / reason")
    for r in doc["series"]:
        agatston = "-" if r["total_agatston"] is None else f"{r['total_agatston']:.1f}"
        if r["state"] == "kept":  # no destination: say where the report is instead of when it came
            tail = f"no destination; report kept in {r['result_dir']}"
        else:
            tail = r["reason"] or _when(r["last_received"])
        lines.append(
            f"{r['series_uid']:<64}  {r['state']:<9}  {r['n_instances']:>4}  {r['generation']:>3}  {agatston:>9}  {tail}"
        )
    if doc["deliveries"]:
        lines.append("")
        lines.append(f"{'series UID':<64}  {'destination':<32}  {'state':<10}  {'tries':>5}  last error")
        for d in doc["deliveries"]:
            lines.append(
                f"{d['series_uid']:<64}  {d['destination']:<32}  {d['state']:<10}  {d['attempts']:>5}  "
                f"{d['last_error'] or ''}"
            )
    return "\n".join(lines)


def show_status(config: Config, as_json: bool) -> int:
    """Print jobs, states, last errors and per-destination deliveries; return 0."""
    db = _open(config)
    try:
        doc = status_document(db)
    finally:
        db.close()
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_status(doc))
    return 0


def retry_failed(config: Config, series_uid: str | None) -> int:
    """Put failed deliveries (of one series, or all) back in the queue; 0 when some were, 1 when none."""
    db = _open(config)
    try:
        count = db.retry_failed(time.time(), series_uid)
    finally:
        db.close()
    which = f" of series {series_uid}" if series_uid else ""
    if count == 0:
        print(f"no failed deliveries{which}", file=sys.stderr)
        return 1
    print(f"{count} failed deliver{'y' if count == 1 else 'ies'}{which} queued again")
    return 0
