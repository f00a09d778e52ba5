"""SCOREQ's checkpoint layout: the key table to the official (fairseq) names, the
converter of an official state_dict, and the encoder's config read from its shapes.

The official files carry no config, and name the wav2vec 2.0 encoder as fairseq does
(``pt_model.ssl_model.*`` for no-reference files, ``ssl_model.*`` for reference ones);
torchmos builds it from ``transformers``. :func:`official_key` maps one of our keys to the
file's, :func:`convert_official` renames a whole file strictly, :func:`infer_config` reads
the architecture from the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["convert_official", "infer_config", "official_key"]

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

    >>> from torchmos.models.scoreq import ScoreqModel
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


def convert_official(own: Mapping[str, Tensor], sd: Mapping[str, Any], mode: str, source: str = "checkpoint",
                     encoder_only: bool = False) -> dict[str, Tensor]:
    """``sd`` (official names) renamed to the keys of ``own`` (a ``mode`` model's
    ``state_dict``), strictly; see :meth:`ScoreqModel.convert_official_state_dict
    <torchmos.models.scoreq.ScoreqModel.convert_official_state_dict>`."""
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
