"""The only door for audio into torchmos.

Everything that reads, checks, converts or resamples audio lives here, and every error
about bad input is raised here, as an :class:`AudioError` that names the file or the batch
item and says what to do.

Two entry points cover the library:

* :func:`prepare` turns what a user passes to a metric (a tensor, a numpy array, a list of
  clips of any lengths, optionally with explicit ``lengths``) into a list of mono float32
  1-D tensors at the model's sample rate.
* :func:`read` reads one file (anything ``soundfile`` reads, or a Kaldi pipe entry) into a
  mono float32 tensor and its sample rate; :func:`find_audio` expands files, folders,
  Kaldi ``wav.scp`` files and plain lists into :class:`AudioEntry` items.
"""

from __future__ import annotations

import functools
import io
import math
import os
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

__all__ = [
    "AudioError",
    "AudioEntry",
    "SilentAudioWarning",
    "check_sample_rate",
    "find_audio",
    "pad_batch",
    "prepare",
    "read",
    "resample",
    "to_float",
]


class AudioError(ValueError):
    """Bad audio input. The message names the file or batch item and says what to do."""


class SilentAudioWarning(UserWarning):
    """An all-zero clip was scored; its score is rarely meaningful."""


# ----------------------------------------------------------------------------- checks


def check_sample_rate(fs: Any, where: str = "input") -> int:
    """Return ``fs`` as a positive int, or raise :class:`AudioError`.

    >>> check_sample_rate(16000.0)
    16000
    """
    if fs is None:
        raise AudioError(f"{where}: the sample rate is unknown; pass fs=<Hz> (e.g. fs=16000).")
    if isinstance(fs, bool) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise AudioError(f"{where}: the sample rate must be a number of Hz, got {fs!r}.")
    if not math.isfinite(float(fs)) or float(fs) <= 0 or float(fs) != int(fs):
        raise AudioError(f"{where}: the sample rate must be a positive whole number of Hz, got {fs!r}.")
    return int(fs)


def to_float(x: torch.Tensor | np.ndarray, where: str = "input") -> torch.Tensor:
    """Integer PCM or float samples -> float32 tensor in [-1, 1] (floats are kept as they are).

    int16 is divided by 2**15, int32 by 2**31, int8 by 2**7; uint8 is offset by 128 first
    (the WAV convention). Bool, complex and other dtypes are refused.

    >>> to_float(torch.tensor([-32768, 0, 16384], dtype=torch.int16))
    tensor([-1.0000,  0.0000,  0.5000])
    """
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:  # e.g. big-endian PCM from np.frombuffer(..., ">i2")
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype == np.uint8:
            x = torch.from_numpy(x.astype(np.int16) - 128).to(torch.int8)
        elif x.dtype.kind in "iuf" and x.dtype.itemsize <= 8 and x.dtype != np.uint16 and x.dtype != np.uint32:
            x = np.ascontiguousarray(x)
            # torch.from_numpy warns on read-only arrays (np.frombuffer, memory maps): copy them
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        else:
            raise AudioError(
                f"{where}: unsupported sample dtype {x.dtype}; pass float32/float64 in [-1, 1] "
                "or integer PCM (int8/int16/int32)."
            )
    if not isinstance(x, torch.Tensor):
        raise AudioError(f"{where}: expected a torch.Tensor or numpy array, got {type(x).__name__}.")
    if x.dtype.is_floating_point:
        return x.float()
    scale = {torch.int8: 2.0**7, torch.int16: 2.0**15, torch.int32: 2.0**31}.get(x.dtype)
    if scale is None:
        if x.dtype == torch.uint8:
            return (x.float() - 128.0) / 128.0
        raise AudioError(
            f"{where}: unsupported sample dtype {x.dtype}; pass float32/float64 in [-1, 1] "
            "or integer PCM (int8/int16/int32)."
        )
    return x.float() / scale


def _check_clip(x: torch.Tensor, where: str, fs: int, min_seconds: float) -> None:
    if x.numel() == 0:
        raise AudioError(f"{where}: the clip is empty (0 samples).")
    if x.shape[-1] < min_seconds * fs:
        raise AudioError(
            f"{where}: the clip is {x.shape[-1] / fs:.3f} s long, shorter than this model's "
            f"minimum of {min_seconds:g} s; pad or drop it."
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise AudioError(f"{where}: the clip has {bad} NaN/Inf sample(s); clean or drop it.")
    if not bool(x.any()):
        warnings.warn(
            f"{where}: the clip is all zeros (digital silence); it is scored, but the score "
            "says little about quality.",
            SilentAudioWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    # torchaudio's default windowed-sinc resampler (Hann window, width 6, rolloff 0.99),
    # built exactly as the reference packages build it (DistillMOS calls
    # torchaudio.transforms.Resample(sr, 16000): kernel computed in float64, stored in
    # float32), so float32 results are bit-identical to theirs. The module caches its
    # kernel; one module per (rates, dtype, device), since a cached module is shared and
    # must never be moved to another device or dtype in place.
    # torchaudio is imported here, on the first clip that needs resampling, and never
    # by ``import torchmos`` or by scoring audio already at the model's rate.
    import torchaudio

    kernel_dtype = torch.float64 if dtype == torch.float64 else None
    return torchaudio.transforms.Resample(orig, new, dtype=kernel_dtype).to(device=device, dtype=dtype)


def resample(x: torch.Tensor, orig_fs: int, new_fs: int) -> torch.Tensor:
    """Resample along the last axis with torchaudio's default windowed-sinc resampler.

    >>> resample(torch.zeros(48000), 48000, 16000).shape
    torch.Size([16000])
    """
    if orig_fs == new_fs:
        return x
    return _resampler(int(orig_fs), int(new_fs), x.dtype, x.device)(x)


# ----------------------------------------------------------------------------- batches


def _name(names: Sequence[str] | None, i: int, arg: str) -> str:
    if names is not None and i < len(names):
        return f"{arg}[{i}] ({names[i]})" if arg else str(names[i])
    return f"{arg}[{i}]"


def prepare(
    preds: Any,
    fs: Any,
    target_fs: int | None,
    lengths: Any = None,
    *,
    min_seconds: float = 0.0,
    names: Sequence[str] | None = None,
    arg: str = "preds",
) -> list[torch.Tensor]:
    """Check and convert a batch of clips into mono float32 1-D tensors at ``target_fs``.

    Args:
        preds: a 1-D tensor/array (one clip), a 2-D ``(B, T)`` tensor/array (B clips, with
            ``lengths`` if they are padded), or a list/tuple of 1-D tensors/arrays of any
            lengths. Integer PCM is scaled to [-1, 1].
        fs: sample rate of ``preds`` in Hz.
        target_fs: the model's rate; clips are resampled to it (``None`` keeps ``fs``).
        lengths: valid samples per row of a 2-D ``preds`` (at ``fs``); padding beyond a
            row's length is never seen by a model.
        min_seconds: the model's minimum duration; shorter clips are refused.
        names: optional ids used in error messages instead of bare indices.
        arg: the argument name used in error messages (``""`` with ``names``: items are
            named by their names alone, e.g. file paths).

    Returns:
        list of B float32 1-D tensors, on the device of the input.

    >>> clips = prepare(torch.randn(2, 8000), fs=8000, target_fs=16000, lengths=[8000, 4000])
    >>> [c.shape[0] for c in clips]
    [16000, 8000]
    """
    fs = check_sample_rate(fs, arg)
    if isinstance(preds, (list, tuple)):
        if lengths is not None:
            raise AudioError(f"{arg}: lengths= is only for a padded 2-D tensor; a list already has lengths.")
        if len(preds) == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        clips = []
        for i, p in enumerate(preds):
            where = _name(names, i, arg)
            p = to_float(p, where) if isinstance(p, (torch.Tensor, np.ndarray)) else _not_audio(p, where)
            if p.dim() != 1:
                raise AudioError(
                    f"{where}: expected a 1-D clip, got shape {tuple(p.shape)}; "
                    "mix multichannel audio down first (e.g. x.mean(0))."
                )
            clips.append(p)
    else:
        x = to_float(preds, arg) if isinstance(preds, (torch.Tensor, np.ndarray)) else _not_audio(preds, arg)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise AudioError(
                f"{arg}: expected shape (T,) or (B, T), got {tuple(x.shape)}; pass a list of "
                "1-D clips, or mix channels down first (e.g. x.mean(1))."
            )
        if x.shape[0] == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        if lengths is None:
            clips = list(x.unbind(0))
        else:
            try:
                lens = torch.as_tensor(lengths).reshape(-1).tolist()
            except (TypeError, ValueError, RuntimeError) as e:
                raise AudioError(
                    f"{arg}: lengths= must be whole numbers of samples, one per row ({e})."
                ) from None
            if len(lens) != x.shape[0]:
                raise AudioError(f"{arg}: {len(lens)} lengths for a batch of {x.shape[0]} clips.")
            clips = []
            for i, n in enumerate(lens):
                if (
                    isinstance(n, bool)
                    or not isinstance(n, (int, float))
                    or not math.isfinite(n)
                    or n != int(n)
                    or not 0 <= int(n) <= x.shape[1]
                ):
                    raise AudioError(
                        f"{_name(names, i, arg)}: length {n} is not a whole number of samples "
                        f"in [0, {x.shape[1]}]."
                    )
                clips.append(x[i, : int(n)])
    out = []
    for i, c in enumerate(clips):
        _check_clip(c, _name(names, i, arg), fs, min_seconds)
        out.append(resample(c, fs, target_fs) if target_fs else c)
    return out


def _not_audio(p: Any, where: str) -> torch.Tensor:
    raise AudioError(f"{where}: expected a torch.Tensor or numpy array, got {type(p).__name__}.")


def pad_batch(clips: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D clips at the end into ``(B, T)`` (T rounded up to ``multiple``) + lengths.

    >>> x, n = pad_batch([torch.ones(3), torch.ones(5)], multiple=4)
    >>> x.shape, n.tolist()
    (torch.Size([2, 8]), [3, 5])
    """
    if len(clips) == 0:
        raise AudioError("pad_batch: no clips to pad.")
    lengths = torch.tensor([c.shape[-1] for c in clips], dtype=torch.long)
    t = int(lengths.max())
    t = -(-t // multiple) * multiple
    out = clips[0].new_zeros(len(clips), t)
    for i, c in enumerate(clips):
        out[i, : c.shape[-1]] = c
    return out, lengths


# ----------------------------------------------------------------------------- files


def _is_pipe(source: str) -> bool:
    return source.rstrip().endswith("|")


def _wav_declared_frames(head: bytes) -> int | None:
    """Frames the data chunk of a RIFF/WAVE header declares, or None when unknown.

    libsndfile silently shortens a WAV whose data chunk runs past the end of the file, so
    a truncated copy would be scored as if it were whole; this reads the declaration. Sizes
    that streaming writers use as placeholders (0, >= 0x7FFF0000) mean "unknown".
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block = 12, 0
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(head):
            block = int.from_bytes(head[pos + 20 : pos + 22], "little")  # nBlockAlign
        elif cid == b"data":
            if block <= 0 or size == 0 or size >= 0x7FFF0000:
                return None
            return size // block
        pos += 8 + size + (size & 1)
    return None


def read(source: str | os.PathLike, name: str | None = None) -> tuple[torch.Tensor, int]:
    """Read one file (or Kaldi pipe entry ``"cmd ... |"``) as a mono float32 tensor.

    Integer PCM is scaled to [-1, 1]; channels are averaged. Raises :class:`AudioError`
    naming the file (or ``name``, when given: a pipe entry is named by its utterance id,
    not by its command) for missing, unreadable, truncated or empty files.
    """
    source = os.fspath(source)
    label = name or source
    try:
        if _is_pipe(source):
            cmd = source.rstrip()[:-1]
            proc = subprocess.run(cmd, shell=True, capture_output=True, check=False)
            if proc.returncode != 0:
                raise AudioError(
                    f"{label}: the pipe command {cmd.strip()!r} failed (exit {proc.returncode}): "
                    f"{proc.stderr.decode(errors='replace').strip()[:300]}"
                )
            fh: Any = io.BytesIO(proc.stdout)
            head = proc.stdout[:65536]
        else:
            if not os.path.exists(source):
                raise AudioError(f"{source}: no such file.")
            if os.path.isdir(source):
                raise AudioError(f"{source}: is a directory, not an audio file.")
            with open(source, "rb") as raw:
                if os.path.isfile(source):
                    fh, head = source, raw.read(65536)
                else:  # a FIFO, e.g. bash's <(sox ... -t wav -): libsndfile needs to seek
                    stream = raw.read()
                    fh, head = io.BytesIO(stream), stream[:65536]
        with sf.SoundFile(fh) as f:
            declared = f.frames
            sr = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"{label}: cannot be read as audio ({e}).") from e
    declared = max(declared, _wav_declared_frames(head) or 0)
    if data.shape[0] < declared:
        raise AudioError(
            f"{label}: truncated file: the header declares {declared} frames "
            f"({declared / sr:.3f} s) but only {data.shape[0]} are present; the file was "
            "cut short (an interrupted copy or export?): re-create it, or drop it."
        )
    if data.shape[0] == 0:
        raise AudioError(f"{label}: the file holds no audio samples.")
    x = torch.from_numpy(data).mean(dim=1) if data.shape[1] > 1 else torch.from_numpy(data[:, 0].copy())
    return x, int(sr)


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
        return read(self.source, name=self.label)


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
    """What identifies an entry's audio: the real path of a file, or a pipe's command."""
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
