"""Hugging Face datasets: add_mos on real ``datasets.Dataset`` objects (paths, the Audio
feature, decoded dicts, an IterableDataset, two processes) against one-process
torchmos.functional."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets: pip install -e '.[datasets]'")

import torchmos.functional as F  # noqa: E402
from tests.helpers import engine_corpus  # noqa: E402
from torchmos import synth  # noqa: E402
from torchmos.adapters.datasets import add_mos  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return engine_corpus(tmp_path_factory.mktemp("hf-corpus"))


def test_paths_score_like_functional_and_bad_rows_become_errors(corpus):
    paths = corpus["good"] + corpus["bad"]
    ds = datasets.Dataset.from_dict({"audio": paths, "speaker": [f"s{i}" for i in range(len(paths))]})
    out = add_mos(ds, model="distillmos", batch_size=3)
    assert out.column_names == ["audio", "speaker", "distillmos", "error"]
    assert out.features["distillmos"] == datasets.Value("float64")
    scores, errors = out["distillmos"], out["error"]
    for i, want in enumerate(corpus["ref"]):
        assert errors[i] is None and abs(scores[i] - want) <= TOL, (i, scores[i], want, errors[i])
    for j, p in enumerate(corpus["bad"], len(corpus["good"])):
        assert scores[j] is None and f"row {j}" in errors[j] and Path(p).name in errors[j], errors[j]


def audio_feature_decodes() -> bool:
    """datasets 4+ decodes the Audio feature with torchcodec, which needs FFmpeg's libraries."""
    if int(datasets.__version__.split(".")[0]) < 4:
        return True  # decoded with soundfile
    try:
        from torchcodec.decoders import AudioDecoder

        AudioDecoder(synth_wav())
        return True
    except Exception:  # not installed, built for another torch, or no FFmpeg libraries
        return False


def synth_wav() -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, synth.speech_like(0.2, 16000).numpy(), 16000, format="WAV")
    return buf.getvalue()


@pytest.mark.skipif(not audio_feature_decodes(), reason=(
    "datasets 4+ decodes Audio with torchcodec, which is not installed or cannot load here (it needs "
    "FFmpeg's libraries, e.g. apt-get install libavcodec59 libavformat59 libavdevice59 libavfilter8 "
    "libswresample4 libswscale6, and a torchcodec built for this torch)"))
def test_audio_feature_decoded_at_any_rate(corpus):
    ds = datasets.Dataset.from_dict({"audio": corpus["good"]}).cast_column("audio", datasets.Audio())
    cell = ds[2]["audio"]  # the stereo 44.1 kHz file
    kind = "decoder" if hasattr(cell, "get_all_samples") else "dict"  # datasets 4+ (torchcodec) / 2-3
    out = add_mos(ds, model="distillmos", batch_size=2, column="mos")
    assert out["error"] == [None] * len(corpus["good"])
    assert np.allclose(out["mos"], corpus["ref"], atol=TOL, rtol=0), (kind, out["mos"], corpus["ref"])

    # decoded by datasets at 16 kHz: the same scores as torchmos.functional on what it decoded
    at16 = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))
    want = []
    for row in at16:
        a = row["audio"]
        x = a.get_all_samples().data.mean(0) if kind == "decoder" else torch.as_tensor(np.asarray(a["array"]))
        want.append(float(F.distillmos(x, fs=16000)[0]))
    got = add_mos(at16, batch_size=4)["distillmos"]
    assert np.allclose(got, want, atol=TOL, rtol=0), (got, want)


def test_decoded_dicts_and_an_iterable_dataset(corpus):
    rows = []
    for p in corpus["good"]:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        rows.append({"audio": {"array": x.T.copy(), "sampling_rate": sr}})  # (channels, samples)
    ds = datasets.Dataset.from_list(rows)
    got = add_mos(ds, batch_size=3)["distillmos"]
    assert np.allclose(got, corpus["ref"], atol=TOL, rtol=0)
    it = datasets.Dataset.from_dict({"audio": corpus["good"] + corpus["bad"][:1]}).to_iterable_dataset()
    out = list(add_mos(it, batch_size=2))
    assert [r["error"] is None for r in out] == [True] * len(corpus["good"]) + [False]
    assert np.allclose([r["distillmos"] for r in out[:-1]], corpus["ref"], atol=TOL, rtol=0)


def test_two_processes_each_load_the_model_once(corpus, tmp_path, monkeypatch):
    import torchmos.models

    log = tmp_path / "loads.log"
    real = torchmos.models.load

    def counted(*a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*a, **k)

    monkeypatch.setattr(torchmos.models, "load", counted)
    F._clear_cache()  # nothing for the workers to inherit from this process
    paths = corpus["good"] * 2
    out = add_mos(datasets.Dataset.from_dict({"audio": paths}), batch_size=1, num_proc=2)
    assert np.allclose(out["distillmos"], corpus["ref"] * 2, atol=TOL, rtol=0)
    loads = log.read_text().split()
    assert len(loads) == len(set(loads)) == 2, loads  # one load in each of the two processes
    assert str(os.getpid()) not in loads  # none in this one: the model is not shipped from here


def test_with_several_gpus_each_process_takes_its_own(corpus, tmp_path, monkeypatch):
    """num_proc=2 on a (pretended) two-GPU machine: datasets' rank reaches the adapter, and
    process r scores on cuda:r. The engine itself runs on the CPU here (there is no GPU):
    the test records the device each process asked for."""
    from torchmos.adapters import datasets as adapter

    log = tmp_path / "devices.log"
    real = adapter._engine

    def recorded(model, device, *rest):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {device}\n")
        return real(model, "cpu", *rest)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(adapter, "_engine", recorded)  # forked workers inherit both patches
    paths = corpus["good"] * 2
    out = add_mos(datasets.Dataset.from_dict({"audio": paths}), batch_size=1, num_proc=2)
    assert np.allclose(out["distillmos"], corpus["ref"] * 2, atol=TOL, rtol=0)
    by_pid: dict[str, set[str]] = {}
    for pid, device in (line.split() for line in log.read_text().splitlines()):
        by_pid.setdefault(pid, set()).add(device)
    assert sorted(d for devices in by_pid.values() for d in devices) == ["cuda:0", "cuda:1"], by_pid
    assert all(len(devices) == 1 for devices in by_pid.values()), by_pid  # one device per process


def test_a_second_model_keeps_the_first_ones_errors_and_dataset_dicts(corpus):
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"audio": corpus["good"][:2] + corpus["bad"][:1]}),
        "test": datasets.Dataset.from_dict({"audio": corpus["good"][2:]}),
    })
    out = add_mos(add_mos(ds, column="a", batch_size=2), column="b", batch_size=2)
    assert out["train"]["a"][:2] == pytest.approx(corpus["ref"][:2], abs=TOL)
    assert out["test"]["b"] == pytest.approx(corpus["ref"][2:], abs=TOL)
    err = out["train"]["error"][2]
    assert err.count("cannot be read") == 2, err  # one message from each model


def test_configuration_errors_fail_before_mapping(corpus):
    ds = datasets.Dataset.from_dict({"wav": corpus["good"][:1]})
    with pytest.raises(KeyError, match="no column 'audio'"):
        add_mos(ds)
    with pytest.raises(KeyError, match="unknown model"):
        add_mos(ds, model="not-a-model", audio_column="wav")
    with pytest.raises(ValueError, match="reference"):
        add_mos(ds, model="scoreq-ref-natural", audio_column="wav")
    with pytest.raises(ValueError, match="batch_size"):
        add_mos(ds, audio_column="wav", batch_size=0)
