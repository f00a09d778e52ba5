"""`torchmos score` under torchrun: the sharding, two CPU ranks (gloo) against one process,
a killed rank resumed, and rank 0 naming the shards that never finished."""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from torchmos import audio, cli_shard, synth
from torchmos.cli_rows import Stats

TORCHMOS = Path(sys.executable).with_name("torchmos")


# ----------------------------------------------------------------------------- shard()


@pytest.mark.parametrize("world", [1, 2, 3, 7, 40])
def test_shard_puts_every_item_once_in_input_order_and_balances_durations(world):
    rng = random.Random(world)
    costs = [rng.uniform(0.5, 20.0) for _ in range(37)]
    shards = cli_shard.shard(costs, world)
    assert len(shards) == world
    assert sorted(i for s in shards for i in s) == list(range(37))
    assert all(s == sorted(s) for s in shards)
    assert cli_shard.shard(costs, world) == shards  # deterministic
    assert cli_shard.shard(list(costs), world) == shards
    loads = [sum(costs[i] for i in s) for s in shards]
    if world < 37:  # the largest shard is off the ideal by at most one item
        assert max(loads) - sum(costs) / world <= max(costs) + 1e-9
        assert max(loads) - min(loads) <= max(costs) + 1e-9


def test_shard_balances_by_duration_not_by_count():
    shards = cli_shard.shard([10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    assert shards == [[0], list(range(1, 11))]


def test_unknown_durations_count_as_the_mean():
    assert cli_shard.costs([2.0, None, 4.0]) == [2.0, 3.0, 4.0]
    assert cli_shard.costs([None, None]) == [1.0, 1.0]


def test_context_reads_the_launchers_variables():
    assert cli_shard.context({}) is None
    assert cli_shard.context({"WORLD_SIZE": "1", "RANK": "0"}) is None
    d = cli_shard.context({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world, d.local_rank, d.local_world) == (3, 4, 1, 2)
    with pytest.raises(cli_shard.UsageError, match="RANK=4 is not within WORLD_SIZE=4"):
        cli_shard.context({"WORLD_SIZE": "4", "RANK": "4"})


@pytest.mark.parametrize("gpus, local_rank, spec, want", [
    (2, 1, "cuda", "cuda:1"), (2, 3, "cuda", "cuda:1"), (1, 1, "cuda", "cuda:0"), (4, 2, "auto", "cuda:2"),
    (2, 1, "cuda:0", "cuda:0"), (2, 1, "cpu", "cpu"), (0, 1, "auto", "cpu"), (2, None, "cuda", "cuda")])
def test_each_rank_takes_its_local_gpu(monkeypatch, gpus, local_rank, spec, want):
    """Under torchrun ``--device cuda`` (or auto) is LOCAL_RANK's GPU (modulo the GPUs the
    node has); a device the user named is kept; without torchrun nothing changes."""
    import torch

    from torchmos import cli_score

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    dist = None if local_rank is None else cli_shard.context(
        {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": "4"})
    assert cli_score._device_spec(spec, dist) == want


# ----------------------------------------------------------------------------- rank 0's wait and merge


def _entries(n: int) -> list[audio.AudioEntry]:
    return [audio.AudioEntry(f"u{i}", f"/nowhere/u{i}.wav") for i in range(n)]


def _complete(output: str, rank: int, world: int, token: str, rows: list[dict]) -> None:
    base = f"{output}.part-{rank:05d}-of-{world:05d}"
    head = {"token": token, "rank": rank, "rows": len(rows), "kept": 0}
    Path(base + ".jsonl").write_text("".join(json.dumps(r) + "\n" for r in [head, *rows]))


def _row(i: int, score: float = 3.0) -> dict:
    return {"i": i, "id": f"u{i}", "path": f"/nowhere/u{i}.wav", "model": "distillmos", "score": score,
            "duration_s": 1.0, "sample_rate": 16000}


class _Writes:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return len(s)

    def flush(self) -> None:
        self.writes.append("<flush>")


def test_a_ranks_note_is_one_write_of_a_whole_line(monkeypatch):
    """Ranks share one stderr; under PYTHONUNBUFFERED each write is its own system call, so a
    line written in two pieces (``print`` writes the newline apart) can be split by another
    rank's line (CI saw ``...1 to score.torchmos: [rank 1/2] ...`` on one line)."""
    err = _Writes()
    monkeypatch.setattr(sys, "stderr", err)
    cli_shard.note(cli_shard.Dist(1, 2, 1, 2), "4 file(s) in this shard")
    assert err.writes == ["torchmos: [rank 1/2] 4 file(s) in this shard\n", "<flush>"]


def test_rank0_names_a_shard_whose_rank_stopped(tmp_path):
    out = str(tmp_path / "s.csv")
    dist = cli_shard.Dist(0, 3, 0, 3)
    _complete(out, 0, 3, "tok", [_row(0)])
    _complete(out, 2, 3, "old-run", [_row(2)])  # an earlier run's part is not this run's
    Path(f"{out}.part-00001-of-00003.partial.jsonl").write_text(json.dumps(_row(1)) + "\n")
    Path(f"{out}.part-00001-of-00003.alive").write_text("tok 7\n")  # and it never changes again
    problems = cli_shard.wait_for_parts(out, dist, "tok", stale_s=0.5, poll_s=0.05)
    assert len(problems) == 2, problems
    assert problems[0].startswith("rank 1: no sign of life") and "holds 1 row(s)" in problems[0]
    assert problems[1].startswith("rank 2: no sign of life") and "holds 0 row(s)" in problems[1]
    assert not os.path.exists(out)  # nothing merged


def test_merge_writes_input_order_once_each_and_refuses_a_duplicate(tmp_path):
    out = str(tmp_path / "s.csv")
    dist, entries = cli_shard.Dist(0, 2, 0, 2), _entries(5)
    _complete(out, 0, 2, "t", [_row(0, 1.0), _row(3, 4.0)])
    _complete(out, 1, 2, "t", [_row(1, 2.0), {"i": 2, "id": "u2", "error": "/nowhere/u2.wav: broken"}, _row(4, 5.0)])
    stats, failures = Stats(), []
    assert cli_shard.merge(out, dist, entries, set(), False, stats, failures) == 0
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == ["u0", "u1", "u3", "u4"]
    assert [float(r["score"]) for r in got] == [1.0, 2.0, 4.0, 5.0]
    assert stats.n == 4 and failures == [("/nowhere/u2.wav", "/nowhere/u2.wav: broken")]
    assert not list(tmp_path.glob("s.csv.part-*"))  # the parts are gone once merged
    _complete(out, 0, 2, "t", [_row(0), _row(1)])
    _complete(out, 1, 2, "t", [_row(1), _row(2), _row(3), _row(4)])
    with pytest.raises(RuntimeError, match="in more than one part"):
        cli_shard.merge(out, dist, entries, set(), False, Stats(), [])
    _complete(out, 0, 2, "t", [_row(0)])
    _complete(out, 1, 2, "t", [_row(2), _row(3), _row(4)])
    with pytest.raises(RuntimeError, match="u1.wav: in no part"):
        cli_shard.merge(out, dist, entries, set(), False, Stats(), [])


# ----------------------------------------------------------------------------- torchrun, 2 CPU ranks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tr")
    for i in range(9):
        fs = (16000, 22050, 8000)[i % 3]
        sf.write(d / f"f{i}.wav", synth.speech_like(0.5 + 0.4 * i, fs, seed=i).numpy(), fs, subtype="PCM_16")
    return d


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchmos(*argv: str, nproc: int | None = None) -> subprocess.CompletedProcess:
    cmd = [str(TORCHMOS)] if TORCHMOS.exists() else [sys.executable, "-m", "torchmos.cli"]
    if nproc:
        run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_port()}"]
        cmd = run + (["--no-python", *cmd] if TORCHMOS.exists() else ["-m", "torchmos.cli"])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["TORCHMOS_SHARD_STALE_S"] = "60"
    env["PYTHONUNBUFFERED"] = "1"  # as CI sets it: the ranks' lines must not run into each other
    return subprocess.run([*cmd, "score", *argv, "-q"], capture_output=True, text=True, timeout=600, env=env)


def _rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _same(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert [(r["id"], r["path"], r["duration_s"], r["sample_rate"]) for r in a] == \
           [(r["id"], r["path"], r["duration_s"], r["sample_rate"]) for r in b]
    assert [float(r["score"]) for r in a] == pytest.approx([float(r["score"]) for r in b], abs=1e-5)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("one") / "one.csv"
    r = _torchmos(str(corpus), "-o", str(out), "--batch-size", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return _rows(out)


def test_two_ranks_equal_one_process(corpus, one_process, tmp_path):
    out = tmp_path / "two.csv"
    r = _torchmos(str(corpus), "-o", str(out), "--batch-size", "2", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _same(_rows(out), one_process)
    assert r.stderr.count("9 scored, 0 failed") == 1  # one summary, by rank 0
    assert "[rank 1/2]" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.csv"]  # the parts are merged away


def test_a_killed_rank_is_resumed_per_shard(corpus, one_process, tmp_path):
    """The last entry kills the rank that reads it (in its own process: --workers 0) on the
    first run only; the rerun with --resume scores only what the parts lack."""
    flag = tmp_path / "killed-once"
    scp = tmp_path / "wav.scp"
    files = sorted(corpus.glob("*.wav"))
    lines = [f"{p.stem} {p}" for p in files[:-1]]
    last = files[-1]
    lines.append(f"{last.stem} test -e {flag} || {{ touch {flag}; kill -9 $PPID; }}; cat {last} |")
    scp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.csv"
    argv = [str(scp), "-o", str(out), "--batch-size", "1", "--workers", "0"]
    first = _torchmos(*argv, nproc=2)
    assert first.returncode != 0 and flag.exists(), first.stderr[-3000:]
    assert not out.exists()  # no partial merge
    partial = list(tmp_path.glob("s.csv.part-*"))
    assert partial, "the ranks' parts are kept for --resume"
    again = _torchmos(*argv, "--resume", nproc=2)
    assert again.returncode == 0, again.stderr[-3000:]
    kept = [int(ln.split("file(s) in this shard: ")[1].split(" already")[0])
            for ln in again.stderr.splitlines() if "file(s) in this shard:" in ln]
    assert len(kept) == 2 and sum(kept) >= 1, again.stderr[-3000:]  # rows scored before the kill are kept
    got = _rows(out)
    assert [r["id"] for r in got] == [p.stem for p in files]
    assert [float(r["score"]) for r in got] == pytest.approx([float(r["score"]) for r in one_process], abs=1e-5)
    assert f"resumed: {sum(kept)} already in {out}" in again.stderr
