"""SCOREQ: wav2vec 2.0 BASE embeddings for no-reference MOS and reference distance (SPECS §2).

One architecture, four released models (Ragano, Skoglund & Hines, NeurIPS 2024):

* **no-reference** (``mode="nr"``): MOS = ``Linear(768 -> 1)`` of the clip's embedding
  (an unbounded linear output, no clamp);
* **reference** (``mode="ref"``): the Euclidean distance between the embeddings of a test
  clip and a clean reference, in [0, 2] (both are unit vectors); lower is better.

The embedding is the mean over time of the last transformer layer of a wav2vec 2.0 BASE
encoder (``transformers.Wav2Vec2Model(Wav2Vec2Config())``), L2-normalised. Input: mono
float 16 kHz audio, zero-padded at the end to a multiple of 320 samples, not normalised.

**Same score in any batch.** The reference scores one file at a time, and a naive padded
batch changes scores (the GroupNorm of the first conv layer normalises over time, and the
mean pooling and attention see the padding). Here every clip goes through the conv
feature encoder on its own (its GroupNorm statistics are its own), and clips share padded
batches only in the transformer: padded frames are zeroed before the positional
convolution (the per-file run sees the convolution's zero padding there), the attention
gets a padding mask, and the mean pooling counts valid frames only.

**Memory.** The conv encoder of a long clip runs in 20 s time blocks (GroupNorm
statistics from a first pass over the whole clip, accumulated in float64), so its memory
does not grow with the clip; the transformer uses PyTorch's fused attention, which never
holds the T x T attention matrix.

**Long audio.** By default a clip is embedded whole, as the reference does (attention
compute grows with the square of the length). ``chunk_seconds=`` opts into a documented
deviation: the clip is cut into near-equal chunks of at most that length (at 320-sample
boundaries), every chunk goes through the encoder on its own, and the embedding is the
mean of *all chunks' frames* (the frame-weighted mean of the chunks' pooled, not yet
normalised, embeddings), then normalised. A clip that fits in one chunk scores exactly as
in the default mode.

``transformers`` is imported only when a model is built, so ``import torchmos`` does not
need it.

The pieces: :mod:`~torchmos.models.scoreq_keys` (the official files' key table, their
converter and config inference), :mod:`~torchmos.models.scoreq_encoder` (the fast,
batch-independent encoder path) and this module (the model, its heads and batching).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub
from ._deps import require_transformers
from .scoreq_encoder import EMBED_DIM, HOP, FastEncoder
from .scoreq_encoder import _adjacent as _adjacent  # (imported from here by tests)
from .scoreq_keys import _PREFIXES, convert_official, infer_config, official_key
from .scoreq_prune import attention_widths, resize_attention
from .strict import load_state_strict

__all__ = ["EMBED_DIM", "HOP", "ScoreqModel", "chunk_bounds", "infer_config", "official_key"]


def chunk_bounds(length: int, chunk: int | None) -> list[tuple[int, int]]:
    """(start, end) samples of the chunks of a 320-padded clip of ``length`` samples.

    With ``chunk=None`` (or a clip that fits) there is one chunk, the whole clip. Otherwise
    the clip's 320-sample units are split into ``ceil(length / chunk)`` near-equal parts
    (the first ones one unit longer), so no chunk is longer than ``chunk`` and none is a
    tiny leftover.

    >>> chunk_bounds(3200, None), chunk_bounds(3200, 3200)
    ([(0, 3200)], [(0, 3200)])
    >>> chunk_bounds(3520, 1600)
    [(0, 1280), (1280, 2560), (2560, 3520)]
    """
    if length % HOP:
        raise ValueError(f"length {length} is not a multiple of {HOP}.")
    if chunk is None or length <= chunk:
        return [(0, length)]
    units, per = length // HOP, chunk // HOP
    n = -(-units // per)
    base, extra = divmod(units, n)
    out, start = [], 0
    for i in range(n):
        size = (base + (1 if i < extra else 0)) * HOP
        out.append((start, start + size))
        start += size
    return out


# ----------------------------------------------------------------------------- model


class ScoreqModel(FastEncoder, nn.Module):
    """The SCOREQ network: wav2vec 2.0 BASE encoder, mean pooling, unit-norm embedding.

    Args:
        mode: ``"nr"`` (MOS head; :meth:`forward` returns MOS) or ``"ref"`` (no head;
            use :meth:`distance` / :meth:`distance_to_set`).
        chunk_seconds: ``None`` (default, faithful: each clip whole) or the longest chunk
            in seconds for long files (opt-in deviation, see the module docs).
        max_batch_seconds: clips (or chunks) are sorted by length and packed into padded
            batches of at most this much padded audio (a longer clip runs alone). Scores do
            not depend on it; it only trades memory for speed.
        precision: ``"fp32"`` (default, faithful) or ``"bf16"`` (opt-in, approximate: the
            encoder's conv and linear weights are stored in bfloat16 and run under
            autocast; norms, pooling, normalisation and the head stay fp32). About 1.8x
            faster on CPUs with native bf16; error measured in docs/metrics/scoreq.md.
        config_overrides: fields of ``transformers.Wav2Vec2Config`` to change (the official
            files use the BASE defaults; e.g. ``num_hidden_layers=2`` for a small test model).

    Example (random weights; :meth:`from_pretrained` loads a checkpoint):

    >>> import torch
    >>> model = ScoreqModel("nr", num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
    ...                     intermediate_size=96, num_conv_pos_embedding_groups=2,
    ...                     conv_dim=(32,) * 7)
    >>> clips = [torch.randn(8000) * 0.1, torch.randn(16000) * 0.1]
    >>> model(clips).shape, model.embed(clips).norm(dim=1).round().tolist()
    (torch.Size([2]), [1.0, 1.0])
    """

    sample_rate = 16000

    def __init__(self, mode: str = "nr", chunk_seconds: float | None = None,
                 max_batch_seconds: float = 60.0, precision: str = "fp32",
                 **config_overrides: Any) -> None:
        super().__init__()
        if mode not in _PREFIXES:
            raise ValueError(f"mode must be 'nr' or 'ref', got {mode!r}.")
        transformers = require_transformers("SCOREQ")
        config = transformers.Wav2Vec2Config(**config_overrides)
        self.receptive_field = self._check_layout(config)
        self.mode = mode
        self.backbone = transformers.Wav2Vec2Model(config)
        dim = config.hidden_size
        # The contrastive projection head f of the paper; kept so the official files load
        # strictly (and for training), never used for inference.
        self.embedding_layer = nn.Sequential(nn.ReLU(), nn.Linear(dim, 256))
        if mode == "nr":
            self.mos_layer = nn.Linear(dim, 1)
        self.chunk_samples = self._chunk_samples(chunk_seconds)
        self.chunk_seconds = chunk_seconds
        self.max_batch_samples = max(int(max_batch_seconds * self.sample_rate), HOP)
        # padded batches pay off on accelerators; on CPUs only equal lengths are stacked
        self.max_padding: float | None = None  # None: 0.25 on accelerators, 0 on CPU
        # long clips go through the conv encoder in blocks of this many output frames
        self.block_frames = 1000  # 20 s
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        self.precision = precision
        if precision == "bf16":
            self._store_bf16()
        self._fuse_qkv()
        self.eval()

    @classmethod
    def _chunk_samples(cls, chunk_seconds: float | None) -> int | None:
        if chunk_seconds is None:
            return None
        if (isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float))
                or not math.isfinite(chunk_seconds) or chunk_seconds < 0.5):
            raise ValueError(f"chunk_seconds must be None or a number of seconds >= 0.5, got {chunk_seconds!r}.")
        return max(int(round(chunk_seconds * cls.sample_rate / HOP)), 2) * HOP

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        card: str = "scoreq-nr-natural",
        mode: str = "nr",
        chunk_seconds: float | None = None,
        **config_overrides: Any,
    ) -> ScoreqModel:
        """Build the model and load an official SCOREQ file (the card's, or ``checkpoint=``).

        The encoder's architecture is read from the file's shapes (:func:`infer_config`),
        so smaller models trained with ``torchmos train scoreq --layers/--hidden`` load too;
        ``config_overrides`` win over what is inferred, and may also hold
        ``max_batch_seconds`` and ``precision``.
        """
        path = hub.resolve(card, checkpoint=checkpoint, sha256=sha256)
        sd = hub.load_checkpoint(path)
        config_overrides = {**infer_config(sd, mode), **config_overrides}
        # Skip the random initialisation of ~95 M parameters: build on the meta device,
        # allocate, then fill every tensor from the file (the load is strict).
        with torch.device("meta"):
            model = cls(mode=mode, chunk_seconds=chunk_seconds, **config_overrides)
            resize_attention(model, attention_widths(sd, _PREFIXES[mode][0]))  # pruned heads, if any
        model = model.to_empty(device="cpu")
        model.load_official(sd, source=str(path))
        return model.eval()

    def convert_official_state_dict(self, sd: Mapping[str, Tensor], mode: str | None = None,
                                    source: str = "checkpoint", encoder_only: bool = False) -> dict[str, Tensor]:
        """Rename an official SCOREQ state_dict (fairseq names) to this module's names.

        Strict: every key this model needs must be present with its shape, and no key may be
        left over; otherwise a :class:`ValueError` names the key. Weight norm is accepted
        as ``weight_g``/``weight_v`` (the official files) or as the current parametrisation
        ``parametrizations.weight.original0/1``. ``mask_emb`` (used only in pre-training)
        may be absent.

        Args:
            sd: the flat official state_dict (``pt_model.ssl_model.*`` + ``mos_layer.*`` for
                NR files, ``ssl_model.*`` for REF files).
            mode: ``"nr"`` or ``"ref"`` (default: this model's).
            encoder_only: the file holds the encoder alone (a pre-trained wav2vec 2.0 under
                the mode's prefix); the heads keep this model's current values.
            source: how to name the file in errors.
        """
        mode = mode or self.mode
        if mode != self.mode:
            raise ValueError(f"{source}: a {self.mode!r} model cannot load a {mode!r} state_dict.")
        return convert_official(self.state_dict(), sd, mode, source, encoder_only)

    def to_official_state_dict(self) -> dict[str, Tensor]:
        """This model's weights under the official (fairseq) names: the file format of the
        released checkpoints (weight norm as ``weight_g``/``weight_v``). ``torch.save`` it
        to get a file :meth:`from_pretrained` loads."""
        return {official_key(k, self.mode): v.detach().clone() for k, v in self.state_dict().items()}

    def load_official(self, sd: Mapping[str, Tensor], source: str = "checkpoint", encoder_only: bool = False) -> None:
        """Load an official state_dict strictly (see :meth:`convert_official_state_dict`)."""
        converted = self.convert_official_state_dict(sd, source=source, encoder_only=encoder_only)
        load_state_strict(self, converted, source, model="SCOREQ")

    # -- inference (the encoder's fast path: FastEncoder, in scoreq_encoder) ---------

    @property
    def device(self) -> torch.device:
        return self.backbone.feature_projection.projection.weight.device

    def _apply(self, fn: Any, recurse: bool = True) -> ScoreqModel:
        out = super()._apply(fn, recurse)
        self._fuse_qkv()
        return out

    def _pieces(self, clips: Sequence[Tensor]) -> tuple[list[Tensor], list[int]]:
        pieces, owner = [], []
        for b, c in enumerate(clips):
            if not isinstance(c, Tensor) or c.dim() != 1:
                raise ValueError(f"clip {b}: expected a 1-D tensor of 16 kHz samples, got "
                                 f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}.")
            if c.shape[0] <= HOP:
                raise ValueError(f"clip {b}: {c.shape[0]} samples; SCOREQ needs more than {HOP} "
                                 f"samples ({HOP / self.sample_rate * 1000:.0f} ms) at 16 kHz.")
            c = c.float()
            pad = -c.shape[0] % HOP
            if pad:
                c = nn.functional.pad(c, (0, pad))
            for s, e in chunk_bounds(c.shape[0], self.chunk_samples):
                pieces.append(c[s:e])
                owner.append(b)
        return pieces, owner

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Group pieces (longest first) into padded batches: at most ``max_batch_samples``
        of padded audio, and at most ``max_padding`` padding (25 % on accelerators; none on
        CPUs, where batching saves nothing and padding costs compute). Scores do not depend
        on the grouping."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        pad = self.max_padding
        if pad is None:
            pad = 0.0 if self.device.type == "cpu" else 0.25
        out: list[list[int]] = []
        for i in order:
            if out:
                cur = out[-1]
                longest = lengths[cur[0]]
                n = len(cur) + 1
                if (n * longest <= self.max_batch_samples
                        and n * longest <= (1 + pad) * (sum(lengths[j] for j in cur) + lengths[i])):
                    cur.append(i)
                    continue
            out.append([i])
        return out

    @torch.inference_mode()
    def pooled(self, clips: Sequence[Tensor]) -> Tensor:
        """(B, D) mean over each clip's frames of the last layer, before normalisation."""
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        if len(clips) == 0:
            raise ValueError("no clips to score.")
        pieces, owner = self._pieces(clips)
        device = self.device
        sums = torch.zeros(len(clips), self.embed_dim, device=device, dtype=torch.float64)
        counts = torch.zeros(len(clips), device=device, dtype=torch.float64)
        for idx in self._batches([p.shape[0] for p in pieces]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                feats = [self._features(pieces[j].to(device)) for j in idx]
                frames = torch.tensor([f.shape[0] for f in feats], device=device)
                if len(feats) == 1:
                    feat, mask = feats[0][None], None
                elif all(f.shape[0] == feats[0].shape[0] for f in feats):
                    feat, mask = torch.stack(feats), None
                else:
                    feat = nn.utils.rnn.pad_sequence(feats, batch_first=True)
                    mask = torch.arange(feat.shape[1], device=device) < frames[:, None]
                hidden, _ = self.backbone.feature_projection(feat)
                out = self._transformer(hidden, mask).float()
            if mask is not None:
                out = out.masked_fill(~mask[:, :, None], 0.0)
            own = torch.tensor([owner[j] for j in idx], device=device)
            sums.index_add_(0, own, out.sum(1).double())
            counts.index_add_(0, own, frames.double())
        return (sums / counts[:, None]).float()

    def train_pooled(self, clips: Sequence[Tensor], train_cnn: bool = False) -> Tensor:
        """(B, D) pooled embeddings (before normalisation) with gradients, for fine-tuning.

        The conv feature encoder is frozen (unless ``train_cnn``): it runs without
        gradients, each clip with its own GroupNorm statistics (clips of equal length share
        one call). The feature
        projection and the transformer run as ``transformers`` modules (so dropout and
        LayerDrop apply in training mode) on the clips padded to the longest, with the
        padding masked out of attention and zeroed before the positional convolution,
        and the mean pooling counts each clip's own frames. In eval mode this is the
        computation of :meth:`pooled` (the same embedding whatever the batch).
        """
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        device = self.device
        feats: list[Tensor | None] = [None] * len(clips)
        groups: dict[int, list[int]] = {}
        for b, c in enumerate(clips):
            if not isinstance(c, Tensor) or c.dim() != 1 or c.shape[0] <= HOP:
                raise ValueError(f"clip {b}: expected a 1-D tensor of more than {HOP} samples at 16 kHz.")
            groups.setdefault(c.shape[0] + (-c.shape[0] % HOP), []).append(b)
        with torch.set_grad_enabled(train_cnn and torch.is_grad_enabled()):
            for n, idx in groups.items():
                x = torch.stack([nn.functional.pad(clips[b].float(), (0, n - clips[b].shape[0])) for b in idx])
                y = self.backbone.feature_extractor(x.to(device)).transpose(1, 2)
                for k, b in enumerate(idx):
                    feats[b] = y[k]
        frames = torch.tensor([f.shape[0] for f in feats], device=device)  # type: ignore[union-attr]
        feat = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # type: ignore[arg-type]
        mask = torch.arange(feat.shape[1], device=device) < frames[:, None]
        hidden, _ = self.backbone.feature_projection(feat)
        out = self.backbone.encoder(hidden, attention_mask=None if bool(mask.all()) else mask).last_hidden_state
        out = out.masked_fill(~mask[:, :, None], 0.0)
        return out.sum(1) / frames[:, None].to(out.dtype)

    def embed(self, clips: Sequence[Tensor]) -> Tensor:
        """(B, D) unit-norm embeddings of 16 kHz mono clips (a list of 1-D tensors of any
        lengths, or one (L,) / (B, L) tensor of equal-length clips)."""
        return nn.functional.normalize(self.pooled(clips), dim=1)

    @torch.inference_mode()
    def forward(self, clips: Sequence[Tensor]) -> Tensor:
        """(B,) predicted MOS (no-reference models only)."""
        if self.mode != "nr":
            raise RuntimeError(
                "this is a reference-mode SCOREQ model: it has no MOS head. Use "
                "distance(clips, ref_clips) or distance_to_set(clips, ref_embeddings), or a "
                "scoreq-nr-* model for MOS."
            )
        return self.mos_layer(self.embed(clips)).squeeze(-1)

    @torch.inference_mode()
    def distance(self, clips: Sequence[Tensor], ref_clips: Sequence[Tensor]) -> Tensor:
        """(B,) Euclidean distance between the embeddings of ``clips[b]`` and ``ref_clips[b]``."""
        if isinstance(clips, Tensor):
            clips = [clips] if clips.dim() == 1 else list(clips.unbind(0))
        if isinstance(ref_clips, Tensor):
            ref_clips = [ref_clips] if ref_clips.dim() == 1 else list(ref_clips.unbind(0))
        if len(clips) != len(ref_clips):
            raise ValueError(f"{len(clips)} clips but {len(ref_clips)} references; they are scored in pairs.")
        e = self.embed(list(clips) + list(ref_clips))
        return torch.linalg.vector_norm(e[: len(clips)] - e[len(clips):], dim=1)

    @torch.inference_mode()
    def distance_to_set(self, clips: Sequence[Tensor], ref_embeddings: Tensor) -> Tensor:
        """(B,) mean Euclidean distance from each clip's embedding to a set (R, D) of
        reference embeddings (from :meth:`embed`)."""
        if ref_embeddings.dim() != 2 or ref_embeddings.shape[1] != self.embed_dim or ref_embeddings.shape[0] == 0:
            raise ValueError(f"ref_embeddings must have shape (R, {self.embed_dim}) with R >= 1, "
                             f"got {tuple(ref_embeddings.shape)}.")
        e = self.embed(clips)
        ref = ref_embeddings.to(e.device, torch.float32)
        return torch.linalg.vector_norm(e[:, None, :] - ref[None, :, :], dim=-1).mean(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, chunk_seconds={self.chunk_seconds}, precision={self.precision!r}"
