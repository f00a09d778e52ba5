"""Ray Data: MOSPredictor in ``map_batches`` on a local Ray cluster (2 CPUs), against
one-process torchmos.functional: paths and arrays, numpy and pandas batches, bad rows as
error rows, one model load per actor."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs Ray Data: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="needs Ray Data: pip install -e '.[ray]'")

import torchmos.functional as F  # noqa: E402
from tests.helpers import engine_corpus  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters.ray import MOSPredictor  # noqa: E402

TOL = 1e-5
# One local Ray cluster at a time: the module's tests share one pytest-xdist worker (the
# integration lanes run with --dist loadgroup), not two clusters of 2 CPUs on 2 cores.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    c = engine_corpus(tmp_path_factory.mktemp("ray-corpus"))
    return {**c, "ref": dict(zip(c["good"], c["ref"]))}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def pool(n: int):
    return ray.data.ActorPoolStrategy(size=n)


def check_rows(rows: list[dict], corpus: dict, column: str = "distillmos") -> None:
    by_path = {r["path"]: r for r in rows}
    assert sorted(by_path) == sorted(corpus["good"] + corpus["bad"])  # every row, once
    for p in corpus["good"]:
        assert by_path[p]["error"] is None, by_path[p]["error"]
        assert abs(by_path[p][column] - corpus["ref"][p]) <= TOL, (p, by_path[p][column], corpus["ref"][p])
    for p in corpus["bad"]:
        r = by_path[p]
        assert r[column] is None or math.isnan(r[column]), r
        assert r["error"] and Path(p).name in r["error"], r


@pytest.mark.parametrize("batch_format", ["numpy", "pandas"])
def test_paths_score_like_functional_and_bad_rows_become_errors(cluster, corpus, batch_format):
    paths = corpus["good"] + corpus["bad"]
    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos"}, compute=pool(1),
                          batch_size=3, batch_format=batch_format).take_all()
    check_rows(rows, corpus)


def test_read_audio_arrays_and_a_renamed_column(cluster, corpus):
    # Ray's own reader: (channels, samples) float32 "amplitude" and a "sample_rate" column
    ds = ray.data.read_audio(corpus["good"], include_paths=True)
    rows = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos", "audio_column": "amplitude",
                                                              "column": "mos"},
                          compute=pool(1), batch_size=2).take_all()
    assert len(rows) == len(corpus["good"])
    for r in rows:
        assert r["error"] is None and "distillmos" not in r
        assert abs(r["mos"] - corpus["ref"][r["path"]]) <= TOL, r["path"]


def test_arrays_at_one_given_rate_and_int16_pcm(cluster):
    clips = [synth.speech_like(s, 8000, seed=i) for i, s in enumerate([0.7, 1.1, 0.9])]
    pcm = [(c.numpy() * 32767).astype(np.int16) for c in clips]
    items = [{"id": f"u{i}", "audio": x} for i, x in enumerate(pcm)] + [{"id": "tiny", "audio": pcm[0][:100]}]
    ds = ray.data.from_items(items)
    rows = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos", "audio_column": "audio",
                                                              "sample_rate": 8000, "id_column": "id"},
                          compute=pool(1), batch_size=4).take_all()
    by_id = {r["id"]: r for r in rows}
    for i, x in enumerate(pcm):
        want = float(F.distillmos(audio.to_float(x), fs=8000)[0])
        assert by_id[f"u{i}"]["error"] is None and abs(by_id[f"u{i}"]["distillmos"] - want) <= TOL
    assert math.isnan(by_id["tiny"]["distillmos"]) and "tiny" in by_id["tiny"]["error"]


def test_the_model_loads_once_per_actor(cluster, corpus, tmp_path):
    log = str(tmp_path / "events.log")

    class Counting(MOSPredictor):  # defined here, so Ray ships it to the actors by value
        def __init__(self, **kw):
            import torchmos.models

            real = torchmos.models.load

            def counted(*a, **k):
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} load\n")
                return real(*a, **k)

            torchmos.models.load = counted
            super().__init__(**kw)

        def __call__(self, batch):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} batch\n")
            return super().__call__(batch)

    paths = corpus["good"] * 3
    # one block per row, held by the driver: the two actors take both CPUs, and no read
    # task is left waiting for one
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    rows = ds.map_batches(Counting, fn_constructor_kwargs={"model": "distillmos"}, compute=pool(2),
                          batch_size=1).take_all()
    assert sorted(r["path"] for r in rows) == sorted(paths)
    assert all(abs(r["distillmos"] - corpus["ref"][r["path"]]) <= TOL for r in rows)
    events = [line.split() for line in Path(log).read_text().splitlines()]
    loads = [pid for pid, what in events if what == "load"]
    batches = [pid for pid, what in events if what == "batch"]
    assert len(batches) == len(paths)
    assert len(loads) == len(set(loads)) <= 2, events  # at most one load in each actor
    assert set(batches) <= set(loads), events  # every actor that scored had loaded (once)


def test_a_second_model_keeps_the_first_ones_errors(cluster, corpus):
    paths = corpus["good"] + corpus["bad"]
    ds = ray.data.from_items([{"path": p} for p in paths])
    first = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos", "column": "a"},
                           compute=pool(1), batch_size=4)
    rows = first.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos", "column": "b"},
                             compute=pool(1), batch_size=4).take_all()
    for r in rows:
        if r["path"] in corpus["good"]:
            assert r["error"] is None and r["a"] == pytest.approx(r["b"], abs=TOL)
        else:
            assert r["error"].count(Path(r["path"]).name) >= 2, r  # one message from each model


def test_configuration_errors_fail_fast_with_the_column_named():
    pred = MOSPredictor(model="distillmos")
    with pytest.raises(KeyError, match="no column 'path'.*audio_column"):
        pred({"amplitude": np.zeros((1, 16000), np.float32)})
    with pytest.raises(KeyError, match="sample_rate"):
        MOSPredictor(model="distillmos", audio_column="amplitude")({"amplitude": np.zeros((1, 16000), np.float32)})
    with pytest.raises(ValueError, match="reference"):
        MOSPredictor(model="scoreq-ref-natural")
    with pytest.raises(KeyError, match="unknown|no model|not-a-model"):
        MOSPredictor(model="not-a-model")
