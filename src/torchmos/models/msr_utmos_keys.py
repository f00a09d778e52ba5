"""MSR-UTMOS' authors' checkpoints: the key table from their Lightning module's names to
torchmos', the converter, and the model's config inferred from a state dict's names and
shapes (:func:`lightning_config`, :func:`convert_lightning_checkpoint`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .msr_utmos import MsrUtmosModel

__all__ = ["convert_lightning_checkpoint", "lightning_config"]

_LIGHTNING_SFI = "ssl_model.feature_extractor.conv_layers.0.conv."
_OWN_SFI = "ssl.backbone.feature_extractor.conv_layers.0.conv."

# (regex on the authors' key, replacement); applied in order, first match wins
_RENAMES: list[tuple[str, str]] = [
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\.implicit_filter\.(\d+)\.(weight|bias)$",
     _OWN_SFI + r"analog.net.\1.\2"),
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\.RFF_param$", _OWN_SFI + "analog.rff"),
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\.mus$", _OWN_SFI + "analog.mu"),
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\._ln_sigma2s$", _OWN_SFI + "analog.sigma"),
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\.phase$", _OWN_SFI + "analog.phi"),
    (r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.bias$", _OWN_SFI + "bias"),
    (r"^ssl_model\.(.*)\.weight_g$", r"ssl.backbone.\1.parametrizations.weight.original0"),
    (r"^ssl_model\.(.*)\.weight_v$", r"ssl.backbone.\1.parametrizations.weight.original1"),
    (r"^ssl_model\.(.*)$", r"ssl.backbone.\1"),
    (r"^pred_liner\.(0|2)\.(weight|bias)$", r"head.\1.\2"),
    (r"^listenr_embedding\.weight$", "listener_embedding.weight"),
    (r"^sr_embedding\.weight$", "sr_embedding.weight"),
]
# authors' keys that carry no weights of their own (recomputed here)
_IGNORED = [r"^ssl_model\.feature_extractor\.conv_layers\.0\.conv\.continuous_filters\.max_ang_freq$"]


def _own_key(key: str, rename: Mapping[str, str] | None) -> str | None:
    if rename and key in rename:
        return rename[key]
    if any(re.match(p, key) for p in _IGNORED):
        return None
    for pat, rep in _RENAMES:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    raise KeyError(key)


def lightning_config(state_dict: Mapping[str, Tensor], arch: str | None = None,
                     transformers_config: Mapping[str, Any] | None = None,
                     sfi: Mapping[str, Any] | None = None, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The torchmos config of an authors' MSR-UTMOS Lightning state dict, inferred from key
    names and shapes (layers, sizes, heads, filter type). Arguments override what is
    inferred.

    The number of attention heads is read from WavLM's relative-position table (one column
    per head); wav2vec 2.0 and HuBERT weights do not show it, so it is ``hidden_size // 64``
    (their 64-wide heads: 12 for BASE, 16 for LARGE), as the SCOREQ loader does. Give
    ``transformers_config={"num_attention_heads": n}`` for another layout."""
    sd = {k: v for k, v in state_dict.items()}
    if "listenr_embedding.weight" not in sd or not any(k.startswith("ssl_model.") for k in sd):
        raise ValueError("not an MSR-UTMOS Lightning state dict: it needs 'ssl_model.*' and "
                         "'listenr_embedding.weight' keys (the authors' spelling).")
    if "ssl_model.feature_extractor.conv_layers.0.conv.weight" in sd:
        raise ValueError("this checkpoint's first conv is an ordinary Conv1d "
                         "('ssl_model.feature_extractor.conv_layers.0.conv.weight'): a 16 kHz, non-SFI "
                         "model of the authors' ablations, which MSR-UTMOS in torchmos does not load.")
    listeners, hidden = sd["listenr_embedding.weight"].shape
    if arch is None:
        arch = "wavlm" if any("rel_attn_embed" in k for k in sd) else "hubert"
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"ssl_model\.encoder\.layers\.(\d+)\.", k))}
    convs = sorted({int(m.group(1)) for k in sd if (m := re.match(r"ssl_model\.feature_extractor\.conv_layers\.(\d+)\.", k))})
    cfg: dict[str, Any] = {"hidden_size": int(hidden), "num_hidden_layers": len(layers)}
    ff = sd.get("ssl_model.encoder.layers.0.feed_forward.intermediate_dense.weight")
    if ff is not None:
        cfg["intermediate_size"] = int(ff.shape[0])
    dims, kernels, strides = [], [10], [5]
    defaults = {1: (3, 2), 2: (3, 2), 3: (3, 2), 4: (3, 2), 5: (2, 2), 6: (2, 2)}
    for i in convs:
        w = sd.get(f"ssl_model.feature_extractor.conv_layers.{i}.conv.weight")
        if i == 0:
            continue
        if w is None:
            raise ValueError(f"missing key 'ssl_model.feature_extractor.conv_layers.{i}.conv.weight'.")
        if i == 1:
            dims.append(int(w.shape[1]))
        dims.append(int(w.shape[0]))
        kernels.append(int(w.shape[2]))
        strides.append(defaults.get(i, (int(w.shape[2]), 2))[1])
    if dims:
        cfg.update(conv_dim=dims, conv_kernel=kernels, conv_stride=strides, num_feat_extract_layers=len(dims))
    pos = [k for k in sd if k.startswith("ssl_model.encoder.pos_conv_embed.conv.") and k.endswith(("weight_v", "original1"))]
    if pos:
        w = sd[pos[0]]
        cfg.update(num_conv_pos_embeddings=int(w.shape[2]), num_conv_pos_embedding_groups=int(hidden // w.shape[1]))
    if "ssl_model.masked_spec_embed" not in sd:
        cfg.update(mask_time_prob=0.0)
    cfg["num_attention_heads"] = _infer_heads(sd, int(hidden))
    cfg.update(dict(transformers_config or {}))
    if arch == "wavlm":
        rel = sd.get("ssl_model.encoder.layers.0.attention.rel_attn_embed.weight")
        if rel is not None:
            cfg.setdefault("num_buckets", int(rel.shape[0]))
    cf = _LIGHTNING_SFI + "continuous_filters."
    options: dict[str, Any] = {"n_freq": 640, "ref_sample_rate": 16000, "design": "freq"}
    if cf + "implicit_filter.0.weight" in sd:
        lin = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(cf) + r"implicit_filter\.(\d+)\.weight$", k))})
        shapes = [sd[f"{cf}implicit_filter.{i}.weight"].shape for i in lin]
        convs_ = [s for s in shapes if len(s) == 3]
        options.update(filter="naf", naf_norm="grid", n_rff=int(convs_[0][1]) // 2,
                       hidden=[int(s[0]) for s in convs_[:-1]])
        if cf + "max_ang_freq" in sd:
            options["norm_freq"] = float(sd[cf + "max_ang_freq"]) / (2 * math.pi)
    elif cf + "mus" in sd:
        options.update(filter="gauss")
    else:
        found = sorted(k for k in sd if k.startswith(_LIGHTNING_SFI))
        raise ValueError(f"unknown SFI layer: keys {found[:6]}; torchmos reads modulated Gaussian "
                         "('continuous_filters.mus/_ln_sigma2s/phase') and neural analog filters "
                         "('continuous_filters.implicit_filter.*' + 'RFF_param'); map other names with rename=.")
    if _LIGHTNING_SFI + "bias" in sd:
        cfg["conv_bias"] = True
    options.update(dict(sfi or {}))
    return {"ssl": {"arch": arch, "transformers_config": cfg, "sfi": options}, "listeners": int(listeners),
            "sr_embedding": "sr_embedding.weight" in sd}


def _infer_heads(sd: Mapping[str, Tensor], hidden: int) -> int:
    """Attention heads of the SSL encoder in an authors' state dict (see :func:`lightning_config`)."""
    rel = sd.get("ssl_model.encoder.layers.0.attention.rel_attn_embed.weight")  # WavLM: (buckets, heads)
    if isinstance(rel, Tensor) and rel.dim() == 2:
        return int(rel.shape[1])
    heads = max(1, hidden // 64)
    while hidden % heads:  # a width that is not a multiple of 64: the nearest count that divides it
        heads -= 1
    return heads


def convert_lightning_checkpoint(ckpt: Mapping[str, Any], model: MsrUtmosModel | None = None,
                                 rename: Mapping[str, str] | None = None, *,
                                 build: Any = None) -> dict[str, Tensor]:
    """The authors' Lightning checkpoint (or its ``state_dict``) as a torchmos state dict.

    A table of key renames (``ssl_model.`` -> ``ssl.backbone.``, ``pred_liner.`` ->
    ``head.``, ``listenr_embedding`` -> ``listener_embedding``, the SFI layer's
    ``continuous_filters.*`` -> ``analog.*``, old weight-norm ``weight_g/weight_v`` ->
    ``parametrizations.weight.original0/1``) plus value conversions (the Gaussians' ``mus``
    in rad/s and ``_ln_sigma2s`` to torchmos' units; 1x1 convs of the neural filter to
    linear layers). Strict: a key the table does not know, a key the model lacks or a
    missing one, and a shape that does not match are refused, each error naming the key.
    ``rename`` maps further authors' keys (e.g. another name for the RFF frequencies).

    Args:
        ckpt: ``{"state_dict": ...}`` as Lightning saves it, or the state dict itself.
        model: the model to load into; by default one is built from :func:`lightning_config`.
    """
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if model is None:
        if build is None:
            raise TypeError("convert_lightning_checkpoint: pass the model to load into (or use "
                            "torchmos.models.msr_utmos.convert_lightning_checkpoint, which builds one)")
        model = build(lightning_config(sd, rename=rename))
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    conv0 = model.ssl.conv0
    unit = 2 * math.pi * getattr(conv0.analog, "unit_hz", 1.0)
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"key {key!r}: not a tensor ({type(value).__name__}).")
        try:
            new = _own_key(key, rename)
        except KeyError:
            raise ValueError(f"unexpected key {key!r}: not part of an MSR-UTMOS checkpoint as torchmos knows it "
                             "(pass rename={...} to map it).") from None
        if new is None:
            continue
        v = value.detach().to(torch.float32) if value.is_floating_point() else value.detach()
        if new.endswith("analog.mu"):
            v = v / unit
        elif new.endswith("analog.sigma"):
            v = torch.exp(0.5 * v) / unit
        elif re.search(r"analog\.net\.\d+\.weight$", new) and v.dim() == 3 and v.shape[-1] == 1:
            v = v[..., 0]
        if new not in own:
            raise ValueError(f"unexpected key {key!r} (torchmos {new!r}): the model built for this checkpoint "
                             "has no such weight.")
        if new in out:
            raise ValueError(f"keys {origin[new]!r} and {key!r} both map to {new!r}.")
        if tuple(v.shape) != tuple(own[new].shape):
            raise ValueError(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(own[new].shape)} "
                             f"(torchmos {new!r}).")
        out[new] = v
        origin[new] = key
    missing = sorted(set(own) - set(out))
    if missing:
        raise ValueError(f"missing key(s) {missing[:5]}{'...' if len(missing) > 5 else ''} "
                         "(torchmos names; the authors' use 'ssl_model.' for 'ssl.backbone.').")
    return out
