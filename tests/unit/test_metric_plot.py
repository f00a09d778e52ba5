"""Per-utterance plots: a metric with per_utterance=True plots its score distribution;
otherwise metric.plot() keeps torchmetrics' single-value behaviour."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch

from torchmos import DistillMOS, synth
from torchmos.metrics.plotting import MAX_BINS, plot_metric, plot_scores

matplotlib.use("Agg")


def bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]


def line_at(ax, label: str) -> float:
    line = next(ln for ln in ax.lines if ln.get_label().startswith(label))
    return float(line.get_xdata()[0])


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [synth.degrade(synth.speech_like(1.0 + 0.25 * i, 16000, seed=i), 16000, kind, seed=i)
            for i, kind in enumerate(["clean", "noise_5dB", "clipping", "lowpass_1k"])]


def test_plot_scores_is_a_histogram_of_the_scores():
    x = np.random.default_rng(0).normal(3.5, 0.5, 500)
    fig, ax = plot_scores(torch.tensor(x), name="DistillMOS", lower_bound=1.0, upper_bound=5.0, higher_is_better=True)
    assert isinstance(fig, matplotlib.figure.Figure)
    counts, _ = np.histogram(x, bins=np.histogram_bin_edges(x, bins="auto"))
    assert bar_heights(ax) == counts.tolist()
    assert line_at(ax, "mean") == pytest.approx(x.mean()) and line_at(ax, "median") == pytest.approx(np.median(x))
    lo, hi = ax.get_xlim()
    assert lo <= 1.0 and hi >= 5.0 and ax.get_xlabel() == "DistillMOS"
    assert any(t.get_text() == "optimal\nvalue" and t.get_position()[0] == 5.0 for t in ax.texts)


def test_plot_scores_draws_on_a_given_axis_and_bounds_the_bins():
    import matplotlib.pyplot as plt

    _, given = plt.subplots()
    fig, ax = plot_scores(np.random.default_rng(1).normal(3, 1, 100_000), ax=given)
    assert fig is None and ax is given  # as torchmetrics' plots do with ax=
    assert len(bar_heights(ax)) == MAX_BINS and sum(bar_heights(ax)) == 100_000


def test_plot_scores_refuses_no_scores_and_names_the_extra(monkeypatch):
    with pytest.raises(ValueError, match="no finite scores"):
        plot_scores([float("nan")])
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match=r"torchmos\[plot\]"):
        plot_scores([3.0, 4.0])


def test_a_per_utterance_metric_plots_its_distribution(clips):
    m = DistillMOS(per_utterance=True)
    m.update(clips)
    result = m.compute()
    _, ax = plot_metric(m)
    assert sum(bar_heights(ax)) == len(clips)
    assert line_at(ax, "mean") == pytest.approx(float(result["mean"]), abs=1e-6)
    assert ax.get_xlabel() == "DistillMOS"
    # a list of per-utterance results (one per epoch): their means over the steps
    _, ax2 = plot_metric(m, [result, result])
    assert [float(v) for v in ax2.lines[0].get_ydata()] == pytest.approx([float(result["mean"])] * 2)


def test_a_plain_metric_keeps_torchmetrics_single_value_plot(clips):
    m = DistillMOS()
    m.update(clips)
    _, ax = plot_metric(m)
    assert bar_heights(ax) == []  # no histogram: one point, torchmetrics' single-value plot
    assert float(ax.lines[0].get_ydata()[0]) == pytest.approx(float(m.compute()), abs=1e-6)
    lo, hi = ax.get_ylim()
    assert lo <= DistillMOS.plot_lower_bound and hi >= DistillMOS.plot_upper_bound


def test_metric_plot_method_uses_it(clips):
    m = DistillMOS(per_utterance=True)
    m.update(clips[:3])
    _, ax = m.plot()
    assert sum(bar_heights(ax)) == 3


def test_docstring_examples():
    import doctest

    import torchmos.metrics.plotting as plotting

    res = doctest.testmod(plotting, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0
