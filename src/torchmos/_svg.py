"""Small inline-SVG plots for the HTML report: no plotting library, no network, and a size
that does not grow with the data (every plot draws a summary: bins, intervals)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]
WIDTH = 760
MAX_POINTS = 2000  # a scatter plot with more points draws their density in cells instead
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="12"'


def colour(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).

    >>> ticks(1.2, 4.9)
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]


def _label(v: float) -> str:
    return f"{v:g}"


class _Axis:
    """A linear map from data to pixels."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v: float) -> float:
        return round(self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0), 1)


def _svg(height: float, body: list[str], label: str, width: int = WIDTH) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height:.0f}" role="img" '
            f'aria-label="{escape(label)}" class="plot" {FONT}>' + "".join(body) + "</svg>")


def _x_axis(x: _Axis, tick_values: list[float], y: float, top: float, title: str) -> list[str]:
    out = [f'<line x1="{x.p0}" x2="{x.p1}" y1="{y}" y2="{y}" stroke="#444"/>']
    for t in tick_values:
        px = x(t)
        out.append(f'<line x1="{px}" x2="{px}" y1="{top}" y2="{y}" stroke="#e5e5e5"/>'
                   f'<text x="{px}" y="{y + 15}" text-anchor="middle" fill="#333">{_label(t)}</text>')
    out.append(f'<text x="{(x.p0 + x.p1) / 2}" y="{y + 32}" text-anchor="middle" fill="#333">{escape(title)}</text>')
    return out


def distributions(series: Sequence[tuple[str, np.ndarray, float, tuple[float, float]]], xlabel: str,
                  bins: int = 50) -> str:
    """One histogram per system on a shared axis, with its mean and confidence interval.

    ``series``: (name, scores, mean, (low, high)) per system.
    """
    values = np.concatenate([np.asarray(s[1], dtype=np.float64) for s in series])
    tv = ticks(float(values.min()), float(values.max()))
    lo, hi = tv[0], tv[-1]
    left, right, row_h, top = 150, WIDTH - 20, 70, 10
    x = _Axis(lo, hi, left, right)
    edges = np.linspace(lo, hi, bins + 1)
    body: list[str] = []
    for k, (name, scores, mean, ci) in enumerate(series):
        counts, _ = np.histogram(scores, bins=edges)
        base = top + (k + 1) * row_h - 8
        scale = (row_h - 22) / max(int(counts.max()), 1)
        path = "".join(f"M{x(edges[i])},{base}V{base - c * scale:.1f}H{x(edges[i + 1])}V{base}Z"
                       for i, c in enumerate(counts.tolist()) if c)
        body.append(f'<path d="{path}" fill="{colour(k)}" fill-opacity="0.55" stroke="{colour(k)}" stroke-width="0.5"/>')
        body.append(f'<line x1="{left}" x2="{right}" y1="{base}" y2="{base}" stroke="#999"/>')
        if not math.isnan(ci[0]):
            body.append(f'<line x1="{x(ci[0])}" x2="{x(ci[1])}" y1="{base + 4}" y2="{base + 4}" stroke="#000" '
                        'stroke-width="3"/>')
        body.append(f'<line x1="{x(mean)}" x2="{x(mean)}" y1="{base - row_h + 24}" y2="{base + 6}" stroke="#000" '
                    'stroke-dasharray="3 2"/>')
        body.append(f'<text x="{left - 8}" y="{base - 22}" text-anchor="end" fill="{colour(k)}" '
                    f'font-weight="bold">{escape(_short(name))}</text>'
                    f'<text x="{left - 8}" y="{base - 6}" text-anchor="end" fill="#555">n={len(scores)}, '
                    f'mean {mean:.3f}</text>')
    y = top + len(series) * row_h + 4
    body += _x_axis(x, tv, y, top, xlabel)
    body.insert(0, f'<title>{escape(xlabel)}: distribution per system</title>')
    return _svg(y + 40, body, f"{xlabel}: distribution per system")


def forest(rows: Sequence[tuple[str, float, tuple[float, float], str]], xlabel: str) -> str:
    """Estimates with their intervals, one row each, and a line at zero (no difference).

    ``rows``: (label, estimate, (low, high), colour).
    """
    finite = [v for _, est, (a, b), _ in rows for v in (est, a, b) if not math.isnan(v)]
    tv = ticks(min(finite + [0.0]), max(finite + [0.0]))
    left, right, row_h, top = 230, WIDTH - 20, 24, 10
    x = _Axis(tv[0], tv[-1], left, right)
    y_axis = top + len(rows) * row_h + 6
    body = [f'<title>{escape(xlabel)}</title>', f'<line x1="{x(0)}" x2="{x(0)}" y1="{top}" y2="{y_axis}" '
            'stroke="#888" stroke-dasharray="4 3"/>']
    for k, (label, est, (a, b), col) in enumerate(rows):
        y = top + k * row_h + row_h / 2
        body.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" fill="#222">{escape(_short(label, 34))}</text>')
        if not math.isnan(a):
            body.append(f'<line x1="{x(a)}" x2="{x(b)}" y1="{y}" y2="{y}" stroke="{col}" stroke-width="2.5"/>')
        body.append(f'<circle cx="{x(est)}" cy="{y}" r="4.5" fill="{col}"/>')
    body += _x_axis(x, tv, y_axis, top, xlabel)
    return _svg(y_axis + 40, body, xlabel)


def scatter(pred: np.ndarray, mos: np.ndarray, name: str, col: str, xlabel: str = "predicted score") -> str:
    """Predictions against labels: the points, or with many of them, their density in cells."""
    keep = ~np.isnan(mos)
    px, py = np.asarray(pred, dtype=np.float64)[keep], np.asarray(mos, dtype=np.float64)[keep]
    tx, ty = ticks(float(px.min()), float(px.max())), ticks(float(py.min()), float(py.max()), 5)
    left, right, top, bottom = 60, 380, 10, 300
    x, y = _Axis(tx[0], tx[-1], left, right), _Axis(ty[0], ty[-1], bottom, top)
    body = [f'<title>{escape(name)}: {xlabel} against the label</title>']
    for t in ty:
        body.append(f'<line x1="{left}" x2="{right}" y1="{y(t)}" y2="{y(t)}" stroke="#e5e5e5"/>'
                    f'<text x="{left - 6}" y="{y(t) + 4}" text-anchor="end" fill="#333">{_label(t)}</text>')
    if px.size <= MAX_POINTS:
        body += [f'<circle cx="{x(a)}" cy="{y(b)}" r="2.5" fill="{col}" fill-opacity="0.5"/>'
                 for a, b in zip(px.tolist(), py.tolist())]
        note = f"n={px.size}"
    else:
        nx, ny = 64, 48
        counts, ex, ey = np.histogram2d(px, py, bins=[nx, ny], range=[[tx[0], tx[-1]], [ty[0], ty[-1]]])
        peak = math.log1p(counts.max())
        w, h = (right - left) / nx, (bottom - top) / ny
        for i, j in zip(*np.nonzero(counts)):
            o = 0.12 + 0.88 * math.log1p(counts[i, j]) / peak
            body.append(f'<rect x="{x(ex[i]):.1f}" y="{y(ey[j + 1]):.1f}" width="{w:.1f}" height="{h:.1f}" '
                        f'fill="{col}" fill-opacity="{o:.2f}"/>')
        note = f"n={px.size} (density)"
    body += _x_axis(x, tx, bottom, top, xlabel)
    body.append(f'<text x="16" y="{(top + bottom) / 2}" transform="rotate(-90 16 {(top + bottom) / 2})" '
                'text-anchor="middle" fill="#333">label (mos)</text>')
    body.append(f'<text x="{right}" y="{top + 12}" text-anchor="end" fill="#555">{escape(_short(name))}, {note}</text>')
    return _svg(bottom + 40, body, f"{name}: {xlabel} against the label", width=right + 20)


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]
