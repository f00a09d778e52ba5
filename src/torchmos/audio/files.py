"""Reading audio files, block by block.

:func:`load` (and :func:`read`) reads one file (anything ``soundfile`` reads, or a Kaldi
pipe entry ``"cmd ... |"``) into a mono float32 tensor, a block at a time; with
``target_fs`` each block is resampled as it arrives, so a long file never sits in memory
at its own rate.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from typing import Any, NamedTuple

import soundfile as sf
import torch

from . import resampling
from .checks import AudioError, check_sample_rate

__all__ = ["Loaded", "load", "read"]


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


class Loaded(NamedTuple):
    """What :func:`load` returns: the samples, their rate, the file's own rate, and how
    many frames the file held (so its duration is ``frames / file_rate`` exactly)."""

    samples: torch.Tensor
    rate: int
    file_rate: int
    frames: int


def read(
    source: str | os.PathLike,
    name: str | None = None,
    *,
    target_fs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_frames: int = resampling.BLOCK_SAMPLES,
) -> tuple[torch.Tensor, int]:
    """``(samples, rate)`` of one file: :func:`load` without the file's own rate."""
    loaded = load(source, name, target_fs=target_fs, progress=progress, block_frames=block_frames)
    return loaded.samples, loaded.rate


def load(
    source: str | os.PathLike,
    name: str | None = None,
    *,
    target_fs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_frames: int = resampling.BLOCK_SAMPLES,
) -> Loaded:
    """Read one file (or Kaldi pipe entry ``"cmd ... |"``) as a mono float32 tensor.

    Integer PCM is scaled to [-1, 1]; channels are averaged. Raises :class:`AudioError`
    naming the file (or ``name``, when given: a pipe entry is named by its utterance id,
    not by its command) for missing, unreadable, truncated or empty files.

    The file is read ``block_frames`` frames at a time, and with ``target_fs`` each block
    is resampled as it arrives (the result equals :func:`resample` of the whole file), so
    memory holds the output plus one block, never the whole file at its own rate: an hour
    at 48 kHz read with ``target_fs=16000`` needs the 230 MB of 16 kHz output and a few
    tens of MB more. ``progress(frames_done, frames_total)`` is called after each block,
    in frames of the file. Pipe entries and FIFOs are held in memory as their bytes
    (libsndfile needs to seek).

    Returns:
        ``Loaded(samples, rate, file_rate, frames)``: ``rate`` is ``target_fs`` when
        given, else the file's own ``file_rate``.

    >>> import os, tempfile, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, torch.zeros(48000).numpy(), 48000)
    >>> got = load(path, target_fs=16000)
    >>> got.samples.shape, got.rate, got.file_rate, got.frames
    (torch.Size([16000]), 16000, 48000, 48000)
    """
    source = os.fspath(source)
    label = name or source
    if target_fs is not None:
        target_fs = check_sample_rate(target_fs, f"{label}: target_fs")
    if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames < 1:
        raise ValueError(f"block_frames must be a positive int, got {block_frames!r}.")
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
        f = sf.SoundFile(fh)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"{label}: cannot be read as audio ({e}).") from e
    with f:
        return _read_blocks(f, head, label, target_fs, progress, block_frames)


def _read_blocks(
    f: sf.SoundFile,
    head: bytes,
    label: str,
    target_fs: int | None,
    progress: Callable[[int, int], None] | None,
    block_frames: int,
) -> Loaded:
    sr, total = int(f.samplerate), int(f.frames)
    declared = max(total, _wav_declared_frames(head) or 0)
    if total < declared:  # libsndfile shortened a WAV whose data chunk runs past the end
        _truncated(label, declared, total, sr)
    stream = None
    if target_fs is not None and target_fs != sr and total > 0:
        filt = resampling._FILTERS.get(check_sample_rate(sr, label), target_fs, torch.float32, torch.device("cpu"),
                                       label)
        stream = resampling._Stream(filt, total, 1, torch.empty(0))
    try:
        out = torch.empty(stream.total if stream is not None else total)
    except (RuntimeError, MemoryError) as e:
        raise AudioError(
            f"{label}: the header declares {total} frames ({total / sr / 3600:.1f} h at {sr} Hz) "
            f"and there is not enough memory for them ({e}); check the file (a corrupt header?), "
            "or split it."
        ) from None
    done = at = 0
    while done < total:
        try:
            data = f.read(min(block_frames, total - done), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            raise AudioError(f"{label}: cannot be read as audio ({e}).") from e
        if data.shape[0] == 0:
            break
        done += data.shape[0]
        x = torch.from_numpy(data)
        x = x.mean(dim=1) if x.shape[1] > 1 else x.reshape(-1)
        if stream is not None:
            x = stream.push(x[None], last=done >= total)[0]
        out[at : at + x.shape[0]] = x
        at += x.shape[0]
        if progress is not None:
            progress(done, total)
    if done < declared:
        _truncated(label, declared, done, sr)
    if done == 0:
        raise AudioError(f"{label}: the file holds no audio samples.")
    return Loaded(out, target_fs if stream is not None else sr, sr, done)


def _truncated(label: str, declared: int, present: int, sr: int) -> None:
    raise AudioError(
        f"{label}: truncated file: the header declares {declared} frames "
        f"({declared / sr:.3f} s) but only {present} are present; the file was "
        "cut short (an interrupted copy or export?): re-create it, or drop it."
    )

