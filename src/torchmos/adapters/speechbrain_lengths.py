"""SpeechBrain batches -> clips: relative lengths to sample counts, padding removed.

Shared by :class:`~torchmos.adapters.speechbrain.MOSStats` and
:class:`~torchmos.adapters.speechbrain_inference.MOSEstimator`; imports no toolkit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["absolute_lengths", "unpad", "unpad_reference"]


def absolute_lengths(lens: Any, max_len: int) -> torch.Tensor:
    """SpeechBrain relative lengths (fractions of ``max_len``) -> sample counts.

    Rounded as SpeechBrain rounds them (``round(lens * max_len)``, see
    ``speechbrain.utils.data_utils.undo_padding``), and clipped to ``[1, max_len]``.

    >>> absolute_lengths(torch.tensor([1.0, 0.5]), 16000).tolist()
    [16000, 8000]
    """
    lens = torch.as_tensor(lens, dtype=torch.float64).reshape(-1).cpu()
    if bool((lens <= 0).any()) or bool((lens > 1.0 + 1e-6).any()):
        raise ValueError(
            f"relative lengths must be in (0, 1] (SpeechBrain's convention), got {lens.tolist()}; "
            "pass sample counts to torchmos.functional instead."
        )
    return torch.round(lens * max_len).long().clamp(1, max_len)


def _padded_length(wavs: Any) -> int | None:
    """T of a ``(B, T)`` / ``(B, T, C)`` / ``(T,)`` batch; ``None`` for a list of clips."""
    if isinstance(wavs, (torch.Tensor, np.ndarray)):
        return int(wavs.shape[1] if wavs.ndim >= 2 else wavs.shape[0])
    return None


def unpad(wavs: Any, lens: Any = None, *, arg: str = "predict",
          lens_arg: str = "lengths") -> tuple[Any, torch.Tensor | None]:
    """A SpeechBrain batch -> ``(waveforms, sample counts)`` for :class:`~torchmos.adapters.Scorer`.

    ``wavs``: a padded ``(B, T)`` tensor, SpeechBrain's multichannel ``(B, T, C)`` (mixed
    down to mono), one clip ``(T,)``, or a list of 1-D clips (which needs no ``lens``).
    ``lens``: relative lengths ``(B,)`` in (0, 1], or ``None`` for no padding. ``arg`` and
    ``lens_arg`` name the arguments in error messages.

    >>> x, n = unpad(torch.zeros(2, 100), torch.tensor([1.0, 0.5]))
    >>> tuple(x.shape), n.tolist()
    ((2, 100), [100, 50])
    """
    if isinstance(wavs, np.ndarray):
        wavs = torch.from_numpy(wavs)
    if isinstance(wavs, torch.Tensor):
        x = wavs.detach()
        if x.dim() == 3:  # SpeechBrain's multichannel layout (B, T, C)
            x = x.mean(dim=-1)
        elif x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise ValueError(f"{arg}: expected (B, T) waveforms (or (B, T, C), or one clip (T,)), "
                             f"got shape {tuple(wavs.shape)}.")
        if lens is None:
            return x, None
        t = torch.as_tensor(lens)
        if t.dim() > 1 or t.numel() != x.shape[0]:
            hint = (" It looks like waveforms: SpeechBrain's STOI form append(ids, predict, target, lens) "
                    "is not taken; pass the reference as target=." if t.dim() > 1 and arg == "predict" else "")
            raise ValueError(f"{lens_arg}= must hold one relative length per clip of {arg}, shape "
                             f"({x.shape[0]},); got shape {tuple(t.shape)}.{hint}")
        return x, absolute_lengths(t, x.shape[1])
    if isinstance(wavs, (list, tuple)):
        if lens is not None:
            raise ValueError(f"{lens_arg}= goes with a padded (B, T) tensor; {arg} is a list of clips, "
                             "which has its own lengths.")
        return [w.detach() if isinstance(w, torch.Tensor) else w for w in wavs], None
    raise TypeError(f"{arg}: expected a (B, T) tensor or a list of 1-D clips, got {type(wavs).__name__}.")


def unpad_reference(target: Any, target_lengths: Any, predict: Any, lengths: Any, *, arg: str = "target",
                    lens_arg: str = "target_lengths", pred_lens_arg: str = "lengths") -> tuple[Any, Any]:
    """:func:`unpad` for the references of a reference model.

    Without ``target_lengths`` the clips' ``lengths`` describe the references too, as in
    SpeechBrain's PESQ/STOI stats; that needs ``target`` padded like ``predict``.
    """
    if target_lengths is None and lengths is not None and _padded_length(target) is not None:
        t_pred, t_ref = _padded_length(predict), _padded_length(target)
        if t_pred != t_ref:
            raise ValueError(
                f"{arg} is padded to {t_ref} samples and the clips to {t_pred}, so {pred_lens_arg}= "
                f"cannot describe both; pass {lens_arg}= (the references' own relative lengths)."
            )
        target_lengths = lengths
    return unpad(target, target_lengths, arg=arg, lens_arg=lens_arg)
