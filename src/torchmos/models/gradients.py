"""Gradient paths: a predictor's score as a differentiable function of its input audio.

The inference paths (``forward``, ``embed``, ``distance``) run under ``no_grad`` /
``inference_mode`` and stay exactly as they are; these functions compute the same
scores with autograd, for MOS as a training loss (:class:`torchmos.losses.MOSLoss`) and
for metrics built with ``differentiable=True``. They never change the network: callers
pass a frozen one (the model cache's), and gradients reach the audio only.

Supported: DistillMOS (MOS) and SCOREQ (NR: MOS; REF: distances). A clip's score does not
depend on the batch, as in inference: DistillMOS scores the 7.68 s crops of each clip by
its own length (a short clip zero-padded, as the reference does), SCOREQ runs each clip's
conv encoder on its own and masks the padding in the transformer.

Where they differ from inference, by float rounding only (tests/unit/test_mos_loss.py
checks agreement within 1e-4): SCOREQ runs the ``transformers`` modules instead of its
fused inference path and DistillMOS's transformer takes PyTorch's general
(differentiable) path instead of its fused one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .distillmos import SEQ_LEN, DistillMOSModel, crop_starts

__all__ = ["distance", "distance_to_set", "embed", "mos", "supports"]


def supports(model: nn.Module, what: str = "mos") -> bool:
    """Whether ``model`` has a gradient path for ``what``: ``"mos"`` (DistillMOS, SCOREQ
    NR) or ``"distance"`` (SCOREQ REF; any SCOREQ model can embed).

    >>> supports(torch.nn.Linear(1, 1))
    False
    """
    if isinstance(model, DistillMOSModel):
        return what == "mos"
    if _is_scoreq(model):
        return what == "distance" or getattr(model, "mode", None) == "nr"
    return False


def _is_scoreq(model: nn.Module) -> bool:
    return type(model).__name__ == "ScoreqModel" and hasattr(model, "train_pooled")


def _clips(wavs: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(wavs, Tensor):
        wavs = [wavs] if wavs.dim() == 1 else list(wavs.unbind(0))
    wavs = list(wavs)
    if not wavs:
        raise ValueError("no clips to score.")
    for b, w in enumerate(wavs):
        if not isinstance(w, Tensor) or w.dim() != 1 or not w.is_floating_point():
            what = f"shape {tuple(w.shape)} {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"clip {b}: expected a 1-D float tensor of 16 kHz samples, got {what}.")
    return wavs


# ----------------------------------------------------------------------------- DistillMOS


def _distillmos_crops(model: DistillMOSModel, crops: Tensor, checkpoint_cnn: bool) -> Tensor:
    """(N, 122880) crops -> (N,) MOS, differentiable: the computation of the inference
    path (peak normalisation, compressed spectrum, CNN, head), run through the same
    submodules. With ``checkpoint_cnn`` the CNN's activations (about 170 MB per crop in
    float32) are recomputed in the backward pass instead of kept."""
    crops = crops / (crops.abs().amax(dim=1, keepdim=True) + 1e-8)
    spec = model.cnn.spectrum(crops).contiguous(memory_format=torch.channels_last)
    bf16 = model._bf16(spec.device)

    def features(s: Tensor) -> Tensor:
        with torch.autocast(s.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = model.cnn.cnn(s)
        return torch.flatten(out.to(s.dtype), 1, -2)

    if checkpoint_cnn and torch.is_grad_enabled():
        feat = checkpoint(features, spec, use_reentrant=False)
    else:
        feat = features(spec)
    return 1.0 + 4.0 * model.transformer_pool_attn(feat.transpose(1, 2))


def _distillmos_mos(model: DistillMOSModel, wavs: list[Tensor], checkpoint_cnn: bool,
                    crops_per_batch: int | None) -> Tensor:
    dtype, device = model.cnn.window.dtype, model.device
    crops, owner = [], []
    for b, w in enumerate(wavs):
        w = w.to(device, dtype)
        if w.shape[0] < SEQ_LEN:
            w = nn.functional.pad(w, (0, SEQ_LEN - w.shape[0]))
        for s in crop_starts(w.shape[0]):
            crops.append(w[s : s + SEQ_LEN])
            owner.append(b)
    # checkpointed, one crop at a time: the backward pass then holds one crop's CNN
    # activations at a time, whatever the number of clips
    step = crops_per_batch or (1 if checkpoint_cnn else model.crops_per_batch or (4 if device.type == "cpu" else 32))
    scores = torch.cat([_distillmos_crops(model, torch.stack(crops[i : i + step]), checkpoint_cnn)
                        for i in range(0, len(crops), step)])
    owner_t = torch.tensor(owner, device=device)
    total = torch.zeros(len(wavs), device=device, dtype=scores.dtype).index_add(0, owner_t, scores)
    return total / torch.bincount(owner_t, minlength=len(wavs)).to(scores.dtype)


# ----------------------------------------------------------------------------- SCOREQ


def embed(model: nn.Module, clips: Sequence[Tensor] | Tensor) -> Tensor:
    """(B, D) unit-norm SCOREQ embeddings with gradients w.r.t. the clips (each clip whole;
    ``chunk_seconds`` is an inference option only)."""
    if not _is_scoreq(model):
        raise TypeError(f"embed: a SCOREQ model is needed, got {type(model).__name__}.")
    if model.chunk_seconds is not None:
        raise ValueError(
            "the SCOREQ gradient path embeds every clip whole; chunk_seconds="
            f"{model.chunk_seconds} is an inference option (use chunk_seconds=None)."
        )
    clips = _clips(clips)
    bf16 = model.precision == "bf16"
    with torch.autocast(model.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        pooled = model.train_pooled(clips, train_cnn=True)
    return nn.functional.normalize(pooled.float(), dim=1)


def distance(model: nn.Module, clips: Sequence[Tensor] | Tensor, refs: Sequence[Tensor] | Tensor) -> Tensor:
    """(B,) Euclidean distance between the embeddings of ``clips[b]`` and ``refs[b]``
    (SCOREQ); gradients flow to both (detach the references to keep them out)."""
    clips, refs = _clips(clips), _clips(refs)
    if len(clips) != len(refs):
        raise ValueError(f"{len(clips)} clips but {len(refs)} references; they are scored in pairs.")
    e = embed(model, clips + refs)
    return _norm(e[: len(clips)] - e[len(clips):])


def distance_to_set(model: nn.Module, clips: Sequence[Tensor] | Tensor, ref_embeddings: Tensor) -> Tensor:
    """(B,) mean distance from each clip's embedding to a set (R, D) of reference embeddings."""
    e = embed(model, clips)
    if ref_embeddings.dim() != 2 or ref_embeddings.shape[1] != e.shape[1] or ref_embeddings.shape[0] == 0:
        raise ValueError(f"ref_embeddings must have shape (R, {e.shape[1]}) with R >= 1, "
                         f"got {tuple(ref_embeddings.shape)}.")
    return _norm(e[:, None, :] - ref_embeddings.to(e.device, e.dtype)[None]).mean(1)


def _norm(d: Tensor) -> Tensor:
    # sqrt(sum(d^2)) with a zero gradient, not NaN, where d == 0 (a clip against itself)
    sq = (d * d).sum(-1)
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0)


# ----------------------------------------------------------------------------- MOS


def mos(model: nn.Module, clips: Sequence[Tensor] | Tensor, *, checkpoint_cnn: bool = False,
        crops_per_batch: int | None = None) -> Tensor:
    """(B,) predicted MOS of 16 kHz clips, differentiable w.r.t. the clips.

    Args:
        model: a DistillMOS or SCOREQ NR network (frozen: its weights get no gradient
            unless they require it).
        clips: a list of 1-D tensors of any lengths, or one (L,) / (B, L) tensor.
        checkpoint_cnn: DistillMOS only: recompute the CNN's activations in the backward
            pass instead of keeping them, one batch of crops at a time (one more CNN
            forward; the memory of the backward pass no longer grows with the clips).
        crops_per_batch: DistillMOS only: crops through the network at once (default: 1
            with ``checkpoint_cnn``, else the model's setting, else 4 on CPU, 32 on GPU).

    >>> from torchmos import models
    >>> net = models.load("distillmos")
    >>> x = (torch.randn(8000) * 0.1).requires_grad_()
    >>> mos(net, [x]).sum().backward()
    >>> bool(x.grad.isfinite().all()) and float(x.grad.abs().sum()) > 0
    True
    """
    wavs = _clips(clips)
    if isinstance(model, DistillMOSModel):
        return _distillmos_mos(model, wavs, checkpoint_cnn, crops_per_batch)
    if supports(model, "mos"):
        return model.mos_layer(embed(model, wavs)).squeeze(-1)
    raise TypeError(
        f"{type(model).__name__} has no gradient path for MOS; DistillMOS and SCOREQ NR have "
        "(SCOREQ REF scores distances: use distance() or distance_to_set())."
    )
