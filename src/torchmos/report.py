"""One self-contained HTML page to see and hear a comparison (``torchmos report``).

The page needs no network when opened: its CSS is inline, its plots are inline SVG drawn
by torchmos itself (no plotting library is needed), and the audio players link each clip
by its path relative to the page (or embed it, ``embed_audio=True``). It shows the score
distribution of every system, the paired comparison of :func:`torchmos.stats.compare`,
the breakdown by condition, the agreement with listening-test labels (a ``mos`` column),
the utterances where two systems differ most, and each system's worst and best
utterances with players. Its size does not grow with the number of utterances: plots
draw bins and intervals, and every list is bounded (``top``).

>>> import tempfile, pathlib
>>> from torchmos.report import write_report
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> a = {"u1": 3.1, "u2": 2.8, "u3": 3.5, "u4": 3.0}
>>> b = {"u1": 3.4, "u2": 3.0, "u3": 3.6, "u4": 3.3}
>>> page = write_report({"base": a, "new": b}, d / "report.html", n_resamples=1000)
>>> html = page.read_text()
>>> html.count("<svg") >= 2, "http://" in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
(True, False)
"""

from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from . import _stats_text as fmt
from . import _svg
from .stats import Comparison, PairStats, compare

__all__ = ["render", "write_report"]

MAX_TOP = 200  # the longest worst/best list
MAX_EMBED = 16 << 20  # a larger clip is linked even with embed_audio
MAX_FOREST_GROUPS = 40
MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
        ".opus": "audio/ogg", ".m4a": "audio/mp4", ".webm": "audio/webm"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0 auto;
max-width:1120px;padding:12px 20px 40px;line-height:1.4}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1.2em 0 .4em}.note{color:#555;font-size:.9em}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}svg.plot{width:100%;max-width:760px;height:auto;display:block}
.grid{display:flex;flex-wrap:wrap;gap:4px 28px}.grid svg.plot{max-width:400px}
audio{height:30px;width:210px;vertical-align:middle}.missing{color:#a33;font-size:.85em}
code{background:#f4f4f4;padding:0 3px}
"""


class _Audio:
    """``<audio>`` players for the listed clips: linked relative to the page, or embedded."""

    def __init__(self, out_dir: Path, embed: bool) -> None:
        self.out_dir, self.embed = out_dir.resolve(), embed

    def find(self, path: str, score_file: str | None) -> Path | None:
        """A clip's file: as written, else relative to the current folder (where
        ``torchmos score`` was run, usually), else to the score file's folder."""
        if not path or path.rstrip().endswith("|"):  # a wav.scp pipe: no file to play
            return None
        p = Path(path)
        tries = [p] if p.is_absolute() else [Path.cwd() / p, *([Path(score_file).parent / p] if score_file else [])]
        return next((t.resolve() for t in tries if t.is_file()), None)

    def player(self, path: str, score_file: str | None) -> str:
        found = self.find(path, score_file)
        if found is None:
            why = ("no path" if not path else "a command, not a file" if path.rstrip().endswith("|")
                   else "not found: " + escape(path))
            return f'<span class="missing">{why}</span>'
        if self.embed and found.stat().st_size <= MAX_EMBED:
            data = base64.b64encode(found.read_bytes()).decode("ascii")
            src = f"data:{MIME.get(found.suffix.lower(), 'application/octet-stream')};base64,{data}"
        else:
            try:
                src = quote(Path(os.path.relpath(found, self.out_dir)).as_posix())
            except ValueError:  # another drive (Windows): an absolute URL
                src = found.as_uri()
        return f'<audio controls preload="none" src="{src}" title="{escape(str(found.name))}"></audio>'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="wrap"><table><tr>{head}</tr>{body}</table></div>'


def _pair_table(pairs: list[PairStats], pct: int, group_label: str | None = None) -> str:
    rows = []
    for p in pairs:
        rows.append(([escape(p.group or "")] if group_label else []) + [
            escape(f"{p.b} - {p.a}"), str(p.n), fmt.num(p.diff, sign=True), fmt.ci(p.ci, sign=True),
            fmt.pvalue(p.wilcoxon_p), fmt.pvalue(p.holm_p), fmt.share(p.b_better), fmt.share(p.a_better),
            fmt.share(p.ties)])
    header = ([group_label] if group_label else []) + [
        "pair (b - a)", "n", "mean diff", f"{pct}% CI", "Wilcoxon p", "Holm p", "b better", "a better", "ties"]
    off = 1 if group_label else 0
    return _table(header, rows, {off + i for i in range(1, 9)})


def _score_label(c: Comparison) -> str:
    direction = "higher is better" if c.higher_is_better else "lower is better"
    return f"{c.model or 'score'} ({direction})"


def _shown_path(file: str | None, out_dir: Path) -> str:
    """A score file as the page names it: relative to the page's folder where possible."""
    if not file:
        return "(given in Python)"
    try:
        return Path(os.path.relpath(Path(file).resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return file


def _overview(c: Comparison, out_dir: Path) -> str:
    rows = []
    for f in c.files:
        rows.append([escape(f.name), escape(_shown_path(f.file, out_dir)), escape(f.model or "?"), str(len(f.ids)),
                     str(len(c.unscored.get(f.name, []))), str(len(c.unpaired.get(f.name, [])))])
    notes = ""
    for label, lists in (("unpaired (not scored by every system, left out of the comparison)", c.unpaired),
                         ("unscored (empty or non-finite score)", c.unscored)):
        for name, ids in lists.items():
            if ids:
                notes += f'<p class="note">{escape(name)}: {len(ids)} {label}: {escape(fmt.id_list(ids))}</p>'
    lines = fmt.describe(c).split("\n")
    return (f"<p>{escape(lines[0])}.<br><span class=\"note\">{escape(lines[1])}.</span></p>"
            + _table(["system", "file", "model", "scored", "unscored", "unpaired"], rows, {3, 4, 5}) + notes)


def _systems(c: Comparison) -> str:
    pct = round(100 * c.confidence)
    rows = [[escape(s.name), str(s.n), fmt.num(s.mean), fmt.ci(s.ci), fmt.num(s.median), fmt.num(s.std)]
            for s in c.systems]
    series = [(s.name, c.scores[k], s.mean, s.ci) for k, s in enumerate(c.systems)]
    plot = _svg.distributions(series, _score_label(c))
    return (f"<h2>Scores per system</h2>{plot}<p class=\"note\">Histograms over the paired utterances; dashed: "
            f"the mean; black bar: its {pct}% interval.</p>"
            + _table(["system", "n paired", "mean", f"{pct}% CI", "median", "std"], rows, {1, 2, 3, 4, 5}))


def _pairs(c: Comparison) -> str:
    if not c.pairs:
        return ""
    pct = round(100 * c.confidence)
    index = {s.name: k for k, s in enumerate(c.systems)}
    rows = [(f"{p.b} - {p.a}", p.diff, p.ci, _svg.colour(index[p.b])) for p in c.pairs]
    plot = _svg.forest(rows, f"mean paired difference b - a ({_score_label(c)})")
    return (f"<h2>Paired comparison</h2>{_pair_table(c.pairs, pct)}{plot}<p class=\"note\">b - a over the "
            f"utterances every system scored; intervals: {pct}% {c.method} bootstrap; p-values: two-sided Wilcoxon "
            f"signed-rank, Holm-adjusted over the {len(c.pairs)} pair(s). 'b better' counts utterances where b "
            "scores better in the score's direction.</p>")


def _groups(c: Comparison) -> str:
    if not c.groups:
        return ""
    pct = round(100 * c.confidence)
    rows = [[escape(g.value or "(empty)"), str(g.n)] + [f"{fmt.num(s.mean)} {fmt.ci(s.ci)}" for s in g.systems]
            for g in c.groups]
    html = (f"<h2>By {escape(c.by or '')}</h2><h3>Mean [{pct}% CI] per system</h3>"
            + _table([c.by or "group", "n"] + [s.name for s in c.systems], rows, {1}))
    if c.pairs:
        family = [p for g in c.groups for p in g.pairs]
        html += (f"<h3>Pairs per {escape(c.by or '')} (Holm over all {len(family)} tests)</h3>"
                 + _pair_table(family, pct, c.by or "group"))
        if len(c.groups) <= MAX_FOREST_GROUPS:
            for k, pair in enumerate(c.pairs):
                rows = [(g.value or "(empty)", g.pairs[k].diff, g.pairs[k].ci, _svg.colour(k)) for g in c.groups]
                html += _svg.forest(rows, f"{pair.b} - {pair.a} per {c.by}")
    return html


def _agreement(c: Comparison) -> str:
    if not c.agreement:
        return ""
    rows = [[escape(n), str(a.n), fmt.num(a.pearson), fmt.num(a.spearman), fmt.num(a.kendall)]
            for n, a in c.agreement.items()]
    plots = "".join(_svg.scatter(f.scores, f.mos, f.name, _svg.colour(k), _score_label(c))
                    for k, f in enumerate(c.files) if f.mos is not None)
    return ("<h2>Agreement with the labels</h2>"
            + _table(["system", "n labelled", "Pearson", "Spearman", "Kendall tau-b"], rows, {1, 2, 3, 4})
            + f'<div class="grid">{plots}</div><p class="note">Utterance level, over the rows with a '
            "<code>mos</code> value.</p>")


def _extremes(c: Comparison, audio: _Audio, top: int) -> str:
    html = f"<h2>Worst and best {top} utterances per system</h2>"
    for f in c.files:
        sides = []
        order = np.argsort(f.scores if c.higher_is_better else -f.scores, kind="stable")
        for label, picked in (("worst", order[:top]), ("best", order[::-1][:top])):
            rows = []
            for k in picked.tolist():
                row = [escape(f.ids[k]), fmt.num(float(f.scores[k]))]
                if f.mos is not None:
                    row.append(fmt.num(float(f.mos[k])))
                if f.groups is not None:
                    row.append(escape(f.groups[k]))
                row.append(audio.player(f.paths[k] if f.paths else "", f.file))
                rows.append(row)
            header = ["id", "score"] + (["mos"] if f.mos is not None else []) + (
                [c.by or "group"] if f.groups is not None else []) + ["listen"]
            sides.append(f"<div><h3>{escape(f.name)}: {label}</h3>"
                         + _table(header, rows, {1, 2} if f.mos is not None else {1}) + "</div>")
        html += f'<div class="grid">{"".join(sides)}</div>'
    return html


def _differences(c: Comparison, audio: _Audio, top: int) -> str:
    if not c.pairs:
        return ""
    index = {f.name: k for k, f in enumerate(c.files)}
    where = [dict(zip(f.ids, range(len(f.ids)))) for f in c.files]
    html = f"<h2>Largest differences ({top} per side)</h2>"
    for p in c.pairs:
        i, j = index[p.a], index[p.b]
        d = c.scores[j] - c.scores[i]
        gain = d if c.higher_is_better else -d  # > 0: b scores better
        order = np.argsort(gain, kind="stable")
        a_side = [k for k in order[:top].tolist() if gain[k] < 0]
        b_side = [k for k in order[::-1][:top].tolist() if gain[k] > 0]
        fa, fb = c.files[i], c.files[j]
        sides = []
        for label, picked in ((f"{p.a} better than {p.b}", a_side), (f"{p.b} better than {p.a}", b_side)):
            rows = []
            for k in picked:
                uid = c.ids[k]
                pa, pb = where[i][uid], where[j][uid]
                rows.append([escape(uid), fmt.num(float(c.scores[i][k])), fmt.num(float(c.scores[j][k])),
                             fmt.num(float(d[k]), sign=True),
                             audio.player(fa.paths[pa] if fa.paths else "", fa.file),
                             audio.player(fb.paths[pb] if fb.paths else "", fb.file)])
            if rows:
                sides.append(f"<div><h3>{escape(label)}</h3>" + _table(
                    ["id", p.a, p.b, f"{p.b} - {p.a}", f"listen: {p.a}", f"listen: {p.b}"], rows, {1, 2, 3}) + "</div>")
        html += f'<div class="grid">{"".join(sides)}</div>'
    return html


def render(c: Comparison, out_dir: str | os.PathLike = ".", *, top: int = 10, embed_audio: bool = False,
           title: str | None = None) -> str:
    """The report page of a comparison, with audio linked relative to ``out_dir``."""
    if not 0 <= top <= MAX_TOP:
        raise ValueError(f"top must be between 0 and {MAX_TOP}, got {top}.")
    from . import __version__

    title = title or "torchmos report: " + " vs ".join(s.name for s in c.systems)
    audio = _Audio(Path(out_dir), embed_audio)
    parts = [_overview(c, Path(out_dir)), _systems(c), _pairs(c), _groups(c), _agreement(c)]
    if top:
        parts += [_differences(c, audio, top), _extremes(c, audio, top)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>" + "".join(parts)
            + f'<p class="note">Made by torchmos {escape(__version__)} (<code>torchmos report</code>).</p>'
            "</body></html>\n")


def write_report(systems: Any, output: str | os.PathLike = "report.html", *, top: int = 10,
                 embed_audio: bool = False, title: str | None = None, **compare_options: Any) -> Path:
    """Compare ``systems`` (see :func:`torchmos.stats.compare`, which takes
    ``compare_options``) or take a finished :class:`~torchmos.stats.Comparison`, and write
    the page to ``output``; returns its path."""
    result = systems if isinstance(systems, Comparison) else compare(systems, **compare_options)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render(result, out.parent, top=top, embed_audio=embed_audio, title=title)
    out.write_text(page, encoding="utf-8")
    return out

