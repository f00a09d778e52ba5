"""Reading many entries in background processes while a model runs.

:func:`read_batches` yields the entries of a list, read, decoded, resampled and checked,
batch by batch and in their order, from ``workers`` worker processes (a
:class:`torch.utils.data.DataLoader` with prefetching) so that reading overlaps the
scoring of the batch before. Nothing is unbounded: at most ``workers x prefetch`` batches
are read ahead, and files too long for that (:data:`LONG_FRAMES` or more at their own
rate) are left to the caller, who reads them in its own process with a progress bar of
their own (:attr:`Item.deferred`).

A file that cannot be read is an :class:`Item` with its ``error`` (naming the file),
never an exception; warnings raised while reading (an all-zero clip) travel with their
item. A worker that dies (killed, or crashed in a decoder) does not end the run either:
the batches it held are read again, one file at a time in a process of its own, and the
file it died on is reported as failed, by name.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import soundfile as sf
import torch

from .batches import prepare
from .checks import AudioError, SilentAudioWarning
from .entries import AudioEntry
from .files import _is_pipe

__all__ = ["LONG_FRAMES", "Item", "Reader", "default_workers", "read_batches"]

#: Files of this many frames or more (44 s at 48 kHz) are read by the caller, with a bar.
LONG_FRAMES = 1 << 21


@dataclass
class Item:
    """One entry, read: its clip (and reference) at the model's rate, or why not."""

    index: int
    entry: AudioEntry
    clip: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    duration_s: float = 0.0
    file_rate: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    deferred: bool = False  # a long file, left to the caller (Reader(..., progress=...))
    interrupted: bool = False  # Ctrl-C (KeyboardInterrupt) came while this file was read


@dataclass
class Reader:
    """How to read one entry: to ``target_fs`` (None: its own rate), checked against
    ``min_seconds``; with ``refs`` (id -> entry) its paired reference too. Picklable."""

    target_fs: int | None
    min_seconds: float = 0.0
    refs: dict[str, AudioEntry] | None = None
    refs_name: str = ""
    long_frames: int = LONG_FRAMES

    def __call__(self, index: int, entry: AudioEntry, *, defer_long: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> Item:
        item = Item(index, entry)
        try:
            if defer_long and not _is_pipe(entry.source) and os.path.isfile(entry.source):
                try:
                    if sf.info(entry.source).frames >= self.long_frames:
                        item.deferred = True
                        return item
                except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
                    pass  # load() below says what is wrong with it
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SilentAudioWarning)
                got = entry.load(target_fs=self.target_fs, progress=progress)
                item.clip = self._prepare(got.samples, got.rate, entry.label)
                item.duration_s, item.file_rate = got.frames / got.file_rate, got.file_rate
                if self.refs is not None:
                    ref = self.refs.get(entry.id)
                    if ref is None:
                        raise AudioError(f"{entry.label}: no reference with id {entry.id!r} in {self.refs_name}.")
                    r = ref.load(target_fs=self.target_fs)
                    item.ref = self._prepare(r.samples, r.rate, ref.label)
            item.warnings = [str(w.message) for w in caught]
        except AudioError as e:
            item.clip = item.ref = None
            item.error = str(e)
        except Exception as e:  # noqa: BLE001 - any failure of one file is that file's, named
            item.clip = item.ref = None
            item.error = f"{entry.label}: cannot be read ({type(e).__name__}: {e})."
        return item

    def _prepare(self, x: torch.Tensor, rate: int, label: str) -> torch.Tensor:
        return prepare([x], rate, self.target_fs or None, min_seconds=self.min_seconds, names=[label], arg="")[0]


def default_workers(local_world_size: int = 1) -> int:
    """Reading processes per scoring process beside an accelerator: one per two cores it
    has (its share of the machine's cores among ``local_world_size`` processes), at least
    one, at most four. ``benchmarks/bench_cli.py`` measures 0, 1 and 2 workers side by
    side (on the CPU; ``torchmos score`` reads in the process there)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // max(1, local_world_size) // 2))


class _Batches(torch.utils.data.Dataset):
    """Batch ``k`` of ``[(index, entry), ...]``: a list of :class:`Item` (read in a worker)."""

    def __init__(self, batches: Sequence[Sequence[tuple[int, AudioEntry]]], reader: Reader) -> None:
        self.batches, self.reader = batches, reader

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> list[Item]:
        out = []
        for i, e in self.batches[k]:
            try:
                out.append(self.reader(i, e, defer_long=True))
            except KeyboardInterrupt:  # handed to the caller, which stops there
                out.append(Item(i, e, interrupted=True))
                break
        return out


def _as_is(batch: list[Item]) -> list[Item]:
    return batch


def _loader(batches: Sequence[Sequence[tuple[int, AudioEntry]]], reader: Reader, workers: int,
            prefetch: int) -> Iterator[list[Item]]:
    return iter(torch.utils.data.DataLoader(_Batches(batches, reader), batch_size=None, shuffle=False,
                                            num_workers=workers, prefetch_factor=prefetch,
                                            collate_fn=_as_is))


_DEATHS = (RuntimeError, ConnectionError)  # what a dead worker's loader raises (see _died)


def _died(e: BaseException) -> bool:
    """Whether ``e`` says a reading worker died: the DataLoader's own error, or a batch the
    dead worker had already queued whose tensors can no longer be fetched from it (they
    travel as file descriptors the worker hands over: ``ConnectionResetError``, seen on CI)."""
    return (isinstance(e, RuntimeError) and "DataLoader worker" in str(e)) or isinstance(e, ConnectionError)


def _produce(batches: list[list[tuple[int, AudioEntry]]], reader: Reader, workers: int, prefetch: int,
             put: Callable[[object], bool]) -> None:
    """Read every batch in order with ``workers`` processes; ``put`` each (False: stop)."""
    start = 0
    while start < len(batches):
        try:
            for batch in _loader(batches[start:], reader, workers, prefetch):
                if not put(batch):
                    return
                start += 1
            return
        except _DEATHS as e:
            if not _died(e):
                raise
        # a worker died holding batch `start` or a later one: read batch `start` alone, a
        # file at a time in one process, so the file it dies on is the first not returned
        out: list[Item] = []
        todo = [[p] for p in batches[start]]
        while todo:
            try:
                for got in _loader(todo, reader, 1, 1):
                    out += got
                    todo.pop(0)
            except _DEATHS as e:
                if not _died(e):
                    raise
                i, entry = todo.pop(0)[0]
                out.append(Item(i, entry, error=f"{entry.label}: the reading process died on this file "
                                                f"(a crash in the decoder, or killed: {e})."))
        if not put(out):
            return
        start += 1


def read_batches(items: Sequence[tuple[int, AudioEntry]], reader: Reader, batch_size: int, workers: int,
                 prefetch: int = 2, progress: Callable[[AudioEntry], Callable[[int, int], None] | None] | None = None,
                 ) -> Iterator[list[Item]]:
    """``(index, entry)`` items read by ``reader``, ``batch_size`` at a time, in their order.

    With ``workers`` > 0, worker processes start reading at once (before the first batch is
    asked for: while the caller loads its model) and stay up to ``workers x prefetch``
    batches ahead, plus one batch handed over; long files come back :attr:`Item.deferred`
    (read them with ``reader(..., progress=...)``). With 0, each batch is read in this
    process when it is asked for, long files included (``progress(entry)`` gives each
    file's progress callback). Close the iterator (or exhaust it) to stop the workers.
    """
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if workers <= 0:
        return ([reader(i, e, progress=progress(e) if progress else None) for i, e in b] for b in batches)
    # the DataLoader is driven from a thread of its own: a dying worker is then seen there
    # (and recovered from) rather than raised by a signal handler anywhere in the caller
    ready: queue.Queue[object] = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            _produce(batches, reader, workers, prefetch, put)
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
            put(e)

    thread = threading.Thread(target=run, name="torchmos-reader", daemon=True)
    thread.start()

    return _Drain(ready, stop, thread, done)


class _Drain:
    """The batches a reader thread hands over, in order; :meth:`close` stops it (and its workers)."""

    def __init__(self, ready: queue.Queue[object], stop: threading.Event, thread: threading.Thread,
                 done: object) -> None:
        self.ready, self.stop, self.thread, self.done = ready, stop, thread, done

    def __iter__(self) -> _Drain:
        return self

    def __next__(self) -> list[Item]:
        if self.stop.is_set():
            raise StopIteration
        got = self.ready.get()
        if got is self.done:
            self.close()
            raise StopIteration
        if isinstance(got, BaseException):
            self.close()
            raise got
        return got  # type: ignore[return-value]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def __del__(self) -> None:
        self.stop.set()
