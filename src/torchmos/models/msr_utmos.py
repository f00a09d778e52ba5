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
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub
from ..hub import save_atomic
from . import require_transformers
from .sfi import SFIConv1d

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

ARCHS = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
}
INFER_LISTENERS = tuple(range(1, 11))
SR_IDS = {16000: 0, 24000: 1, 48000: 2}  # the authors' optional rate embedding (condition_sr)
FORMAT_VERSION = 1
SSL_FAMILY = "sfi-ssl"

CARD = hub.get_card("msr-utmos")


_DROP_KEYS = {"transformers_version", "id2label", "label2id", "architectures", "_name_or_path",
              "model_type", "torch_dtype", "dtype"}


def _config_dict(config: Any) -> dict[str, Any]:
    """A transformers config as plain containers (loadable with ``weights_only=True``)."""
    d = config.to_dict()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in _DROP_KEYS}


def tiny_config(arch: str = "wav2vec2", **overrides: Any) -> dict[str, Any]:
    """A tiny transformers config (hidden 32, 2 layers, 2 heads, conv dims 32) for tests
    and smoke runs; the conv geometry is wav2vec 2.0's (first conv 10 taps, stride 5)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}.")
    cfg: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    if arch == "wavlm":
        cfg.update(num_buckets=32, max_bucket_distance=80)
    cfg.update(overrides)
    return cfg


def build_backbone(arch: str, transformers_config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised transformers model of ``arch`` from a config dict."""
    transformers = require_transformers("MSR-UTMOS")
    if arch not in ARCHS:
        raise ValueError(f"unknown SSL architecture {arch!r}; torchmos supports {', '.join(sorted(ARCHS))}.")
    cfg_cls, model_cls = (getattr(transformers, n) for n in ARCHS[arch])
    cfg = cfg_cls(**{k: v for k, v in transformers_config.items() if k not in _DROP_KEYS})
    return model_cls(cfg)


def load_teacher(spec: str | os.PathLike | nn.Module, arch: str = "wav2vec2", seed: int = 0) -> nn.Module:
    """A 16 kHz transformers SSL model: ``"tiny"`` (a random :func:`tiny_config` model,
    seeded), a local directory written by ``save_pretrained``, or a model as is."""
    if isinstance(spec, nn.Module):
        return spec
    if str(spec) == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_backbone(arch, tiny_config(arch)).eval()
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"teacher {spec}: not a transformers model directory (no config.json). Give a local "
            "directory written by save_pretrained (e.g. a downloaded facebook/wav2vec2-base), or 'tiny'."
        )
    transformers = require_transformers("MSR-UTMOS")
    model = transformers.AutoModel.from_pretrained(str(path))
    if getattr(model.config, "model_type", None) not in ARCHS:
        raise ValueError(f"teacher {spec}: model type {model.config.model_type!r} is not one of "
                         f"{', '.join(sorted(ARCHS))}.")
    return model.eval()


# ----------------------------------------------------------------------------- the SFI SSL model


def _sfi_defaults(sfi: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"filter": "naf", "design": "freq", "n_freq": 640, "ref_sample_rate": 16000}
    out.update(dict(sfi or {}))
    if "hidden" in out:
        out["hidden"] = [int(h) for h in out["hidden"]]
    return out


class SFISSLModel(nn.Module):
    """A transformers SSL model whose first convolution is an :class:`SFIConv1d`.

    Args:
        arch: ``"wav2vec2"``, ``"hubert"`` or ``"wavlm"``.
        transformers_config: the backbone's config as a dict (``config.to_dict()``).
        sfi: options of the SFI layer (``filter``, ``design``, ``n_freq``, ...; see
            :class:`SFIConv1d`). Default: a neural analog filter with the frequency-domain
            design, 640 frequencies (the configuration of the authors' released students
            as far as it is public; see the docs).

    ``forward(input_values, sample_rate=None, output_hidden_states=False)`` returns the
    backbone's output for a (B, T) batch at ``sample_rate`` (default: the SFI layer's
    default rate, see :meth:`set_sample_rate`). The rate reaches the SFI layer through
    :meth:`SFIConv1d.at_rate` for this call only: nothing is written onto the model.
    """

    def __init__(self, arch: str, transformers_config: Mapping[str, Any],
                 sfi: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = build_backbone(arch, transformers_config)
        self.sfi_options = _sfi_defaults(sfi)
        layer0 = self.backbone.feature_extractor.conv_layers[0]
        conv = layer0.conv
        layer0.conv = SFIConv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                                bias=conv.bias is not None, **self.sfi_options)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_teacher(cls, teacher: nn.Module, sfi: Mapping[str, Any] | None = None,
                     fit_steps: int = 300) -> SFISSLModel:
        """The SFI twin of a 16 kHz ``teacher``: its weights for every layer but the first
        conv, whose analog filters are fitted to the teacher's kernels (``fit_steps`` > 0)
        or left at their ERB initialisation (0)."""
        arch = teacher.config.model_type
        conv = teacher.feature_extractor.conv_layers[0].conv
        options = _sfi_defaults(sfi)
        options.setdefault("ref_sample_rate", 16000)
        model = cls(arch, _config_dict(teacher.config), options)
        own = model.backbone.state_dict()
        src = {k: v for k, v in teacher.state_dict().items() if not k.startswith("feature_extractor.conv_layers.0.conv.")}
        sfi_keys = {k for k in own if k.startswith("feature_extractor.conv_layers.0.conv.")}
        missing = sorted(set(own) - set(src) - sfi_keys)
        extra = sorted(set(src) - set(own))
        if missing or extra:
            raise ValueError(f"teacher and student layouts differ: missing {missing[:5]}, unexpected {extra[:5]}.")
        model.backbone.load_state_dict({**{k: own[k] for k in sfi_keys}, **src}, strict=True)
        sfi_conv = model.conv0
        if conv.bias is not None:
            with torch.no_grad():
                sfi_conv.bias.copy_(conv.bias)
        if fit_steps > 0:
            sfi_conv.fit_to_kernel(conv.weight, steps=fit_steps)
        model.train(teacher.training)
        return model

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SFISSLModel:
        return cls(config["arch"], config["transformers_config"], config.get("sfi"))

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (plain containers)."""
        return {"arch": self.arch, "transformers_config": _config_dict(self.backbone.config),
                "sfi": dict(self.sfi_options)}

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
        """Write ``{"torchmos": {"family": "sfi-ssl", "version": 1, "config": ...}, "model": ...}``."""
        head = {"family": SSL_FAMILY, "version": FORMAT_VERSION, "config": self.config, **dict(meta or {})}
        save_atomic({"torchmos": head, "model": self.state_dict()}, path)

    # -- use ----------------------------------------------------------------------------

    @property
    def conv0(self) -> SFIConv1d:
        return self.backbone.feature_extractor.conv_layers[0].conv

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def sample_rate(self) -> int:
        return self.conv0.sample_rate

    def set_sample_rate(self, sample_rate: int) -> None:
        """Change the default rate (used by calls that give none). This edits the model:
        never call it on a shared model; pass the rate to each call instead."""
        self.conv0.set_sample_rate(sample_rate)

    def frames(self, length: int, sample_rate: int | None = None) -> int:
        """Output frames for ``length`` input samples at ``sample_rate``."""
        n = self.conv0.output_length(length, sample_rate or self.sample_rate)
        cfg = self.backbone.config
        for k, s in zip(cfg.conv_kernel[1:], cfg.conv_stride[1:]):
            n = (n - k) // s + 1 if n >= k else 0
        return n

    def forward(self, input_values: Tensor, sample_rate: int | None = None,
                output_hidden_states: bool = False) -> Any:
        if sample_rate is None:
            return self.backbone(input_values, output_hidden_states=output_hidden_states)
        with self.conv0.at_rate(sample_rate):
            return self.backbone(input_values, output_hidden_states=output_hidden_states)


def load_ssl(source: str | os.PathLike | Mapping[str, Any]) -> SFISSLModel:
    """An :class:`SFISSLModel` from a torchmos file (``student.pt`` of ``torchmos train
    sfi-distill``, or a folder holding one) or an already loaded checkpoint dict."""
    if isinstance(source, Mapping):
        ckpt, where = dict(source), "checkpoint"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "student.pt"
        ckpt, where = hub.load_checkpoint(path), str(path)
    meta = ckpt.get("torchmos")
    if not isinstance(meta, dict) or meta.get("family") != SSL_FAMILY:
        raise ValueError(f"{where}: not an SFI SSL model saved by torchmos (expected a 'torchmos' header "
                         f"with family {SSL_FAMILY!r}, as `torchmos train sfi-distill` writes).")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: format version {meta.get('version')!r}; this torchmos reads {FORMAT_VERSION}.")
    model = SFISSLModel.from_config(meta["config"])
    _strict_load(model, ckpt["model"], where)
    return model.eval()


def _strict_load(model: nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise ValueError(f"{where}: the weights do not fit the model: missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                         f"{'...' if len(extra) > 5 else ''}.")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where}: key {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}.")
    model.load_state_dict(sd, strict=True)


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
        _strict_load(model, ckpt["model"], str(path))
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
        model.load_state_dict(convert_lightning_checkpoint(sd, model, rename=rename), strict=True)
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


# ----------------------------------------------------------------------------- authors' checkpoints


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
                                 rename: Mapping[str, str] | None = None) -> dict[str, Tensor]:
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
        model = MsrUtmosModel.from_config(lightning_config(sd, rename=rename))
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
