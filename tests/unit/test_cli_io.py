"""`torchmos score` reads in background workers: same rows as in-process, bad files named,
a dying worker survived, Ctrl-C forwarded, long files read in the main process, and a
bounded read-ahead (``torchmos.audio.loader``)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import torchmos.functional as F
from torchmos import audio, cli, synth
from torchmos.audio import loader

RATES = [16000, 22050, 44100, 8000]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Eleven good files at four rates, one all-zero, one NaN and one that is not audio."""
    d = tmp_path_factory.mktemp("io")
    for i in range(11):
        fs = RATES[i % 4]
        sf.write(d / f"c{i:02d}.wav", synth.speech_like(0.6 + 0.1 * i, fs, seed=i).numpy(), fs, subtype="PCM_16")
    sf.write(d / "c04z.wav", np.zeros(16000, np.int16), 16000)
    sf.write(d / "c07n.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    (d / "c09g.wav").write_bytes(b"RIFF....not a wav at all")
    return d


def rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["score", *argv, "-q"])
    return rc, capsys.readouterr().err


def test_workers_give_the_rows_of_the_in_process_reader(folder, tmp_path, capsys):
    outs = {}
    for w in ("0", "1", "2"):
        out = tmp_path / f"w{w}.csv"
        rc, err = run(capsys, str(folder), "-o", str(out), "--batch-size", "3", "--workers", w)
        assert rc == 1, err  # the NaN and the garbage file fail; the job goes on
        assert "12 scored, 2 failed" in err, err
        for bad in ("c07n.wav", "c09g.wav"):
            assert f"torchmos: skipped: {folder / bad}: " in err and f"FAILED {folder / bad}: " in err
        assert f"torchmos: warning: {folder / 'c04z.wav'}: the clip is all zeros" in err  # from a worker
        assert "Traceback" not in err
        outs[w] = rows(out)
    ids = [r["id"] for r in outs["0"]]
    assert ids == sorted(ids) and len(ids) == 12  # input order (find_audio sorts the folder)
    for w in ("1", "2"):
        assert [r["id"] for r in outs[w]] == ids
        assert [r["sample_rate"] for r in outs[w]] == [r["sample_rate"] for r in outs["0"]]
        assert [float(r["score"]) for r in outs[w]] == pytest.approx([float(r["score"]) for r in outs["0"]],
                                                                     abs=1e-5)
    x, sr = sf.read(folder / "c02.wav", dtype="float32")
    want = float(F.distillmos(torch.from_numpy(x), fs=sr))
    assert float(next(r for r in outs["2"] if r["id"] == "c02")["score"]) == pytest.approx(want, abs=1e-5)


def test_a_worker_that_dies_is_survived_and_its_file_named(folder, tmp_path, capsys):
    """A pipe entry that kills the process reading it (its shell's parent: the worker)."""
    scp = tmp_path / "wav.scp"
    lines = [f"u{i:02d} {folder / f'c{i:02d}.wav'}" for i in range(8)]
    lines.insert(4, "killer kill -9 $PPID |")
    scp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.csv"
    rc, err = run(capsys, str(scp), "-o", str(out), "--batch-size", "2", "--workers", "2")
    assert rc == 1, err
    failed = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED utterance 'killer': the reading process died"), err
    assert [r["id"] for r in rows(out)] == [f"u{i:02d}" for i in range(8)]


def test_a_batch_lost_with_its_dead_worker_is_read_again(folder, monkeypatch):
    """A worker that dies after queueing a batch leaves the main process a handle it cannot
    fetch (``ConnectionResetError`` from the tensor's file descriptor, seen on CI): that
    batch is read again, as when the DataLoader reports the death itself."""
    real = loader._loader
    calls = []

    def flaky(batches, reader, workers, prefetch):
        calls.append(len(batches))
        it = real(batches, reader, workers, prefetch)
        if len(calls) == 1:  # the first loader: one batch, then the lost one
            yield next(it)
            raise ConnectionResetError(104, "Connection reset by peer")
        yield from it

    monkeypatch.setattr(loader, "_loader", flaky)
    items = [(i, audio.AudioEntry(f"c{i:02d}", str(folder / f"c{i:02d}.wav"))) for i in range(6)]
    got = [it for b in loader.read_batches(items, loader.Reader(target_fs=16000), batch_size=2, workers=1) for it in b]
    assert [it.index for it in got] == list(range(6)) and all(it.error is None for it in got)
    assert len(calls) > 1  # a loader was started again after the loss


def test_ctrl_c_while_a_worker_reads_ends_the_run_resumably(folder, tmp_path, capsys, monkeypatch):
    real = audio.AudioEntry.load

    def load(self, *args, **kwargs):  # runs in the worker (forked with this patch)
        if self.source.endswith("c06.wav"):
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(audio.AudioEntry, "load", load)
    files = [str(folder / f"c{i:02d}.wav") for i in range(11)]
    out = tmp_path / "s.csv"
    rc, err = run(capsys, *files, "-o", str(out), "--batch-size", "2", "--workers", "1")
    assert rc == 130, err
    assert "6 scored, 0 failed" in err and "rerun the same command with --resume" in err
    monkeypatch.setattr(audio.AudioEntry, "load", real)
    rc, err = run(capsys, *files, "-o", str(out), "--batch-size", "2", "--workers", "1", "--resume")
    assert rc == 0 and "resumed: 6 already in" in err, err
    assert [Path(r["path"]).name for r in rows(out)] == [f"c{i:02d}.wav" for i in range(11)]


def test_long_files_are_read_in_the_main_process_with_their_bar(folder, tmp_path, capsys, monkeypatch):
    main_pid, pids = os.getpid(), []
    real = audio.AudioEntry.load

    def spy(self, *args, **kwargs):
        pids.append(os.getpid())  # only this process's list is seen here
        return real(self, *args, **kwargs)

    monkeypatch.setattr(audio.AudioEntry, "load", spy)
    files = [str(folder / f"c{i:02d}.wav") for i in range(8)]
    rc, err = run(capsys, *files, "-o", str(tmp_path / "a.csv"), "--batch-size", "2", "--workers", "1")
    assert rc == 0, err
    assert pids == []  # every file was read by the worker
    monkeypatch.setattr(cli._InFileProgress, "LONG", 1)  # every file is "long" now
    rc, err = run(capsys, *files, "-o", str(tmp_path / "b.csv"), "--batch-size", "2", "--workers", "1")
    assert rc == 0, err
    assert pids == [main_pid] * 8
    assert rows(tmp_path / "a.csv") == rows(tmp_path / "b.csv")


@pytest.mark.parametrize("value", ["-1", "two"])
def test_workers_must_be_auto_or_a_count(folder, capsys, value):
    rc, err = run(capsys, str(folder), "--workers", value)
    assert rc == 2 and "--workers must be auto or a number 0 or more" in err


def test_auto_workers_read_beside_an_accelerator_only():
    from torchmos.cli_score import _workers

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert _workers("auto", 16, 8, None, gpu) == 0  # one or two batches: nothing to overlap
    assert _workers("auto", 17, 8, None, gpu) == loader.default_workers() >= 1
    assert _workers("auto", 1000, 8, None, cpu) == 0  # the model's threads use every core
    assert _workers("auto", 1000, 8, None) == 0
    assert _workers("3", 5, 8, None, cpu) == 3


class _Logged(loader.Reader):
    """A reader that notes every index it reads in a file (workers are other processes)."""

    def __init__(self, log: str) -> None:
        super().__init__(target_fs=16000)
        self.log = log

    def __call__(self, index, entry, **kw):
        with open(self.log, "a") as f:
            f.write(f"{index}\n")
        return super().__call__(index, entry, **kw)


def test_read_ahead_is_bounded(folder, tmp_path):
    log = tmp_path / "read.log"
    log.touch()
    entries = audio.find_audio([folder / f"c{i:02d}.wav" for i in range(11)]) * 4
    items = list(enumerate(entries))
    it = loader.read_batches(items, _Logged(str(log)), batch_size=1, workers=1, prefetch=1)
    first = next(it)
    assert first[0].index == 0 and first[0].clip is not None
    time.sleep(2.0)  # the worker reads ahead as far as it may
    ahead = len(log.read_text().split())
    # one batch handed over, one in the hand-over queue, one held by the thread, and
    # workers x prefetch = 1 in the DataLoader: never the 44 of the list
    assert 2 <= ahead <= 5, ahead
    got = [first] + list(it)
    assert [b[0].index for b in got] == list(range(len(items)))
    it.close()
