"""The files of an evaluation: ``cases.csv``, ``summary.json``, ``bland_altman.png`` and ``scatter.png``.

:func:`output_paths` checks the output folder before any case is scored, so
an unwritable ``--out`` fails in a second, not after an hour of scoring.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import limits_of_agreement
from evaluation.plots import bland_altman_plot, scatter_plot
from evaluation.run import CaseResult, ScoredCase
from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.errors import CacnodeError
from pipeline.scoring.agatston import risk_category

CSV_HEADER: tuple[str, ...] = (
    "case", "series_uid", "status", "reason", "truth_total", "predicted_total",
    *(f"{kind}_{name}" for name in ARTERY_NAMES for kind in ("truth", "predicted")),
    "truth_category", "predicted_category", "lesions", "lesions_found", "false_positives",
)


@dataclass(frozen=True)
class ReportPaths:
    """Where an evaluation's files go."""

    cases_csv: Path
    summary_json: Path
    bland_altman_png: Path
    scatter_png: Path

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.cases_csv, self.summary_json, self.bland_altman_png, self.scatter_png)


def output_paths(out_dir: Path) -> ReportPaths:
    """Create ``out_dir`` if needed and check every report file in it can be written.

    Raises
    ------
    CacnodeError
        One line naming the folder or file that cannot be written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Creating a file is the only reliable test (permissions, read-only mounts, ACLs, root).
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".cacnode-evaluate-"):
            pass
    except OSError as exc:
        raise CacnodeError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    paths = ReportPaths(out_dir / "cases.csv", out_dir / "summary.json", out_dir / "bland_altman.png",
                        out_dir / "scatter.png")
    for path in paths.all:
        if path.exists() and (not path.is_file() or not os.access(path, os.W_OK)):
            raise CacnodeError(f"--out {out_dir}: {path.name} exists and cannot be overwritten")
    return paths


def _agatston(value: float) -> str:
    return f"{value:.3f}"


def case_rows(results: Sequence[CaseResult]) -> list[dict[str, str | int]]:
    """One ``cases.csv`` row per case, scored or skipped, in the order given."""
    rows: list[dict[str, str | int]] = []
    for r in results:
        if not isinstance(r, ScoredCase):
            rows.append({"case": r.case, "series_uid": r.series_uid or "", "status": "skipped", "reason": r.reason})
            continue
        o = r.outcome
        row: dict[str, str | int] = {
            "case": r.case, "series_uid": r.series_uid, "status": "scored", "reason": "",
            "truth_total": _agatston(o.true_total), "predicted_total": _agatston(o.pred_total),
        }
        for name in ARTERY_NAMES:
            row[f"truth_{name}"] = _agatston(r.arteries[name].true)
            row[f"predicted_{name}"] = _agatston(r.arteries[name].pred)
        row |= {
            "truth_category": risk_category(o.true_total), "predicted_category": risk_category(o.pred_total),
            "lesions": o.lesions, "lesions_found": o.lesions_found, "false_positives": o.false_positives,
        }
        rows.append(row)
    return rows


def write_cases_csv(results: Sequence[CaseResult], path: Path) -> None:
    """``cases.csv``: one row per case; a skipped case has its reason and empty figures."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_HEADER, restval="")
        writer.writeheader()
        writer.writerows(case_rows(results))


def write_report(results: Sequence[CaseResult], summary: dict[str, Any], paths: ReportPaths) -> None:
    """Every file of the report; the plots show the scored cases only."""
    write_cases_csv(results, paths.cases_csv)
    paths.summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    scored = [r.outcome for r in results if isinstance(r, ScoredCase)]
    true = np.array([o.true_total for o in scored], dtype=np.float64)
    pred = np.array([o.pred_total for o in scored], dtype=np.float64)
    bland_altman_plot(true, pred, limits_of_agreement(true, pred), paths.bland_altman_png)
    scatter_plot(true, pred, paths.scatter_png)
