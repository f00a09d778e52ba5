"""The numerics behind :mod:`torchmos.stats`, in numpy (scipy is not a dependency), and
the one home of the Pearson and Spearman correlations every part of torchmos uses
(computed by ``torchmetrics.functional``, in float64).

Each function computes what scipy's function of the same purpose computes, and the tests
compare them: :func:`bootstrap_ci` is ``scipy.stats.bootstrap`` (BCa by default, and with
the same seed the very same resamples), :func:`wilcoxon` is ``scipy.stats.wilcoxon`` with
its defaults, :func:`kendall_tau` is ``scipy.stats.kendalltau`` (tau-b), :func:`spearman`
and :func:`pearson` are ``spearmanr`` and ``pearsonr``'s statistics. :func:`holm` is Holm's
step-down adjustment.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

__all__ = ["WilcoxonResult", "bootstrap_ci", "holm", "kendall_tau", "pearson", "rankdata", "spearman",
           "wilcoxon"]

_NORMAL = NormalDist()
# Indices drawn at a time: the resamples of one chunk stay in the CPU's cache while every
# system gathers its values from them (a few MB, whatever the number of utterances).
_CHUNK = 1 << 18


def _ndtr(z: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _ndtri(p: float) -> float:
    """The standard normal quantile function."""
    return -math.inf if p <= 0 else math.inf if p >= 1 else _NORMAL.inv_cdf(p)


# ----------------------------------------------------------------------------- bootstrap


def resampled_means(rows: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of ``rows`` (k, n) over ``n_resamples`` paired resamples: (k, n_resamples).

    Resample ``b`` draws the utterances ``rng.integers(0, n, n)`` once for every row, so
    the rows stay paired; the draws are those of ``scipy.stats.bootstrap`` given the same
    generator (one ``(n_resamples, n)`` draw, taken here in chunks of the same stream).
    """
    k, n = rows.shape
    out = np.empty((k, n_resamples))
    per = max(1, _CHUNK // n)
    for start in range(0, n_resamples, per):
        b = min(per, n_resamples - start)
        idx = rng.integers(0, n, (b, n))
        for j in range(k):
            out[j, start:start + b] = np.take(rows[j], idx).mean(axis=1)
    return out


def interval(values: np.ndarray, boot: np.ndarray, confidence: float, method: str = "BCa") -> tuple[float, float]:
    """The confidence interval of the mean of ``values`` from its bootstrap means ``boot``.

    ``method="BCa"`` (bias-corrected and accelerated, Efron & Tibshirani 1993, 14.3; the
    acceleration from the jackknife, which for a mean is the sample's skewness term) or
    ``"percentile"``. A constant sample gives the point interval; fewer than two values
    give ``(nan, nan)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan, math.nan
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile', got {method!r}.")
    lo_hi = np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    if boot.min() == boot.max():  # every resample alike: the data are constant
        return float(boot[0]), float(boot[0])
    if method == "BCa":
        theta = values.mean()
        p0 = (np.count_nonzero(boot < theta) + np.count_nonzero(boot <= theta)) / (2 * boot.size)
        # theta outside the whole bootstrap distribution (a tiny sample): bound the bias
        # correction by the resolution of the resamples rather than return nan.
        p0 = min(max(p0, 0.5 / boot.size), 1 - 0.5 / boot.size)
        z0 = _ndtri(p0)
        dev = values - theta  # the jackknife of a mean, up to the factor 1 / (n - 1)
        den = float(np.sum(dev**2))
        accel = float(np.sum(dev**3)) / (6 * den**1.5) if den > 0 else 0.0
        for i, q in enumerate(lo_hi):
            z = z0 + _ndtri(q)
            lo_hi[i] = _ndtr(z0 + z / (1 - accel * z))
    low, high = np.quantile(boot, lo_hi)
    return float(low), float(high)


def bootstrap_ci(x: np.ndarray | list[float], *, n_resamples: int = 10_000, confidence: float = 0.95,
                 seed: int | np.random.Generator = 0, method: str = "BCa") -> tuple[float, float]:
    """A bootstrap confidence interval of the mean of ``x``.

    The same interval as ``scipy.stats.bootstrap((x,), np.mean, n_resamples=n_resamples,
    confidence_level=confidence, method=method, rng=np.random.default_rng(seed))``.

    >>> lo, hi = bootstrap_ci([3.1, 2.8, 3.5, 3.0, 3.3, 2.9, 3.6, 3.2], n_resamples=2000)
    >>> bool(lo < 3.175 < hi), round(hi - lo, 1)
    (True, 0.4)
    """
    values = np.asarray(x, dtype=np.float64).reshape(-1)
    if values.size < 2:
        return math.nan, math.nan
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    boot = resampled_means(values[None, :], _check_resamples(n_resamples), rng)[0]
    return interval(values, boot, _check_confidence(confidence), method)


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    return int(n_resamples)


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    return float(confidence)


# ----------------------------------------------------------------------------- ranks


def rankdata(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, ties share their mean rank) and the sizes of the tie groups.

    >>> rankdata(np.array([3.0, 1.0, 3.0, 2.0]))[0].tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    counts = np.diff(np.r_[starts, x.size])
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks, counts


# ----------------------------------------------------------------------------- Wilcoxon


@dataclass(frozen=True)
class WilcoxonResult:
    """The Wilcoxon signed-rank test of paired differences (two-sided).

    ``statistic`` is ``min(R+, R-)`` as scipy reports it; ``n`` counts the non-zero
    differences (zeros are dropped, Wilcoxon's convention); ``method`` says how the
    p-value was found: ``"exact"``, ``"exact-flips"`` (every sign flip, with ties or
    zeros) or ``"normal"`` (with the tie correction, no continuity correction).
    """

    statistic: float
    pvalue: float
    n: int
    method: str


def _flip_distribution(weights: np.ndarray) -> np.ndarray:
    """P(sum of the weights given a + sign = s) for s = 0..sum, each sign a fair coin."""
    pmf = np.zeros(int(weights.sum()) + 1)
    pmf[0] = 1.0
    for w in weights.tolist():
        shifted = np.zeros_like(pmf)
        shifted[w:] = pmf[:-w]
        pmf = 0.5 * (pmf + shifted)
    return pmf


def wilcoxon(x: np.ndarray, y: np.ndarray | None = None) -> WilcoxonResult:
    """The two-sided Wilcoxon signed-rank test of ``x - y`` (or of ``x``) against zero.

    As ``scipy.stats.wilcoxon`` with its defaults (``zero_method="wilcox"``,
    ``correction=False``, ``method="auto"``): with up to 50 differences, no ties and no
    zeros, the exact null distribution; with up to 13 and ties or zeros, every sign flip
    (exact too); otherwise the normal approximation with the tie correction. All
    differences zero gives p = 1 (scipy: nan).

    >>> r = wilcoxon(np.array([0.5, 1.25, -0.25, 2.0, 0.75]))
    >>> r.statistic, r.pvalue, r.method
    (1.0, 0.125, 'exact')
    """
    d = np.asarray(x, dtype=np.float64) - (0.0 if y is None else np.asarray(y, dtype=np.float64))
    d = d.reshape(-1)
    if d.size == 0 or np.isnan(d).any():
        raise ValueError("the Wilcoxon test needs one or more finite paired differences.")
    nonzero = d[d != 0]
    count = nonzero.size
    if count == 0:
        return WilcoxonResult(0.0, 1.0, 0, "exact")
    ranks, ties = rankdata(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    statistic = min(r_plus, count * (count + 1) / 2 - r_plus)
    has_ties = bool((ties > 1).any())
    if d.size <= 50 and not has_ties and count == d.size or d.size <= 13:
        pmf = _flip_distribution(np.rint(2 * ranks).astype(np.int64))  # half-ranks as integers
        k = round(2 * r_plus)
        p = 2 * min(pmf[k:].sum(), pmf[: k + 1].sum())
        method = "exact" if count == d.size and not has_ties else "exact-flips"
    else:
        mean = count * (count + 1) / 4
        var = (count * (count + 1) * (2 * count + 1) - float(np.sum(ties**3 - ties)) / 2) / 24
        p = math.erfc(abs(r_plus - mean) / math.sqrt(var) / math.sqrt(2.0))
        method = "normal"
    return WilcoxonResult(float(statistic), float(min(p, 1.0)), int(count), method)


# ----------------------------------------------------------------------------- Holm


def holm(pvalues: list[float] | np.ndarray) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the given order.

    ``nan`` entries (tests that could not be run) stay ``nan`` and do not count in the
    family.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.size, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


# ----------------------------------------------------------------------------- correlation


def _vector(v: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    v = v.detach().cpu() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
    return torch.as_tensor(v, dtype=torch.float64).flatten()


def _pair(a: Sequence[float] | np.ndarray | torch.Tensor,
          b: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _vector(a), _vector(b)
    if x.shape != y.shape:
        raise ValueError(f"a correlation needs two sequences of one length, got {len(x)} and {len(y)}.")
    return x, y


def pearson(x: Sequence[float] | np.ndarray | torch.Tensor, y: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Pearson's correlation (``torchmetrics.functional.pearson_corrcoef`` in float64; nan
    when either side is constant or has fewer than 2 values).

    >>> round(pearson(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])), 4)
    0.8
    >>> round(pearson([1, 2, 3], [2, 4, 7]), 4)
    0.9934
    """
    a, b = _pair(x, y)
    if len(a) < 2 or bool(a.min() == a.max()) or bool(b.min() == b.max()):
        return math.nan  # undefined: a constant side
    import torchmetrics.functional as tmf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant inputs: torchmetrics warns
        return float(tmf.pearson_corrcoef(a, b))


def spearman(x: Sequence[float] | np.ndarray | torch.Tensor, y: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Spearman's rank correlation: :func:`pearson` (torchmetrics) on average ranks (ties
    get their average rank; nan when either side is constant).

    Not ``torchmetrics.functional.spearman_corrcoef``: it adds 1e-6 to its denominator,
    which moved results by up to 7e-8 from ``scipy.stats.spearmanr`` in ``test_stats.py``.

    >>> spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 45]))
    1.0
    >>> round(spearman([1, 1, 2, 3], [1, 2, 3, 4]), 4)
    0.9487
    """
    a, b = _pair(x, y)
    return pearson(rankdata(a.numpy())[0], rankdata(b.numpy())[0])


def _pairs_tied(*keys: np.ndarray) -> int:
    """Pairs of items equal in every one of ``keys`` (all sorted together)."""
    n = keys[0].size
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    t = np.diff(np.r_[np.flatnonzero(new), n])
    return int(np.sum(t * (t - 1) // 2))


def _inversions(v: np.ndarray) -> int:
    """Pairs i < j with v[i] > v[j] for non-negative integers v: a bottom-up merge sort,
    each level vectorised (O(n log^2 n), numpy only)."""
    n = v.size
    v = v.astype(np.int64)
    span = int(v.max()) + 1 if n else 1
    pos = np.arange(n)
    total, w = 0, 1
    while w < n:
        block = pos // (2 * w)
        right = (pos // w) % 2 == 1
        keys = block * span + v
        left = keys[~right]  # sorted: each left half is a sorted run, blocks ascend
        rb = block[right]
        first = np.searchsorted(left, rb * span, side="left")
        not_greater = np.searchsorted(left, keys[right], side="right") - first
        in_block = np.searchsorted(left, (rb + 1) * span, side="left") - first
        total += int(np.sum(in_block - not_greater))
        keys.sort()  # merges every block in place (a block's keys share its offset)
        v = keys - block * span
        w *= 2
    return total


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties in either variable accounted for), in O(n log^2 n).

    >>> kendall_tau(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    0.6666666666666666
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = x.size
    if n < 2:
        return math.nan
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    pairs = n * (n - 1) // 2
    tied_x = _pairs_tied(xs)
    tied_xy = _pairs_tied(xs, ys)
    ys_sorted = np.sort(ys)
    tied_y = _pairs_tied(ys_sorted)
    if tied_x == pairs or tied_y == pairs:
        return math.nan
    dense = np.searchsorted(np.unique(ys_sorted), ys)
    discordant = _inversions(dense)
    difference = pairs - tied_x - tied_y + tied_xy - 2 * discordant
    return difference / math.sqrt((pairs - tied_x) * (pairs - tied_y))
