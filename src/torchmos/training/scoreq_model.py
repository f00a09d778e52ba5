"""SCOREQ models for the training recipe: building one to train (``--init``) and writing
the official files (``nr.pt``, ``ref.pt``).

Split from :mod:`torchmos.training.scoreq` (which re-exports :func:`build_model` and
:func:`save_outputs`); nothing here imports Lightning.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import hub
from ..hub import save_atomic
from ..models.scoreq import ScoreqModel, infer_config, official_key
from . import TrainError
from .data import seed_of

__all__ = ["CONFIG_FIELDS", "build_model", "save_outputs"]

# the Wav2Vec2Config fields that define the encoder (kept in checkpoints; read from a transformers directory)
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                 "conv_kernel", "conv_stride", "conv_bias", "num_conv_pos_embeddings",
                 "num_conv_pos_embedding_groups", "hidden_act", "feat_extract_activation", "layer_norm_eps")


_PRETRAIN_ONLY = ("quantizer.", "project_q.", "final_proj.", "project_inp.", "target_glu.", "label_embs_concat")
_ENCODER_KEYS = ("feature_extractor.", "layer_norm.", "post_extract_proj.", "encoder.", "mask_emb")


def _load_any(path: Path) -> dict[str, Any]:
    """A checkpoint, allowing the ``argparse.Namespace`` that fairseq files carry."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return hub.load_checkpoint(path)
    except hub.HubError as e:
        raise TrainError(
            f"{e}\nA fairseq checkpoint whose config is an omegaconf object cannot be read safely; extract its "
            f"weights once with: python -c \"import torch; torch.save(torch.load('{path}', weights_only=False)"
            f"['model'], 'weights.pt')\" (only for a file you trust), then --init weights.pt."
        ) from None


def _random_config(layers: int | None, hidden: int | None, conv_dim: int | None) -> dict[str, Any]:
    hidden = hidden or 768
    if hidden % 64:
        raise TrainError(f"--hidden {hidden} must be a multiple of 64 (attention heads are 64 wide).")
    cfg: dict[str, Any] = {"hidden_size": hidden, "num_attention_heads": hidden // 64,
                           "intermediate_size": 4 * hidden, "num_hidden_layers": layers or 12,
                           "num_conv_pos_embedding_groups": 16}
    if conv_dim:
        cfg["conv_dim"] = (conv_dim,) * 7
    return cfg


def build_model(init: str, layers: int | None = None, hidden: int | None = None,
                conv_dim: int | None = None, seed: int = 0) -> tuple[ScoreqModel, str]:
    """A no-reference :class:`ScoreqModel` (heads included) to train, and a line saying
    where it came from. See the module docs for what ``init`` may be.

    >>> model, what = build_model("random", layers=1, hidden=64, conv_dim=32)
    >>> what, model.backbone.config.num_attention_heads
    ('random encoder (1 layers, width 64)', 1)
    """
    if layers is not None and layers < 1:
        raise TrainError(f"--layers must be at least 1, got {layers}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed, "init"))
        if init == "random":
            model = ScoreqModel("nr", **_random_config(layers, hidden, conv_dim))
            return model, f"random encoder ({model.backbone.config.num_hidden_layers} layers, width {model.embed_dim})"
        if hidden is not None or conv_dim is not None:
            raise TrainError("--hidden and --conv-dim size a random encoder; they cannot change a pre-trained one "
                             f"(--init {init}).")
        path = Path(init)
        if path.is_dir():
            model, what = _from_transformers(path)
        else:
            if not path.exists():
                if init not in hub.CARDS or hub.get_card(init).family != "scoreq":
                    raise TrainError(f"--init {init}: no such file or folder, and not a SCOREQ model name "
                                     f"({', '.join(n for n, c in hub.CARDS.items() if c.family == 'scoreq')}) "
                                     "or 'random'.")
                path = hub.resolve(init)
            model, what = _from_file(path)
    if layers is not None:
        have = model.backbone.config.num_hidden_layers
        if layers > have:
            raise TrainError(f"--layers {layers}: {init} has only {have} transformer layers.")
        model.backbone.encoder.layers = model.backbone.encoder.layers[:layers]
        model.backbone.config.num_hidden_layers = layers
        what += f", first {layers} of {have} layers"
    return model, what


def _from_file(path: Path) -> tuple[ScoreqModel, str]:
    sd = _load_any(path)
    if isinstance(sd.get("model"), dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        sd = sd["model"]  # a fairseq checkpoint: {"args"/"cfg": ..., "model": state_dict, ...}
    if any(k.startswith("pt_model.ssl_model.") for k in sd):
        mode, what, encoder_only = "nr", f"SCOREQ no-reference file {path}", False
    elif any(k.startswith("ssl_model.") for k in sd):
        mode, what, encoder_only = "ref", f"SCOREQ reference file {path} (new MOS head)", False
    elif any(k.startswith("feature_extractor.conv_layers.") for k in sd):
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith(_ENCODER_KEYS)})
        sd = {"ssl_model." + k: v for k, v in sd.items() if k.startswith(_ENCODER_KEYS)}
        mode, encoder_only = "ref", True
        what = f"fairseq wav2vec 2.0 encoder {path} (new heads" + (f"; ignored {', '.join(dropped)})" if dropped else ")")
    else:
        raise TrainError(f"--init {path}: neither a SCOREQ file (pt_model.ssl_model.* / ssl_model.* keys) nor a "
                         "fairseq wav2vec 2.0 checkpoint (feature_extractor.conv_layers.* keys).")
    cfg = infer_config(sd, mode)
    host = ScoreqModel(mode, **cfg)
    try:
        host.load_official(sd, source=str(path), encoder_only=encoder_only)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if mode == "nr":
        return host, what
    model = ScoreqModel("nr", **cfg)  # same encoder and projection, a fresh MOS head
    missing = model.load_state_dict(host.state_dict(), strict=False).missing_keys
    assert set(missing) == {"mos_layer.weight", "mos_layer.bias"}, missing
    return model, what


def _from_transformers(path: Path) -> tuple[ScoreqModel, str]:
    from ..models import require_transformers

    transformers = require_transformers("SCOREQ training")
    if not (path / "config.json").is_file():
        raise TrainError(f"--init {path}: a folder must be a transformers model directory (config.json + weights).")
    config = transformers.Wav2Vec2Config.from_pretrained(str(path))
    if config.feat_extract_norm != "group" or config.do_stable_layer_norm:
        raise TrainError(f"--init {path}: SCOREQ uses the wav2vec 2.0 BASE layout (feat_extract_norm='group', "
                         "do_stable_layer_norm=False); this model is a LARGE-style (layer-norm) one.")
    model = ScoreqModel("nr", **{f: getattr(config, f) for f in CONFIG_FIELDS})
    hf = transformers.Wav2Vec2Model.from_pretrained(str(path), local_files_only=True)
    missing, unexpected = model.backbone.load_state_dict(hf.state_dict(), strict=False)
    if missing or unexpected:
        raise TrainError(f"--init {path}: the weights do not fit a Wav2Vec2Model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}).")
    model._fuse_qkv()
    return model, f"transformers Wav2Vec2 directory {path} (new heads)"


# ----------------------------------------------------------------------------- outputs


def save_outputs(model: ScoreqModel, out: Path) -> tuple[Path, Path]:
    """Write ``nr.pt`` and ``ref.pt`` (official SCOREQ layout) of a trained NR model.

    >>> import tempfile, torch
    >>> model, _ = build_model("random", layers=1, hidden=64, conv_dim=32)
    >>> nr, ref = save_outputs(model, Path(tempfile.mkdtemp()))
    >>> sorted({k.split(".")[0] for k in torch.load(nr)}), sorted({k.split(".")[0] for k in torch.load(ref)})
    (['mos_layer', 'pt_model'], ['embedding_layer', 'ssl_model'])
    """
    sd = model.state_dict()
    nr = {official_key(k, "nr"): v.detach().cpu().clone() for k, v in sd.items()}
    ref = {official_key(k, "ref"): v.detach().cpu().clone() for k, v in sd.items() if not k.startswith("mos_layer.")}
    return save_atomic(nr, out / "nr.pt"), save_atomic(ref, out / "ref.pt")
