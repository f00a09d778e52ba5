"""Plain ``torch.nn.Module`` predictors, one file per family; no I/O, no metrics, no CLI.

Every predictor takes a list of mono float 1-D tensors at its card's sample rate and
returns one score per clip. :func:`load` builds one from its card name; every
predictor's weights go through one strict loader, :func:`load_state_strict`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from torch import nn

from .. import hub
from ._deps import require_transformers as require_transformers
from .strict import load_state_strict as load_state_strict

# card.family -> "module:Class" with a classmethod
# ``from_pretrained(checkpoint=None, sha256=None, card=<card name>, **card.options, **kwargs)``
FAMILIES: dict[str, str] = {
    "distillmos": "torchmos.models.distillmos:DistillMOSModel",
    "scoreq": "torchmos.models.scoreq:ScoreqModel",
    "vqscore": "torchmos.models.vqscore:VQScoreModel",
    "msr-utmos": "torchmos.models.msr_utmos:MsrUtmosModel",
}


def load(name: str, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
         **kwargs: Any) -> nn.Module:
    """Build the predictor of card ``name`` with its weights, in eval mode.

    >>> load("distillmos").sample_rate
    16000
    """
    card = hub.get_card(name)
    mod, cls = FAMILIES[card.family].split(":")
    klass = getattr(importlib.import_module(mod), cls)
    return klass.from_pretrained(checkpoint=checkpoint, sha256=sha256, card=card.name, **card.options,
                                 **kwargs).eval()


def identify(path: str | os.PathLike) -> str:
    """The card name of a weight file, recognised from its contents.

    torchmos' own files carry ``{"torchmos": {"family": ..., "card": ...}}``; official
    files are recognised by their key layout (DistillMOS ``model.cnn.*``; SCOREQ NR
    ``pt_model.ssl_model.*`` / REF ``ssl_model.*``; VQScore ``model.VQVAE``).
    """
    ckpt = hub.load_checkpoint(path)
    meta = ckpt.get("torchmos")
    if isinstance(meta, dict):
        card = meta.get("card") or meta.get("family")
        if card in hub.CARDS:
            return card
    inner = ckpt.get("model")
    if isinstance(inner, dict):
        if "VQVAE" in inner:
            return "vqscore"
        if any(k.startswith("cnn.cnn.") for k in inner):
            return "distillmos"
    if any(k.startswith("CNN_1D_encoder.") for k in ckpt):  # a bare VQScore state_dict
        return "vqscore"
    if any(k.startswith("pt_model.ssl_model.") for k in ckpt):
        return "scoreq-nr-natural"
    if any(k.startswith("ssl_model.") for k in ckpt):
        return "scoreq-ref-natural"
    raise ValueError(f"{path}: not a weight file torchmos recognises (DistillMOS, SCOREQ, VQScore "
                     "or a torchmos-trained model).")


# ----------------------------------------------------------------------------- architectures

ARCH_VERSION = 1
# transformers bookkeeping, not architecture
_NOT_ARCH = {"transformers_version", "architectures", "id2label", "label2id", "_name_or_path", "model_type",
             "torch_dtype", "dtype"}


def _plain(value: Any) -> Any:
    """JSON-ready copy (tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def architecture(net: Any, family: str) -> dict[str, Any] | None:
    """``{"family", "version", "config"}``: what builds ``net`` again without its weights
    (:func:`build`), e.g. from a saved transformers directory's ``config.json``.

    ``config`` is DistillMOS's size (``channels``, ``d_model``, ``layers``, ``heads``: a
    distilled student's may differ from the official one; ``{}`` means official); ``{"mode", "encoder"}``
    for SCOREQ (``encoder``: the wav2vec 2.0 ``config.to_dict()``); the model's own
    ``config`` for VQScore (sizes of codebook and convolutions) and MSR-UTMOS (SSL
    architecture, SFI layer, listeners), as their torchmos files store it. ``None`` for a
    family it does not know (such a directory rebuilds through ``torchmos.models.load``).

    >>> arch = architecture(load("distillmos"), "distillmos")
    >>> arch["family"], type(build(arch)).__name__
    ('distillmos', 'DistillMOSModel')
    """
    if family == "distillmos":
        from .distillmos_size import size_config

        size = dict(getattr(net, "size", {}))
        cfg: Any = {} if size in ({}, size_config()) else size  # {}: the official size
    elif family == "scoreq":
        encoder = {k: v for k, v in net.backbone.config.to_dict().items() if k not in _NOT_ARCH}
        cfg = {"mode": net.mode, "encoder": encoder}
    elif family in ("vqscore", "msr-utmos"):
        cfg = net.config
    else:
        return None
    return {"family": family, "version": ARCH_VERSION, "config": _plain(cfg)}


def build(arch: dict[str, Any], options: dict[str, Any] | None = None) -> nn.Module:
    """The network ``arch`` (from :func:`architecture`) with uninitialised or
    random weights, in eval mode; ``options`` as given to ``torchmos.models.load``."""
    family, cfg, options = arch.get("family"), dict(arch.get("config") or {}), dict(options or {})
    if arch.get("version") != ARCH_VERSION:
        raise ValueError(f"config.json: architecture version {arch.get('version')!r}; this torchmos reads "
                         f"version {ARCH_VERSION}. Upgrade torchmos.")
    if family == "distillmos":
        from .distillmos import DistillMOSModel

        return DistillMOSModel(**{**cfg, **options}).eval()
    if family == "scoreq":
        from .scoreq import ScoreqModel

        with torch.device("meta"):  # ~95 M parameters for BASE: allocate, never initialise
            net = ScoreqModel(mode=cfg["mode"], **{**cfg["encoder"], **options})
        return net.to_empty(device="cpu").eval()
    if family == "vqscore":
        from .vqscore import VQScoreModel

        return VQScoreModel(**{**cfg, **options}).eval()
    if family == "msr-utmos":
        from .msr_utmos import MsrUtmosModel

        return MsrUtmosModel.from_config(cfg, **options).eval()
    raise ValueError(f"config.json: unknown architecture family {family!r}; known: distillmos, scoreq, "
                     "vqscore, msr-utmos.")
