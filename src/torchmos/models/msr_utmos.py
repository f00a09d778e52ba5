"""MSR-UTMOS: naturalness MOS at any sampling frequency, without resampling (SPECS §4).

Nishikawa et al. (AudioMOS Challenge 2025, Track 3): a self-supervised speech model
(wav2vec 2.0, HuBERT or WavLM) whose first convolution is replaced by a
sampling-frequency-independent (SFI) convolution (:class:`torchmos.models.sfi.SFIConv1d`),
distilled from the original 16 kHz model at 8-48 kHz, then a UTMOS-style head:

    h = last_hidden_state + listener_embedding(id)              # Embedding(1000, hidden)
    y = tanh(mean_t(Linear(hidden -> 1)(SiLU(Linear(hidden -> hidden)(h)))))
    MOS = 2 y + 3

Inference averages ``y`` over listener ids 1-10. The clip is scored at its own rate: the
SFI layer generates its kernels for that rate, and every later layer sees frames that
cover the same time span at every rate.

Pieces:

* :class:`SFISSLModel`: a ``transformers`` Wav2Vec2Model / HubertModel / WavLMModel with
  ``feature_extractor.conv_layers[0].conv`` replaced by an :class:`SFIConv1d`, everything
  else unchanged. The rate is an argument of each call (``model(x, fs)``), never written
  onto the model, so one shared model serves concurrent callers at different rates.
  :meth:`SFISSLModel.from_teacher` copies a 16 kHz model's weights for all other layers
  and fits the SFI filters to its first-layer kernels.
* :class:`MsrUtmosModel`: the SFI SSL model plus the MOS head. ``forward(clips,
  sample_rate)`` scores each clip by itself (clips of equal rate and length share a batch),
  so a score never depends on the rest of the batch.
* :func:`convert_lightning_checkpoint`: the authors' Lightning checkpoints (keys
  ``ssl_model.*``, ``pred_liner.*``, ``listenr_embedding.*``, their spelling) to
  torchmos' layout, strictly; :meth:`MsrUtmosModel.from_lightning` builds the model for one.

No predictor weights are published in a form torchmos can fetch, so the model card has no
weights: train your own (``torchmos train sfi-distill`` then ``torchmos train
msr-utmos``) or convert a checkpoint you have. ``transformers`` is imported only when a
model is built, so ``import torchmos`` does not need it.

The pieces: :mod:`~torchmos.models.sfi` (the SFI layer), :mod:`~torchmos.models.sfi_ssl`
(the SFI SSL model), :mod:`~torchmos.models.msr_utmos_keys` (the authors' checkpoints)
and this module (the predictor).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub
from ..hub import save_atomic
from . import msr_utmos_keys
from .msr_utmos_keys import lightning_config
from .sfi_ssl import ARCHS, FORMAT_VERSION, SFISSLModel, load_ssl, tiny_config
from .sfi_ssl import SSL_FAMILY as SSL_FAMILY
from .sfi_ssl import build_backbone as build_backbone
from .sfi_ssl import load_teacher as load_teacher
from .strict import load_state_strict

__all__ = [
    "ARCHS",
    "CARD",
    "INFER_LISTENERS",
    "MsrUtmosModel",
    "SFISSLModel",
    "convert_lightning_checkpoint",
    "lightning_config",
    "load_ssl",
    "tiny_config",
]

INFER_LISTENERS = tuple(range(1, 11))
SR_IDS = {16000: 0, 24000: 1, 48000: 2}  # the authors' optional rate embedding (condition_sr)

CARD = hub.get_card("msr-utmos")


# ----------------------------------------------------------------------------- the predictor


def _as_clips(clips: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(clips, Tensor):
        if clips.dim() == 1:
            return [clips]
        if clips.dim() == 2:
            return list(clips.unbind(0))
        raise ValueError(f"expected (T,) or (B, T) audio or a list of 1-D clips, got shape {tuple(clips.shape)}.")
    out = list(clips)
    for i, c in enumerate(out):
        if not isinstance(c, Tensor) or c.dim() != 1:
            raise ValueError(f"clip {i}: expected a 1-D tensor.")
    return out


class MsrUtmosModel(nn.Module):
    """The MSR-UTMOS predictor: SFI SSL model + listener-conditioned MOS head.

    Args:
        ssl: the :class:`SFISSLModel`.
        listeners: size of the listener embedding table (1000 as the authors).
        sr_embedding: add the authors' optional rate embedding (their ``condition_sr``; 16,
            24 and 48 kHz only).
        listener_ids: the listener ids whose predictions are averaged at inference (1-10).
        max_batch: clips of equal rate and length scored together at most.

    ``forward(clips, sample_rate)`` takes a (T,) / (B, T) tensor or a list of 1-D clips at
    ``sample_rate`` (an int, or one int per clip) and returns (B,) MOS. The sample rate is
    required: the model scores audio at its native rate.
    """

    sample_rate = None  # native: whatever rate the audio comes at

    def __init__(self, ssl: SFISSLModel, listeners: int = 1000, sr_embedding: bool = False,
                 listener_ids: Sequence[int] = INFER_LISTENERS, max_batch: int = 8) -> None:
        super().__init__()
        self.ssl = ssl
        h = ssl.hidden_size
        self.listener_embedding = nn.Embedding(int(listeners), h)
        self.head = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
        self.sr_embedding = nn.Embedding(len(SR_IDS), h) if sr_embedding else None
        self.listener_ids = tuple(int(i) for i in listener_ids)
        if not self.listener_ids or not all(0 <= i < listeners for i in self.listener_ids):
            raise ValueError(f"listener_ids must be ids in [0, {listeners}).")
        self.max_batch = int(max_batch)

    # -- construction ------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return {"ssl": self.ssl.config, "listeners": self.listener_embedding.num_embeddings,
                "sr_embedding": self.sr_embedding is not None}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> MsrUtmosModel:
        ssl = SFISSLModel.from_config(config["ssl"])
        return cls(ssl, listeners=int(config.get("listeners", 1000)),
                   sr_embedding=bool(config.get("sr_embedding", False)), **kwargs)

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                        card: str = "msr-utmos", **kwargs: Any) -> MsrUtmosModel:
        """Load a file written by torchmos (``torchmos train msr-utmos`` or :meth:`save`).

        There are no released weights: ``checkpoint=`` is required. Lightning checkpoints of
        the authors' code go through :meth:`from_lightning` instead.
        """
        if checkpoint is None:
            raise hub.HubError(
                f"model {card!r} has no released weights; {hub.CHECKPOINT_HINT}: a file trained with "
                "`torchmos train msr-utmos`, or the authors' Lightning checkpoint converted with "
                "MsrUtmosModel.from_lightning(...).save(path)."
            )
        path = hub.resolve(card, checkpoint=checkpoint, sha256=sha256)
        ckpt = hub.load_checkpoint(path)
        meta = ckpt.get("torchmos")
        if not isinstance(meta, dict) or meta.get("family") != "msr-utmos":
            if isinstance(ckpt.get("state_dict"), dict) and "listenr_embedding.weight" in ckpt["state_dict"]:
                raise ValueError(f"{path}: an MSR-UTMOS Lightning checkpoint of the authors' code; load it "
                                 "with MsrUtmosModel.from_lightning(path) (and .save() it for torchmos).")
            raise ValueError(f"{path}: not an MSR-UTMOS model saved by torchmos (no 'torchmos' header with "
                             "family 'msr-utmos').")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {meta.get('version')!r}; this torchmos reads {FORMAT_VERSION}.")
        model = cls.from_config(meta["config"], **kwargs)
        load_state_strict(model, ckpt["model"], str(path), model="MSR-UTMOS")
        return model.eval()

    @classmethod
    def from_lightning(cls, checkpoint: str | os.PathLike | Mapping[str, Any], arch: str | None = None,
                       transformers_config: Mapping[str, Any] | None = None,
                       sfi: Mapping[str, Any] | None = None, rename: Mapping[str, str] | None = None,
                       **kwargs: Any) -> MsrUtmosModel:
        """Build and load a model from the authors' Lightning checkpoint (a path or the loaded
        dict). The configuration is inferred from the weights (:func:`lightning_config`);
        ``arch``, ``transformers_config`` and ``sfi`` override what cannot be inferred."""
        ckpt = hub.load_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
        sd = ckpt.get("state_dict", ckpt)
        config = lightning_config(sd, arch=arch, transformers_config=transformers_config, sfi=sfi, rename=rename)
        model = cls.from_config(config, **kwargs)
        where = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
        load_state_strict(model, convert_lightning_checkpoint(sd, model, rename=rename), where, model="MSR-UTMOS")
        return model.eval()

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
        """Write the torchmos file ``{"torchmos": {family, card, version, config}, "model": ...}``."""
        head = {"family": "msr-utmos", "card": "msr-utmos", "version": FORMAT_VERSION, "config": self.config,
                **dict(meta or {})}
        save_atomic({"torchmos": head, "model": self.state_dict()}, path)

    # -- scoring -------------------------------------------------------------------------

    def _rate_embedding(self, sample_rate: int, device: torch.device) -> Tensor | None:
        if self.sr_embedding is None:
            return None
        if sample_rate not in SR_IDS:
            raise ValueError(f"this model was trained with a rate embedding for {sorted(SR_IDS)} Hz only; "
                             f"got {sample_rate} Hz.")
        return self.sr_embedding(torch.tensor(SR_IDS[sample_rate], device=device))

    def features(self, waves: Tensor, sample_rate: int) -> Tensor:
        """(B, T) equal-length clips at ``sample_rate`` -> (B, frames, hidden), plus the rate
        embedding when the model has one."""
        h = self.ssl(waves, sample_rate).last_hidden_state
        e = self._rate_embedding(int(sample_rate), h.device)
        return h if e is None else h + e

    def predict(self, waves: Tensor, sample_rate: int, listener_ids: Tensor) -> Tensor:
        """Differentiable head output ``y`` in (-1, 1) for (B, T) equal-length clips and (B,)
        listener ids (the training objective is MSE against ``(mos - 3) / 2``)."""
        h = self.features(waves, sample_rate) + self.listener_embedding(listener_ids)[:, None, :]
        return torch.tanh(self.head(h).mean(dim=1)).squeeze(-1)

    def _score_features(self, h: Tensor) -> Tensor:
        ys = []
        for i in self.listener_ids:
            e = self.listener_embedding.weight[i]
            ys.append(torch.tanh(self.head(h + e).mean(dim=1)).squeeze(-1))
        return 2.0 * torch.stack(ys).mean(dim=0) + 3.0

    @torch.no_grad()
    def forward(self, clips: Sequence[Tensor] | Tensor, sample_rate: int | Sequence[int] | None = None) -> Tensor:
        """MOS of each clip at its native rate: (B,)."""
        if sample_rate is None:
            raise ValueError("MSR-UTMOS scores audio at its native rate: call model(clips, sample_rate=fs) "
                             "(an int, or one rate per clip).")
        wavs = _as_clips(clips)
        if isinstance(sample_rate, (list, tuple)) or (isinstance(sample_rate, Tensor) and sample_rate.dim() > 0):
            rates = [int(r) for r in sample_rate]
        else:
            rates = [int(sample_rate)] * len(wavs)
        if len(rates) != len(wavs):
            raise ValueError(f"{len(rates)} sample rates for {len(wavs)} clips.")
        device = self.listener_embedding.weight.device
        out = torch.empty(len(wavs), device=device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (w, r) in enumerate(zip(wavs, rates)):
            if self.ssl.frames(w.shape[0], r) < 1:
                raise ValueError(f"clip {i}: {w.shape[0]} samples at {r} Hz is too short for the model "
                                 "(it gives no frame); pad it or drop it.")
            groups.setdefault((r, w.shape[0]), []).append(i)
        for (r, _n), idx in groups.items():
            for s in range(0, len(idx), self.max_batch):
                part = idx[s : s + self.max_batch]
                x = torch.stack([wavs[i] for i in part]).to(device=device, dtype=torch.float32)
                out[part] = self._score_features(self.features(x, r))
        return out


def convert_lightning_checkpoint(ckpt: Mapping[str, Any], model: MsrUtmosModel | None = None,
                                 rename: Mapping[str, str] | None = None) -> dict[str, Tensor]:
    return msr_utmos_keys.convert_lightning_checkpoint(ckpt, model, rename, build=MsrUtmosModel.from_config)


convert_lightning_checkpoint.__doc__ = msr_utmos_keys.convert_lightning_checkpoint.__doc__
