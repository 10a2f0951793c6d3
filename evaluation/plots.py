"""The two agreement plots of an evaluation (matplotlib, rendered with Agg to PNG).

Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas,
never ``pyplot``: no global backend or figure registry is touched, so the
plots render the same on a headless node and from tests.

Agatston runs from 0 to thousands and 0 is the most common score, so both
axes are symlog: linear up to ``LINEAR_UP_TO`` (where 0 and the 1-10
category sit) and logarithmic beyond, which keeps 0..3000 readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.metrics import LimitsOfAgreement

LINEAR_UP_TO = 10.0  # Agatston: symlog's linear range
CATEGORY_EDGES = (10.0, 100.0, 400.0)  # upper edges of the risk categories 1-10, 11-100, 101-400
_SIZE_IN, _DPI = (6.4, 5.2), 100


def _figure() -> Figure:
    figure = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def bland_altman_plot(true: np.ndarray, pred: np.ndarray, limits: LimitsOfAgreement, path: Path) -> None:
    """Mean of reference and model against their difference (model - reference), with the limits of agreement."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    figure = _figure()
    ax = figure.add_subplot()
    ax.scatter((true + pred) / 2, pred - true, s=18, alpha=0.7, color="tab:blue", zorder=3,
               clip_on=False)  # cases at 0 sit on the axis: keep them whole
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    if np.isfinite(limits.mean_difference):
        ax.axhline(limits.mean_difference, color="tab:red",
                   label=f"mean difference {limits.mean_difference:.1f}")
    if np.isfinite(limits.sd_difference):
        for value in (limits.lower, limits.upper):
            ax.axhline(value, color="tab:red", linestyle="--", linewidth=1.0)
        # One legend entry for both dashed lines.
        ax.plot([], [], color="tab:red", linestyle="--", linewidth=1.0,
                label=f"95% limits of agreement {limits.lower:.1f} to {limits.upper:.1f}")
    ax.set_xscale("symlog", linthresh=LINEAR_UP_TO)
    ax.set_yscale("symlog", linthresh=LINEAR_UP_TO)
    ax.set_xlim(left=0.0)
    # Symmetric and at least the linear range, so 0 sits mid-plot and the ticks are 0, 10, 100...
    shown = [*np.abs(pred - true), *(abs(v) for v in (limits.lower, limits.upper) if np.isfinite(v))]
    reach = max([LINEAR_UP_TO, *shown]) * 1.5
    ax.set_ylim(-reach, reach)
    ax.set_xlabel("mean of reference and model, total Agatston (symlog)")
    ax.set_ylabel("model - reference, total Agatston (symlog)")
    ax.set_title(f"Bland-Altman, total Agatston ({true.size} cases)")
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
    ax.legend(loc="best", fontsize="small")
    figure.savefig(path, format="png")


def scatter_plot(true: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """Reference against model total Agatston, with the identity line and the risk-category edges."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    figure = _figure()
    ax = figure.add_subplot()
    top = max(float(np.max(true, initial=0.0)), float(np.max(pred, initial=0.0)), 2 * CATEGORY_EDGES[-1]) * 1.3
    for edge in CATEGORY_EDGES:
        ax.axvline(edge, color="0.85", linewidth=0.8, zorder=1)
        ax.axhline(edge, color="0.85", linewidth=0.8, zorder=1)
    ax.plot([], [], color="0.85", linewidth=0.8, label="risk category edges (10, 100, 400)")
    ax.plot([0.0, top], [0.0, top], color="0.4", linewidth=1.0, label="identity", zorder=2)
    ax.scatter(true, pred, s=18, alpha=0.7, color="tab:blue", zorder=3,
               clip_on=False)  # cases at 0 sit on the axis: keep them whole
    ax.set_xscale("symlog", linthresh=LINEAR_UP_TO)
    ax.set_yscale("symlog", linthresh=LINEAR_UP_TO)
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, top)
    ax.set_xlabel("reference total Agatston (symlog)")
    ax.set_ylabel("model total Agatston (symlog)")
    ax.set_title(f"Total Agatston, model vs reference ({true.size} cases)")
    ax.legend(loc="upper left", fontsize="small")
    figure.savefig(path, format="png")
