"""Stateless twins of the torchmos metrics: one score per clip, shape (B,).

Models are loaded once per (model, checkpoint, options, device) and cached; the cache is
thread-safe and its models are shared, so no call writes anything onto them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import audio, hub, models

__all__ = ["distillmos", "get_model", "msr_utmos", "score", "scoreq_nr", "scoreq_ref", "vqscore"]


_CACHE_SIZE = 8  # models kept (least recently used first out)
_Key = tuple[Any, ...]
_models: OrderedDict[_Key, nn.Module] = OrderedDict()
_loading: dict[_Key, threading.Lock] = {}  # one lock per model being loaded
_lock = threading.Lock()  # guards _models and _loading; never held while loading


def _device_key(device: str | torch.device) -> str:
    """The canonical name of ``device`` for the model cache: ``"cpu"`` for any CPU device,
    ``"<type>:<index>"`` for accelerators, where an index-less device (``"cuda"``) is the
    current one of its type, as ``torch`` places tensors there.

    >>> _device_key("cpu:0"), _device_key(torch.device("cpu"))
    ('cpu', 'cpu')
    """
    dev = torch.device(device)
    if dev.type in ("cpu", "meta"):
        return dev.type
    index = dev.index
    if index is None:
        backend = getattr(torch, dev.type, None)
        current = getattr(backend, "current_device", None)
        index = int(current()) if callable(current) else 0
    return f"{dev.type}:{index}"


def _cached(name: str, checkpoint: str | None, sha256: str | None, device: str,
            options: tuple[tuple[str, Any], ...], stamp: tuple[int, int] | None) -> nn.Module:
    """The model for this key, loaded at most once however many threads ask together."""
    key = (name, checkpoint, sha256, device, options, stamp)
    with _lock:
        model = _models.get(key)
        if model is not None:
            _models.move_to_end(key)
            return model
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # the first thread loads; the others wait here, then find it cached
        with _lock:
            model = _models.get(key)
            if model is not None:
                _models.move_to_end(key)
                return model
        try:
            model = models.load(name, checkpoint=checkpoint, sha256=sha256, **dict(options)).to(device)
        except BaseException:  # a failed load is not cached; the next caller tries again
            with _lock:
                _loading.pop(key, None)
            raise
        with _lock:
            _models[key] = model
            _models.move_to_end(key)
            while len(_models) > _CACHE_SIZE:
                _models.popitem(last=False)
            _loading.pop(key, None)
    return model


def _clear_cache() -> None:
    """Forget every cached model (tests; freeing memory)."""
    with _lock:
        _models.clear()


def get_model(name: str, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
              device: str | torch.device = "cpu", **options: Any) -> nn.Module:
    """The cached predictor ``name`` on ``device`` (loaded on first use).

    The model is shared by every caller that asks for the same one (metrics, functional
    calls, adapters, threads): it is loaded once even when several threads ask at the same
    time, ``"cuda"`` and ``"cuda:0"`` (when 0 is the current device) are the same entry,
    and callers must not change it (use ``torchmos.models.load`` for a private copy).

    A local ``checkpoint`` is cached by path, size and modification time, so a file
    rewritten in place (a model retrained into the same folder) is loaded afresh."""
    ckpt = os.fspath(checkpoint) if checkpoint is not None else None
    stamp = None
    if ckpt is not None and os.path.isfile(ckpt):
        st = os.stat(ckpt)
        stamp = (st.st_size, st.st_mtime_ns)
    return _cached(name, ckpt, sha256, _device_key(device), tuple(sorted(options.items())), stamp)


def device_of(preds: Any) -> torch.device:
    if isinstance(preds, torch.Tensor):
        return preds.device
    if isinstance(preds, (list, tuple)) and preds and isinstance(preds[0], torch.Tensor):
        return preds[0].device
    return torch.device("cpu")


def score(model: nn.Module, card: hub.ModelCard, preds: Any, fs: int, lengths: Any = None,
          names: Sequence[str] | None = None) -> torch.Tensor:
    """The shared core: check and resample ``preds`` for ``card``, score with ``model``.

    A native-rate card (``sample_rate == 0``, MSR-UTMOS) is never resampled; its model is
    given the rate: ``model(clips, fs)``.
    """
    clips = audio.prepare(preds, fs, card.sample_rate or None, lengths, min_seconds=card.min_seconds, names=names)
    return model(clips, fs) if card.sample_rate == 0 else model(clips)


def distillmos(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
               precision: str = "fp32", device: str | torch.device | None = None) -> torch.Tensor:
    """DistillMOS of each clip: a tensor (B,) of MOS in [1, 5].

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate; anything other than 16 kHz is resampled.
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: a local weight file instead of the official one.
        precision: "fp32" (faithful) or "bf16" (faster on CPUs with bf16; see docs).
        device: where to run (default: the device of ``preds``).

    >>> import torch, torchmos.functional as F
    >>> F.distillmos([torch.randn(16000) * 0.1, torch.randn(8000) * 0.1], fs=16000).shape
    torch.Size([2])
    """
    dev = torch.device(device) if device is not None else device_of(preds)
    model = get_model("distillmos", checkpoint, device=dev, precision=precision)
    return score(model, hub.get_card("distillmos"), preds, fs, lengths)


def msr_utmos(preds: Any, fs: int, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
              device: str | torch.device | None = None) -> torch.Tensor:
    """MSR-UTMOS of each clip at its native rate ``fs`` (no resampling): a tensor (B,) of MOS.

    ``checkpoint=`` is required (no released weights: train with ``torchmos train msr-utmos``
    or convert the authors' Lightning checkpoint). See :class:`torchmos.MsrUtmos`.
    """
    from .metrics.msr_utmos import msr_utmos as _impl  # the metric module holds the core

    return _impl(preds, fs, lengths=lengths, checkpoint=checkpoint, device=device)


def vqscore(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
            device: str | torch.device | None = None) -> torch.Tensor:
    """VQScore of each clip: a tensor (B,), roughly in [0, 1], higher is better.

    See :func:`torchmos.metrics.vqscore.vqscore` (defined beside its metric).
    """
    from .metrics.vqscore import vqscore as _impl

    return _impl(preds, fs, lengths=lengths, checkpoint=checkpoint, device=device)


def scoreq_nr(preds: Any, fs: int = 16000, domain: str = "natural", lengths: Any = None,
              checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None) -> torch.Tensor:
    """SCOREQ no-reference MOS of each clip (B,); see :func:`torchmos.metrics.scoreq.scoreq_nr`."""
    from .metrics.scoreq import scoreq_nr as _impl

    return _impl(preds, fs, domain=domain, lengths=lengths, checkpoint=checkpoint, device=device)


def scoreq_ref(preds: Any, target: Any, fs: int = 16000, domain: str = "natural", lengths: Any = None,
               target_lengths: Any = None, checkpoint: str | os.PathLike | None = None,
               device: str | torch.device | None = None) -> torch.Tensor:
    """SCOREQ distance (B,) in [0, 2] to each clip's clean reference (lower is better);
    see :func:`torchmos.metrics.scoreq.scoreq_ref`."""
    from .metrics.scoreq import scoreq_ref as _impl

    return _impl(preds, target, fs, domain=domain, lengths=lengths, target_lengths=target_lengths,
                 checkpoint=checkpoint, device=device)
