"""Paired comparison of systems scored on the same utterances (``torchmos compare``).

Two systems (TTS voices, enhancement models, codecs) scored on the same utterances are
compared utterance by utterance: the systems are paired by utterance id, and every id
that some system lacks is reported (:attr:`Comparison.unpaired`), never silently dropped.
For each system: the mean over the paired utterances with a bootstrap confidence interval.
For each pair (``b`` against ``a``, ``a`` the earlier one, or the ``baseline``): the mean
paired difference ``b - a`` with its bootstrap interval, the Wilcoxon signed-rank p-value,
Holm's adjustment over the pairs, and the shares of utterances where each system scores
better (in the predictor's direction: a distance is better when lower).

The bootstrap resamples utterances (all systems together, so every interval is paired),
10,000 times by default, seeded; the interval is BCa (bias-corrected and accelerated), as
``scipy.stats.bootstrap`` computes by default. With a grouping column (``by="condition"``)
every statistic is also computed per group, and Holm's adjustment then runs over all
groups' pairs together (one family).

>>> from torchmos.stats import compare
>>> base = {"u1": 3.1, "u2": 2.8, "u3": 3.5, "u4": 3.0, "u5": 2.6}
>>> new = {"u1": 3.4, "u2": 3.0, "u3": 3.6, "u4": 3.3, "u6": 4.0}
>>> res = compare({"base": base, "new": new}, n_resamples=2000)
>>> res.unpaired
{'base': ['u5'], 'new': ['u6']}
>>> pair = res.pairs[0]
>>> pair.a, pair.b, round(pair.diff, 3), pair.b_better, pair.wilcoxon_p
('base', 'new', 0.225, 1.0, 0.125)
>>> print(res.format())  # doctest: +ELLIPSIS
2 systems, 4 utterances paired by id; higher is better ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import hub
from ._score_table import ScoreFile, read_scores, system_names
from ._stats_core import (
    WilcoxonResult,
    bootstrap_ci,
    holm,
    interval,
    kendall_tau,
    pearson,
    resampled_means,
    spearman,
    wilcoxon,
)

__all__ = ["Agreement", "Comparison", "PairStats", "ScoreFile", "SystemStats", "WilcoxonResult", "agreement",
           "bootstrap_ci", "compare", "holm", "kendall_tau", "pearson", "read_scores", "spearman", "wilcoxon"]

MAX_GROUPS = 200  # a grouping column with more values is not a condition


@dataclass
class Agreement:
    """How a system's predictions agree with listening-test labels (``mos``)."""

    n: int
    pearson: float
    spearman: float
    kendall: float


@dataclass
class SystemStats:
    """One system's scores over the paired utterances (of one group, if grouped)."""

    name: str
    n: int
    mean: float
    ci: tuple[float, float]
    median: float
    std: float


@dataclass
class PairStats:
    """``b`` against ``a`` over the paired utterances: ``diff`` is the mean of ``b - a``."""

    a: str
    b: str
    n: int
    diff: float
    ci: tuple[float, float]
    wilcoxon_p: float
    wilcoxon_method: str
    holm_p: float
    b_better: float  # share of utterances where b scores better than a
    a_better: float
    ties: float
    group: str | None = None  # the grouping value, for the pairs of one group


@dataclass
class GroupStats:
    """The systems and pairs over the utterances of one value of the grouping column."""

    value: str
    n: int
    systems: list[SystemStats]
    pairs: list[PairStats]


@dataclass
class Comparison:
    """The result of :func:`compare`; :meth:`to_dict` is what ``--json`` prints."""

    systems: list[SystemStats]
    pairs: list[PairStats]
    ids: list[str]  # the paired utterances, in the first system's order
    scores: np.ndarray  # (systems, paired utterances)
    unpaired: dict[str, list[str]]
    unscored: dict[str, list[str]]
    agreement: dict[str, Agreement]
    files: list[ScoreFile] = field(repr=False)
    higher_is_better: bool = True
    direction_known: bool = True
    model: str | None = None
    by: str | None = None
    groups: list[GroupStats] = field(default_factory=list)
    groups_of_ids: list[str] | None = field(default=None, repr=False)
    confidence: float = 0.95
    n_resamples: int = 10_000
    seed: int = 0
    method: str = "BCa"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (nan as ``None``), without the per-utterance arrays."""
        out = {k: getattr(self, k) for k in ("model", "higher_is_better", "direction_known", "by", "confidence",
                                              "n_resamples", "seed", "method")}
        out["n_paired"] = len(self.ids)
        out["systems"] = [{**asdict(s), "file": f.file, "n_rows": len(f.ids)} for s, f in zip(self.systems, self.files)]
        out["pairs"] = [asdict(p) for p in self.pairs]
        out["groups"] = [asdict(g) for g in self.groups]
        out["agreement"] = {k: asdict(v) for k, v in self.agreement.items()}
        out["unpaired"] = self.unpaired
        out["unscored"] = self.unscored
        return _plain(out)

    def format(self) -> str:
        """The comparison as text tables (what ``torchmos compare`` prints)."""
        from ._stats_text import format_comparison

        return format_comparison(self)


def _plain(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def agreement(scores: np.ndarray, mos: np.ndarray) -> Agreement:
    """Pearson, Spearman and Kendall (tau-b) between predictions and labels, over the
    utterances that have a label (``mos`` not nan).

    >>> a = agreement(np.array([3.0, 3.5, 2.0, 4.1]), np.array([3.2, 3.9, 2.5, np.nan]))
    >>> a.n, round(a.pearson, 3), a.spearman, a.kendall
    (3, 0.982, 1.0, 1.0)
    """
    scores, mos = np.asarray(scores, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    keep = ~np.isnan(mos)
    x, y = scores[keep], mos[keep]
    return Agreement(int(x.size), pearson(x, y), spearman(x, y), kendall_tau(x, y))


def _load(systems: Any, names: Sequence[str] | None, by: str | None, model: str | None) -> list[ScoreFile]:
    if isinstance(systems, Mapping):
        names, systems = list(systems), list(systems.values())
    items = list(systems)
    if not items:
        raise ValueError("no systems to compare.")
    if names is not None and len(names) != len(items):
        raise ValueError(f"{len(names)} names for {len(items)} systems.")
    if names is None:
        names = system_names([s if isinstance(s, (str, os.PathLike)) else f"system{i + 1}"
                              for i, s in enumerate(items)])
        names = [s.name if isinstance(s, ScoreFile) else n for s, n in zip(items, names)]
    if len(set(names)) != len(names):
        raise ValueError(f"two systems have the same name ({', '.join(names)}).")
    files = []
    for name, s in zip(names, items):
        if isinstance(s, ScoreFile):
            files.append(s)
        elif isinstance(s, (str, os.PathLike)):
            files.append(read_scores(s, name=name, by=by, model=model))
        elif isinstance(s, Mapping):
            files.append(ScoreFile.from_mapping(name, s))
        else:
            raise TypeError(f"system {name!r}: give a score file, a ScoreFile or a mapping id -> score, "
                            f"not {type(s).__name__}.")
        if by and files[-1].groups is None:
            raise ValueError(f"system {name!r} has no {by!r} column to group by.")
    return files


def _direction(files: list[ScoreFile], higher_is_better: bool | None) -> tuple[str | None, bool, bool]:
    """(the model, higher is better, whether the direction is known)."""
    models = {f.model for f in files if f.model}
    if len(models) > 1:
        named = ", ".join(f"{f.name}: {f.model}" for f in files if f.model)
        raise ValueError(f"the systems were scored by different models ({named}); their scores are not "
                         "comparable. Score every system with the same model.")
    model = models.pop() if models else None
    if higher_is_better is not None:
        return model, bool(higher_is_better), True
    card = hub.CARDS.get(model) if model else None
    return model, (card.higher_is_better if card else True), card is not None


def _pairs(names: list[str], baseline: str | None) -> list[tuple[int, int]]:
    if baseline is None:
        return [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the systems ({', '.join(names)}).")
    b = names.index(baseline)
    return [(b, j) for j in range(len(names)) if j != b]


def _summaries(names: list[str], rows: np.ndarray, pairs: list[tuple[int, int]], higher: bool,
               rng: np.random.Generator, n_resamples: int, confidence: float,
               method: str) -> tuple[list[SystemStats], list[PairStats]]:
    """System and pair statistics over the utterances in ``rows`` (systems, n); Holm's
    adjustment is left to the caller (it knows the family)."""
    n = rows.shape[1]
    boot = resampled_means(rows, n_resamples, rng) if n >= 2 else None
    systems = []
    for k, name in enumerate(names):
        ci = interval(rows[k], boot[k], confidence, method) if boot is not None else (math.nan, math.nan)
        systems.append(SystemStats(name, n, float(rows[k].mean()), ci, float(np.median(rows[k])),
                                   float(rows[k].std(ddof=1)) if n > 1 else math.nan))
    out = []
    for i, j in pairs:
        d = rows[j] - rows[i]
        ci = interval(d, boot[j] - boot[i], confidence, method) if boot is not None else (math.nan, math.nan)
        test = wilcoxon(d)
        better = d > 0 if higher else d < 0
        worse = d < 0 if higher else d > 0
        out.append(PairStats(names[i], names[j], n, float(rows[j].mean() - rows[i].mean()), ci, test.pvalue,
                             test.method, math.nan, float(better.mean()), float(worse.mean()),
                             float((d == 0).mean())))
    return systems, out


def compare(systems: Any, *, names: Sequence[str] | None = None, by: str | None = None,
            baseline: str | None = None, model: str | None = None, n_resamples: int = 10_000,
            confidence: float = 0.95, seed: int = 0, method: str = "BCa",
            higher_is_better: bool | None = None) -> Comparison:
    """Compare systems scored on the same utterances (see the module's docstring).

    Args:
        systems: score files (CSV / JSON Lines as ``torchmos score`` writes them, or
            ``utt score`` files such as ESPnet's ``utt2pmos``), :class:`ScoreFile` objects
            or ``{id: score}`` mappings; a mapping ``{name: system}`` names them.
        names: the systems' names (default: the files' stems, made distinct).
        by: a grouping column (e.g. ``"condition"``): statistics per value as well.
        baseline: compare every system with this one only (default: every pair).
        model: keep only this model's rows (files holding several models).
        n_resamples, confidence, seed, method: the bootstrap (``"BCa"`` or ``"percentile"``).
        higher_is_better: the scores' direction (default: the model card's; higher when
            the model is unknown, which :attr:`Comparison.direction_known` says).
    """
    from ._stats_core import _check_confidence, _check_resamples

    n_resamples, confidence = _check_resamples(n_resamples), _check_confidence(confidence)
    files = _load(systems, names, by, model)
    model_name, higher, known = _direction(files, higher_is_better)
    names = [f.name for f in files]
    common = set(files[0].ids).intersection(*(f.ids for f in files[1:]))
    ids = [i for i in files[0].ids if i in common]
    if not ids:
        raise ValueError(f"no utterance id is common to all systems ({', '.join(names)}); they are paired by id.")
    unpaired = {f.name: [i for i in f.ids if i not in common] for f in files}
    position = [dict(zip(f.ids, range(len(f.ids)))) for f in files]
    take = [np.array([p[i] for i in ids]) for p in position]
    rows = np.stack([f.scores[t] for f, t in zip(files, take)])
    pairs = _pairs(names, baseline)
    by_ids = _group_of_ids(files, take, ids, by) if by else None
    values = sorted(set(by_ids)) if by_ids else []
    # The overall statistics and each group's are independent jobs, each with its own seeded
    # generator: run side by side (numpy releases the GIL), the results do not depend on it.
    jobs = [(rows, np.random.default_rng(seed))]
    if by_ids:
        where = np.array(by_ids, dtype=object)
        jobs += [(rows[:, where == v], np.random.default_rng([seed, g + 1])) for g, v in enumerate(values)]

    def run(job: tuple[np.ndarray, np.random.Generator]) -> tuple[list[SystemStats], list[PairStats]]:
        return _summaries(names, job[0], pairs, higher, job[1], n_resamples, confidence, method)

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        done = list(pool.map(run, jobs))
    sys_stats, pair_stats = done[0]
    for p, adj in zip(pair_stats, holm([p.wilcoxon_p for p in pair_stats])):
        p.holm_p = adj
    groups = []
    for value, (g_rows, _), (g_systems, g_pairs) in zip(values, jobs[1:], done[1:]):
        for p in g_pairs:
            p.group = value
        groups.append(GroupStats(value, g_rows.shape[1], g_systems, g_pairs))
    family = [p for g in groups for p in g.pairs]  # Holm over every group's pairs: one family
    for p, adj in zip(family, holm([p.wilcoxon_p for p in family])):
        p.holm_p = adj
    labels = {f.name: agreement(f.scores, f.mos) for f in files if f.mos is not None}
    return Comparison(sys_stats, pair_stats, ids, rows, unpaired, {f.name: f.unscored for f in files}, labels,
                      files, higher, known, model_name, by, groups, by_ids, confidence=confidence,
                      n_resamples=n_resamples, seed=seed, method=method)


def _group_of_ids(files: list[ScoreFile], take: list[np.ndarray], ids: list[str], by: str) -> list[str]:
    """The grouping value of each paired utterance, which every system must agree on."""
    values = [[f.groups[k] for k in t] for f, t in zip(files, take)]  # type: ignore[index]
    for f, v in zip(files[1:], values[1:]):
        for k, (x, y) in enumerate(zip(values[0], v)):
            if x != y:
                raise ValueError(f"utterance {ids[k]!r} has {by} {x!r} in {files[0].name} but {y!r} in "
                                 f"{f.name}; an utterance's {by} must be the same in every file.")
    distinct = len(set(values[0]))
    if distinct > MAX_GROUPS:
        raise ValueError(f"column {by!r} has {distinct} distinct values; grouping needs at most {MAX_GROUPS} "
                         "(a condition, not an id).")
    return values[0]
