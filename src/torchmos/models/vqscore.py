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

__all__ = [
    "AUTHORS_KEYS",
    "CosineCodebook",
    "VQOutput",
    "VQScoreModel",
    "frame_cosine",
    "n_frames",
]

N_FFT = 512
HOP = 256
N_FREQ = N_FFT // 2 + 1
MAG_FLOOR = 1e-7  # on re^2 + im^2, before the square root
COS_EPS = 1e-5  # added to the norms in every cosine (score and reconstruction loss)
IN_EPS = 1e-5  # InstanceNorm1d's default
SLOPE = 0.3  # LeakyReLU negative slope
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


def _instance_norm(x: Tensor, mask: Tensor | None, count: Tensor | None) -> Tensor:
    """InstanceNorm1d (no affine, no running stats) over the valid frames only."""
    if mask is None:
        return F.instance_norm(x, eps=IN_EPS)
    mean = (x * mask).sum(dim=-1, keepdim=True) / count
    centred = (x - mean) * mask
    var = (centred * centred).sum(dim=-1, keepdim=True) / count
    return centred * torch.rsqrt(var + IN_EPS)


def _conv(cin: int, cout: int) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, kernel_size=7, stride=1, padding=3)


class _Encoder(nn.Module):
    """|X| (B, 257, T) -> z (B, dim, T); instance norm on the input and after every layer."""

    def __init__(self, channels: Sequence[int] = (128, 64), dim: int = 32) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.conv_enc1 = _conv(N_FREQ, c1)
        self.conv_enc2 = _conv(c1, c1)
        self.conv_enc3 = _conv(c1, c2)
        self.conv_enc4 = _conv(c2, c2)
        self.conv_enc5 = _conv(c2, dim)
        self.conv_enc6 = _conv(dim, dim)

    def forward(self, mag: Tensor, mask: Tensor | None = None) -> Tensor:
        count = None if mask is None else mask.sum(dim=-1, keepdim=True)

        def norm(t: Tensor) -> Tensor:  # masked output is exactly zero beyond each clip
            return _instance_norm(t, mask, count)

        def act(t: Tensor) -> Tensor:
            return F.leaky_relu(t, SLOPE)

        x = norm(mag)
        e1 = norm(act(self.conv_enc1(x)))
        e2 = norm(act(self.conv_enc2(e1)))
        e3 = norm(act(self.conv_enc3(e1 + e2)))
        e4 = norm(act(self.conv_enc4(e3)))
        e5 = norm(act(self.conv_enc5(e3 + e4)))
        return norm(self.conv_enc6(e5))


class _Decoder(nn.Module):
    """zq (B, dim, T) -> reconstructed |X| (B, 257, T), non-negative."""

    def __init__(self, channels: Sequence[int] = (128, 64), dim: int = 32) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.conv_dec1 = _conv(dim, dim)
        self.conv_dec2 = _conv(dim, c2)
        self.conv_dec3 = _conv(c2, c2)
        self.conv_dec4 = _conv(c2, c1)
        self.conv_dec5 = _conv(c1, c1)
        self.conv_dec6 = _conv(c1, N_FREQ)

    def forward(self, zq: Tensor, mask: Tensor | None = None) -> Tensor:
        def act(t: Tensor) -> Tensor:  # zero beyond each clip, as a lone clip's conv padding
            t = F.leaky_relu(t, SLOPE)
            return t if mask is None else t * mask

        zq = zq if mask is None else zq * mask
        d1 = act(self.conv_dec1(zq))
        d2 = act(self.conv_dec2(d1))
        d3 = act(self.conv_dec3(d2))
        d4 = act(self.conv_dec4(d3 + d2))
        d5 = act(self.conv_dec5(d4))
        out = F.relu(self.conv_dec6(d5 + d4))
        return out if mask is None else out * mask


def _sample_rows(x: Tensor, n: int) -> Tensor:
    """``n`` rows of ``x`` drawn without replacement when possible (global torch RNG, CPU)."""
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0])[:n]
    else:
        idx = torch.randint(0, x.shape[0], (n,))
    return x[idx.to(x.device)]


class CosineCodebook(nn.Module):
    """Cosine-similarity codebook with EMA updates, k-means init and dead-code replacement.

    Buffers (names and shapes as in the authors' checkpoint, one head):
    ``initted`` (1,), ``cluster_size`` (1, K), ``embed_avg`` (1, K, D), ``embed`` (1, K, D).

    * Inputs are L2-normalised per frame; the nearest code is the one with the largest dot
      product; codes are unit vectors.
    * ``update=True`` (training): the first batch initialises the codebook by spherical
      k-means (``kmeans_iters`` iterations on the batch's frames); every batch then moves
      ``cluster_size`` and ``embed_avg`` by an EMA of decay ``decay`` (counts and sums of the
      frames assigned to each code) and sets ``embed = l2norm(embed_avg / smoothed counts)``
      (Laplace smoothing, eps 1e-5). Codes whose EMA count falls below
      ``dead_code_threshold`` are replaced by random frames of the batch (0 disables it;
      the authors' released model was trained with it off).
    * The commitment loss is the MSE between the normalised input and its (detached) code.
    """

    def __init__(self, size: int = 2048, dim: int = 32, decay: float = 0.8, kmeans_init: bool = True,
                 kmeans_iters: int = 10, dead_code_threshold: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.size, self.dim = int(size), int(dim)
        self.decay = float(decay)
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_threshold = float(dead_code_threshold)
        self.eps = float(eps)
        if kmeans_init:
            embed = torch.zeros(1, self.size, self.dim)
        else:  # a random unit codebook, ready to use (as the reference without k-means)
            embed = torch.empty(1, self.size, self.dim)
            nn.init.kaiming_uniform_(embed)
            embed = F.normalize(embed, dim=-1)
        self.register_buffer("initted", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(1, self.size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("embed", embed)

    @property
    def is_initialised(self) -> bool:
        return bool(self.initted.item() != 0)

    def nearest(self, xn: Tensor, chunk: int = 8192) -> Tensor:
        """Index of the nearest code of each row of ``xn`` (N, D), rows L2-normalised."""
        codes = self.embed[0]
        if xn.shape[0] <= chunk:
            return (xn @ codes.t()).argmax(dim=-1)
        return torch.cat([(c @ codes.t()).argmax(dim=-1) for c in xn.split(chunk)])

    def forward(self, x: Tensor, update: bool = False,
                straight_through: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise frames ``x`` (N, D).

        Returns ``(zq, codes, commit_loss)``: ``zq`` (N, D) the unit codes (with a
        straight-through gradient to the normalised input when ``straight_through``,
        by default in training mode), ``codes`` (N,), and the commitment loss (scalar).
        """
        xn = F.normalize(x.float(), p=2, dim=-1)
        if update and not self.is_initialised:
            self._kmeans_init(xn.detach())
        codes = self.nearest(xn)
        q = self.embed[0].index_select(0, codes)
        commit = F.mse_loss(q, xn)  # codes are buffers: the gradient goes to the encoder only
        if update:
            self._ema_update(xn.detach(), codes)
            self._expire_codes(xn.detach())
        if straight_through is None:
            straight_through = self.training
        zq = xn + (q - xn).detach() if straight_through else q
        return zq, codes, commit

    # -- training-time codebook maintenance -------------------------------------------

    @torch.no_grad()
    def _kmeans_init(self, xn: Tensor) -> None:
        means = _sample_rows(xn, self.size)
        counts = torch.zeros(self.size, device=xn.device)
        for _ in range(self.kmeans_iters):
            assign = (xn @ means.t()).argmax(dim=-1)
            counts = torch.bincount(assign, minlength=self.size).to(xn.dtype)
            sums = torch.zeros_like(means).index_add_(0, assign, xn)
            new = F.normalize(sums / counts.clamp(min=1).unsqueeze(-1), dim=-1)
            means = torch.where((counts == 0).unsqueeze(-1), means, new)
        self.embed[0].copy_(means)
        self.embed_avg[0].copy_(means * counts.unsqueeze(-1))
        self.cluster_size[0].copy_(counts)
        self.initted.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, xn: Tensor, codes: Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.size).to(xn.dtype)
        sums = torch.zeros(self.size, self.dim, device=xn.device, dtype=xn.dtype).index_add_(0, codes, xn)
        self.cluster_size[0].lerp_(counts, 1.0 - self.decay)
        self.embed_avg[0].lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum(dim=-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.embed.copy_(F.normalize(self.embed_avg / smoothed.unsqueeze(-1), dim=-1))

    @torch.no_grad()
    def _expire_codes(self, xn: Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        dead = self.cluster_size[0] < self.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return
        fresh = _sample_rows(xn, n)
        self.embed[0][dead] = fresh
        self.embed_avg[0][dead] = fresh * self.dead_code_threshold
        self.cluster_size[0][dead] = self.dead_code_threshold

    @torch.no_grad()
    def usage_perplexity(self) -> float:
        """exp(entropy) of the EMA code counts: how many codes are effectively in use."""
        p = self.cluster_size[0].double()
        if float(p.sum()) <= 0:
            return 0.0
        p = p / p.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))


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
        """Strict load: every key present, none extra, every shape right; keys named in errors.

        ``rename`` maps source prefixes to ours (e.g. :data:`AUTHORS_KEYS`); errors name
        the keys as the source spells them.
        """
        rename = rename or {}

        def ours(key: str) -> str:
            for a, b in rename.items():
                if key.startswith(a):
                    return b + key[len(a):]
            return key

        def theirs(key: str) -> str:
            for a, b in rename.items():
                if key.startswith(b):
                    return a + key[len(b):]
            return key

        own = self.state_dict()
        mapped = {ours(k): v for k, v in sd.items()}
        missing = sorted(theirs(k) for k in set(own) - set(mapped))
        extra = sorted(k for k in sd if ours(k) not in own)
        if missing or extra:
            hint = ""
            if any("transformer" in k for k in extra):
                hint = (" It looks like the authors' speech-enhancement VQ-VAE, not the "
                        "quality estimator (QE) that VQScore uses.")
            raise ValueError(
                f"{source}: does not match the VQScore model: missing keys {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''}, unexpected keys {extra[:6]}"
                f"{'...' if len(extra) > 6 else ''}.{hint}"
            )
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                raise ValueError(f"{source}: key {k!r} holds a {type(v).__name__}, not a tensor.")
            want = tuple(own[ours(k)].shape)
            if tuple(v.shape) != want:
                raise ValueError(f"{source}: key {k!r} has shape {tuple(v.shape)}, expected {want} "
                                 f"(model config {self.config}).")
            if not torch.isfinite(v).all():
                raise ValueError(f"{source}: key {k!r} holds NaN/Inf values.")
        self.load_state_dict(mapped, strict=True)

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


