"""SCOREQ's wav2vec 2.0 encoder, run fast and batch-independently (SPECS §2).

:class:`FastEncoder` is the inference path of a ``transformers`` Wav2Vec2Model (BASE
layout: group-normed conv encoder, post-norm transformer) that :class:`ScoreqModel
<torchmos.models.scoreq.ScoreqModel>` mixes in. It computes what the model's own
``forward`` computes in eval mode, on its modules and weights, with two differences that
do not change the result:

* a clip goes through the conv feature encoder on its own, in time blocks for long clips
  (GroupNorm statistics are taken over the whole clip in a first pass, in float64, and
  everything after them is local in time), so memory does not grow with the clip;
* the transformer runs with fewer kernel launches: q/k/v in one GEMM (the three weights
  kept adjacent in memory), residual adds and GELU in place, the positional conv's weight
  norm computed once; attention is PyTorch's fused kernel, which never holds the T x T
  matrix.

Clips are then padded at the frame level into batches for the transformer, with an
attention mask, padded frames zeroed before the positional convolution and a masked mean
(in :meth:`ScoreqModel.pooled <torchmos.models.scoreq.ScoreqModel.pooled>`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMBED_DIM", "HOP", "FastEncoder"]

HOP = 320  # total stride of the conv feature encoder, in samples at 16 kHz
EMBED_DIM = 768


def _adjacent(tensors: Sequence[Tensor]) -> bool:
    """Whether equal-shaped contiguous tensors lie back to back in one storage, in order."""
    first = tensors[0]
    if not first.is_contiguous() or first.device.type == "meta":
        return False
    step = first.numel() * first.element_size()
    return all(
        t.is_contiguous() and t.shape == first.shape and t.dtype == first.dtype and t.device == first.device
        and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and t.data_ptr() == first.data_ptr() + i * step
        for i, t in enumerate(tensors)
    )



class FastEncoder:
    """The inference path of the wav2vec 2.0 ``backbone`` of the module it is mixed into.

    That module provides ``backbone`` (a ``transformers.Wav2Vec2Model``), ``precision``
    (``"fp32"`` or ``"bf16"``), ``block_frames`` (output frames per conv-encoder block)
    and ``receptive_field`` (samples seen by one output frame).
    """

    backbone: Any
    precision: str
    block_frames: int
    receptive_field: int

    @staticmethod
    def _check_layout(config: Any) -> int:
        """Refuse a ``Wav2Vec2Config`` this path does not compute; returns the samples seen
        by one output frame (400 for the BASE encoder)."""
        if config.feat_extract_norm != "group" or config.do_stable_layer_norm:
            raise ValueError(
                "SCOREQ uses the wav2vec 2.0 BASE layout (feat_extract_norm='group', "
                "do_stable_layer_norm=False); other layouts are not supported."
            )
        if math.prod(config.conv_stride) != HOP:
            raise ValueError(f"SCOREQ's conv encoder has a total stride of {HOP}; got conv_stride={config.conv_stride}.")
        return 1 + sum((k - 1) * math.prod(config.conv_stride[:i]) for i, k in enumerate(config.conv_kernel))

    def _store_bf16(self) -> None:
        """Keep bf16 copies of the conv and linear weights (autocast would cast them on
        every call); norms, the positional conv's weight norm and the heads stay fp32."""
        pos = self.backbone.encoder.pos_conv_embed.conv
        for module in self.backbone.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)) and module is not pos:
                module.to(torch.bfloat16)

    def _conv0(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Frames [start, stop) of conv 0 of a 1-D clip, as a (C, n) matrix (one GEMM)."""
        conv = self.backbone.feature_extractor.conv_layers[0].conv
        k, s = conv.kernel_size[0], conv.stride[0]
        patches = x[s * start: s * (stop - 1) + k].unfold(0, k, s)  # (n, k) view
        y = torch.mm(conv.weight[:, 0, :], patches.t())
        if conv.bias is not None:
            y += conv.bias[:, None]
        return y

    def _conv_rest(self, y: Tensor, mean: Tensor | None = None, scale: Tensor | None = None,
                   shift: Tensor | None = None) -> Tensor:
        """(Normalise conv-0 output (C, n) in place,) activate, run conv 1..6 -> (C, n')."""
        layers = self.backbone.feature_extractor.conv_layers
        if mean is not None:
            y.sub_(mean[:, None].to(y.dtype)).mul_(scale[:, None].to(y.dtype)).add_(shift[:, None].to(y.dtype))
        y = self._act(layers[0].activation, y)
        y = y[None]
        for layer in layers[1:]:
            y = self._act(layer.activation, layer.conv(y))
        return y[0]

    def _act(self, act: nn.Module, y: Tensor) -> Tensor:
        if self._gelu_inplace(act):
            return torch.ops.aten.gelu_(y)
        return act(y)

    @staticmethod
    def _gelu_inplace(act: nn.Module) -> bool:
        return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu

    def _features(self, x: Tensor) -> Tensor:
        """(L,) clip, L a multiple of 320 -> (L / 320 - 1, 512) conv features, exactly as
        the clip alone would get them."""
        conf = self.backbone.config
        gn = self.backbone.feature_extractor.conv_layers[0].layer_norm
        k0, s0 = conf.conv_kernel[0], conf.conv_stride[0]
        n0 = (x.shape[0] - k0) // s0 + 1
        frames = x.shape[0] // HOP - 1
        block = self.block_frames
        if frames <= block:  # one pass: the GroupNorm itself
            y = nn.functional.group_norm(self._conv0(x, 0, n0)[None], gn.num_groups, gn.weight, gn.bias, gn.eps)
            return self._conv_rest(y[0]).t()
        # pass 1: per-channel statistics over the clip's n0 conv-0 frames, in float64
        total = torch.zeros(gn.num_channels, dtype=torch.float64, device=x.device)
        sq = torch.zeros_like(total)
        step = block * (HOP // s0)
        for a in range(0, n0, step):
            y = self._conv0(x, a, min(a + step, n0))
            total += y.sum(1, dtype=torch.float64)
            sq += torch.linalg.vector_norm(y, 2, dim=1, dtype=torch.float64).pow(2)
        mean = total / n0
        var = (sq / n0 - mean.pow(2)).clamp_min(0)
        scale = (torch.rsqrt(var + gn.eps) * gn.weight.double()).float()
        mean = mean.float()
        # pass 2: output frames [j, j + block) need conv-0 frames [64 j, 64 (j + block) + 15)
        per = HOP // s0
        extra = (self.receptive_field - HOP - k0) // s0 + 1  # conv-0 frames shared with the next block
        out = []
        for j in range(0, frames, block):
            j1 = min(j + block, frames)
            y = self._conv0(x, per * j, per * j1 + extra)
            out.append(self._conv_rest(y, mean, scale, gn.bias))
        return torch.cat(out, dim=1).t()

    def _pos_conv_weight(self) -> Tensor:
        """The positional conv's weight-normed weight, cached while its parameters are unchanged."""
        conv = self.backbone.encoder.pos_conv_embed.conv
        if hasattr(conv, "parametrizations"):
            srcs = (conv.parametrizations.weight.original0, conv.parametrizations.weight.original1)
        else:  # torch without the parametrisation API
            srcs = (conv.weight_g, conv.weight_v)
        key = (self.precision, *((p._version, p.data_ptr(), p.device, p.dtype) for p in srcs))
        cached = self.__dict__.get("_pos_cache")
        if cached is None or cached[0] != key:
            g, v = srcs
            w = torch._weight_norm(v, g, 2)
            if self.precision == "bf16":
                w = w.to(torch.bfloat16)
            self.__dict__["_pos_cache"] = cached = (key, w)
        return cached[1]

    def _transformer(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """transformers' Wav2Vec2Encoder (post-norm) on (B, T, D) with a padding mask.

        The same computation as ``Wav2Vec2Encoder.forward`` in eval mode, on its modules
        and weights, with fewer kernel launches: q/k/v in one GEMM (the three weights are
        kept adjacent in memory, see :meth:`_fuse_qkv`), residual adds in place, GELU in
        place, the positional conv's weight norm computed once.
        """
        enc = self.backbone.encoder
        if mask is not None:  # the per-file run has no frames here; the pos conv pads with zeros
            hidden = hidden.masked_fill(~mask[:, :, None], 0.0)
        pos = enc.pos_conv_embed
        pc = nn.functional.conv1d(hidden.transpose(1, 2), self._pos_conv_weight(), pos.conv.bias,
                                  padding=pos.conv.padding, groups=pos.conv.groups)
        pc = pos.activation(pos.padding(pc))
        hidden = enc.layer_norm(hidden + pc.transpose(1, 2))
        attn = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T): True = attend
        b, t, d = hidden.shape
        for layer in enc.layers:
            att = layer.attention
            w, bias = self._qkv(att)
            # heads per layer from the weights: a pruned layer (scoreq_prune) has fewer
            qkv = nn.functional.linear(hidden, w, bias).view(b, t, 3, -1, att.head_dim).permute(2, 0, 3, 1, 4)
            o = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn,
                                                           scale=att.scaling)
            o = o.transpose(1, 2).reshape(b * t, -1)
            h = torch.addmm(att.out_proj.bias, o, att.out_proj.weight.t()).view(b, t, d)
            hidden = layer.layer_norm(h.add_(hidden))
            ff = layer.feed_forward
            z = self._act(ff.intermediate_act_fn, ff.intermediate_dense(hidden))
            h = torch.addmm(ff.output_dense.bias, z.view(b * t, -1), ff.output_dense.weight.t()).view(b, t, d)
            hidden = layer.final_layer_norm(h.add_(hidden))
        return hidden

    @staticmethod
    def _qkv(att: nn.Module) -> tuple[Tensor, Tensor]:
        """One (3D, D) weight and (3D,) bias for q, k, v: views when they are adjacent."""
        ws = (att.q_proj.weight, att.k_proj.weight, att.v_proj.weight)
        bs = (att.q_proj.bias, att.k_proj.bias, att.v_proj.bias)
        if _adjacent(ws) and _adjacent(bs):
            d = ws[0].shape[0]
            return (ws[0].as_strided((3 * d, ws[0].shape[1]), ws[0].stride()),
                    bs[0].as_strided((3 * d,), bs[0].stride()))
        return torch.cat(ws), torch.cat(bs)

    @torch.no_grad()
    def _fuse_qkv(self) -> None:
        """Store each layer's q, k, v weights (and biases) back to back in one tensor, so
        attention projects with one GEMM and no copy.

        The registered Parameters stay the same objects (state_dict keys, an optimiser or
        DDP built earlier, hooks): only their storage is rebound (``p.data = ...``), as
        ``Module.to()`` itself does. Called after construction and after every
        ``.to()`` / ``.double()`` / ``.half()``, which give each tensor its own storage; an
        optimiser's in-place step or ``load_state_dict`` writes through to the fused tensor.
        Should adjacency be lost otherwise (a Parameter replaced by hand), :meth:`_qkv`
        concatenates on the fly.
        """
        if self.backbone.encoder.layers[0].attention.q_proj.weight.is_meta:
            return
        for layer in self.backbone.encoder.layers:
            att = layer.attention
            mods = (att.q_proj, att.k_proj, att.v_proj)
            for name in ("weight", "bias"):
                ps = [getattr(m, name) for m in mods]
                if _adjacent(ps):
                    continue
                fused = torch.cat([p.detach() for p in ps])
                n = ps[0].shape[0]
                for i, p in enumerate(ps):
                    p.data = fused[i * n:(i + 1) * n]
