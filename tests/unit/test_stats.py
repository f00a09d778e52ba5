"""torchmos.stats and `torchmos compare`: every number against scipy or numpy, computed
independently here; pairing, unpaired and unscored ids, grouping, errors, the CLI."""

from __future__ import annotations

import csv
import doctest
import importlib
import json
import math
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st

from torchmos import cli
from torchmos import stats as S
from torchmos._stats_core import _inversions

COLUMNS = ["id", "path", "model", "score", "duration_s", "sample_rate"]


def write_scores(path: Path, ids, scores, model="distillmos", **extra) -> Path:
    """A score file as `torchmos score` writes it, plus ``extra`` columns (lists)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS + list(extra))
        for k, (i, s) in enumerate(zip(ids, scores)):
            w.writerow([i, f"{i}.wav", model, s, 2.0, 16000] + [v[k] for v in extra.values()])
    return path


def systems(n=60, k=3, seed=0, rounding=None):
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 0.6, n)
    rows = [base + 0.1 * j + rng.normal(0, 0.3, n) for j in range(k)]
    return [np.round(r, rounding) if rounding is not None else r for r in rows]


# ----------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["BCa", "percentile"])
@pytest.mark.parametrize("case", ["normal", "skewed", "rounded", "tiny"])
def test_bootstrap_ci_is_scipys_with_the_same_seed(case, method):
    rng = np.random.default_rng(11)
    x = {"normal": rng.normal(3, 1, 37), "skewed": rng.exponential(1.0, 200),
         "rounded": np.round(rng.normal(3, 0.5, 60), 1), "tiny": np.array([2.5, 3.0, 4.5])}[case]
    ours = S.bootstrap_ci(x, n_resamples=4000, seed=5, method=method)
    ref = st.bootstrap((x,), np.mean, n_resamples=4000, method=method, rng=np.random.default_rng(5))
    np.testing.assert_allclose(ours, tuple(ref.confidence_interval), rtol=1e-10)


def test_bootstrap_ci_with_another_seed_agrees_within_monte_carlo_error():
    x = np.random.default_rng(2).gamma(2.0, 1.0, 150)
    ours = np.array(S.bootstrap_ci(x, n_resamples=20000, seed=1))
    ref = st.bootstrap((x,), np.mean, n_resamples=20000, rng=np.random.default_rng(99)).confidence_interval
    assert np.abs(ours - np.array(tuple(ref))).max() < 0.02 * (ref.high - ref.low) + 1e-3
    assert ours[0] < x.mean() < ours[1]


def test_bootstrap_ci_edge_cases():
    assert S.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert all(math.isnan(v) for v in S.bootstrap_ci([3.0]))
    with pytest.raises(ValueError, match="n_resamples"):
        S.bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        S.bootstrap_ci([1.0, 2.0], confidence=95)


def test_compare_intervals_are_scipys_paired_bootstrap():
    a, b, c = systems(n=45)
    res = S.compare({"a": dict(enumerate(a)), "b": dict(enumerate(b)), "c": dict(enumerate(c))},
                    n_resamples=3000, seed=7)
    for s, x in zip(res.systems, (a, b, c)):
        ref = st.bootstrap((x,), np.mean, n_resamples=3000, rng=np.random.default_rng(7)).confidence_interval
        np.testing.assert_allclose(s.ci, tuple(ref), rtol=1e-9)
        assert s.mean == pytest.approx(x.mean()) and s.std == pytest.approx(x.std(ddof=1))
    data = {"a": a, "b": b, "c": c}
    for p in res.pairs:
        x, y = data[p.a], data[p.b]
        ref = st.bootstrap((x, y), lambda u, v, axis: np.mean(v - u, axis=axis), paired=True, n_resamples=3000,
                           rng=np.random.default_rng(7)).confidence_interval
        np.testing.assert_allclose(p.ci, tuple(ref), rtol=1e-9)
        assert p.diff == pytest.approx(np.mean(y - x))


# ----------------------------------------------------------------------------- Wilcoxon


def _differences(case: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    return {
        "exact n=10": rng.normal(0.3, 1, 10),
        "exact n=50": rng.normal(0.2, 1, 50),
        "normal n=51": rng.normal(0.2, 1, 51),
        "flips: ties n=12": np.round(rng.normal(0.3, 1, 12), 0),
        "flips: zeros n=13": np.r_[0.0, 0.0, rng.normal(0.5, 1, 11)],
        "normal: ties n=14": np.round(rng.normal(0.3, 1, 14), 0),
        "normal: ties and zeros n=300": np.round(rng.normal(0.1, 1, 300), 1),
        "normal n=5000": rng.normal(0.02, 1, 5000),
        "exact n=1": np.array([0.7]),
        "exact: one-sided n=8": np.abs(rng.normal(0, 1, 8)) + 0.1,
    }[case]


@pytest.mark.parametrize("case", ["exact n=10", "exact n=50", "normal n=51", "flips: ties n=12",
                                  "flips: zeros n=13", "normal: ties n=14", "normal: ties and zeros n=300",
                                  "normal n=5000", "exact n=1", "exact: one-sided n=8"])
def test_wilcoxon_is_scipys_default(case):
    d = _differences(case)
    ours = S.wilcoxon(d)
    ref = st.wilcoxon(d)  # zero_method="wilcox", correction=False, method="auto"
    assert ours.statistic == pytest.approx(float(ref.statistic), abs=1e-9)
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)
    # the same numbers with scipy's method named explicitly (robust to a change of default)
    explicit = {"exact": "exact", "exact-flips": st.PermutationMethod(n_resamples=20000),
                "normal": "asymptotic"}[ours.method]
    assert ours.method == case.split(" ")[0].rstrip(":").replace("flips", "exact-flips")
    assert ours.pvalue == pytest.approx(float(st.wilcoxon(d, method=explicit).pvalue), rel=1e-9)
    assert ours.n == np.count_nonzero(d)


def test_wilcoxon_of_two_samples_is_of_their_difference():
    x, y = systems(n=30, k=2, seed=3)
    assert S.wilcoxon(x, y).pvalue == pytest.approx(float(st.wilcoxon(x, y).pvalue), rel=1e-9)
    assert S.wilcoxon(x, y).pvalue == S.wilcoxon(y, x).pvalue


def test_wilcoxon_all_zero_and_bad_input():
    assert S.wilcoxon(np.zeros(20)).pvalue == 1.0
    with pytest.raises(ValueError, match="finite"):
        S.wilcoxon(np.array([1.0, np.nan]))


# ----------------------------------------------------------------------------- Holm


def _holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure run as written: test the smallest p at alpha/m, the
    next at alpha/(m-1), ..., stop at the first that fails."""
    order = np.argsort(p)
    rejected = np.zeros(p.size, dtype=bool)
    for step, i in enumerate(order):
        if p[i] > alpha / (p.size - step):
            break
        rejected[i] = True
    return rejected


@pytest.mark.parametrize("seed", range(5))
def test_holm_adjusted_p_is_the_smallest_level_that_rejects(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(0, 0.2, 7) ** 2, 4)  # rounded: ties included
    adjusted = np.array(S.holm(p))
    for alpha in np.linspace(0.0005, 0.3, 600):
        np.testing.assert_array_equal(adjusted <= alpha + 1e-12, _holm_rejects(p, alpha))


def test_holm_leaves_nan_out_of_the_family():
    adjusted = S.holm([0.01, float("nan"), 0.02])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


# ----------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("n, rounding", [(2, None), (7, 0), (300, 1), (4000, 2), (4000, None)])
def test_correlations_are_scipys(n, rounding):
    rng = np.random.default_rng(n)
    x = rng.normal(3, 1, n)
    y = x + rng.normal(0, 1, n)
    if rounding is not None:
        x, y = np.round(x, rounding), np.round(y, rounding)
    assert S.pearson(x, y) == pytest.approx(st.pearsonr(x, y).statistic, abs=1e-12)
    if n > 2:
        assert S.spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert S.kendall_tau(x, y) == pytest.approx(st.kendalltau(x, y).statistic, abs=1e-12)


def test_inversions_count_as_brute_force():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3, 17, 64, 100):
        v = rng.integers(0, 6, n)
        brute = sum(int(v[i] > v[j]) for i in range(n) for j in range(i + 1, n))
        assert _inversions(v) == brute


def test_constant_labels_give_nan_correlations():
    a = S.agreement(np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0]))
    assert a.n == 3 and math.isnan(a.pearson) and math.isnan(a.kendall)


# ----------------------------------------------------------------------------- compare


def test_pairing_unpaired_and_unscored_ids(tmp_path):
    a = write_scores(tmp_path / "a.csv", ["u1", "u2", "u3", "u4"], [3.0, 2.5, 4.0, 3.5])
    b = write_scores(tmp_path / "b.csv", ["u4", "u2", "u1", "u9", "u3"], [3.9, 2.5, 3.1, 1.0, ""])
    res = S.compare([a, b], n_resamples=500)
    assert res.ids == ["u1", "u2", "u4"]  # common to both, in the first file's order
    assert res.unpaired == {"a": ["u3"], "b": ["u9"]}
    assert res.unscored == {"a": [], "b": ["u3"]}
    np.testing.assert_array_equal(res.scores, [[3.0, 2.5, 3.5], [3.1, 2.5, 3.9]])
    p = res.pairs[0]
    assert (p.b_better, p.a_better, p.ties) == pytest.approx((2 / 3, 0.0, 1 / 3))
    assert "u3" in res.format() and "u9" in res.format()


def test_win_shares_follow_the_models_direction(tmp_path):
    # scoreq-ref-natural is a distance: lower is better
    a = write_scores(tmp_path / "a.csv", ["x", "y", "z"], [0.5, 0.4, 0.3], model="scoreq-ref-natural")
    b = write_scores(tmp_path / "b.csv", ["x", "y", "z"], [0.2, 0.6, 0.1], model="scoreq-ref-natural")
    res = S.compare([a, b], n_resamples=200)
    assert res.higher_is_better is False and res.direction_known
    assert (res.pairs[0].b_better, res.pairs[0].a_better) == pytest.approx((2 / 3, 1 / 3))
    assert "lower is better" in res.format()
    flipped = S.compare([a, b], n_resamples=200, higher_is_better=True)
    assert (flipped.pairs[0].b_better, flipped.pairs[0].a_better) == pytest.approx((1 / 3, 2 / 3))


def test_unknown_model_assumes_higher_and_says_so():
    res = S.compare({"a": {"u": 1.0, "v": 2.0}, "b": {"u": 2.0, "v": 2.5}}, n_resamples=100)
    assert res.higher_is_better and not res.direction_known
    assert "assumed" in res.format()


def test_all_pairs_holm_and_baseline(tmp_path):
    rows = systems(n=40, k=4, seed=5)
    data = {f"s{k}": dict(enumerate(r)) for k, r in enumerate(rows)}
    res = S.compare(data, n_resamples=300)
    assert [(p.a, p.b) for p in res.pairs] == [("s0", "s1"), ("s0", "s2"), ("s0", "s3"), ("s1", "s2"),
                                               ("s1", "s3"), ("s2", "s3")]
    raw = [float(st.wilcoxon(rows[int(p.b[1])], rows[int(p.a[1])]).pvalue) for p in res.pairs]
    np.testing.assert_allclose([p.wilcoxon_p for p in res.pairs], raw, rtol=1e-9)
    np.testing.assert_allclose([p.holm_p for p in res.pairs], S.holm(raw), rtol=1e-9)
    for p in res.pairs:
        a, b = rows[int(p.a[1])], rows[int(p.b[1])]
        assert (p.b_better, p.a_better, p.ties) == (np.mean(b > a), np.mean(b < a), np.mean(b == a))
    base = S.compare(data, n_resamples=300, baseline="s2")
    assert [(p.a, p.b) for p in base.pairs] == [("s2", "s0"), ("s2", "s1"), ("s2", "s3")]
    with pytest.raises(ValueError, match="baseline 'nope'"):
        S.compare(data, baseline="nope")


def test_grouping_by_condition(tmp_path):
    a, b = systems(n=90, k=2, seed=8)
    ids = [f"u{i}" for i in range(90)]
    cond = [["clean", "noisy", "reverb"][i % 3] for i in range(90)]
    fa = write_scores(tmp_path / "a.csv", ids, a, condition=cond)
    fb = write_scores(tmp_path / "b.csv", ids, b, condition=cond)
    res = S.compare([fa, fb], by="condition", n_resamples=2000, seed=3)
    assert [g.value for g in res.groups] == ["clean", "noisy", "reverb"]
    family = []
    for k, g in enumerate(res.groups):
        mask = np.array(cond) == g.value
        assert g.n == mask.sum()
        ref = st.bootstrap((a[mask], b[mask]), lambda u, v, axis: np.mean(v - u, axis=axis), paired=True,
                           n_resamples=2000, rng=np.random.default_rng([3, k + 1])).confidence_interval
        np.testing.assert_allclose(g.pairs[0].ci, tuple(ref), rtol=1e-9)
        assert g.systems[1].mean == pytest.approx(b[mask].mean())
        family.append(float(st.wilcoxon(b[mask], a[mask]).pvalue))
    np.testing.assert_allclose([g.pairs[0].holm_p for g in res.groups], S.holm(family), rtol=1e-9)
    assert "by condition" in res.format()


def test_cli_compare_by_condition_is_the_python_result(tmp_path, capsys):
    a, b = systems(n=60, k=2, seed=9)
    ids = [f"u{i}" for i in range(60)]
    cond = [["clean", "noisy"][i % 2] for i in range(60)]
    files = [str(write_scores(tmp_path / "a.csv", ids, a, condition=cond)),
             str(write_scores(tmp_path / "b.csv", ids, b, condition=cond))]
    assert cli.main(["compare", *files, "--by", "condition", "--json", "--resamples", "500", "--seed", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = S.compare(files, by="condition", n_resamples=500, seed=2).to_dict()
    assert out == json.loads(json.dumps(ref))
    assert [g["value"] for g in out["groups"]] == ["clean", "noisy"] and all(g["n"] == 30 for g in out["groups"])
    assert cli.main(["compare", *files, "--by", "condition", "--resamples", "300"]) == 0
    assert "by condition" in capsys.readouterr().out


def test_grouping_errors(tmp_path):
    fa = write_scores(tmp_path / "a.csv", ["u1", "u2"], [3, 4], condition=["x", "y"])
    fb = write_scores(tmp_path / "b.csv", ["u1", "u2"], [3, 4], condition=["x", "z"])
    with pytest.raises(ValueError, match="'u2' has condition 'y' in a but 'z' in b"):
        S.compare([fa, fb], by="condition")
    plain = write_scores(tmp_path / "c.csv", ["u1", "u2"], [3, 4])
    with pytest.raises(ValueError, match="c.csv: no column 'condition'"):
        S.compare([fa, plain], by="condition")
    many = [str(i) for i in range(S.MAX_GROUPS + 1)]
    fm = write_scores(tmp_path / "m.csv", many, np.ones(len(many)), condition=many)
    with pytest.raises(ValueError, match="distinct values"):
        S.compare([fm, fm], names=["x", "y"], by="condition")


@pytest.mark.parametrize("content, message", [
    ("id,score\nu1,3.0\nu1,3.5\n", r"f.csv:3: id 'u1' is already on line 2"),
    ("id,score\nu1,abc\n", r"f.csv:2: score 'abc' is not a number"),
    ("id,score,mos\nu1,3.0,good\n", r"f.csv:2: mos 'good' is not a number"),
    ("name,value\nu1,3.0\n", r"f.csv: needs the columns 'id' and 'score'"),
    ("id,score\n,3.0\n", r"f.csv:2: a row without an id"),
    ("id,score,model\nu1,3,distillmos\nu2,3,vqscore\n", r"several models \(distillmos, vqscore\)"),
    ("id,score\nu1,\n", r"f.csv: no scored utterances"),
])
def test_bad_files_are_named_with_the_line(tmp_path, content, message):
    f = tmp_path / "f.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        S.read_scores(f)


def test_a_csv_saved_with_a_byte_order_mark_reads(tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes("id,score\r\nu1,3.5\r\n".encode("utf-8-sig"))
    assert S.read_scores(f).ids == ["u1"]


def test_different_models_are_refused(tmp_path):
    a = write_scores(tmp_path / "a.csv", ["u"], [3.0], model="distillmos")
    b = write_scores(tmp_path / "b.csv", ["u"], [3.0], model="vqscore")
    with pytest.raises(ValueError, match="different models"):
        S.compare([a, b])


def test_model_filter_jsonl_and_utt2pmos(tmp_path):
    j = tmp_path / "s.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [
        {"id": "u1", "model": "distillmos", "score": 3.0}, {"id": "u1", "model": "vqscore", "score": 0.7},
        {"id": "u2", "model": "distillmos", "score": None}, {"id": "u3", "model": "distillmos", "score": 4.0}]) + "\n")
    f = S.read_scores(j, model="distillmos")
    assert f.ids == ["u1", "u3"] and f.unscored == ["u2"] and f.model == "distillmos"
    u = tmp_path / "utt2pmos"
    u.write_text("u1 3.500000\nu3 2.000000\n\n")
    g = S.read_scores(u)
    assert g.ids == ["u1", "u3"] and g.scores.tolist() == [3.5, 2.0] and g.model is None
    res = S.compare([j, u], model="distillmos", n_resamples=100)
    assert res.pairs[0].diff == pytest.approx(((3.5 - 3.0) + (2.0 - 4.0)) / 2)
    (tmp_path / "bad").write_text("u1 3.0 extra\n")
    with pytest.raises(ValueError, match=r"bad:1: expected 'utt score'"):
        S.read_scores(tmp_path / "bad")


def test_names_from_files_and_collisions(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = write_scores(tmp_path / "x" / "scores.csv", ["u", "v"], [1, 2])
    b = write_scores(tmp_path / "y" / "scores.csv", ["u", "v"], [2, 3])
    assert [s.name for s in S.compare([a, b], n_resamples=50).systems] == ["x/scores", "y/scores"]
    assert [s.name for s in S.compare([a, b], names=["A", "B"], n_resamples=50).systems] == ["A", "B"]
    with pytest.raises(ValueError, match="same name"):
        S.compare([a, b], names=["A", "A"])
    with pytest.raises(ValueError, match="no utterance id is common"):
        S.compare({"a": {"u": 1.0}, "b": {"v": 1.0}})


def test_agreement_is_scipys_over_the_labelled_rows(tmp_path):
    rng = np.random.default_rng(4)
    s = np.round(rng.normal(3, 0.7, 80), 3)
    mos = np.round(s + rng.normal(0, 0.5, 80), 1)
    labels = [f"{m}" if k % 5 else "" for k, m in enumerate(mos)]
    f = write_scores(tmp_path / "a.csv", [f"u{k}" for k in range(80)], s, mos=labels)
    a = S.compare([f, f], names=["a", "b"], n_resamples=100).agreement["a"]
    keep = np.array([bool(v) for v in labels])
    assert a.n == keep.sum()
    assert a.pearson == pytest.approx(st.pearsonr(s[keep], mos[keep]).statistic, abs=1e-12)
    assert a.spearman == pytest.approx(st.spearmanr(s[keep], mos[keep]).statistic, abs=1e-12)
    assert a.kendall == pytest.approx(st.kendalltau(s[keep], mos[keep]).statistic, abs=1e-12)


def test_the_example_in_the_docs_prints_what_the_docs_show():
    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    code = re.search(r"```python\n(from torchmos.stats import compare\n.*?)```", page, re.S).group(1)
    shown = re.search(r"<!-- compare-example -->\n```text\n(.*?)```", page, re.S).group(1)
    namespace: dict = {}
    exec(compile(code.replace("print(result.format())", "out = result.format()"), "docs/cli.md", "exec"), namespace)
    assert namespace["out"] + "\n" == shown


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def two_files(tmp_path) -> list[str]:
    a, b = systems(n=30, k=2, seed=9, rounding=3)
    ids = [f"u{i}" for i in range(30)]
    return [str(write_scores(tmp_path / "base.csv", ids, a)), str(write_scores(tmp_path / "new.csv", ids[1:], b[1:]))]


def test_cli_compare_json_is_the_python_result(two_files, capsys):
    assert cli.main(["compare", *two_files, "--json", "--resamples", "800", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = S.compare(two_files, n_resamples=800, seed=4).to_dict()
    assert out == json.loads(json.dumps(ref))
    assert out["unpaired"] == {"base": ["u0"], "new": []}
    assert out["pairs"][0]["a"] == "base" and out["n_resamples"] == 800


def test_cli_compare_text(two_files, capsys):
    assert cli.main(["compare", *two_files, "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    assert "new - base" in out and "Holm" in out and "u0" in out and "95% CI" in out


@pytest.mark.parametrize("extra, message", [
    ([], "two or more score files"),
    (["missing.csv"], "no such score file"),
])
def test_cli_compare_usage_errors(two_files, capsys, extra, message):
    argv = ["compare", two_files[0], *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_stats_loads_only_when_asked_for():
    code = ("import sys, torchmos, torchmos.cli\n"
            "try:\n    torchmos.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torchmos.stats' not in sys.modules and 'torchmos.report' not in sys.modules\n"
            "import torchmos.stats\nassert 'scipy' not in sys.modules and 'matplotlib' not in sys.modules\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["torchmos.stats", "torchmos._stats_core", "torchmos._score_table",
                                  "torchmos._svg", "torchmos.report"])
def test_docstring_examples(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
