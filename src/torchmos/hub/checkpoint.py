"""Reading and writing weight files safely: safetensors or ``torch.load(weights_only=True)``
in; ``torch.save`` through a temporary file and an atomic rename out."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .integrity import HubError

__all__ = ["load_checkpoint", "save_atomic"]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise HubError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise HubError(f"{path}: reading .safetensors needs the 'safetensors' package.") from e
        try:
            return dict(load_file(str(path)))
        except Exception as e:  # SafetensorError and friends name no file
            raise HubError(f"{path}: not a valid .safetensors file ({type(e).__name__}: {e}).") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own text: many lines, terminal escapes, unsafe advice
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise HubError(
                f"{path}: refused: the file holds a Python object other than tensors ({found.group(1)}), "
                "which could run code when loaded. torchmos reads weights only with "
                "torch.load(weights_only=True): re-save the file's state_dict (tensors only) from code "
                "you trust, or use safetensors."
            ) from None
        why = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, flags=re.S)
        raise HubError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) (not a torch checkpoint, or "
            f"a damaged one: {why.group(1).strip() if why else _first_line(e)})."
        ) from None
    except Exception as e:  # pickle errors carry little context of their own
        raise HubError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{_first_line(e)}). torchmos loads only tensors and plain containers, never arbitrary "
            "pickled code."
        ) from e
    if not isinstance(obj, dict):
        raise HubError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}.")
    return obj


def _first_line(e: BaseException) -> str:
    """An exception's first line, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file beside ``path``, then rename it into place:
    a reader (or a resumed run) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

