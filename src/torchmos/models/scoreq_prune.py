"""Structured pruning of a SCOREQ-style wav2vec 2.0 predictor, and loading pruned files.

The pruning of the DistillMOS paper's comparison (Stahl & Gamper, 2025) in its simplest
structured form: whole transformer layers are removed (the first ``K`` are kept: the
embedding is the mean of the last kept layer), and whole attention heads (per layer, the
``H`` with the largest weight magnitude are kept). A pruned model is saved in SCOREQ's
official layout; its q/k/v projections are then narrower than the hidden size, which
:func:`attention_widths` reads from the file and :func:`resize_attention` applies to a
freshly built model before the strict load (:meth:`ScoreqModel.from_pretrained
<torchmos.models.scoreq.ScoreqModel.from_pretrained>`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["attention_widths", "head_importance", "keep_layers", "prune_heads", "resize_attention"]


def keep_layers(model: Any, k: int) -> None:
    """Keep the first ``k`` transformer layers of ``model.backbone`` (in place)."""
    enc = model.backbone.encoder
    if not 1 <= k <= len(enc.layers):
        raise ValueError(f"keep_layers: the model has {len(enc.layers)} layers; keep between 1 and that, got {k}.")
    enc.layers = nn.ModuleList(list(enc.layers)[:k])
    model.backbone.config.num_hidden_layers = k


def head_importance(att: nn.Module) -> Tensor:
    """(heads,) importance of each head of a wav2vec 2.0 attention module: the product of
    the norms of its value rows and of its output-projection columns (what the head can
    add to the residual stream)."""
    hd = att.head_dim
    n = att.v_proj.weight.shape[0] // hd
    v = att.v_proj.weight.detach().float().reshape(n, hd, -1).flatten(1).norm(dim=1)
    o = att.out_proj.weight.detach().float().reshape(att.out_proj.weight.shape[0], n, hd).transpose(0, 1)
    return v * o.flatten(1).norm(dim=1)


def _narrow(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    b = lin.bias.detach() if lin.bias is not None else None
    if b is not None and rows is not None:
        b = b[rows]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


def prune_heads(model: Any, keep: int) -> dict[int, list[int]]:
    """Keep the ``keep`` most important heads (:func:`head_importance`) of every layer of
    ``model.backbone`` (in place); returns layer -> the kept heads' original indices."""
    kept: dict[int, list[int]] = {}
    for i, layer in enumerate(model.backbone.encoder.layers):
        att = layer.attention
        hd = att.head_dim
        n = att.q_proj.weight.shape[0] // hd
        if not 1 <= keep <= n:
            raise ValueError(f"keep_heads: layer {i} has {n} heads; keep between 1 and that, got {keep}.")
        heads = sorted(torch.topk(head_importance(att), keep).indices.tolist())
        idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
        att.q_proj, att.k_proj, att.v_proj = (_narrow(m, rows=idx) for m in (att.q_proj, att.k_proj, att.v_proj))
        att.out_proj = _narrow(att.out_proj, cols=idx)
        att.num_heads = keep
        kept[i] = heads
    if hasattr(model, "_fuse_qkv"):
        model._fuse_qkv()
    return kept


def attention_widths(sd: Mapping[str, Any], prefix: str) -> dict[int, int]:
    """layer -> the output width of its q projection, in an official-layout state_dict whose
    encoder keys start with ``prefix`` (``pt_model.ssl_model.`` or ``ssl_model.``)."""
    out = {}
    pat = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight")
    for k, v in sd.items():
        m = pat.fullmatch(k)
        if m and isinstance(v, Tensor):
            out[int(m.group(1))] = int(v.shape[0])
    return out


def resize_attention(model: Any, widths: Mapping[int, int]) -> None:
    """Give the attention of each layer in ``widths`` q/k/v projections of that output
    width (and the matching output projection), uninitialised on the model's device, so
    that a pruned file loads strictly. Layers of full width are left as they are."""
    layers = model.backbone.encoder.layers
    for i, width in widths.items():
        if i >= len(layers):
            continue  # the strict load names the unexpected key
        att = layers[i].attention
        if width == att.q_proj.weight.shape[0]:
            continue
        if width % att.head_dim or width <= 0:
            raise ValueError(f"layer {i}: an attention width of {width} is not a multiple of the head size "
                             f"{att.head_dim}.")
        d, dev, dt = att.q_proj.weight.shape[1], att.q_proj.weight.device, att.q_proj.weight.dtype
        att.q_proj, att.k_proj, att.v_proj = (nn.Linear(d, width, device=dev, dtype=dt) for _ in range(3))
        att.out_proj = nn.Linear(width, d, device=dev, dtype=dt)
        att.num_heads = width // att.head_dim
