"""``torchmos score`` under ``torchrun``: one shard of the inputs per rank, merged by rank 0.

When the launcher's variables are set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, and
``MASTER_ADDR``/``MASTER_PORT``, as ``torchrun`` sets them), every rank expands the same
inputs, reads the durations of its stride of them from the file headers (the ranks share
them over a ``gloo`` group), and :func:`shard` splits the entries into ``WORLD_SIZE``
shards of near-equal total duration, the same way on every rank. Each rank scores its
shard into its own part file next to the output, row by row (a killed rank leaves the rows
it wrote); when the shard is done, the part is rewritten in input order and renamed into
place in one step (``os.replace``): a complete part is never half-written.

Rank 0 then waits for every rank's complete part of this run and merges them into the
output (again through a temporary file and ``os.replace``), in input order, checking that
every entry is there exactly once. A rank that stops (killed, crashed) is noticed by its
heartbeat, a file it rewrites every :data:`BEAT_S` seconds: when that has not changed for
``TORCHMOS_SHARD_STALE_S`` seconds (default 120), rank 0 writes no output and names the
missing shards. Rerunning the same command with ``--resume`` makes each rank keep the
scored rows of its part and score the rest.
"""

from __future__ import annotations

import glob
import heapq
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import soundfile as sf

from .audio import AudioEntry
from .cli_rows import Stats, UsageError, Writer, complete_length, say

__all__ = ["BEAT_S", "Dist", "Part", "context", "merge", "plan", "shard", "wait_for_parts"]

BEAT_S = 2.0


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def context(env: dict[str, str] | None = None) -> Dist | None:
    """The torchrun job this process belongs to, or None (no launcher, or one process)."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    except (KeyError, ValueError) as e:
        raise UsageError(f"WORLD_SIZE is set, but the launcher's RANK/LOCAL_RANK are missing or not numbers ({e}); "
                         "start the ranks with torchrun.") from None
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is not within WORLD_SIZE={world}.")
    return Dist(rank, world, local_rank, max(1, local_world))


def shard(costs: Sequence[float], world: int) -> list[list[int]]:
    """Split items of the given costs (durations) into ``world`` shards of near-equal sums.

    The longest items go first, each to the shard with the least so far (ties: the lower
    item index first, then the lower shard): the largest shard exceeds the ideal by at most
    one item's cost. Every item is in exactly one shard; each shard lists its items in input
    order; the split depends on the costs and ``world`` only, so every rank computes it alike.

    >>> shard([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    [[0], [1, 2, 3, 4, 5]]
    """
    if world < 1:
        raise ValueError(f"world must be 1 or more, got {world}.")
    loads = [(0.0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        load, r = heapq.heappop(loads)
        out[r].append(i)
        heapq.heappush(loads, (load + float(costs[i]), r))
    return [sorted(s) for s in out]


def header_seconds(entry: AudioEntry) -> float | None:
    """The duration a file's header declares (cheap: no samples read), or None (a pipe, a
    file that cannot be opened: its reader reports it)."""
    if entry.source.rstrip().endswith("|") or not os.path.isfile(entry.source):
        return None
    try:
        info = sf.info(entry.source)
        return info.frames / info.samplerate if info.samplerate > 0 else None
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
        return None


def costs(seconds: Sequence[float | None]) -> list[float]:
    """Durations for :func:`shard`: an unknown one counts as the mean of the known ones."""
    known = [s for s in seconds if s is not None]
    fill = sum(known) / len(known) if known else 1.0
    return [fill if s is None else float(s) for s in seconds]


def plan(entries: Sequence[AudioEntry], dist: Dist) -> tuple[list[int], str]:
    """This rank's shard (entry indices, in input order) and the run's token.

    Every rank reads the headers of every ``world``-th entry and the ranks exchange them
    over a ``gloo`` group (``MASTER_ADDR``/``MASTER_PORT``, from torchrun); rank 0 draws a
    token that names this run in the parts, so a part left by an earlier run is never
    taken for this run's."""
    import torch.distributed as td

    if not td.is_available():
        raise UsageError("this torch build has no torch.distributed: torchmos score cannot shard under a launcher here.")
    mine = {i: header_seconds(entries[i]) for i in range(dist.rank, len(entries), dist.world)}
    own_group = not td.is_initialized()
    if own_group:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise UsageError("RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not: start the ranks "
                             "with torchrun (see docs/integrations/torchrun.md).")
        td.init_process_group("gloo", rank=dist.rank, world_size=dist.world)
    try:
        group = None if own_group else td.new_group(backend="gloo")  # beside the caller's own group
        gathered: list[Any] = [None] * dist.world
        td.all_gather_object(gathered, mine, group=group)
        token = [secrets.token_hex(8) if dist.rank == 0 else None]
        td.broadcast_object_list(token, src=0, group=group)
    finally:
        if own_group:
            td.destroy_process_group()
    seconds: list[float | None] = [None] * len(entries)
    for part in gathered:
        for i, s in part.items():
            seconds[i] = s
    return shard(costs(seconds), dist.world)[dist.rank], str(token[0])


def _part_base(output: str, rank: int, world: int) -> str:
    return f"{output}.part-{rank:05d}-of-{world:05d}"


class Part:
    """One rank's part file: rows appended as they come (``.partial.jsonl``), then the
    whole part, in input order, renamed into place (``.jsonl``); and its heartbeat."""

    def __init__(self, output: str, dist: Dist, token: str) -> None:
        base = _part_base(output, dist.rank, dist.world)
        self.partial, self.complete, self.alive = base + ".partial.jsonl", base + ".jsonl", base + ".alive"
        self.output, self.dist, self.token = output, dist, token
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.fh: Any = None
        self.kept = 0

    def start(self, entries: Sequence[AudioEntry], resume: bool) -> dict[str, dict[str, Any]]:
        """Begin (or, with ``resume``, take up) this rank's part: the rows it already holds,
        by id. Rows of files that failed are dropped, so those files are tried again."""
        others = [p for p in glob.glob(glob.escape(self.output) + ".part-*-of-*.jsonl")
                  if not p.endswith(f"-of-{self.dist.world:05d}.jsonl") and not p.endswith(
                      f"-of-{self.dist.world:05d}.partial.jsonl")]
        if resume and others:
            raise UsageError(f"{others[0]}: a part of a run with another number of processes; --resume needs the same "
                             f"number (this run has WORLD_SIZE={self.dist.world}), or delete those parts.")
        kept: dict[str, dict[str, Any]] = {}
        if resume:
            for path in (self.complete, self.partial):
                for row in _read_part(path):
                    i = row.get("i")
                    if not isinstance(i, int) or not 0 <= i < len(entries) or entries[i].id != row.get("id"):
                        raise UsageError(f"{path}: row {row!r} does not match the inputs of this run; rerun "
                                         "without --resume, or with the inputs of the earlier run.")
                    if "score" in row:
                        kept[row["id"]] = row
        tmp = self.partial + ".tmp"
        with open(tmp, "w") as f:
            for row in sorted(kept.values(), key=lambda r: r["i"]):
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.partial)
        if os.path.exists(self.complete):
            os.remove(self.complete)
        self.kept = len(kept)
        self.fh = open(self.partial, "a")
        self._beat = threading.Thread(target=self._heartbeat, name="torchmos-heartbeat", daemon=True)
        self._beat.start()
        return kept

    def _heartbeat(self) -> None:
        n = 0
        while True:
            n += 1
            _atomic_write(self.alive, f"{self.token} {n}\n")
            if self._stop.wait(BEAT_S):
                return

    def write(self, row: dict[str, Any]) -> None:
        """A row: ``{"i": index, "id": ..., "score": ...}`` or ``{"i", "id", "error"}``."""
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()

    def finish(self) -> None:
        """The part, in input order, under its final name (atomically); the heartbeat stops."""
        self.fh.close()
        rows = sorted(_read_part(self.partial), key=lambda r: r["i"])
        _atomic_write(self.complete, "".join(json.dumps(r) + "\n" for r in
                                             [{"token": self.token, "rank": self.dist.rank, "rows": len(rows), "kept": self.kept},
                                              *rows]))
        os.remove(self.partial)
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_part(path: str) -> Iterator[dict[str, Any]]:
    """The rows of a part (a complete one's token line left out; a cut-off last line too)."""
    if not os.path.exists(path):
        return
    end = complete_length(path)
    with open(path, "rb") as f:
        data = f.read(end)
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            row = json.loads(line)
            if "token" not in row:
                yield row


def _head(path: str) -> dict[str, Any]:
    """The first line of a complete part (its token, rank, rows and kept rows), or {}."""
    try:
        with open(path) as f:
            head = json.loads(f.readline())
        return head if isinstance(head, dict) else {}
    except (OSError, ValueError):
        return {}


def wait_for_parts(output: str, dist: Dist, token: str, stale_s: float | None = None,
                   poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Rank 0: wait until every rank's part of this run is complete. Returns the problems
    (empty when all are there): a rank whose heartbeat has not changed for ``stale_s``
    seconds (default ``TORCHMOS_SHARD_STALE_S`` or 120) is named with what its part holds."""
    stale = float(os.environ.get("TORCHMOS_SHARD_STALE_S", 120)) if stale_s is None else stale_s
    seen: dict[int, tuple[str, float]] = {}  # rank -> (heartbeat text, when it last changed)
    while True:
        missing, dead = [], []
        for r in range(dist.world):
            base = _part_base(output, r, dist.world)
            if _head(base + ".jsonl").get("token") == token:
                continue
            missing.append(r)
            try:
                with open(base + ".alive") as f:
                    beat = f.read()
            except OSError:
                beat = ""
            last = seen.get(r)
            if last is None or last[0] != beat:
                seen[r] = (beat, clock())
            elif clock() - last[1] > stale:
                dead.append(r)
        if not missing:
            return []
        if dead:
            out = []
            for r in dead:
                base = _part_base(output, r, dist.world)
                rows = sum(1 for _ in _read_part(base + ".partial.jsonl"))
                out.append(f"rank {r}: no sign of life for {stale:g} s; its part {base}.partial.jsonl holds "
                           f"{rows} row(s)")
            return out
        time.sleep(poll_s)


def merge(output: str, dist: Dist, entries: Sequence[AudioEntry], previous_ids: set[str], resume: bool,
          stats: Stats, failures: list[tuple[str, str]]) -> int:
    """Rank 0: the complete parts merged into ``output`` in input order (through a temporary
    file and ``os.replace``), after the earlier run's rows with ``resume``; every entry must
    be there exactly once. Adds the new scores to ``stats`` and the parts' failures to
    ``failures``; removes the parts. Returns how many rows the parts kept from earlier runs."""
    bases = [_part_base(output, r, dist.world) for r in range(dist.world)]
    kept = sum(int(_head(b + ".jsonl").get("kept", 0)) for b in bases)
    streams = [_read_part(b + ".jsonl") for b in bases]
    tmp = output + ".merging.tmp"
    if resume and os.path.exists(output):
        with open(output, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(_limited(src, complete_length(output)), dst)
    writer = Writer(tmp, resume=resume and os.path.exists(tmp), like=output)
    try:
        expect = 0
        for row in heapq.merge(*streams, key=lambda r: r["i"]):
            i = row["i"]
            while expect < len(entries) and expect < i:
                if entries[expect].id not in previous_ids:
                    raise RuntimeError(f"{entries[expect].label}: in no part (a part was changed by hand?)")
                expect += 1
            if i != expect or entries[i].id in previous_ids:
                raise RuntimeError(f"{entries[i].label}: in more than one part, or also in {output}")
            expect += 1
            if "error" in row:
                failures.append((entries[i].label, row["error"]))
                continue
            writer.write(row, flush=False)
            stats.add(float(row["score"]), row["id"])
        for e in entries[expect:]:
            if e.id not in previous_ids:
                raise RuntimeError(f"{e.label}: in no part (a part was changed by hand?)")
    finally:
        writer.close()
    os.replace(tmp, output)
    for b in bases:
        for suffix in (".jsonl", ".alive"):
            if os.path.exists(b + suffix):
                os.remove(b + suffix)
    return kept


class _limited:
    """The first ``n`` bytes of a binary file, for :func:`shutil.copyfileobj`."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data


def note(dist: Dist, text: str) -> None:
    say(f"torchmos: [rank {dist.rank}/{dist.world}] {text}")
