"""DistillMOS: a 4.1 M-parameter no-reference MOS predictor (SPECS §1).

Power-law compressed complex STFT -> 6-layer 2-D CNN -> NISQA-style transformer with
attention pooling, applied to 7.68 s crops of 16 kHz audio; the clip's score is the mean
over its crops. Module and parameter names follow the official checkpoint
(``distill_mos_v7.pt``) so that it loads strictly.

Unlike the reference, which pads a whole batch to one length, every clip here is cropped
by its own length, so a score never depends on the rest of the batch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .. import hub
from .distillmos_size import (
    CHANNELS,
    D_MODEL,
    FREQ_OUT,
    HEADS,
    LAYERS,
    size_config,
    size_from_state_dict,
)
from .distillmos_splice import TailSplice, content_end, first_zero_frame, leading_zeros, run_layers
from .strict import load_state_strict

SEQ_LEN = 122880  # 7.68 s at 16 kHz
MAX_HOP = 16000
FRAMES = 384
HOP, WIN = 160, 320

__all__ = ["DistillMOSModel", "bf16_supported", "bf16_supported_on", "crop_starts", "size_config",
           "size_from_state_dict"]


def crop_starts(length: int) -> list[int]:
    """Start samples of the 7.68 s crops of a clip of ``length`` samples (SPECS §1).

    >>> crop_starts(100), crop_starts(122880), crop_starts(122880 + 16001)
    ([0], [0], [0, 8000, 16001])
    """
    over = length - SEQ_LEN
    if over <= 0:
        return [0]
    k = math.ceil(over / MAX_HOP) + 1
    # linspace(0, 1, k) in float64, as numpy computes it in the reference
    return [int(c * over) for c in torch.linspace(0, 1, k, dtype=torch.float64).tolist()]


class _ComplexSpecCNN(nn.Module):
    def __init__(self, channels: Sequence[int] = CHANNELS) -> None:
        super().__init__()
        if len(channels) != len(CHANNELS):
            raise ValueError(f"the DistillMOS CNN has {len(CHANNELS)} layers, got channels {list(channels)}.")
        chans = [2, *channels]
        layers: list[nn.Module] = []
        for i in range(6):
            stride = (1 if i == 0 else 2, 2 if i == 5 else 1)
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=(0, 1)), nn.LeakyReLU(0.1)]
        # channels-last: oneDNN's fastest layout on CPU, bit-identical results in fp32
        self.cnn = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.register_buffer("window", torch.hann_window(WIN), persistent=False)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 122880) waveform -> (N, 2, 161, 768) power-law compressed [Re, Im]."""
        pad = (WIN - HOP) // 2
        x = nn.functional.pad(x, (pad, pad), mode="reflect")
        spec = torch.stft(x, n_fft=WIN, hop_length=HOP, win_length=WIN, window=self.window,
                          center=False, return_complex=True)
        re_im = torch.view_as_real(spec)
        power = torch.sum(re_im**2, dim=-1, keepdim=True)
        # sqrt(0) has an infinite derivative (0 * inf = NaN in every silent or zero-padded
        # bin): take the root of the non-zero bins only. The values are the reference's
        # bit for bit (0 stays 0), and the gradient at 0 is that of the clip below, 0.
        nonzero = power > 0
        mag = torch.where(nonzero, torch.where(nonzero, power, 1.0) ** 0.5, 0.0)
        mag = torch.clip(mag, 1e-12)
        return (mag**0.3 * re_im / mag).permute(0, 3, 1, 2)

    def forward(self, spec: torch.Tensor, zero_from: int | None = None) -> torch.Tensor:
        """(N, 2, 161, 768) -> (N, C * 4, 384) features (channels-major, then frequency).

        ``zero_from``: every frame of the 768-frame spectrum from this one on is exactly
        zero (a crop's zero padding); ``spec`` may then hold only the leading
        :meth:`frames_needed` frames, and the CNN runs over those only, the rest of its
        output being weight-only constants (:mod:`~torchmos.models.distillmos_splice`)."""
        if zero_from is None:
            return torch.flatten(run_layers(self.cnn, spec), 1, -2)
        return torch.flatten(self._tail_splice()(self.cnn, spec, zero_from), 1, -2)

    def frames_needed(self, zero_from: int, x: torch.Tensor | None = None) -> int:
        """How many leading spectrum frames :meth:`forward` reads given ``zero_from``
        (``x``: the crops, when they may need a gradient: then all)."""
        return self._tail_splice().frames_needed(self.cnn, zero_from, x)

    def zero_from(self, end: int) -> int:
        """The first spectrum frame that is exactly zero when a crop's samples from ``end`` on are."""
        if "_window_lead" not in self.__dict__:
            self._window_lead = leading_zeros(self.window.cpu())
        return first_zero_frame(end, HOP, WIN, self._window_lead)

    def _tail_splice(self) -> TailSplice:
        if "_splice" not in self.__dict__:
            self._splice = TailSplice(2 * FRAMES)
        return self._splice


class _PositionalEncoding(nn.Module):
    def __init__(self, d_model: int = D_MODEL, seq_len: int = FRAMES) -> None:
        super().__init__()
        pos = torch.arange(seq_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(2 * seq_len) / d_model))
        pe = torch.zeros(1, seq_len, d_model)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)


class _Transformer(nn.Module):
    def __init__(self, dim_in: int = 1024, d_model: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of the {heads} attention heads.")
        self.norm = nn.BatchNorm1d(dim_in)
        self.position_encoding = _PositionalEncoding(d_model)
        self.linear_proj = nn.Linear(dim_in, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                           batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.linear_proj(x) + self.position_encoding.pe
        return self.transformer_encoder(x)


class _PoolAttFF(nn.Module):
    def __init__(self, dim: int = 200) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, 2 * dim)
        self.linear2 = nn.Linear(2 * dim, 1)
        self.linear3 = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.linear2(torch.relu(self.linear1(x))).transpose(1, 2), dim=2)
        return self.linear3(torch.bmm(att, x).squeeze(1))


class _Head(nn.Module):
    def __init__(self, dim_in: int = 1024, d_model: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS) -> None:
        super().__init__()
        self.norm_input = nn.BatchNorm1d(dim_in)
        self.transformer = _Transformer(dim_in, d_model, heads, layers)
        self.norm_trans = nn.BatchNorm1d(d_model)
        self.pool = _PoolAttFF(d_model)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(N, 384, 1024) -> (N,) in (0, 1)."""
        x = self.norm_input(feat.transpose(1, 2)).transpose(1, 2)
        x = self.transformer(x)
        x = self.norm_trans(x.transpose(1, 2)).transpose(1, 2)
        return torch.sigmoid(self.pool(x).squeeze(-1))


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported_on(device: str | torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: the CPU (:func:`bf16_supported`), or a CUDA
    (or ROCm) GPU with native bf16 (compute capability 8.0 or newer; emulated bf16 is no
    faster than fp32). Other device types: no.

    >>> bf16_supported_on("meta")
    False
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return bf16_supported()
    if dev.type == "cuda":
        if dev.index is None:  # the current GPU
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        with torch.cuda.device(dev.index):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


class DistillMOSModel(nn.Module):
    """DistillMOS network plus its cropping; scores clips of any length independently.

    Args:
        precision: ``"fp32"`` (default, faithful to the reference to 1e-4) or ``"bf16"``
            (the CNN in bfloat16, channels-last; STFT and head in fp32). bf16 is opt-in,
            its error is measured in ``docs/performance.md``. It is decided for the device
            the model runs on (the CPU, or the GPU it was moved to); on a device without
            native bf16 it runs fp32, with a warning at the first call there.
        crops_per_batch: how many 7.68 s crops go through the network at once. Default:
            1 on CPU (measured fastest there: see docs/performance.md), 32 on GPU.
        channels, d_model, layers, heads: the network's size (:func:`size_config`); the
            defaults are the official model's. Students of other sizes come from
            ``torchmos train distill``; :meth:`from_pretrained` reads the size from the file.

    >>> model = DistillMOSModel.from_pretrained()
    >>> model([torch.randn(16000) * 0.1, torch.randn(48000) * 0.1]).shape
    torch.Size([2])
    """

    sample_rate = 16000

    def __init__(self, precision: str = "fp32", crops_per_batch: int | None = None, *,
                 channels: Sequence[int] = CHANNELS, d_model: int = D_MODEL, layers: int = LAYERS,
                 heads: int = HEADS) -> None:
        super().__init__()
        self.size = {"channels": [int(c) for c in channels], "d_model": int(d_model), "layers": int(layers),
                     "heads": int(heads)}
        self.cnn = _ComplexSpecCNN(channels)
        self.transformer_pool_attn = _Head(int(channels[-1]) * FREQ_OUT, d_model, heads, layers)
        self.crops_per_batch = crops_per_batch
        self._warned_fp32: set[str] = set()  # devices already told about the bf16 fallback
        self.set_precision(precision)
        self.eval()

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        card: str = "distillmos",
        **kwargs,
    ) -> DistillMOSModel:
        """Build the model and load the official weights (or ``checkpoint=``) strictly.

        The network's size is that of the file (its ``"size"`` entry, else read from the
        tensor shapes: :func:`size_from_state_dict`), so students of any size from
        ``torchmos train distill`` load as the official model does."""
        path = hub.resolve(card, checkpoint=checkpoint, sha256=sha256)
        ckpt = hub.load_checkpoint(path)
        model = cls(**{**cls.checkpoint_size(ckpt), **kwargs})
        model.load_official(ckpt, source=str(path))
        return model

    @staticmethod
    def checkpoint_size(ckpt: dict) -> dict:
        """The network size of ``{"model": state_dict, "size": {...}, ...}`` (or a bare
        state_dict), read from the shapes; the heads (invisible there) from ``size``, else 8."""
        sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        recorded = ckpt.get("size") if isinstance(ckpt, dict) else None
        heads = recorded.get("heads") if isinstance(recorded, dict) else None
        return size_from_state_dict(sd, heads=heads if isinstance(heads, int) else None) if isinstance(sd, dict) else {}

    def load_official(self, ckpt: dict, source: str = "checkpoint") -> None:
        """Load ``{"model": state_dict, ...}`` (or a bare state_dict) strictly."""
        sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        load_state_strict(self, sd, source, model="DistillMOS")

    def official_checkpoint(self, **meta) -> dict:
        """This network in the official checkpoint layout, ``{"model": state_dict, ...}``,
        with its ``size`` (what the shapes do not show: the heads) and ``meta``; what
        :meth:`from_pretrained` loads."""
        sd = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return {"model": sd, "size": dict(self.size), **meta}

    def set_precision(self, precision: str) -> None:
        """Ask for ``"fp32"`` or ``"bf16"``. Whether bf16 is used is decided for the device
        the model runs on, at each call (:func:`bf16_supported_on`): a bf16 model moved to
        a GPU with bf16 uses it there, whatever the host CPU; on a device without native
        bf16 it runs exact fp32, with a warning the first time on that device."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        self.requested_precision = precision

    @property
    def device(self) -> torch.device:
        return self.cnn.cnn[0].weight.device

    def precision_on(self, device: str | torch.device) -> str:
        """The precision this model runs at on ``device``: ``"bf16"`` only when it was asked
        for and the device has native bf16, else ``"fp32"``."""
        if self.requested_precision == "bf16" and bf16_supported_on(device):
            return "bf16"
        return "fp32"

    @property
    def precision(self) -> str:
        """The precision on the model's current device (see :meth:`precision_on`)."""
        return self.precision_on(self.device)

    @precision.setter
    def precision(self, value: str) -> None:
        self.set_precision(value)

    def _bf16(self, device: torch.device) -> bool:
        """Whether this call runs the CNN in bf16 on ``device`` (warns once per device on
        a fallback)."""
        if self.requested_precision != "bf16":
            return False
        if self.precision_on(device) == "bf16":
            return True
        where = str(device)
        if where not in self._warned_fp32:
            self._warned_fp32.add(where)
            what = "this CPU has no native bf16 support (AVX512-BF16/AMX)" if device.type == "cpu" \
                else f"{where} has no native bf16 support"
            warnings.warn(f"precision='bf16' requested but {what}; falling back to exact fp32.",
                          RuntimeWarning, stacklevel=2)
        return False

    def train(self, mode: bool = True) -> DistillMOSModel:
        # Inference module: BatchNorm must use running statistics, always.
        return super().train(False)

    # -- inference -------------------------------------------------------------------

    def score_crops(self, crops: torch.Tensor, end: int | None = None) -> torch.Tensor:
        """(N, 122880) crops -> (N,) MOS in [1, 5], each crop peak-normalised.

        ``end``: one past the last non-zero sample of any crop (found from the data when
        None). The CNN skips the exactly-zero spectrum frames beyond it (a short clip's
        padding): :mod:`~torchmos.models.distillmos_splice`; same scores."""
        crops = crops / (crops.abs().amax(dim=1, keepdim=True) + 1e-8)
        zero_from = self.cnn.zero_from(content_end(crops) if end is None else end)
        width = self.cnn.frames_needed(zero_from, crops)
        if width < 2 * FRAMES:  # the spectrum of the frames the CNN reads, not of the padding
            crops = crops[:, : width * HOP + (WIN - HOP) // 2]
        else:
            zero_from = None
        spec = self.cnn.spectrum(crops).contiguous(memory_format=torch.channels_last)
        if self._bf16(spec.device):
            with torch.autocast(spec.device.type, dtype=torch.bfloat16):
                feat = self.cnn(spec, zero_from).float()
        else:
            feat = self.cnn(spec, zero_from)
        return 1.0 + 4.0 * self.transformer_pool_attn(feat.transpose(1, 2))

    @torch.no_grad()
    def forward(self, wavs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Score 16 kHz mono clips: a list of 1-D tensors, or one (L,) / (B, L) tensor.

        Returns (B,) MOS; clip b is the mean over its own crops.
        """
        if isinstance(wavs, torch.Tensor):
            wavs = [wavs] if wavs.dim() == 1 else list(wavs.unbind(0))
        starts, owner, ends = [], [], []
        for b, w in enumerate(wavs):
            n = w.shape[0]
            # a short clip's crop is exactly zero from one past its last non-zero sample;
            # full crops rarely have a zero tail (score_crops looks)
            ends.append(content_end(w) if n < SEQ_LEN else None)
            for s in crop_starts(max(n, SEQ_LEN)):
                starts.append(s)
                owner.append(b)

        def crop(j: int) -> torch.Tensor:
            c = wavs[owner[j]][starts[j] : starts[j] + SEQ_LEN].float()
            return nn.functional.pad(c, (0, SEQ_LEN - c.shape[0])) if c.shape[0] < SEQ_LEN else c

        device = self.device
        step = self.crops_per_batch or (1 if device.type == "cpu" else 32)
        scores = []
        for i in range(0, len(starts), step):
            idx = range(i, min(i + step, len(starts)))
            # cut (and padded) a batch at a time: memory does not grow with the number of clips
            known = [ends[owner[j]] for j in idx]
            end = None if None in known else max(known)
            scores.append(self.score_crops(torch.stack([crop(j) for j in idx]).to(device), end))
        scores = torch.cat(scores)
        owner_t = torch.tensor(owner, device=device)
        total = torch.zeros(len(wavs), device=device, dtype=scores.dtype).index_add_(0, owner_t, scores)
        count = torch.bincount(owner_t, minlength=len(wavs)).to(scores.dtype)
        return total / count
