"""Plain ``torch.nn.Module`` predictors, one file per family; no I/O, no metrics, no CLI.

Every predictor takes a list of mono float 1-D tensors at its card's sample rate and
returns one score per clip. :func:`load` builds one from its card name.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from torch import nn

from .. import hub

# card.family -> "module:Class" with a classmethod
# ``from_pretrained(checkpoint=None, sha256=None, card=<card name>, **card.options, **kwargs)``
FAMILIES: dict[str, str] = {
    "distillmos": "torchmos.models.distillmos:DistillMOSModel",
    "scoreq": "torchmos.models.scoreq:ScoreqModel",
    "vqscore": "torchmos.models.vqscore:VQScoreModel",
    "msr-utmos": "torchmos.models.msr_utmos:MsrUtmosModel",
}


def require_transformers(who: str) -> Any:
    """``import transformers``, or an ImportError saying which predictor needs it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{who} needs the 'transformers' package (its SSL backbone): "
                          "pip install 'transformers>=4.40'") from e
    return transformers


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
