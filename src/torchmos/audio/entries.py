"""What to score: files, folders, Kaldi ``wav.scp`` files and plain lists as entries.

:func:`find_audio` expands its inputs into :class:`AudioEntry` items with stable, unique,
readable ids; :func:`source_key` says which entries name the same audio.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from .checks import AudioError
from .files import Loaded, _is_pipe, load, read

__all__ = ["AudioEntry", "audio_extensions", "find_audio", "source_key"]


@functools.lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """File extensions (lower case, with dot) of the formats this soundfile build reads."""
    exts = {"." + k.lower() for k in sf.available_formats()}
    exts |= {".aif", ".aiff", ".oga", ".opus"}
    return frozenset(exts - {".raw"})


@dataclass(frozen=True)
class AudioEntry:
    """One item to score: a stable ``id`` and where its audio comes from."""

    id: str
    source: str

    @property
    def label(self) -> str:
        """How messages name this entry: its path, or for a pipe its utterance id."""
        return f"utterance {self.id!r}" if _is_pipe(self.source) else self.source

    def read(self) -> tuple[torch.Tensor, int]:
        """Read this entry at its own rate (see :func:`read`)."""
        return read(self.source, name=self.label)

    def load(
        self, target_fs: int | None = None, *, progress: Callable[[int, int], None] | None = None
    ) -> Loaded:
        """Read this entry, with the file's own rate (see :func:`load`)."""
        return load(self.source, name=self.label, target_fs=target_fs, progress=progress)


_LIST_SUFFIXES = {".txt", ".lst", ".list", ".scp"}


def find_audio(inputs: Iterable[str | os.PathLike] | str | os.PathLike) -> list[AudioEntry]:
    """Expand files, folders (recursive), Kaldi ``wav.scp`` files and plain lists.

    * an audio file: id = its path as given (without extension);
    * a folder: every audio file below it, id = path relative to the folder, without
      extension (so ``enhanced/a/b.wav`` and ``clean/a/b.wav`` share the id ``a/b``);
    * a ``*.scp`` file: Kaldi lines ``<utt-id> <path or "cmd |">``, id = utt-id;
    * a ``.txt``/``.lst``/``.list`` file: one path per line.

    Relative paths in lists resolve against the current folder when they exist there (the
    Kaldi convention), else against the list's own folder.

    Ids stay unique and readable. When two files would share an id (``a/x.wav`` and
    ``b/x.wav`` given as folders ``a`` and ``b``, or ``x.wav`` and ``x.flac``), each of
    them is named by its path relative to their common folder instead (``a/x``, ``b/x``;
    the extension is kept only when it is what tells them apart). The same file listed
    more than once is kept each time (a training list may repeat a file on purpose); its
    repeats are named ``id#2``, ``id#3``.

    Raises :class:`AudioError` for a missing input, a folder with no audio files, an empty
    list, or a Kaldi utterance id used twice.
    """
    if isinstance(inputs, (str, os.PathLike)):  # one path, not an iterable of characters
        inputs = [inputs]
    entries: list[AudioEntry] = []
    exts = audio_extensions()
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts)
            if not found:
                raise AudioError(
                    f"{p}: the folder holds no audio files (looked for {', '.join(sorted(exts))})."
                )
            entries += [AudioEntry(q.relative_to(p).with_suffix("").as_posix(), str(q)) for q in found]
        elif not p.exists():
            raise AudioError(f"{p}: no such file or folder.")
        elif p.suffix.lower() in _LIST_SUFFIXES:
            listed = _read_list(p)
            if not listed:
                raise AudioError(f"{p}: the list holds no entries.")
            entries += listed
        else:
            entries.append(AudioEntry(str(p.with_suffix("")), str(p)))
    return _unique_ids(entries)


def _unique_ids(entries: list[AudioEntry]) -> list[AudioEntry]:
    """Rename colliding ids by relative path; a repeated listing of one file gets ``#n``."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.id, []).append(i)
    out = list(entries)
    for uid, idx in groups.items():
        members = [entries[i] for i in idx]
        keys = {source_key(m.source) for m in members}
        if len(keys) == 1:  # one file (or command) listed again: numbered below
            continue
        if any(_is_pipe(m.source) for m in members):
            raise AudioError(f"the utterance id {uid!r} is used {len(idx)} times ("
                             + "; ".join(m.source for m in members) + "); ids in a wav.scp must be unique.")
        paths = [os.path.abspath(m.source) for m in members]
        base = os.path.commonpath([os.path.dirname(p) for p in paths])
        stems = [Path(os.path.relpath(p, base)).with_suffix("").as_posix() for p in paths]
        if len({(st, source_key(m.source)) for st, m in zip(stems, members)}) > len(set(stems)):
            stems = [Path(os.path.relpath(p, base)).as_posix() for p in paths]  # only the extension differs
        for i, new_id in zip(idx, stems):
            out[i] = AudioEntry(new_id, entries[i].source)
    seen: dict[str, int] = {}
    by_id: dict[str, str] = {}
    for i, e in enumerate(out):
        key = source_key(e.source)
        if e.id in by_id and by_id[e.id] != key:  # a renamed id met an id given elsewhere
            raise AudioError(f"the id {e.id!r} would name both {e.source} and another file; rename one "
                             "of them, or score the inputs in separate runs.")
        by_id[e.id] = key
        n = seen[e.id] = seen.get(e.id, 0) + 1
        if n > 1:
            out[i] = AudioEntry(f"{e.id}#{n}", e.source)
    return out


def source_key(source: str) -> str:
    """What identifies an entry's audio: the real path of a file, or a pipe's command.

    >>> source_key("sox take1.flac -t wav - | ")
    'sox take1.flac -t wav - |'
    """
    return source.strip() if _is_pipe(source) else os.path.realpath(source)


def _read_list(p: Path) -> list[AudioEntry]:
    out = []
    first_line: dict[str, tuple[int, str]] = {}  # Kaldi id -> (line, source) where first seen
    kaldi = p.suffix.lower() == ".scp"
    for lineno, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if kaldi:
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise AudioError(f"{p}:{lineno}: expected '<utt-id> <path>' in a Kaldi scp file, got {line!r}.")
            uid, src = parts
            if not _is_pipe(src) and ".ark:" in src:
                raise AudioError(
                    f"{p}:{lineno}: '{src}' is a Kaldi ark offset; score it through the ESPnet "
                    "stage (torchmos.adapters.espnet), which uses ESPnet's own readers."
                )
        else:
            src = line
            uid = ""
        if not _is_pipe(src) and not os.path.isabs(src) and not os.path.exists(src):
            src = str(p.parent / src)  # relative to the current folder first, else to the list
        if kaldi:
            prev = first_line.setdefault(uid, (lineno, source_key(src)))
            if prev[1] != source_key(src):
                raise AudioError(f"{p}:{lineno}: the utterance id {uid!r} already names another entry "
                                 f"on line {prev[0]}; ids in a wav.scp must be unique.")
        out.append(AudioEntry(uid or str(Path(src).with_suffix("")), src))
    return out
