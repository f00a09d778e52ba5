"""Text and number formatting of a :class:`torchmos.stats.Comparison` (``torchmos compare``)
and of its cells in the HTML report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# The results are torchmos.stats' dataclasses (Comparison, SystemStats, PairStats); this
# module does not import that one, which imports this one.
SHOWN_IDS = 5  # ids listed inline; --json lists them all


def num(x: float, digits: int = 3, sign: bool = False) -> str:
    """A number for a table; ``n/a`` for nan."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci(c: tuple[float, float], digits: int = 3, sign: bool = False) -> str:
    return "n/a" if math.isnan(c[0]) else f"[{num(c[0], digits, sign)}, {num(c[1], digits, sign)}]"


def pvalue(p: float) -> str:
    """A p-value: three decimals, or two significant digits below 0.001."""
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def share(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > SHOWN_IDS else ''})"


def system_rows(systems: Sequence[Any], pct: int) -> list[list[str]]:
    rows = [["system", "n", "mean", f"{pct}% CI", "median", "std"]]
    for s in systems:
        rows.append([s.name, str(s.n), num(s.mean), ci(s.ci), num(s.median), num(s.std)])
    return rows


def pair_rows(pairs: Sequence[Any], pct: int, label: str = "") -> list[list[str]]:
    rows = [[*([label] if label else []), "pair", "mean diff", f"{pct}% CI", "Wilcoxon p", "Holm p",
             "better: b / a / ties"]]
    for p in pairs:
        rows.append([*([p.group or ""] if label else []), f"{p.b} - {p.a}", num(p.diff, sign=True),
                     ci(p.ci, sign=True), pvalue(p.wilcoxon_p), pvalue(p.holm_p),
                     f"{share(p.b_better)} / {share(p.a_better)} / {share(p.ties)}"])
    return rows


def describe(c: Any) -> str:
    """One line on the inputs and the direction, one on the methods."""
    pct = round(100 * c.confidence)
    direction = "higher is better" if c.higher_is_better else "lower is better"
    if not c.direction_known:
        direction += " (assumed: no known model; pass --lower-is-better for distances)"
    model = f" (model {c.model})" if c.model else ""
    head = f"{len(c.systems)} systems, {len(c.ids)} utterances paired by id; {direction}{model}"
    if len(c.systems) == 1:
        head = head.replace("1 systems", "1 system").replace(" paired by id", "")
    n_tests = len(c.pairs)
    how = (f"{pct}% {c.method} bootstrap intervals ({c.n_resamples} resamples of the utterances, seed {c.seed})")
    if n_tests:
        how += (f"; two-sided Wilcoxon signed-rank p-values, Holm-adjusted over {n_tests} "
                f"pair{'s' if n_tests > 1 else ''}")
    return f"{head}\n{how}"


def format_comparison(c: Any) -> str:
    pct = round(100 * c.confidence)
    parts = [describe(c), table(system_rows(c.systems, pct))]
    if c.pairs:
        parts.append(table(pair_rows(c.pairs, pct)) + "\n(mean diff = b - a over the paired utterances; "
                     "'better' counts utterances in the score's direction)")
    if c.groups:
        rows = [[c.by or "group", "n", *[s.name for s in c.systems]]]
        for g in c.groups:
            rows.append([g.value, str(g.n), *[f"{num(s.mean)} {ci(s.ci)}" for s in g.systems]])
        parts.append(f"by {c.by}: mean [{pct}% CI]\n" + table(rows))
        if c.pairs:
            family = [p for g in c.groups for p in g.pairs]
            parts.append(f"by {c.by}: pairs (Holm over all {len(family)} tests)\n"
                         + table(pair_rows(family, pct, label=c.by or "group")))
    if c.agreement:
        rows = [["system", "n labelled", "Pearson", "Spearman", "Kendall"]]
        for name, a in c.agreement.items():
            rows.append([name, str(a.n), num(a.pearson), num(a.spearman), num(a.kendall)])
        parts.append("agreement with the labels (mos column)\n" + table(rows))
    notes = [f"  {name}: {id_list(ids)}" for name, ids in c.unpaired.items() if ids]
    if notes:
        parts.append("unpaired ids (not scored by every system; left out of the comparison):\n" + "\n".join(notes))
    notes = [f"  {name}: {id_list(ids)}" for name, ids in c.unscored.items() if ids]
    if notes:
        parts.append("unscored rows (empty or non-finite score):\n" + "\n".join(notes))
    return "\n\n".join(parts)
