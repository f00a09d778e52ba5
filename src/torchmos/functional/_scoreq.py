"""SCOREQ, statelessly: no-reference MOS (:func:`scoreq_nr`) and the distance to clean
references (:func:`scoreq_ref`), the twins of :class:`torchmos.ScoreqNR` and
:class:`torchmos.ScoreqRef`, and what those metrics share with them (the domain check,
the predictor options, the reference set and the reference scoring).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import audio, hub
from ..models import gradients
from ._cache import get_model
from ._core import model_rate, prepare_pair, resolve_device, score, score_pair

__all__ = ["scoreq_nr", "scoreq_ref"]

DOMAINS = ("natural", "synthetic")


def card_name(mode: str, domain: str, where: str) -> str:
    """The card of SCOREQ ``mode`` ("nr" or "ref") for ``domain``; a clear error for another domain.

    >>> card_name("ref", "synthetic", "scoreq_ref")
    'scoreq-ref-synthetic'
    """
    if domain not in DOMAINS:
        raise ValueError(
            f"{where}: domain must be 'natural' (codecs, VoIP, enhancement, noise) or "
            f"'synthetic' (TTS, voice conversion), got {domain!r}."
        )
    return f"scoreq-{mode}-{domain}"


def model_options(chunk_seconds: float | None, precision: str,
                  backbone_config: dict[str, Any] | None) -> dict[str, Any]:
    """The predictor options of a SCOREQ metric or call."""
    return {"chunk_seconds": chunk_seconds, "precision": precision, **(backbone_config or {})}


def reference_clips(references: Any, fs: int, card: hub.ModelCard) -> tuple[list[Tensor], list[str]]:
    """Read, check and resample a non-matching reference set -> clips at the model's rate
    and their ids. ``references``: tensors/arrays at ``fs`` (a list, or one (B, T) batch),
    or audio files and folders (each file read at its own rate).

    >>> clips, ids = reference_clips([torch.randn(8000), torch.randn(4000)], 8000,
    ...                              hub.get_card("scoreq-ref-natural"))
    >>> [c.shape[0] for c in clips], ids
    ([16000, 8000], ['0', '1'])
    """
    rate = model_rate(card)
    if isinstance(references, (str, os.PathLike)):
        references = [references]
    if isinstance(references, (Tensor, np.ndarray)):
        clips = audio.prepare(references, fs, rate, min_seconds=card.min_seconds, arg="references")
        return clips, [str(i) for i in range(len(clips))]
    if not isinstance(references, (list, tuple)) or len(references) == 0:
        raise audio.AudioError(
            "references: expected a non-empty list of clips (tensors at fs) or of audio files/folders, "
            f"got {type(references).__name__ if not isinstance(references, (list, tuple)) else 'an empty list'}."
        )
    if all(isinstance(r, (str, os.PathLike)) for r in references):
        clips, ids = [], []
        for e in audio.find_audio(references):
            x, sr = e.read()
            clips += audio.prepare([x], sr, rate, min_seconds=card.min_seconds, names=[e.source], arg="references")
            ids.append(e.id)
        return clips, ids
    if any(isinstance(r, (str, os.PathLike)) for r in references):
        raise audio.AudioError("references: give either all tensors (at fs) or all file paths, not a mix.")
    clips = audio.prepare(list(references), fs, rate, min_seconds=card.min_seconds, arg="references")
    return clips, [str(i) for i in range(len(clips))]


def reference_distances(net: nn.Module, card: hub.ModelCard, preds: Any, fs: int, lengths: Any = None,
                        names: Sequence[str] | None = None, target: Any = None, target_lengths: Any = None,
                        ref_embeddings: Tensor | None = None, who: str = "full-reference scoring",
                        differentiable: bool = False) -> Tensor:
    """SCOREQ distances (B,): each clip against its own ``target`` clip (full reference) or,
    without a target, the mean distance to the embeddings of a reference set. The caller
    has checked that exactly one of ``target`` and ``ref_embeddings`` is given. With
    ``differentiable`` (and gradients enabled) the distances carry gradients w.r.t.
    ``preds`` (:mod:`torchmos.models.gradients`; the references stay constants)."""
    if target is None and target_lengths is not None:
        raise ValueError("target_lengths= was given without a target.")
    grad = differentiable and torch.is_grad_enabled()
    if target is not None:
        if not grad:
            return score_pair(net, card, preds, target, fs, lengths, target_lengths, names, who=who)
        clips, refs = prepare_pair(card, preds, target, fs, lengths, target_lengths, names, who=who)
        return gradients.distance(net, clips, [r.detach() for r in refs])
    clips = audio.prepare(preds, fs, model_rate(card), lengths, min_seconds=card.min_seconds, names=names,
                          arg="preds")
    return gradients.distance_to_set(net, clips, ref_embeddings) if grad else net.distance_to_set(clips, ref_embeddings)


def scoreq_nr(preds: Any, fs: int = 16000, domain: str = "natural", lengths: Any = None,
              checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None, *,
              sha256: str | None = None, chunk_seconds: float | None = None, precision: str = "fp32",
              backbone_config: dict[str, Any] | None = None, differentiable: bool = False) -> Tensor:
    """SCOREQ no-reference MOS of each clip: a tensor (B,) (unbounded linear output, 1-5 scale).

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate; anything other than 16 kHz is resampled.
        domain: ``"natural"`` (codecs, VoIP, enhancement) or ``"synthetic"`` (TTS, VC).
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: a local weight file (official format) instead of the download.
        device: where to run (default: the device of ``preds``).
        sha256: pin the weight file's checksum.
        chunk_seconds: ``None`` (faithful, default) or the longest chunk in seconds for
            long files: the embedding is then the mean over chunks (opt-in deviation).
        precision: ``"fp32"`` (faithful) or ``"bf16"`` (opt-in autocast; error documented).
        backbone_config: ``transformers.Wav2Vec2Config`` fields for a checkpoint with
            another backbone size (your own training); the official files use the defaults.
        differentiable: when gradients are enabled, score through the gradient path
            (:func:`torchmos.models.gradients.mos`, each clip whole): the scores carry
            gradients w.r.t. ``preds``. Without gradients the scores are the inference path's.

    >>> import os, tempfile
    >>> from torchmos.models.scoreq import ScoreqModel
    >>> tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
    ...             intermediate_size=96, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
    >>> ckpt = os.path.join(tempfile.mkdtemp(), "adapt_nr_telephone.pt")
    >>> torch.save(ScoreqModel("nr", **tiny).to_official_state_dict(), ckpt)
    >>> scoreq_nr(torch.randn(2, 8000) * 0.1, fs=8000, checkpoint=ckpt, backbone_config=tiny).shape
    torch.Size([2])
    """
    name = card_name("nr", domain, "scoreq_nr")
    model = get_model(name, checkpoint, sha256, device=resolve_device(device, preds),
                      **model_options(chunk_seconds, precision, backbone_config))
    card = hub.get_card(name)
    if differentiable and torch.is_grad_enabled():
        return gradients.mos(model, audio.prepare(preds, fs, model_rate(card), lengths, min_seconds=card.min_seconds))
    return score(model, card, preds, fs, lengths)


def scoreq_ref(preds: Any, target: Any = None, fs: int = 16000, domain: str = "natural", lengths: Any = None,
               target_lengths: Any = None, checkpoint: str | os.PathLike | None = None,
               device: str | torch.device | None = None, *, references: Any = None, sha256: str | None = None,
               chunk_seconds: float | None = None, precision: str = "fp32",
               backbone_config: dict[str, Any] | None = None, differentiable: bool = False) -> Tensor:
    """SCOREQ distance (B,) in [0, 2] between each clip and clean speech; lower is better.

    Give the clean speech one of two ways: ``target`` (full reference: ``target[b]`` is
    the clean counterpart of ``preds[b]``) or ``references`` (non-matching reference: a set
    of clean clips or files; each clip scores its mean distance to the set, whose
    embeddings are computed on every call -- :class:`torchmos.ScoreqRef` computes them once).

    Args:
        preds: the clips to assess: (T,), (B, T) (+ ``lengths``) or a list of 1-D clips.
        target: their clean references, paired by index, in the same forms.
        fs: sample rate of both (and of tensor ``references``); resampled to 16 kHz.
        domain: ``"natural"`` or ``"synthetic"``.
        lengths, target_lengths: valid samples per row of padded (B, T) tensors.
        checkpoint: a local weight file (official format) instead of the download.
        device: where to run (default: the device of ``preds``).
        references: the non-matching reference set: tensors at ``fs``, or audio files/folders.
        sha256, chunk_seconds, precision, backbone_config, differentiable: as in
            :func:`scoreq_nr` (the distances carry gradients w.r.t. ``preds`` only).

    >>> import os, tempfile
    >>> from torchmos.models.scoreq import ScoreqModel
    >>> tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
    ...             intermediate_size=96, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
    >>> ckpt = os.path.join(tempfile.mkdtemp(), "fixed_nmr_telephone.pt")
    >>> torch.save(ScoreqModel("ref", **tiny).to_official_state_dict(), ckpt)
    >>> clean = torch.randn(2, 16000) * 0.1
    >>> d = scoreq_ref(clean + 0.05 * torch.randn(2, 16000), clean, checkpoint=ckpt, backbone_config=tiny)
    >>> d.shape, bool(((d >= 0) & (d <= 2)).all())
    (torch.Size([2]), True)
    >>> scoreq_ref(torch.randn(3, 12000) * 0.1, references=list(clean), checkpoint=ckpt,
    ...            backbone_config=tiny).shape
    torch.Size([3])
    """
    name = card_name("ref", domain, "scoreq_ref")
    if target is None and references is None:
        raise ValueError(
            "scoreq_ref needs clean speech: pass target= (each clip's clean counterpart, full reference) "
            "or references= (a set of clean clips or files, non-matching reference)."
        )
    if target is not None and references is not None:
        raise ValueError("scoreq_ref: pass either target= (full reference) or references= (non-matching "
                         "reference), not both.")
    card = hub.get_card(name)
    model = get_model(name, checkpoint, sha256, device=resolve_device(device, preds),
                      **model_options(chunk_seconds, precision, backbone_config))
    ref_embeddings = None
    if references is not None:
        ref_embeddings = model.embed(reference_clips(references, fs, card)[0])
    return reference_distances(model, card, preds, fs, lengths, target=target, target_lengths=target_lengths,
                               ref_embeddings=ref_embeddings, who="scoreq_ref", differentiable=differentiable)
