"""The figures of an evaluation as one JSON-ready dictionary (``summary.json``), and its text form.

The text report is rendered from the same dictionary that is written to
``summary.json`` and printed by ``--json``, so the three cannot disagree.
Undefined figures (an ICC of one case, the specificity without a
reference-zero case) are ``null`` in JSON and ``n/a`` in text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import artery_agreement, icc_absolute, limits_of_agreement, risk_confusion, summarise
from evaluation.run import CaseResult, ScoredCase, SkippedCase
from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.scoring.agatston import RISK_CATEGORIES


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return None if math.isnan(value) else float(value)


def build_summary(results: Sequence[CaseResult], model: dict[str, str]) -> dict[str, Any]:
    """The figures of the scored cases, the list of skipped ones, and the model they describe.

    Parameters
    ----------
    results
        One result per case, as :func:`evaluation.run.evaluate_cases` returns them.
    model
        What identifies the model (name, version, uid, weights file), copied into the summary.
    """
    scored = [r for r in results if isinstance(r, ScoredCase)]
    skipped = [r for r in results if isinstance(r, SkippedCase)]
    outcomes = [r.outcome for r in scored]
    figures = summarise(outcomes)
    true = np.array([o.true_total for o in outcomes], dtype=np.float64)
    pred = np.array([o.pred_total for o in outcomes], dtype=np.float64)
    limits = limits_of_agreement(true, pred)
    zero = true == 0
    lesions = sum(o.lesions for o in outcomes)
    false_positives = sum(o.false_positives for o in outcomes)
    return {
        "model": dict(model),
        "cases": {"total": len(results), "scored": len(scored), "skipped": len(skipped)},
        "total_agatston": {
            "icc": _number(figures["icc"]),
            # Agatston spans 0 to thousands: on log(1 + x) the small scores weigh as much as the large.
            "icc_log1p": _number(icc_absolute(np.log1p(true), np.log1p(pred))),
            "mean_difference": _number(limits.mean_difference),
            "sd_difference": _number(limits.sd_difference),
            "limits_of_agreement": [_number(limits.lower), _number(limits.upper)],
            "mean_abs_error": _number(figures["mean_abs_error"]),
        },
        "risk_category": {
            "categories": list(RISK_CATEGORIES),
            "weighted_kappa_linear": _number(figures["kappa"]),
            "confusion_matrix": risk_confusion(outcomes).tolist(),  # rows truth, columns predicted
        },
        "arteries": {
            name: {
                "icc": _number(a.icc),
                "right_artery": _number(a.right_artery),
                "truth_agatston": a.true_total,
                "predicted_agatston": a.pred_total,
            }
            for name, a in artery_agreement([r.arteries for r in scored]).items()
        },
        "zero_calcium": {
            "cases": int(zero.sum()),
            "scored_zero": int(np.count_nonzero(pred[zero] == 0)),
            "specificity": _number(figures["zero_to_zero"]),
        },
        "lesions": {
            "truth": lesions,
            "found": sum(o.lesions_found for o in outcomes),
            "sensitivity": _number(figures["lesion_sensitivity"]),
        },
        "false_positives": {"total": false_positives, "per_scan": _number(figures["fp_per_scan"])},
        "right_artery": {
            "of_detected": _number(figures["right_artery"]),
            "of_truth": _number(figures["right_artery_of_truth"]),
        },
        "skipped": [{"case": r.case, "reason": r.reason} for r in skipped],
    }


def _f(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The readable report of :func:`build_summary`'s dictionary, for a terminal."""
    c, t = summary["cases"], summary["total_agatston"]
    m, r = summary["model"], summary["risk_category"]
    lo, hi = t["limits_of_agreement"]
    limits = "n/a" if lo is None else f"{lo:.1f} to {hi:.1f}"
    lines = [
        f"Cases: {c['total']} ({c['scored']} scored, {c['skipped']} skipped)",
        f"Model: {m['name']} {m['version']} ({m['weights']})",
        "",
        "Total Agatston, model vs reference",
        f"  ICC(2,1), absolute agreement        {_f(t['icc'], 3)}",
        f"  ICC(2,1) on log(1 + Agatston)       {_f(t['icc_log1p'], 3)}",
        f"  mean difference (model - reference) {_f(t['mean_difference'], 1)}",
        f"  95% limits of agreement             {limits}",
        f"  mean absolute difference            {_f(t['mean_abs_error'], 1)}",
        "",
        f"Risk category: weighted kappa (linear) {_f(r['weighted_kappa_linear'], 3)}",
        "  rows reference, columns model",
        "  " + f"{'':<9}" + "".join(f"{name:>9}" for name in r["categories"]),
    ]
    for name, row in zip(r["categories"], r["confusion_matrix"]):
        lines.append("  " + f"{name:<9}" + "".join(f"{n:>9}" for n in row))
    lines += ["", f"  {'Artery':<8}{'ICC':>7}{'on right artery':>17}{'reference':>11}{'model':>9}"]
    for name in ARTERY_NAMES:
        a = summary["arteries"][name]
        lines.append(f"  {name:<8}{_f(a['icc'], 3):>7}{_f(a['right_artery'], 3):>17}"
                     f"{a['truth_agatston']:>11.1f}{a['predicted_agatston']:>9.1f}")
    z, les, fp, ra = summary["zero_calcium"], summary["lesions"], summary["false_positives"], summary["right_artery"]
    lines += [
        "  (on right artery: share of the artery's reference Agatston the model found and gave that artery)",
        "",
        f"Zero calcium: {z['scored_zero']} of {z['cases']} reference-zero cases scored 0"
        f" (specificity {_f(z['specificity'], 3)})",
        f"Lesions: {les['found']} of {les['truth']} found (sensitivity {_f(les['sensitivity'], 3)})",
        f"False positives: {fp['total']} ({_f(fp['per_scan'], 2)} per scan)",
        f"Agatston on the right artery: {_f(ra['of_detected'], 3)} of the detected,"
        f" {_f(ra['of_truth'], 3)} of all reference Agatston",
    ]
    if summary["skipped"]:
        lines += ["", f"Skipped ({len(summary['skipped'])}):"]
        lines += [f"  {s['case']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)
