"""The SFI SSL model: a ``transformers`` wav2vec 2.0 / HuBERT / WavLM model whose first
convolution is a sampling-frequency-independent :class:`~torchmos.models.sfi.SFIConv1d`
(SPECS §4), the backbone of MSR-UTMOS.

:class:`SFISSLModel` builds it from a config, or from a 16 kHz teacher
(:meth:`SFISSLModel.from_teacher`: the teacher's weights for every other layer, SFI
filters fitted to its first-layer kernels); :func:`load_ssl` reads one that ``torchmos
train sfi-distill`` saved. ``transformers`` is imported only when a model is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub
from ..hub import save_atomic
from ._deps import require_transformers
from .sfi import SFIConv1d
from .strict import load_state_strict

__all__ = ["ARCHS", "SFISSLModel", "build_backbone", "load_ssl", "load_teacher", "tiny_config"]

ARCHS = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
}
FORMAT_VERSION = 1
SSL_FAMILY = "sfi-ssl"


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
        sfi = {k: v for k, v in own.items() if k.startswith("feature_extractor.conv_layers.0.conv.")}
        load_state_strict(model.backbone, {**sfi, **src}, "teacher", model="SFI student (the teacher's layout)")
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
    load_state_strict(model, ckpt["model"], where, model="SFI SSL")
    return model.eval()

