"""The model cache: one frozen network per (model, checkpoint, options, device).

Every metric, functional call and adapter gets its network here, so a process holds one
copy of each model per device however many callers use it. A cached network is built in
full precision (whatever the caller's autocast or default dtype), is in eval mode and
its parameters do not require gradients; callers never move, convert or train it (they
ask for the network of another device instead). The cache is thread-safe: a model is
loaded once even when several threads ask for it at the same time.

The least recently used models beyond :data:`_CACHE_SIZE` are dropped from the cache,
but a network that a caller (a metric) still holds stays shared: it is found again as
long as it is alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .. import hub, models
from ._core import full_precision

__all__ = ["get_model"]

_CACHE_SIZE = 8  # models kept (least recently used first out)
_Key = tuple[Any, ...]
_models: OrderedDict[_Key, nn.Module] = OrderedDict()
_alive: weakref.WeakValueDictionary[_Key, nn.Module] = weakref.WeakValueDictionary()  # still held by someone
_loading: dict[_Key, threading.Lock] = {}  # one lock per model being loaded
_lock = threading.Lock()  # guards the three above; never held while loading


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


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an option value (dicts and lists, e.g. a backbone config).

    >>> _freeze({"conv_dim": [32, 32], "layers": 2}) == _freeze({"layers": 2, "conv_dim": (32, 32)})
    True
    """
    if isinstance(value, dict):
        return ("<dict>", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("<set>", tuple(sorted(_freeze(v) for v in value)))
    return value


def _lookup(key: _Key) -> nn.Module | None:
    """The cached or still-alive network for ``key`` (call with ``_lock`` held)."""
    model = _models.get(key)
    if model is None:
        model = _alive.get(key)
        if model is None:
            return None
        _models[key] = model  # used again: back in the cache
    _models.move_to_end(key)
    while len(_models) > _CACHE_SIZE:
        _models.popitem(last=False)
    return model


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _weights_stamp(name: str, checkpoint: str | None) -> tuple[str, int, int] | None:
    """``(path, size, mtime)`` of the weight file a load would read now, found without
    reading it: the ``checkpoint``, or the card's file in the hub cache or its package,
    in :func:`torchmos.hub.resolve`'s order. ``None`` if there is none yet (a download)."""
    path: Any = checkpoint
    if path is None:
        if name not in hub.CARDS:
            return None
        path = hub.local_file(name)
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (os.fspath(path), st.st_size, st.st_mtime_ns) if st is not None else None


def _cached(base: _Key, name: str, checkpoint: str | None, sha256: str | None, device: str,
            options: dict[str, Any]) -> nn.Module:
    """The model for ``base`` and the weight file as it is now, loaded (and so verified)
    at most once however many threads ask together, and again once the file changes."""
    key = (*base, _weights_stamp(name, checkpoint))
    with _lock:
        model = _lookup(key)
        if model is not None:
            return model
        loading = _loading.setdefault(base, threading.Lock())
    with loading:  # the first thread loads; the others wait here, then find it cached
        key = (*base, _weights_stamp(name, checkpoint))  # another thread may have downloaded it
        with _lock:
            model = _lookup(key)
            if model is not None:
                return model
        try:
            # built as it is meant to run, whatever the caller's context (an autocast, a bf16
            # default dtype, a default device such as Lightning's init_module() sets, or an
            # inference_mode: its parameters would be inference tensors, for every later caller)
            with full_precision(device), torch.device("cpu"), torch.inference_mode(False):
                model = _frozen(models.load(name, checkpoint=checkpoint, sha256=sha256, **options).to(device))
        except BaseException:  # a failed load is not cached; the next caller tries again
            with _lock:
                _loading.pop(base, None)
            raise
        key = (*base, _weights_stamp(name, checkpoint))  # the file as loaded (a download made it)
        with _lock:
            _models[key] = model
            _alive[key] = model
            _lookup(key)  # most recent; the oldest beyond the size leave
            _loading.pop(base, None)
    return model


def _clear_cache() -> None:
    """Forget every cached model (tests; freeing memory). Networks still held by a
    metric stay with it, but are no longer handed to new callers."""
    with _lock:
        _models.clear()
        _alive.clear()


def get_model(name: str, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
              device: str | torch.device = "cpu", **options: Any) -> nn.Module:
    """The cached predictor ``name`` on ``device`` (loaded on first use), frozen.

    The model is shared by every caller that asks for the same one (metrics, functional
    calls, adapters, threads): it is loaded once even when several threads ask at the same
    time, ``"cuda"`` and ``"cuda:0"`` (when 0 is the current device) are the same entry,
    and callers must not change it (use ``torchmos.models.load`` for a private copy). It
    is in eval mode, its parameters do not require gradients, and it was built in full
    precision (an enclosing autocast or bf16 default dtype does not reach the build).

    A network is cached with the path, size and modification time of the weight file it
    was loaded from (a local ``checkpoint``, or the card's file in the hub cache or its
    package), so a file rewritten in place (a model retrained into the same folder, a
    corrupted download) is loaded, and so verified, afresh.
    ``options`` are the predictor's (e.g. ``precision="bf16"``); each set of options is
    its own entry.

    >>> get_model("distillmos") is get_model("distillmos", device="cpu:0")
    True
    """
    ckpt = os.fspath(checkpoint) if checkpoint is not None else None
    dev = _device_key(device)
    return _cached((name, ckpt, sha256, dev, _freeze(options)), name, ckpt, sha256, dev, options)
