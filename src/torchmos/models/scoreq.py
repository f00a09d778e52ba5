"""SCOREQ: wav2vec 2.0 BASE embeddings for no-reference MOS and reference distance (SPECS §2).

One architecture, four released models (Ragano, Skoglund & Hines, NeurIPS 2024):

* **no-reference** (``mode="nr"``): MOS = ``Linear(768 -> 1)`` of the clip's embedding
  (an unbounded linear output, no clamp);
* **reference** (``mode="ref"``): the Euclidean distance between the embeddings of a test
  clip and a clean reference, in [0, 2] (both are unit vectors); lower is better.

The embedding is the mean over time of the last transformer layer of a wav2vec 2.0 BASE
encoder (``transformers.Wav2Vec2Model(Wav2Vec2Config())``), L2-normalised. Input: mono
float 16 kHz audio, zero-padded at the end to a multiple of 320 samples, not normalised.

**Same score in any batch.** The reference scores one file at a time, and a naive padded
batch changes scores (the GroupNorm of the first conv layer normalises over time, and the
mean pooling and attention see the padding). Here every clip goes through the conv
feature encoder on its own (its GroupNorm statistics are its own), and clips share padded
batches only in the transformer: padded frames are zeroed before the positional
convolution (the per-file run sees the convolution's zero padding there), the attention
gets a padding mask, and the mean pooling counts valid frames only.

**Memory.** The conv encoder of a long clip runs in 20 s time blocks (GroupNorm
statistics from a first pass over the whole clip, accumulated in float64), so its memory
does not grow with the clip; the transformer uses PyTorch's fused attention, which never
holds the T x T attention matrix.

**Long audio.** By default a clip is embedded whole, as the reference does (attention
compute grows with the square of the length). ``chunk_seconds=`` opts into a documented
deviation: the clip is cut into near-equal chunks of at most that length (at 320-sample
boundaries), every chunk goes through the encoder on its own, and the embedding is the
mean of *all chunks' frames* (the frame-weighted mean of the chunks' pooled, not yet
normalised, embeddings), then normalised. A clip that fits in one chunk scores exactly as
in the default mode.

``transformers`` is imported only when a model is built, so ``import torchmos`` does not
need it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub
from . import require_transformers

__all__ = ["EMBED_DIM", "HOP", "ScoreqModel", "chunk_bounds", "infer_config", "official_key"]

HOP = 320  # total stride of the conv feature encoder, in samples at 16 kHz
EMBED_DIM = 768


def chunk_bounds(length: int, chunk: int | None) -> list[tuple[int, int]]:
    """(start, end) samples of the chunks of a 320-padded clip of ``length`` samples.

    With ``chunk=None`` (or a clip that fits) there is one chunk, the whole clip. Otherwise
    the clip's 320-sample units are split into ``ceil(length / chunk)`` near-equal parts
    (the first ones one unit longer), so no chunk is longer than ``chunk`` and none is a
    tiny leftover.

    >>> chunk_bounds(3200, None), chunk_bounds(3200, 3200)
    ([(0, 3200)], [(0, 3200)])
    >>> chunk_bounds(3520, 1600)
    [(0, 1280), (1280, 2560), (2560, 3520)]
    """
    if length % HOP:
        raise ValueError(f"length {length} is not a multiple of {HOP}.")
    if chunk is None or length <= chunk:
        return [(0, length)]
    units, per = length // HOP, chunk // HOP
    n = -(-units // per)
    base, extra = divmod(units, n)
    out, start = [], 0
    for i in range(n):
        size = (base + (1 if i < extra else 0)) * HOP
        out.append((start, start + size))
        start += size
    return out


# ----------------------------------------------------------------------------- key table

_ENCODER_RULES: list[tuple[str, str]] = [
    # (regex on the transformers key, replacement giving the fairseq key), both after prefixes
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"feature_extractor\.conv_layers\.0\.layer_norm\.(weight|bias)", r"feature_extractor.conv_layers.0.2.\1"),
    (r"feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", r"encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", r"encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.weight_g", r"encoder.pos_conv.0.weight_g"),  # torch without parametrizations
    (r"encoder\.pos_conv_embed\.conv\.weight_v", r"encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.bias", r"encoder.pos_conv.0.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)", r"encoder.layers.\1.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", r"encoder.layers.\1.fc2.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"masked_spec_embed", r"mask_emb"),
]
# Weight norm saved by a torch that uses the parametrisation API (fairseq and the official
# files use the older weight_g / weight_v names): accepted as aliases.
_WEIGHT_NORM_ALIASES = {
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv.0.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv.0.parametrizations.weight.original1",
}
# Trained only for masked pre-training, never used at inference; files re-exported without
# it (e.g. by the scoreq-pytorch port) are accepted.
_OPTIONAL = {"mask_emb"}

_PREFIXES = {
    "nr": ("pt_model.ssl_model.", "pt_model.embedding_layer."),
    "ref": ("ssl_model.", "embedding_layer."),
}


def official_key(key: str, mode: str) -> str:
    """The official (fairseq-named) checkpoint key of one of our ``state_dict`` keys.

    >>> official_key("backbone.encoder.layers.3.attention.q_proj.weight", "ref")
    'ssl_model.encoder.layers.3.self_attn.q_proj.weight'
    >>> official_key("backbone.feature_extractor.conv_layers.0.layer_norm.bias", "nr")
    'pt_model.ssl_model.feature_extractor.conv_layers.0.2.bias'
    >>> official_key("mos_layer.weight", "nr")
    'mos_layer.weight'
    """
    ssl, emb = _PREFIXES[mode]
    if key.startswith("backbone."):
        inner = key[len("backbone."):]
        for pattern, repl in _ENCODER_RULES:
            if re.fullmatch(pattern, inner):
                return ssl + re.sub(pattern, repl, inner)
        raise KeyError(f"no official name for backbone key {key!r}")
    if key.startswith("embedding_layer."):
        return emb + key[len("embedding_layer."):]
    if key.startswith("mos_layer.") and mode == "nr":
        return key
    raise KeyError(f"no official name for key {key!r} in mode {mode!r}")


def infer_config(sd: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """``Wav2Vec2Config`` fields of the encoder in an official-layout SCOREQ state_dict,
    read from its tensor shapes (the files carry no config): layers, hidden size, FFN size,
    conv channels and kernels, positional conv kernel and groups. The number of attention
    heads is not visible in the shapes; it is ``hidden_size // 64`` (wav2vec 2.0's 64-wide
    heads: 12 for BASE), which is what ``torchmos train scoreq --hidden`` builds.

    Returns ``{}`` for a file without the encoder keys (the strict load then names what is
    missing).

    >>> m = ScoreqModel("ref", num_hidden_layers=1, hidden_size=64, num_attention_heads=1,
    ...                 intermediate_size=96, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
    >>> cfg = infer_config(m.to_official_state_dict(), "ref")
    >>> cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["conv_dim"][0]
    (1, 64, 96, 32)
    """
    pre = _PREFIXES[mode][0]
    proj = sd.get(pre + "post_extract_proj.weight")
    pos = sd.get(pre + "encoder.pos_conv.0.weight_v", sd.get(pre + "encoder.pos_conv.0.parametrizations.weight.original1"))
    if not isinstance(proj, Tensor) or not isinstance(pos, Tensor):
        return {}
    convs = []
    while isinstance(sd.get(f"{pre}feature_extractor.conv_layers.{len(convs)}.0.weight"), Tensor):
        convs.append(sd[f"{pre}feature_extractor.conv_layers.{len(convs)}.0.weight"])
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(pre) + r"encoder\.layers\.(\d+)\.", k))}
    fc1 = sd.get(pre + "encoder.layers.0.fc1.weight")
    hidden = int(proj.shape[0])
    cfg: dict[str, Any] = {
        "hidden_size": hidden,
        "num_attention_heads": max(1, hidden // 64),
        "num_hidden_layers": len(layers),
        "num_conv_pos_embeddings": int(pos.shape[2]),
        "num_conv_pos_embedding_groups": hidden // int(pos.shape[1]),
    }
    if convs:
        cfg["conv_dim"] = tuple(int(w.shape[0]) for w in convs)
        cfg["conv_kernel"] = tuple(int(w.shape[2]) for w in convs)
    if isinstance(fc1, Tensor):
        cfg["intermediate_size"] = int(fc1.shape[0])
    return cfg


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


# ----------------------------------------------------------------------------- model


class ScoreqModel(nn.Module):
    """The SCOREQ network: wav2vec 2.0 BASE encoder, mean pooling, unit-norm embedding.

    Args:
        mode: ``"nr"`` (MOS head; :meth:`forward` returns MOS) or ``"ref"`` (no head;
            use :meth:`distance` / :meth:`distance_to_set`).
        chunk_seconds: ``None`` (default, faithful: each clip whole) or the longest chunk
            in seconds for long files (opt-in deviation, see the module docs).
        max_batch_seconds: clips (or chunks) are sorted by length and packed into padded
            batches of at most this much padded audio (a longer clip runs alone). Scores do
            not depend on it; it only trades memory for speed.
        precision: ``"fp32"`` (default, faithful) or ``"bf16"`` (opt-in, approximate: the
            encoder's conv and linear weights are stored in bfloat16 and run under
            autocast; norms, pooling, normalisation and the head stay fp32). About 1.8x
            faster on CPUs with native bf16; error measured in docs/metrics/scoreq.md.
        config_overrides: fields of ``transformers.Wav2Vec2Config`` to change (the official
            files use the BASE defaults; e.g. ``num_hidden_layers=2`` for a small test model).

    Example (random weights; :meth:`from_pretrained` loads a checkpoint):

    >>> import torch
    >>> model = ScoreqModel("nr", num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
    ...                     intermediate_size=96, num_conv_pos_embedding_groups=2,
    ...                     conv_dim=(32,) * 7)
    >>> clips = [torch.randn(8000) * 0.1, torch.randn(16000) * 0.1]
    >>> model(clips).shape, model.embed(clips).norm(dim=1).round().tolist()
    (torch.Size([2]), [1.0, 1.0])
    """

    sample_rate = 16000

    def __init__(self, mode: str = "nr", chunk_seconds: float | None = None,
                 max_batch_seconds: float = 60.0, precision: str = "fp32",
                 **config_overrides: Any) -> None:
        super().__init__()
        if mode not in _PREFIXES:
            raise ValueError(f"mode must be 'nr' or 'ref', got {mode!r}.")
        transformers = require_transformers("SCOREQ")
        config = transformers.Wav2Vec2Config(**config_overrides)
        if config.feat_extract_norm != "group" or config.do_stable_layer_norm:
            raise ValueError(
                "SCOREQ uses the wav2vec 2.0 BASE layout (feat_extract_norm='group', "
                "do_stable_layer_norm=False); other layouts are not supported."
            )
        if math.prod(config.conv_stride) != HOP:
            raise ValueError(f"SCOREQ's conv encoder has a total stride of {HOP}; got conv_stride={config.conv_stride}.")
        self.mode = mode
        # samples seen by one output frame (400 for the BASE encoder)
        self.receptive_field = 1 + sum((k - 1) * math.prod(config.conv_stride[:i])
                                       for i, k in enumerate(config.conv_kernel))
        self.backbone = transformers.Wav2Vec2Model(config)
        dim = config.hidden_size
        # The contrastive projection head f of the paper; kept so the official files load
        # strictly (and for training), never used for inference.
        self.embedding_layer = nn.Sequential(nn.ReLU(), nn.Linear(dim, 256))
        if mode == "nr":
            self.mos_layer = nn.Linear(dim, 1)
        self.chunk_samples = self._chunk_samples(chunk_seconds)
        self.chunk_seconds = chunk_seconds
        self.max_batch_samples = max(int(max_batch_seconds * self.sample_rate), HOP)
        # padded batches pay off on accelerators; on CPUs only equal lengths are stacked
        self.max_padding: float | None = None  # None: 0.25 on accelerators, 0 on CPU
        # long clips go through the conv encoder in blocks of this many output frames
        self.block_frames = 1000  # 20 s
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        self.precision = precision
        if precision == "bf16":
            # keep bf16 copies of the conv and linear weights (autocast would cast them on
            # every call); norms, the positional conv's weight norm and the head stay fp32
            pos = self.backbone.encoder.pos_conv_embed.conv
            for module in self.backbone.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d)) and module is not pos:
                    module.to(torch.bfloat16)
        self._fuse_qkv()
        self.eval()

    @classmethod
    def _chunk_samples(cls, chunk_seconds: float | None) -> int | None:
        if chunk_seconds is None:
            return None
        if (isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float))
                or not math.isfinite(chunk_seconds) or chunk_seconds < 0.5):
            raise ValueError(f"chunk_seconds must be None or a number of seconds >= 0.5, got {chunk_seconds!r}.")
        return max(int(round(chunk_seconds * cls.sample_rate / HOP)), 2) * HOP

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        card: str = "scoreq-nr-natural",
        mode: str = "nr",
        chunk_seconds: float | None = None,
        **config_overrides: Any,
    ) -> ScoreqModel:
        """Build the model and load an official SCOREQ file (the card's, or ``checkpoint=``).

        The encoder's architecture is read from the file's shapes (:func:`infer_config`),
        so smaller models trained with ``torchmos train scoreq --layers/--hidden`` load too;
        ``config_overrides`` win over what is inferred, and may also hold
        ``max_batch_seconds`` and ``precision``.
        """
        path = hub.resolve(card, checkpoint=checkpoint, sha256=sha256)
        sd = hub.load_checkpoint(path)
        config_overrides = {**infer_config(sd, mode), **config_overrides}
        # Skip the random initialisation of ~95 M parameters: build on the meta device,
        # allocate, then fill every tensor from the file (the load is strict).
        with torch.device("meta"):
            model = cls(mode=mode, chunk_seconds=chunk_seconds, **config_overrides)
        model = model.to_empty(device="cpu")
        model.load_official(sd, source=str(path))
        return model.eval()

    def convert_official_state_dict(self, sd: Mapping[str, Tensor], mode: str | None = None,
                                    source: str = "checkpoint", encoder_only: bool = False) -> dict[str, Tensor]:
        """Rename an official SCOREQ state_dict (fairseq names) to this module's names.

        Strict: every key this model needs must be present with its shape, and no key may be
        left over; otherwise a :class:`ValueError` names the key. Weight norm is accepted
        as ``weight_g``/``weight_v`` (the official files) or as the current parametrisation
        ``parametrizations.weight.original0/1``. ``mask_emb`` (used only in pre-training)
        may be absent.

        Args:
            sd: the flat official state_dict (``pt_model.ssl_model.*`` + ``mos_layer.*`` for
                NR files, ``ssl_model.*`` for REF files).
            mode: ``"nr"`` or ``"ref"`` (default: this model's).
            encoder_only: the file holds the encoder alone (a pre-trained wav2vec 2.0 under
                the mode's prefix); the heads keep this model's current values.
            source: how to name the file in errors.
        """
        mode = mode or self.mode
        if mode != self.mode:
            raise ValueError(f"{source}: a {self.mode!r} model cannot load a {mode!r} state_dict.")
        if not isinstance(sd, Mapping):
            raise ValueError(f"{source}: expected a flat state_dict, got {type(sd).__name__}.")
        other = "ref" if mode == "nr" else "nr"
        ssl_prefix = _PREFIXES[mode][0]
        if sd and not any(k.startswith(ssl_prefix) for k in sd) and any(
                k.startswith(_PREFIXES[other][0]) for k in sd):
            kind = {"nr": "no-reference (adapt_nr_*)", "ref": "reference (fixed_nmr_*)"}
            raise ValueError(
                f"{source}: this is a {kind[other]} SCOREQ checkpoint (keys start with "
                f"{_PREFIXES[other][0]!r}), but a {kind[mode]} model was asked for; use the "
                f"scoreq-{other}-* model with it."
            )
        own = self.state_dict()
        out: dict[str, Tensor] = {}
        used: set[str] = set()
        for key, ref in own.items():
            if encoder_only and not key.startswith("backbone."):
                out[key] = ref
                continue
            name = official_key(key, mode)
            found = name if name in sd else None
            alias = _WEIGHT_NORM_ALIASES.get(name[len(ssl_prefix):]) if name.startswith(ssl_prefix) else None
            if alias is not None and ssl_prefix + alias in sd:
                if found is not None:
                    raise ValueError(f"{source}: both {name!r} and {ssl_prefix + alias!r} are present; keep one.")
                found = ssl_prefix + alias
            if found is None:
                if name[len(ssl_prefix):] in _OPTIONAL:
                    out[key] = torch.zeros_like(ref, device="cpu")
                    continue
                raise ValueError(f"{source}: missing key {name!r} (needed for {key!r}); not an official SCOREQ {mode} file.")
            value = sd[found]
            if not isinstance(value, Tensor):
                raise ValueError(f"{source}: key {found!r} holds a {type(value).__name__}, not a tensor.")
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(
                    f"{source}: key {found!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)} "
                    f"(for {key!r}); the file was made for another architecture."
                )
            out[key] = value
            used.add(found)
        extra = sorted(set(sd) - used)
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise ValueError(f"{source}: unexpected key {extra[0]!r}{more}; not an official SCOREQ {mode} file.")
        return out

    def to_official_state_dict(self) -> dict[str, Tensor]:
        """This model's weights under the official (fairseq) names: the file format of the
        released checkpoints (weight norm as ``weight_g``/``weight_v``). ``torch.save`` it
        to get a file :meth:`from_pretrained` loads."""
        return {official_key(k, self.mode): v.detach().clone() for k, v in self.state_dict().items()}

    def load_official(self, sd: Mapping[str, Tensor], source: str = "checkpoint", encoder_only: bool = False) -> None:
        """Load an official state_dict strictly (see :meth:`convert_official_state_dict`)."""
        converted = self.convert_official_state_dict(sd, source=source, encoder_only=encoder_only)
        self.load_state_dict(converted, strict=True)

    # -- inference -------------------------------------------------------------------
    #
    # A clip goes through the conv feature encoder on its own (time blocks for long clips,
    # so memory stays bounded: GroupNorm statistics are taken over the whole clip in a
    # first pass, and everything after them is local in time). Clips are then padded at
    # the frame level into batches for the transformer, with an attention mask, padded
    # frames zeroed before the positional convolution and a masked mean.

    @property
    def device(self) -> torch.device:
        return self.backbone.feature_projection.projection.weight.device

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
        heads = self.backbone.config.num_attention_heads
        for layer in enc.layers:
            att = layer.attention
            w, bias = self._qkv(att)
            qkv = nn.functional.linear(hidden, w, bias).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            o = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn,
                                                           scale=att.scaling)
            o = o.transpose(1, 2).reshape(b * t, d)
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

    def _apply(self, fn: Any, recurse: bool = True) -> ScoreqModel:
        out = super()._apply(fn, recurse)
        self._fuse_qkv()
        return out

    def _pieces(self, clips: Sequence[Tensor]) -> tuple[list[Tensor], list[int]]:
        pieces, owner = [], []
        for b, c in enumerate(clips):
            if not isinstance(c, Tensor) or c.dim() != 1:
                raise ValueError(f"clip {b}: expected a 1-D tensor of 16 kHz samples, got "
                                 f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}.")
            if c.shape[0] <= HOP:
                raise ValueError(f"clip {b}: {c.shape[0]} samples; SCOREQ needs more than {HOP} "
                                 f"samples ({HOP / self.sample_rate * 1000:.0f} ms) at 16 kHz.")
            c = c.float()
            pad = -c.shape[0] % HOP
            if pad:
                c = nn.functional.pad(c, (0, pad))
            for s, e in chunk_bounds(c.shape[0], self.chunk_samples):
                pieces.append(c[s:e])
                owner.append(b)
        return pieces, owner

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Group pieces (longest first) into padded batches: at most ``max_batch_samples``
        of padded audio, and at most ``max_padding`` padding (25 % on accelerators; none on
        CPUs, where batching saves nothing and padding costs compute). Scores do not depend
        on the grouping."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        pad = self.max_padding
        if pad is None:
            pad = 0.0 if self.device.type == "cpu" else 0.25
        out: list[list[int]] = []
        for i in order:
            if out:
                cur = out[-1]
                longest = lengths[cur[0]]
                n = len(cur) + 1
                if (n * longest <= self.max_batch_samples
                        and n * longest <= (1 + pad) * (sum(lengths[j] for j in cur) + lengths[i])):
                    cur.append(i)
                    continue
            out.append([i])
        return out

    @torch.inference_mode()
    def pooled(self, clips: Sequence[Tensor]) -> Tensor:
        """(B, D) mean over each clip's frames of the last layer, before normalisation."""
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        if len(clips) == 0:
            raise ValueError("no clips to score.")
        pieces, owner = self._pieces(clips)
        device = self.device
        sums = torch.zeros(len(clips), self.embed_dim, device=device, dtype=torch.float64)
        counts = torch.zeros(len(clips), device=device, dtype=torch.float64)
        for idx in self._batches([p.shape[0] for p in pieces]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                feats = [self._features(pieces[j].to(device)) for j in idx]
                frames = torch.tensor([f.shape[0] for f in feats], device=device)
                if len(feats) == 1:
                    feat, mask = feats[0][None], None
                elif all(f.shape[0] == feats[0].shape[0] for f in feats):
                    feat, mask = torch.stack(feats), None
                else:
                    feat = nn.utils.rnn.pad_sequence(feats, batch_first=True)
                    mask = torch.arange(feat.shape[1], device=device) < frames[:, None]
                hidden, _ = self.backbone.feature_projection(feat)
                out = self._transformer(hidden, mask).float()
            if mask is not None:
                out = out.masked_fill(~mask[:, :, None], 0.0)
            own = torch.tensor([owner[j] for j in idx], device=device)
            sums.index_add_(0, own, out.sum(1).double())
            counts.index_add_(0, own, frames.double())
        return (sums / counts[:, None]).float()

    def train_pooled(self, clips: Sequence[Tensor], train_cnn: bool = False) -> Tensor:
        """(B, D) pooled embeddings (before normalisation) with gradients, for fine-tuning.

        The conv feature encoder is frozen (unless ``train_cnn``): it runs without
        gradients, each clip with its own GroupNorm statistics (clips of equal length share
        one call). The feature
        projection and the transformer run as ``transformers`` modules (so dropout and
        LayerDrop apply in training mode) on the clips padded to the longest, with the
        padding masked out of attention and zeroed before the positional convolution,
        and the mean pooling counts each clip's own frames. In eval mode this is the
        computation of :meth:`pooled` (the same embedding whatever the batch).
        """
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        device = self.device
        feats: list[Tensor | None] = [None] * len(clips)
        groups: dict[int, list[int]] = {}
        for b, c in enumerate(clips):
            if not isinstance(c, Tensor) or c.dim() != 1 or c.shape[0] <= HOP:
                raise ValueError(f"clip {b}: expected a 1-D tensor of more than {HOP} samples at 16 kHz.")
            groups.setdefault(c.shape[0] + (-c.shape[0] % HOP), []).append(b)
        with torch.set_grad_enabled(train_cnn and torch.is_grad_enabled()):
            for n, idx in groups.items():
                x = torch.stack([nn.functional.pad(clips[b].float(), (0, n - clips[b].shape[0])) for b in idx])
                y = self.backbone.feature_extractor(x.to(device)).transpose(1, 2)
                for k, b in enumerate(idx):
                    feats[b] = y[k]
        frames = torch.tensor([f.shape[0] for f in feats], device=device)  # type: ignore[union-attr]
        feat = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # type: ignore[arg-type]
        mask = torch.arange(feat.shape[1], device=device) < frames[:, None]
        hidden, _ = self.backbone.feature_projection(feat)
        out = self.backbone.encoder(hidden, attention_mask=None if bool(mask.all()) else mask).last_hidden_state
        out = out.masked_fill(~mask[:, :, None], 0.0)
        return out.sum(1) / frames[:, None].to(out.dtype)

    def embed(self, clips: Sequence[Tensor]) -> Tensor:
        """(B, D) unit-norm embeddings of 16 kHz mono clips (a list of 1-D tensors of any
        lengths, or one (L,) / (B, L) tensor of equal-length clips)."""
        return nn.functional.normalize(self.pooled(clips), dim=1)

    @torch.inference_mode()
    def forward(self, clips: Sequence[Tensor]) -> Tensor:
        """(B,) predicted MOS (no-reference models only)."""
        if self.mode != "nr":
            raise RuntimeError(
                "this is a reference-mode SCOREQ model: it has no MOS head. Use "
                "distance(clips, ref_clips) or distance_to_set(clips, ref_embeddings), or a "
                "scoreq-nr-* model for MOS."
            )
        return self.mos_layer(self.embed(clips)).squeeze(-1)

    @torch.inference_mode()
    def distance(self, clips: Sequence[Tensor], ref_clips: Sequence[Tensor]) -> Tensor:
        """(B,) Euclidean distance between the embeddings of ``clips[b]`` and ``ref_clips[b]``."""
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        if isinstance(ref_clips, Tensor):
            ref_clips = [ref_clips] if ref_clips.dim() == 1 else list(ref_clips.unbind(0))
        if len(clips) != len(ref_clips):
            raise ValueError(f"{len(clips)} clips but {len(ref_clips)} references; they are scored in pairs.")
        e = self.embed(list(clips) + list(ref_clips))
        return torch.linalg.vector_norm(e[: len(clips)] - e[len(clips):], dim=1)

    @torch.inference_mode()
    def distance_to_set(self, clips: Sequence[Tensor], ref_embeddings: Tensor) -> Tensor:
        """(B,) mean Euclidean distance from each clip's embedding to a set (R, D) of
        reference embeddings (from :meth:`embed`)."""
        if ref_embeddings.dim() != 2 or ref_embeddings.shape[1] != self.embed_dim or ref_embeddings.shape[0] == 0:
            raise ValueError(f"ref_embeddings must have shape (R, {self.embed_dim}) with R >= 1, "
                             f"got {tuple(ref_embeddings.shape)}.")
        e = self.embed(clips)
        ref = ref_embeddings.to(e.device, torch.float32)
        return torch.linalg.vector_norm(e[:, None, :] - ref[None, :, :], dim=-1).mean(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, chunk_seconds={self.chunk_seconds}, precision={self.precision!r}"
