"""Plots of per-utterance scores, in torchmetrics' manner (matplotlib, ``(fig, ax)`` back).

A metric built with ``per_utterance=True`` keeps every clip's score, so its
:meth:`~torchmos.metrics.base.MOSMetric.plot` draws their distribution
(:func:`plot_scores`); any other value (a mean, or a list of means over steps) is plotted
as torchmetrics plots a metric's value. matplotlib is the ``plot`` extra
(``pip install 'torchmos[plot]'``), imported only when a plot is drawn.

>>> import torch
>>> fig, ax = plot_scores(torch.tensor([3.1, 3.4, 2.9, 4.0, 3.6]), name="DistillMOS",
...                       lower_bound=1.0, upper_bound=5.0, higher_is_better=True)
>>> round(sum(p.get_height() for p in ax.patches))  # the five clips, binned
5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_metric", "plot_scores"]

MAX_BINS = 60


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ModuleNotFoundError(
            "plotting needs matplotlib: pip install 'torchmos[plot]' (or pip install matplotlib)."
        ) from e
    return plt


def plot_scores(scores: Any, ax: Any = None, *, name: str | None = None, bins: int | str = "auto",
                lower_bound: float | None = None, upper_bound: float | None = None,
                higher_is_better: bool | None = None) -> tuple[Any, Any]:
    """A histogram of per-utterance ``scores`` with their mean, on ``ax`` or a new figure.

    Args:
        scores: a 1-D tensor, array or list of scores.
        ax: a matplotlib axis to draw on (then the returned figure is ``None``, as in
            torchmetrics).
        name: the x-axis label (the metric's name).
        bins: a number of bins, or numpy's rule (``"auto"``, at most 60 bins).
        lower_bound, upper_bound: the score's range, drawn as dashed lines (the metric's
            ``plot_lower_bound`` / ``plot_upper_bound``).
        higher_is_better: marks the optimal end of the range.

    Returns:
        ``(fig, ax)``.
    """
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite scores to plot; score some clips first (update(...)).")
    plt = _pyplot()
    fig, ax = plt.subplots() if ax is None else (None, ax)
    edges = np.histogram_bin_edges(values, bins=bins)
    if edges.size - 1 > MAX_BINS:
        edges = np.linspace(edges[0], edges[-1], MAX_BINS + 1)
    ax.hist(values, bins=edges, color="tab:blue", alpha=0.7, edgecolor="white", linewidth=0.5)
    mean = float(values.mean())
    ax.axvline(mean, color="k", linewidth=2, label=f"mean {mean:.3f}")
    ax.axvline(float(np.median(values)), color="k", linestyle=":", label=f"median {np.median(values):.3f}")
    bounds = [b for b in (lower_bound, upper_bound) if b is not None]
    for b in bounds:
        ax.axvline(b, color="grey", linestyle="--", linewidth=1)
    low = min([values.min(), *bounds])
    high = max([values.max(), *bounds])
    pad = 0.05 * (high - low) if high > low else 0.5
    ax.set_xlim(low - pad, high + pad)
    best = upper_bound if higher_is_better else lower_bound if higher_is_better is not None else None
    if best is not None:
        ax.text(best, ax.get_ylim()[1] * 0.95, "optimal\nvalue", ha="center", va="top", fontsize=8)
    ax.set_xlabel(name or "score")
    ax.set_ylabel("clips")
    ax.set_title(f"{values.size} clips" + (f", {name}" if name else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_metric(metric: Any, val: Any = None, ax: Any = None) -> tuple[Any, Any]:
    """What :meth:`MOSMetric.plot <torchmos.metrics.base.MOSMetric.plot>` draws.

    ``val`` (default: ``metric.compute()``): a per-utterance result (a dict with
    ``"scores"``) is drawn as the distribution of its scores; a list of such results as
    the means over steps; a scalar or a list of scalars as torchmetrics draws them.
    """
    if val is None:
        val = metric.compute()
    if isinstance(val, dict):
        return plot_scores(val["scores"], ax, name=type(metric).__name__, lower_bound=metric.plot_lower_bound,
                           upper_bound=metric.plot_upper_bound, higher_is_better=metric.higher_is_better)
    if isinstance(val, Sequence) and val and all(isinstance(v, dict) for v in val):
        val = [v["mean"] for v in val]
    return metric._plot(val, ax)
