"""The strict checkpoint loader every predictor's weight loading goes through.

A checkpoint converter (SCOREQ's fairseq names, MSR-UTMOS' Lightning names) is a table of
key renames; what it produces, and every torchmos file, is loaded here: every key the
module has must be present, none may be left over, every value must be a tensor of the
module's shape. A mismatch raises a :class:`ValueError` that names the checkpoint and the
key(s), never PyTorch's own multi-line ``load_state_dict`` error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["load_state_strict"]

SHOWN = 6  # keys listed at most per kind of mismatch


def _listed(keys: list[str]) -> str:
    return f"{keys[:SHOWN]}{'...' if len(keys) > SHOWN else ''}"


def load_state_strict(
    module: nn.Module,
    state: Mapping[str, Any],
    what: str = "checkpoint",
    *,
    model: str | None = None,
    rename: Mapping[str, str] | None = None,
    hint: Callable[[list[str], list[str]], str] | None = None,
    detail: str = "",
    finite: bool = False,
) -> None:
    """Load ``state`` into ``module`` strictly, or raise a :class:`ValueError` naming the key.

    Args:
        module: the network to fill.
        state: its state dict, as the checkpoint holds it.
        what: how errors name the checkpoint (its path, or e.g. ``"teacher"``).
        model: how errors name the network (default: its class name).
        rename: prefixes of the checkpoint's keys -> the module's (e.g. the authors'
            ``"CNN_1D_encoder."`` -> ``"encoder."``); errors name keys as the checkpoint
            spells them.
        hint: ``hint(missing, unexpected)`` -> a sentence appended to a key mismatch.
        detail: appended to a shape mismatch (e.g. the model's config).
        finite: also refuse NaN/Inf values.

    >>> net = torch.nn.Linear(2, 1)
    >>> load_state_strict(net, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
    >>> load_state_strict(net, {"weight": torch.ones(1, 2)}, "w.pt")
    Traceback (most recent call last):
    ...
    ValueError: w.pt: does not fit the Linear model: missing keys ['bias'], unexpected keys [].
    >>> load_state_strict(net, {"weight": torch.ones(1, 3), "bias": torch.zeros(1)}, "w.pt")
    Traceback (most recent call last):
    ...
    ValueError: w.pt: key 'weight' has shape (1, 3), expected (1, 2).
    >>> load_state_strict(net, {"bias": torch.zeros(1)}, "w.pt", rename={"lin.": ""})
    Traceback (most recent call last):
    ...
    ValueError: w.pt: does not fit the Linear model: missing keys ['lin.weight'], unexpected keys [].
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{what}: expected a state_dict (a mapping of names to tensors), got "
                         f"{type(state).__name__}.")
    rename = dict(rename or {})

    def ours(key: str) -> str:
        for a, b in rename.items():
            if key.startswith(a):
                return b + key[len(a):]
        return key

    def theirs(key: str) -> str:
        for a, b in rename.items():
            if key.startswith(b):
                return a + key[len(b):]
        return key

    own = module.state_dict()
    mapped = {ours(k): v for k, v in state.items()}
    missing = sorted(theirs(k) for k in set(own) - set(mapped))
    extra = sorted(k for k in state if ours(k) not in own)
    if missing or extra:
        raise ValueError(
            f"{what}: does not fit the {model or type(module).__name__} model: missing keys "
            f"{_listed(missing)}, unexpected keys {_listed(extra)}.{hint(missing, extra) if hint else ''}"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{what}: key {k!r} holds a {type(v).__name__}, not a tensor.")
        want = tuple(own[ours(k)].shape)
        if tuple(v.shape) != want:
            raise ValueError(f"{what}: key {k!r} has shape {tuple(v.shape)}, expected {want}{detail}.")
        if finite and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{what}: key {k!r} holds NaN/Inf values.")
    module.load_state_dict(mapped, strict=True)
