"""VQScore: speech quality from a VQ-VAE trained on clean speech only (SPECS §3).

Fu, Hung, Tsao and Wang, "Self-Supervised Speech Quality Estimation and Enhancement Using
Only Clean Speech", ICLR 2024. A VQ-VAE learns the magnitude spectra of clean speech; the
quality of a new clip is how well its codebook explains the clip's encoding::

    |X| = sqrt(max(re^2 + im^2, 1e-7))      STFT 512 / hop 256 / Hann, centred (reflect)
    z   = encoder(|X|)                      six Conv1d(k=7) with instance norms, (B, 32, T)
    e_t = the code maximising cos(z_t, e)   cosine codebook, 2048 unit vectors of size 32
    VQScore = mean_t  <z_t, e_t> / ((|z_t| + 1e-5) (|e_t| + 1e-5))

Higher is better, roughly in [0, 1]. The decoder is only needed for training (the loss is
the commitment loss plus 45 x (1 - frame cosine between |X| and its reconstruction)).

Layout and names follow the authors' quality-estimation model (``VQVAE_QE`` in
JasonSWFu/VQscore) through a table of key renames, so that their released checkpoint
loads strictly; torchmos' own files carry a small header with the model's config.

Every clip is scored by its own length: clips of a batch are padded, but the STFT
reflects each clip at its own ends and the instance norms use masked statistics over
each clip's own frames, so a score does not depend on the rest of the batch.

The pieces: :mod:`~torchmos.models.vqscore_layers` (encoder and decoder),
:mod:`~torchmos.models.vqscore_codebook` (the cosine codebook) and this module (the
model: spectra, scoring, files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import hub
from ..hub import save_atomic
from .strict import load_state_strict
from .vqscore_codebook import CosineCodebook
from .vqscore_layers import IN_EPS as IN_EPS
from .vqscore_layers import N_FFT, _Decoder, _Encoder
from .vqscore_layers import N_FREQ as N_FREQ
from .vqscore_layers import SLOPE as SLOPE

__all__ = [
    "AUTHORS_KEYS",
    "CosineCodebook",
    "VQOutput",
    "VQScoreModel",
    "frame_cosine",
    "n_frames",
]

HOP = 256
MAG_FLOOR = 1e-7  # on re^2 + im^2, before the square root
COS_EPS = 1e-5  # added to the norms in every cosine (score and reconstruction loss)
FORMAT_VERSION = 1

# The authors' state_dict prefixes (VQVAE_QE) -> ours. Conv names are kept as they are.
AUTHORS_KEYS: dict[str, str] = {
    "CNN_1D_encoder.": "encoder.",
    "quantizer.quantizer._codebook.": "codebook.",
    "CNN_1D_decoder.": "decoder.",
}


def n_frames(length: int) -> int:
    """STFT frames of a clip of ``length`` samples (centred STFT, hop 256).

    >>> n_frames(16000), n_frames(48000)
    (63, 188)
    """
    return 1 + int(length) // HOP


def frame_cosine(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-clip mean over frames of the cosine between ``a`` and ``b`` along dim 1.

    ``a``, ``b``: (B, C, T); ``mask``: (B, 1, T) of 0/1 (valid frames) or None.
    Norms get +1e-5 as in the reference. Returns (B,).
    """
    na = a.norm(dim=1) + COS_EPS
    nb = b.norm(dim=1) + COS_EPS
    cos = (a * b).sum(dim=1) / (na * nb)  # (B, T)
    if mask is None:
        return cos.mean(dim=1)
    m = mask[:, 0]
    return (cos * m).sum(dim=1) / m.sum(dim=1)


class VQOutput(NamedTuple):
    """What :meth:`VQScoreModel.forward_train` returns (all frame axes last)."""

    mag: Tensor  # (B, 257, T) input magnitude
    recon: Tensor  # (B, 257, T) reconstructed magnitude
    z: Tensor  # (B, D, T) encoder output
    zq: Tensor  # (B, D, T) unit codes (straight-through in training mode)
    codes: Tensor  # (B, T) code indices (-1 beyond a clip's frames)
    commit_loss: Tensor  # scalar
    mask: Tensor | None  # (B, 1, T) valid frames, None when all clips have the same length


class VQScoreModel(nn.Module):
    """The VQScore VQ-VAE (quality-estimation variant), scoring clips of any length.

    Args:
        codebook_size: number of codes (2048 in the released model).
        codebook_dim: code size, the encoder's output channels (32).
        channels: the two hidden widths of encoder and decoder ((128, 64)).
        decay: EMA decay of the codebook updates (0.8).
        kmeans_init: start with an empty codebook initialised by k-means on the first
            training batch (True); False gives a random unit codebook, usable at once.
        kmeans_iters: k-means iterations (10).
        dead_code_threshold: replace codes whose EMA count falls below it (0: never).
        max_batch_frames: scoring groups clips of similar length into batches of at most
            this many (padded) frames; 0 scores clip by clip. Scores do not depend on it.

    >>> model = VQScoreModel(codebook_size=64, kmeans_init=False).eval()
    >>> model([torch.randn(16000) * 0.1, torch.randn(24000) * 0.1]).shape
    torch.Size([2])
    """

    sample_rate = 16000
    ARCH_KEYS = ("codebook_size", "codebook_dim", "channels")
    TRAIN_KEYS = ("decay", "kmeans_init", "kmeans_iters", "dead_code_threshold")

    def __init__(self, codebook_size: int = 2048, codebook_dim: int = 32, channels: Sequence[int] = (128, 64),
                 decay: float = 0.8, kmeans_init: bool = True, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0, max_batch_frames: int = 8192) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 2:
            raise ValueError(f"channels must be two widths (e.g. [128, 64]), got {channels}.")
        self.config: dict[str, Any] = {
            "codebook_size": int(codebook_size),
            "codebook_dim": int(codebook_dim),
            "channels": channels,
            "decay": float(decay),
            "kmeans_init": bool(kmeans_init),
            "kmeans_iters": int(kmeans_iters),
            "dead_code_threshold": float(dead_code_threshold),
        }
        self.max_batch_frames = int(max_batch_frames)
        self.encoder = _Encoder(channels, codebook_dim)
        self.codebook = CosineCodebook(codebook_size, codebook_dim, decay, kmeans_init, kmeans_iters,
                                       dead_code_threshold)
        self.decoder = _Decoder(channels, codebook_dim)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    # -- construction and files --------------------------------------------------------

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                        card: str = "vqscore", **kwargs: Any) -> VQScoreModel:
        """The authors' released model (via the hub), or ``checkpoint=`` a local file.

        The file may be in the authors' layout (``{"model": {"VQVAE": state_dict}, ...}``)
        or torchmos' own (written by :meth:`save` and ``torchmos train vqscore``); both are
        loaded strictly. ``kwargs`` override the config (e.g. ``max_batch_frames``).
        """
        path = hub.resolve(card, checkpoint=checkpoint, sha256=sha256)
        return cls.from_checkpoint(hub.load_checkpoint(path), source=str(path), **kwargs)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], source: str = "checkpoint", **kwargs: Any) -> VQScoreModel:
        """Build a model from a loaded checkpoint dict (either layout), strictly; in eval mode."""
        if not isinstance(ckpt, dict):
            raise ValueError(f"{source}: expected a dict checkpoint, found {type(ckpt).__name__}.")
        if "torchmos" in ckpt:
            header = ckpt["torchmos"]
            if not isinstance(header, dict) or header.get("family") != "vqscore":
                fam = header.get("family") if isinstance(header, dict) else header
                raise ValueError(f"{source}: a torchmos {fam!r} model, not a VQScore model.")
            if header.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"{source}: VQScore file format version {header.get('version')!r}; this torchmos "
                    f"reads version {FORMAT_VERSION}. Upgrade torchmos."
                )
            config = dict(header.get("config") or {})
            sd = ckpt.get("model")
            if not isinstance(sd, dict):
                raise ValueError(f"{source}: the torchmos header is there but the 'model' state_dict is not.")
            rename: dict[str, str] = {}
        else:
            sd = ckpt
            if isinstance(ckpt.get("model"), dict) and "VQVAE" in ckpt["model"]:
                sd = ckpt["model"]["VQVAE"]
            if not isinstance(sd, dict) or not any(k.startswith("CNN_1D_encoder.") for k in sd):
                raise ValueError(
                    f"{source}: not a VQScore checkpoint. Expected the authors' layout "
                    "{'model': {'VQVAE': state_dict}} or a torchmos file; found top-level keys "
                    f"{sorted(map(str, ckpt))[:8]}."
                )
            config, rename = {}, AUTHORS_KEYS
        unknown = set(kwargs) - set(cls.ARCH_KEYS) - set(cls.TRAIN_KEYS) - {"max_batch_frames"}
        if unknown:
            raise TypeError(f"unknown VQScore options {sorted(unknown)}.")
        config.update(kwargs)
        model = cls(**config)
        model.load_checkpoint_state(sd, rename=rename, source=source)
        return model.eval()

    def load_checkpoint_state(self, sd: dict[str, Tensor], rename: dict[str, str] | None = None,
                              source: str = "checkpoint") -> None:
        """Strict load (:func:`torchmos.models.load_state_strict`): every key present, none
        extra, every shape right, no NaN/Inf; keys named in errors.

        ``rename`` maps source prefixes to ours (e.g. :data:`AUTHORS_KEYS`); errors name
        the keys as the source spells them.
        """

        def hint(missing: list[str], extra: list[str]) -> str:
            if any("transformer" in k for k in extra):
                return (" It looks like the authors' speech-enhancement VQ-VAE, not the "
                        "quality estimator (QE) that VQScore uses.")
            return ""

        load_state_strict(self, sd, source, model="VQScore", rename=rename, hint=hint,
                          detail=f" (model config {self.config})", finite=True)


    def checkpoint(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """This model as a torchmos checkpoint dict (see :meth:`save`)."""
        ckpt: dict[str, Any] = {
            "torchmos": {"family": "vqscore", "version": FORMAT_VERSION, "config": dict(self.config)},
            "model": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }
        if meta:
            ckpt["meta"] = dict(meta)
        return ckpt

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Write ``{"torchmos": {"family", "version", "config"}, "model": state_dict}``
        (plus an optional ``"meta"`` dict of plain values), atomically."""
        return save_atomic(self.checkpoint(meta), path)

    # -- the network, piece by piece -------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_enc1.weight.device

    def spectrogram(self, clips: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Magnitude (B, 257, T) of 1-D clips, each reflected at its own ends; plus the
        (B, 1, T) mask of valid frames (None when all clips have the same length)."""
        lengths = [int(c.shape[-1]) for c in clips]
        for b, n in enumerate(lengths):
            if n <= N_FFT // 2:
                raise ValueError(f"clip {b} has {n} samples; VQScore needs more than {N_FFT // 2} "
                                 "(16 ms at 16 kHz).")
        longest = max(lengths)
        if min(lengths) == longest:
            x = torch.stack([c.float() for c in clips])
            x = F.pad(x.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect").squeeze(1)
        else:
            x = clips[0].new_zeros(len(clips), longest + N_FFT, dtype=torch.float32)
            for b, c in enumerate(clips):
                x[b, : lengths[b] + N_FFT] = F.pad(c.float().view(1, 1, -1), (N_FFT // 2, N_FFT // 2),
                                                   mode="reflect").view(-1)
        window = self.window.to(device=x.device, dtype=x.dtype)
        spec = torch.stft(x, N_FFT, HOP, N_FFT, window=window, center=False, return_complex=True)
        ri = torch.view_as_real(spec)
        mag = torch.sqrt(torch.clamp(ri[..., 0] ** 2 + ri[..., 1] ** 2, min=MAG_FLOOR))
        if min(lengths) == longest:
            return mag, None
        frames = torch.tensor([n_frames(n) for n in lengths], device=mag.device)
        mask = (torch.arange(mag.shape[-1], device=mag.device) < frames[:, None]).to(mag.dtype).unsqueeze(1)
        return mag * mask, mask

    def encode(self, mag: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, 257, T) magnitude -> z (B, D, T)."""
        return self.encoder(mag, mask)

    def quantize(self, z: Tensor, mask: Tensor | None = None, update: bool = False,
                 straight_through: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, D, T) -> (zq (B, D, T), codes (B, T), commitment loss).

        ``update=True`` runs the training-time codebook maintenance (k-means init, EMA,
        dead codes) on the valid frames. ``zq`` carries a straight-through gradient when
        ``straight_through`` (default: in training mode); otherwise it is the codes as
        they are.
        """
        b, d, t = z.shape
        frames = z.transpose(1, 2).reshape(b * t, d)
        if mask is None:
            zq, codes, commit = self.codebook(frames, update=update, straight_through=straight_through)
            return zq.view(b, t, d).transpose(1, 2), codes.view(b, t), commit
        valid = mask[:, 0].reshape(-1) > 0
        zq_v, codes_v, commit = self.codebook(frames[valid], update=update, straight_through=straight_through)
        zq = zq_v.new_zeros(b * t, d).index_put((valid.nonzero()[:, 0],), zq_v)
        codes = codes_v.new_full((b * t,), -1).index_put((valid.nonzero()[:, 0],), codes_v)
        return zq.view(b, t, d).transpose(1, 2), codes.view(b, t), commit

    def decode(self, zq: Tensor, mask: Tensor | None = None) -> Tensor:
        """zq (B, D, T) -> reconstructed magnitude (B, 257, T)."""
        return self.decoder(zq, mask)

    def forward_train(self, wavs: Sequence[Tensor] | Tensor) -> VQOutput:
        """The training-time pass: magnitude, encoding, quantisation (with codebook
        updates when the module is in training mode), reconstruction and losses' inputs.

        ``wavs``: (B, L) or a list of 1-D 16 kHz clips.
        """
        clips = _as_clips(wavs, self.device)
        mag, mask = self.spectrogram(clips)
        z = self.encode(mag, mask)
        zq, codes, commit = self.quantize(z, mask, update=self.training)
        recon = self.decode(zq, mask)
        return VQOutput(mag, recon, z, zq, codes, commit, mask)

    def scores(self, clips: Sequence[Tensor]) -> Tensor:
        """VQScore of one batch of clips, as is (no grouping, gradients allowed). (B,)"""
        self._check_codebook()
        mag, mask = self.spectrogram(clips)
        z = self.encode(mag, mask)
        zq, _, _ = self.quantize(z, mask, update=False, straight_through=False)
        return frame_cosine(z, zq, mask)

    def _check_codebook(self) -> None:
        if not self.codebook.is_initialised:
            raise RuntimeError(
                "the VQScore codebook was never initialised: this model has not been trained. "
                "Load trained weights (checkpoint=...) or train one with `torchmos train vqscore`."
            )

    @torch.no_grad()
    def forward(self, wavs: Sequence[Tensor] | Tensor) -> Tensor:
        """VQScore of 16 kHz mono clips (a list of 1-D tensors, or (L,) / (B, L)): (B,).

        Clips are sorted by length and scored in groups of at most ``max_batch_frames``
        padded frames; every clip is scored by its own length, so the result does not
        depend on the grouping.
        """
        clips = _as_clips(wavs, self.device)
        order = sorted(range(len(clips)), key=lambda i: clips[i].shape[-1])
        out = torch.empty(len(clips), device=self.device)
        group: list[int] = []
        for i in order:
            longest = n_frames(clips[i].shape[-1])  # sorted: the newest clip is the longest
            if group and (len(group) + 1) * longest > self.max_batch_frames:
                out[group] = self.scores([clips[j] for j in group])
                group = []
            group.append(i)
        if group:
            out[group] = self.scores([clips[j] for j in group])
        return out


def _as_clips(wavs: Sequence[Tensor] | Tensor, device: torch.device) -> list[Tensor]:
    if isinstance(wavs, Tensor):
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(f"expected (L,) or (B, L) audio, got shape {tuple(wavs.shape)}.")
        wavs = list(wavs.unbind(0))
    if len(wavs) == 0:
        raise ValueError("the batch is empty.")
    clips = []
    for b, w in enumerate(wavs):
        if w.dim() != 1:
            raise ValueError(f"clip {b}: expected a 1-D tensor, got shape {tuple(w.shape)}.")
        clips.append(w.to(device=device, dtype=torch.float32))
    return clips


