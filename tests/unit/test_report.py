"""torchmos.report and `torchmos report`: a self-contained page, with the right utterances
listed and playable, the right numbers shown, and a bounded size for 100,000 utterances.
(The page in a real browser: tests/integrations/test_integration_report_browser.py.)"""

from __future__ import annotations

import base64
import csv
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import scipy.stats as st
import soundfile as sf

from torchmos import cli, synth
from torchmos.report import render, write_report
from torchmos.stats import compare

N = 12


class Page(HTMLParser):
    """The tags of a page, and its tables under each ``<h3>`` (cell texts)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._heading: str | None = None
        self._in_h3 = False
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "h3":
            self._in_h3, self._heading = True, ""
        elif tag == "h2":
            self._heading = None  # tables under an <h2> alone are not collected
        elif tag == "tr" and self._heading is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_h3 = False
            self.tables[self._heading] = []
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._heading].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_h3:
            self._heading += data
        elif self._cell is not None:
            self._cell.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def scores_csv(path: Path, ids, scores, paths, model="distillmos", **extra) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "model", "score", *extra])
        for k, i in enumerate(ids):
            w.writerow([i, paths[k], model, scores[k], *[v[k] for v in extra.values()]])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Two systems' clips (short wavs) and score files with mos and condition columns."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    ids = [f"spk1/utt{i:02d}" for i in range(N)]
    cond = [["clean", "noisy"][i % 2] for i in range(N)]
    out = {"root": root, "ids": ids, "cond": cond}
    for k, name in enumerate(["base", "new"]):
        paths = []
        for i, uid in enumerate(ids):
            wav = root / name / f"{uid}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, synth.speech_like(0.25, 16000, seed=100 * k + i).numpy(), 16000, subtype="PCM_16")
            paths.append(str(wav))
        scores = np.round(rng.normal(3.0 + 0.3 * k, 0.5, N), 4)
        mos = np.round(scores + rng.normal(0, 0.4, N), 2)
        out[name] = scores_csv(root / f"{name}.csv", ids, scores, paths, mos=mos, condition=cond)
        out[f"{name}_scores"], out[f"{name}_mos"], out[f"{name}_paths"] = scores, mos, paths
    return out


def test_page_is_self_contained_and_links_every_listed_clip(corpus, tmp_path):
    out = write_report([corpus["base"], corpus["new"]], tmp_path / "site" / "report.html", top=3, by="condition",
                       n_resamples=500)
    html = out.read_text()
    page = Page(html)
    assert not page.all("script") and not page.all("link") and not page.all("img") and not page.all("iframe")
    external = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href") and v and
                re.match(r"^(https?:)?//", v)]
    assert external == []
    assert len(page.all("svg")) >= 3  # distributions, the paired forest plot, one per pair by condition
    players = page.all("audio")
    assert 12 <= len(players) <= 2 * (3 + 3) + 2 * (3 + 3)
    all_paths = set(corpus["base_paths"]) | set(corpus["new_paths"])
    for a in players:
        assert a["preload"] == "none"
        target = (out.parent / unquote(a["src"])).resolve()
        assert target.is_file() and str(target) in all_paths
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_worst_and_best_lists_and_their_players(corpus, tmp_path):
    out = write_report([corpus["base"], corpus["new"]], tmp_path / "r.html", top=4, n_resamples=200)
    page = Page(out.read_text())
    for name in ("base", "new"):
        scores = corpus[f"{name}_scores"]
        order = np.argsort(scores, kind="stable")
        for label, picked in (("worst", order[:4]), ("best", order[::-1][:4])):
            rows = page.tables[f"{name}: {label}"][1:]
            assert [r[0] for r in rows] == [corpus["ids"][k] for k in picked]
            assert [r[1] for r in rows] == [f"{scores[k]:.3f}" for k in picked]
    # the players of the "base: worst" table play those clips, in order
    html = out.read_text()
    section = html[html.index("base: worst"):html.index("base: best")]
    srcs = [unquote(s) for s in re.findall(r'<audio [^>]*src="([^"]+)"', section)]
    expected = [corpus["base_paths"][k] for k in np.argsort(corpus["base_scores"], kind="stable")[:4]]
    assert [str((out.parent / s).resolve()) for s in srcs] == expected


def test_largest_differences_list_both_players(corpus, tmp_path):
    out = write_report([corpus["base"], corpus["new"]], tmp_path / "r.html", top=2, n_resamples=200)
    page = Page(out.read_text())
    d = corpus["new_scores"] - corpus["base_scores"]
    best_new = [corpus["ids"][k] for k in np.argsort(d)[::-1][:2] if d[k] > 0]
    assert [r[0] for r in page.tables["new better than base"][1:]] == best_new


def test_lower_is_better_turns_the_lists_round(corpus, tmp_path):
    out = write_report([corpus["base"], corpus["new"]], tmp_path / "r.html", top=2, n_resamples=200,
                       higher_is_better=False)
    page = Page(out.read_text())
    highest = np.argsort(corpus["base_scores"], kind="stable")[::-1][:2]
    assert [r[0] for r in page.tables["base: worst"][1:]] == [corpus["ids"][k] for k in highest]


def test_agreement_and_condition_sections_show_the_numbers(corpus, tmp_path):
    res = compare([corpus["base"], corpus["new"]], by="condition", n_resamples=300)
    html = render(res, tmp_path, top=0)
    page = Page(html)
    assert "Agreement with the labels" in html and "By condition" in html
    r = st.pearsonr(corpus["new_scores"], corpus["new_mos"]).statistic
    tau = st.kendalltau(corpus["new_scores"], corpus["new_mos"]).statistic
    agreement = html[html.index("Agreement with the labels"):]
    row = next(r_ for r_ in re.findall(r"<tr>(.*?)</tr>", agreement) if r_.startswith("<td>new</td>"))
    assert f">{r:.3f}<" in row and f">{tau:.3f}<" in row
    per = page.tables["Pairs per condition (Holm over all 2 tests)"]
    assert [row[0] for row in per[1:]] == ["clean", "noisy"]
    assert not page.all("audio")  # top=0: no lists
    plain = render(compare([corpus["base"], corpus["new"]], n_resamples=100), tmp_path, top=0)
    assert "By condition" not in plain


def test_embedded_audio_is_the_files_bytes(corpus, tmp_path):
    out = write_report([corpus["base"], corpus["new"]], tmp_path / "r.html", top=1, embed_audio=True,
                       n_resamples=100)
    srcs = re.findall(r'<audio [^>]*src="([^"]+)"', out.read_text())
    assert srcs and all(s.startswith("data:audio/wav;base64,") for s in srcs)
    wavs = {Path(p).read_bytes() for p in corpus["base_paths"] + corpus["new_paths"]}
    assert all(base64.b64decode(s.split(",", 1)[1]) in wavs for s in srcs)


def test_ids_are_escaped_and_unplayable_paths_are_named(tmp_path):
    ids = ["<b>&x", "u2", "u3"]
    a = scores_csv(tmp_path / "a.csv", ids, [1.0, 2.0, 3.0], ["gone.wav", "sox u2.flac -t wav - |", ""])
    b = scores_csv(tmp_path / "b.csv", ids, [2.0, 2.5, 3.5], ["gone.wav", "gone.wav", "gone.wav"])
    html = write_report([a, b], tmp_path / "r.html", top=3, n_resamples=100).read_text()
    assert "<b>&x" not in html and "&lt;b&gt;&amp;x" in html
    assert "not found: gone.wav" in html and "a command, not a file" in html and "no path" in html
    assert "<audio" not in html


def test_cli_report(corpus, tmp_path, capsys):
    out = tmp_path / "r.html"
    argv = ["report", str(corpus["base"]), str(corpus["new"]), "-o", str(out), "--resamples", "200", "--top", "2"]
    assert cli.main(argv) == 0
    html = out.read_text()
    assert "By condition" in html  # every file has a condition column
    assert "torchmos report:" in capsys.readouterr().err
    assert cli.main([*argv, "--no-groups"]) == 0 and "By condition" not in out.read_text()
    assert cli.main(["report", str(corpus["base"]), "-o", str(out), "--resamples", "100"]) == 0
    assert "Paired comparison" not in out.read_text() and "base: worst" in out.read_text()
    assert cli.main([*argv, "--top", "500"]) == 2
    assert "top must be between 0 and 200" in capsys.readouterr().err


def test_a_report_over_100000_utterances_stays_small(tmp_path):
    n = 100_000
    rng = np.random.default_rng(1)
    ids = [f"set/utt{i:06d}" for i in range(n)]
    cond = np.array(["clean", "noise", "reverb", "codec"])[rng.integers(0, 4, n)].tolist()
    base = rng.normal(3.0, 0.6, n)
    files = []
    for k, name in enumerate(["A", "B"]):
        s = np.round(base + 0.05 * k + rng.normal(0, 0.3, n), 6)
        mos = np.round(base + rng.normal(0, 0.4, n), 2)
        files.append(scores_csv(tmp_path / f"{name}.csv", ids, s, [f"{name}/{i}.wav" for i in ids], mos=mos,
                                condition=cond))
    start, cpu = time.perf_counter(), time.process_time()
    out = write_report(files, tmp_path / "big.html", by="condition")  # 10,000 resamples, the default
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    size = out.stat().st_size
    print(f"\n100,000 utterances x 2 systems, 4 conditions, mos column: report in {seconds:.1f} s "
          f"({cpu:.1f} s of CPU), {size / 1e6:.2f} MB")
    assert size < 3e6
    html = out.read_text()
    assert html.count("<tr>") < 200 and "(density)" in html and html.count("<svg") < 12
