"""transformers adapter, part 3: :class:`TorchmosForAudioQuality` (import it from :mod:`torchmos.adapters.hf`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import hub, models
from ._scoring import missing_extra, score_with

try:
    from transformers import PreTrainedModel
    from transformers.utils import ModelOutput
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5.4,<6", _e) from _e

from .hf_config import SHIM_MODULE, SHIM_SOURCE, TorchmosConfig
from .hf_features import TorchmosFeatureExtractor

__all__ = ["AudioQualityOutput", "TorchmosForAudioQuality"]


def _build_net(config: TorchmosConfig) -> torch.nn.Module:
    if config.architecture:
        return models.build(config.architecture, config.model_options)
    if hub.get_card(config.mos_model).weights is None:
        raise ValueError(
            f"config.json has no 'architecture' (saved by an older torchmos), and {config.mos_model!r} has no "
            "official model to start from. Wrap the weight file again with TorchmosForAudioQuality."
            f"from_torchmos({config.mos_model!r}, checkpoint=...) and save_pretrained it."
        )
    return models.load(config.mos_model, **(config.model_options or {}))


def _build_for_real(config: TorchmosConfig) -> torch.nn.Module:
    """The network, on the CPU in float32 whatever transformers set up: it builds models on
    the meta device in the dtype asked for, but a torchmos network's non-persistent buffers
    (e.g. STFT windows) are never saved, and its precision is its own option."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            return _build_net(config)
    finally:
        torch.set_default_dtype(default)


def _precision_of(dtype: Any, name: str) -> str | None:
    """The torchmos precision a ``dtype=`` asks for: ``None`` (as saved), ``"fp32"`` or ``"bf16"``."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        dtype = getattr(torch, dtype)
    if dtype == torch.float32:
        return "fp32"
    if dtype == torch.bfloat16:
        return "bf16"
    raise ValueError(f"{name}: dtype={dtype!r} is not supported; torchmos models run in torch.float32 or, where "
                     "they have a bf16 mode (DistillMOS, SCOREQ), torch.bfloat16.")


@dataclass
class AudioQualityOutput(ModelOutput):
    """Output of :class:`TorchmosForAudioQuality`: ``scores`` (B,), one per clip, and the
    same as a regression head's ``logits`` (B, 1)."""

    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _rows(t: Any, idx: list[int]) -> Any:
    return None if t is None else torch.as_tensor(t)[idx]


def _non_persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    names: set[str] = getattr(module, "_non_persistent_buffers_set", set())
    return {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if n in names and b is not None}


class TorchmosForAudioQuality(PreTrainedModel):
    """A torchmos predictor as a ``PreTrainedModel``: a regression head, one score per clip.

    Build one with :meth:`from_torchmos`; ``save_pretrained`` / ``from_pretrained`` /
    ``push_to_hub`` then work as for any transformers model (weights in safetensors).
    It is registered for ``AutoModel`` and ``AutoModelForAudioClassification``;
    ``forward`` returns ``scores`` (B,) and ``logits`` (B, 1), both the scores of
    :mod:`torchmos.functional` on the same audio.

    ``from_pretrained`` builds the network from ``config.architecture`` (no weight file,
    cache or download involved) and loads every weight from the directory, strictly: a
    missing, unexpected or misshapen weight is an error. Directories without
    ``architecture`` (older torchmos) build the card's official model first.

    ``dtype=torch.bfloat16`` (in ``from_pretrained`` or ``pipeline``) selects the model's
    torchmos bf16 mode (``precision="bf16"``: DistillMOS and SCOREQ) and
    ``dtype=torch.float32`` its exact fp32 mode; other dtypes, or bf16 for a model without
    that mode, are refused (``pipeline`` then falls back to float32, with a warning). The
    model takes and returns float32 whatever its mode, so ``model.dtype`` is float32.
    """

    config_class = TorchmosConfig
    base_model_prefix = "torchmos"
    main_input_name = "input_values"
    _no_split_modules: list[str] = []

    def __init__(self, config: TorchmosConfig, net: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if net is None:
            net = _build_for_real(config)
        else:
            self.config.architecture = models.architecture(net, hub.get_card(config.mos_model).family)
        self._adopt(net)
        self.post_init()

    def _adopt(self, net: torch.nn.Module) -> None:
        self.net = net.eval()
        for module in self.net.modules():
            snapshot = _non_persistent_buffers(module)
            if snapshot:
                object.__setattr__(module, "_torchmos_buffers", snapshot)

    @property
    def card(self) -> hub.ModelCard:
        return hub.get_card(self.config.mos_model)

    @property
    def dtype(self) -> torch.dtype:
        """float32: what the model takes and returns, in either precision mode."""
        return torch.float32

    @property
    def precision(self) -> str | None:
        """The torchmos precision mode asked for (``"fp32"`` / ``"bf16"``), ``None`` for a model without one."""
        return getattr(self.net, "requested_precision", getattr(self.net, "precision", None))

    def set_precision(self, precision: str) -> None:
        """Switch to torchmos' ``"fp32"`` or ``"bf16"`` mode, keeping the weights.

        The network is built again with ``precision=`` (as ``torchmos.models.load`` would)
        and given the current weights; ``config.model_options`` records the mode.
        """
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        if self.precision is None:
            if precision == "fp32":
                return
            raise ValueError(f"{self.config.mos_model!r} has no bf16 mode (DistillMOS and SCOREQ have); "
                             "it runs in float32 only: load it with dtype=torch.float32 or without dtype.")
        before = self.config.model_options
        self.config.model_options = {**(before or {}), "precision": precision}
        try:
            net = _build_for_real(self.config)
        except Exception:
            self.config.model_options = before
            raise
        weights = self.net.state_dict()
        net.load_state_dict(weights)
        self._adopt(net.to(next(self.net.parameters()).device))

    @classmethod
    def from_torchmos(cls, model: str = "distillmos", checkpoint: str | os.PathLike | None = None,
                      sha256: str | None = None, **options: Any) -> TorchmosForAudioQuality:
        """Wrap the torchmos predictor ``model`` (official weights, or ``checkpoint=``)."""
        config = TorchmosConfig.from_card(model, **options)
        net = models.load(config.mos_model, checkpoint=checkpoint, sha256=sha256, **options)
        return cls(config, net=net)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, strict: every weight of the network that
        ``config.json`` describes must be in the saved weights, and nothing else.

        ``dtype`` picks the precision mode (see the class); the weights load in float32."""
        want_info = kwargs.pop("output_loading_info", False)
        dtype, old_name = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = old_name if dtype is None else dtype
        config = kwargs.get("config")
        if dtype is None and isinstance(config, TorchmosConfig) and config.dtype not in (None, "float32", torch.float32):
            dtype = config.dtype  # the auto classes of some transformers 5.x hand dtype= over on the config
        precision = _precision_of(dtype, str(pretrained_model_name_or_path))
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              dtype=torch.float32, **kwargs)
        wrong = [f"{what} {sorted(map(str, info[key]))[:5]}" for key, what in
                 (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                  ("mismatched_keys", "of another shape")) if info.get(key)]
        if wrong:
            raise ValueError(f"{pretrained_model_name_or_path}: the saved weights do not fit the network its "
                             f"config.json describes: keys {'; '.join(wrong)}.")
        # transformers loads by replacing parameters, in float32: that undoes SCOREQ's q/k/v
        # packing (one GEMM per layer) and its bf16 copies. Build the mode's layout again,
        # so scores equal torchmos' (and the saved model's) bit for bit.
        precision = precision or model.precision
        if precision == "bf16" or (precision == "fp32" and model.precision == "bf16"):
            model.set_precision(precision)
        else:
            repack = getattr(model.net, "_fuse_qkv", None)
            if callable(repack):
                repack()
        return (model, info) if want_info else model

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        """No-op (see :meth:`TorchmosConfig.register_for_auto_class`)."""

    def init_weights(self) -> None:
        """Never initialise (``post_init`` would, e.g. MSR-UTMOS's SFI layer inside its
        transformers backbone): the weights come from torchmos or from the saved file."""

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Parameters come from torchmos or from the saved file, never from random init;
        # only restore the non-persistent buffers transformers re-creates after loading.
        snapshot = getattr(module, "_torchmos_buffers", None)
        if snapshot:
            for name, value in snapshot.items():
                buf = getattr(module, name)
                if buf is not None and buf.device.type != "meta":
                    buf.copy_(value.to(buf.device, buf.dtype))

    def train(self, mode: bool = True) -> TorchmosForAudioQuality:
        super().train(mode)
        self.net.eval()  # an inference network: BatchNorm etc. always in eval mode
        return self

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, reference_values: torch.Tensor | None = None,
                reference_attention_mask: torch.Tensor | None = None, return_dict: bool | None = None,
                sampling_rate: int | torch.Tensor | None = None, labels: Any = None,
                **kwargs: Any) -> AudioQualityOutput | tuple:
        """Score ``input_values`` (B, T) at ``sampling_rate`` (default ``config.sampling_rate``;
        other rates are resampled; a native-rate model, ``config.sampling_rate == 0``, needs
        it: one rate, or one per row).

        Padding is given by ``attention_mask`` (1 = sample, 0 = padding) or ``lengths``
        (samples per row); padded samples are never scored. Reference models also take
        ``reference_values`` (+ ``reference_attention_mask``). Returns ``scores`` (B,) and
        ``logits`` (B, 1), in float32; with ``return_dict=False``, ``(scores, logits)``.
        """
        if labels is not None:
            raise ValueError("TorchmosForAudioQuality scores (its networks run without gradients) and computes no "
                             "loss: drop labels=, and train with torchmos' own recipes (torchmos train ...).")
        x = input_values if input_values.dim() > 1 else input_values.unsqueeze(0)
        x = x.float() if x.is_floating_point() else x
        if lengths is None and attention_mask is not None:
            lengths = attention_mask.reshape(x.shape[0], -1).sum(-1)
        refs, ref_lengths = reference_values, None
        if refs is not None:
            refs = refs if refs.dim() > 1 else refs.unsqueeze(0)
            refs = refs.float() if refs.is_floating_point() else refs
            if reference_attention_mask is not None:
                ref_lengths = reference_attention_mask.reshape(refs.shape[0], -1).sum(-1)
        rates = self._rates(sampling_rate, x.shape[0])
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rates):
            groups.setdefault(r, []).append(i)
        if len(groups) == 1:
            scores = score_with(self.net, self.card, x, rates[0], lengths, refs=refs, ref_lengths=ref_lengths)
        else:  # one call per rate: a clip's score never depends on the rest of its batch
            parts = [score_with(self.net, self.card, x[idx], r, _rows(lengths, idx), refs=_rows(refs, idx),
                                ref_lengths=_rows(ref_lengths, idx)) for r, idx in groups.items()]
            order = torch.tensor([i for idx in groups.values() for i in idx], device=parts[0].device)
            scores = torch.cat(parts).index_select(0, torch.argsort(order))
        scores = scores.float()
        if return_dict is False:
            return scores, scores[:, None]
        return AudioQualityOutput(scores=scores, logits=scores[:, None])

    def _rates(self, sampling_rate: Any, n: int) -> list[int]:
        fs = self.config.sampling_rate if sampling_rate is None else sampling_rate
        rates = [int(r) for r in torch.as_tensor(fs).reshape(-1).tolist()]
        rates = rates * n if len(rates) == 1 else rates
        if len(rates) != n:
            raise ValueError(f"{len(rates)} sampling rates for {n} clips; give one, or one per clip.")
        if min(rates) <= 0:
            raise ValueError(f"{self.config.mos_model!r} scores audio at its native rate: pass sampling_rate= "
                             "(the rate of input_values, or one per row).")
        return rates

    def make_feature_extractor(self) -> TorchmosFeatureExtractor:
        """The feature extractor that goes with this model."""
        return TorchmosFeatureExtractor(sampling_rate=self.config.sampling_rate)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save config, safetensors weights, the feature extractor and the ``torchmos_hf`` shim."""
        self.config.architecture = models.architecture(self.net, self.card.family)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.make_feature_extractor().save_pretrained(save_directory)
            Path(save_directory, f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
        return out
