"""Train SCOREQ on your own MOS data: ``torchmos train scoreq``.

    torchmos train scoreq --train train.csv --valid valid.csv --out runs/my_scoreq \\
        --init scoreq-nr-natural --reference clean/

The two-stage recipe of Ragano, Skoglund & Hines (NeurIPS 2024; SPECS §2), whose training
code was never released:

* **Stage 1, contrastive regression.** The wav2vec 2.0 encoder is fine-tuned (its conv
  feature encoder frozen) together with the projection head ``f = ReLU -> Linear(D -> 256)``
  under :class:`torchmos.losses.ScoreqLoss` on ``z = normalise(f(mean-pooled encoder
  output))``: batch-all triplets of ``--batch-size`` (128) random ``--crop-seconds`` (4 s)
  crops, adaptive margin by default. Adam, lr 1e-5 for the encoder and 1e-3 for the head;
  both are multiplied by 0.99 after every 10 epochs without improvement of the validation
  criterion, and training stops after ``--patience`` epochs without one (or at
  ``--epochs``). The validation criterion is the Spearman correlation between the MOS of
  the validation clips and minus their mean distance to a clean reference set
  (``--reference``: the non-matching reference mode of the paper), or, without
  references, the triplet loss on the validation clips averaged over all valid triplets. The best epoch is kept.
* **Stage 2, the MOS head.** The encoder is frozen and ``f`` dropped; ``Linear(D -> 1)`` is
  fitted with MSE on the normalised pooled embeddings of the whole training clips (Adam,
  ``--head-lr``, early stopping on the validation MSE). The embeddings are computed once,
  so this stage takes seconds.

``--loss l2`` trains the paper's baseline instead: the same encoder (conv frozen) and
``Linear(D -> 1)`` end to end with MSE (one stage; the head starts at the mean training
MOS, and the best epoch is chosen by validation MSE).

Data: CSV files ``path,mos[,condition][,sample_rate]`` (:mod:`torchmos.training.data`;
relative paths resolve against the CSV's folder). Every file is checked before training
starts. Training crops come from seeded permutations and offsets, so a run is a pure
function of its options and ``--seed``; crops of clips shorter than ``--crop-seconds``
are the whole clip, and a batch is padded to its longest crop with the padding masked out
of attention and pooling (each clip embeds as it would alone, as at inference).
Validation clips are embedded whole, exactly as the metrics embed them.

Initialisation (``--init``): an official SCOREQ file or card (``scoreq-nr-natural``,
``scoreq-ref-synthetic``..., NR or REF layout; a torchmos-trained ``nr.pt``/``ref.pt``), a
fairseq wav2vec 2.0 pre-training checkpoint (``wav2vec_small.pt``), a local
``transformers`` Wav2Vec2 directory (``config.json`` + weights), or ``random``.
``--layers N`` keeps the first N transformer layers of a pre-trained encoder (or sets the
depth of a random one); ``--hidden`` and ``--conv-dim`` size a random encoder.

Outputs in ``--out``: ``nr.pt`` and ``ref.pt`` in the official SCOREQ file layout (flat
fairseq-named state_dicts: ``pt_model.ssl_model.*``, ``pt_model.embedding_layer.1.*`` and
``mos_layer.*``; ``ssl_model.*`` and ``embedding_layer.1.*``), which
``ScoreqNR(checkpoint="runs/my_scoreq/nr.pt")``, ``ScoreqRef(checkpoint=".../ref.pt")``,
``torchmos score --model runs/my_scoreq/nr.pt`` and the other SCOREQ tools load; also
``metrics.csv`` (and TensorBoard events in ``tb/`` when ``tensorboard`` is installed),
``args.json`` and ``last.pt`` (for ``--resume``; it holds the optimiser state too).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import audio, hub
from ..hub import save_atomic
from ..losses import ScoreqLoss
from ..models.scoreq import HOP, ScoreqModel, infer_config, official_key
from . import (
    CsvLog,
    TrainError,
    add_run_arguments,
    pearson,
    pick_device,
    plain_args,
    spearman,
    start_run,
)
from .data import MOSDataset, MOSItem, read_mos_csv
from .sfi_distill import crop, durations, seed_of

__all__ = ["TrainError", "add_arguments", "build_model", "run", "save_outputs"]

SAMPLE_RATE = ScoreqModel.sample_rate
STATE_VERSION = 1
FIXED_ON_RESUME = ["init", "train", "valid", "reference", "loss", "margin", "layers", "hidden", "conv_dim", "train_cnn",
                   "batch_size", "crop_seconds", "seed", "mos_range"]
# the Wav2Vec2Config fields that define the encoder (kept in last.pt; read from a transformers directory)
_CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                  "conv_kernel", "conv_stride", "conv_bias", "num_conv_pos_embeddings",
                  "num_conv_pos_embedding_groups", "hidden_act", "feat_extract_activation", "layer_norm_eps")
COLUMNS = ["step", "stage", "epoch", "time_s", "lr_encoder", "lr_head", "loss", "val_loss", "val_hinge",
           "val_nmr_spearman", "val_mse", "val_pearson", "val_spearman"]


# ----------------------------------------------------------------------------- CLI


def _margin(text: str) -> float | str:
    if text == "adaptive":
        return text
    try:
        m = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margin must be 'adaptive' or a number, got {text!r}") from None
    if not m >= 0:
        raise argparse.ArgumentTypeError(f"--margin must be >= 0, got {text!r}")
    return m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's options to ``parser`` (``torchmos train scoreq`` mounts it)."""
    d = parser.add_argument_group("data")
    d.add_argument("--train", required=True, metavar="CSV", help="training clips: path,mos[,condition][,sample_rate]")
    d.add_argument("--valid", default=None, metavar="CSV", help="validation clips, same format")
    d.add_argument("--reference", nargs="+", default=None, metavar="PATH",
                   help="clean reference speech (files, folders, lists) for validation in non-matching "
                   "reference mode; without it stage 1 is validated by its loss")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (nr.pt, ref.pt, metrics.csv, last.pt)")
    d.add_argument("--mos-range", type=float, nargs=2, default=(1.0, 5.0), metavar=("LOW", "HIGH"),
                   help="the rating scale (default 1 5): the adaptive margin's normaliser; MOS outside it is an error")

    m = parser.add_argument_group("model")
    m.add_argument("--init", default="scoreq-nr-natural", metavar="MODEL",
                   help="start from an official SCOREQ card or file (NR or REF), a fairseq wav2vec 2.0 checkpoint "
                   "(wav2vec_small.pt), a local transformers Wav2Vec2 directory, or 'random' "
                   "(default scoreq-nr-natural)")
    m.add_argument("--layers", type=int, default=None,
                   help="transformer layers: keep the first N of a pre-trained encoder, or the depth of a random one")
    m.add_argument("--hidden", type=int, default=None, help="width of a random encoder (a multiple of 64; default 768)")
    m.add_argument("--conv-dim", type=int, default=None, help="channels of a random conv encoder (default 512)")
    m.add_argument("--train-cnn", action="store_true",
                   help="also train the conv feature encoder (the paper freezes it; useful from --init random)")
    m.add_argument("--dropout", type=float, default=0.1,
                   help="dropout in the transformer while training (default 0.1; LayerDrop and SpecAugment are off)")

    s = parser.add_argument_group("stage 1 (contrastive regression)")
    s.add_argument("--loss", choices=["scoreq", "l2"], default="scoreq",
                   help="scoreq (two stages, default) or l2 (the paper's baseline: MSE end to end, one stage)")
    s.add_argument("--margin", type=_margin, default="adaptive", help="'adaptive' (default) or a constant margin")
    s.add_argument("--epochs", type=int, default=200, help="most epochs of stage 1 (default 200)")
    s.add_argument("--patience", type=int, default=30, help="stop after this many epochs without improvement (30)")
    s.add_argument("--decay-patience", type=int, default=10,
                   help="multiply the learning rates by --decay after every N epochs without improvement (10)")
    s.add_argument("--decay", type=float, default=0.99, help="learning-rate decay factor (0.99)")
    s.add_argument("--batch-size", type=int, default=128, help="clips per batch (default 128, the paper's)")
    s.add_argument("--micro-batch", type=int, default=0,
                   help="encode the batch in parts of this many clips (exact gradients of the whole-batch loss, "
                   "less memory; default 0: all at once)")
    s.add_argument("--crop-seconds", type=float, default=4.0, help="training crop length (default 4 s)")
    s.add_argument("--lr-encoder", type=float, default=1e-5, help="Adam lr of the encoder (1e-5)")
    s.add_argument("--lr-head", type=float, default=1e-3, help="Adam lr of the head (1e-3)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast the encoder while training (faster on GPUs; default fp32)")

    h = parser.add_argument_group("stage 2 (MOS head)")
    h.add_argument("--head-epochs", type=int, default=500, help="most epochs of stage 2 (default 500)")
    h.add_argument("--head-patience", type=int, default=50, help="stop after N epochs without a better val MSE (50)")
    h.add_argument("--head-lr", type=float, default=1e-3, help="Adam lr of the MOS head (1e-3)")
    h.add_argument("--head-batch-size", type=int, default=32, help="embeddings per step (32)")

    add_run_arguments(parser, seed_help="initialisation, crops, batches and dropout", log_every=10,
                      val_every=1, save_every=1, unit="epochs")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or :class:`torchmos.hub.HubError` on bad input."""
    return _Recipe(args).fit()


# ----------------------------------------------------------------------------- initialisation

_PRETRAIN_ONLY = ("quantizer.", "project_q.", "final_proj.", "project_inp.", "target_glu.", "label_embs_concat")
_ENCODER_KEYS = ("feature_extractor.", "layer_norm.", "post_extract_proj.", "encoder.", "mask_emb")


def _load_any(path: Path) -> dict[str, Any]:
    """A checkpoint, allowing the ``argparse.Namespace`` that fairseq files carry."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return hub.load_checkpoint(path)
    except hub.HubError as e:
        raise TrainError(
            f"{e}\nA fairseq checkpoint whose config is an omegaconf object cannot be read safely; extract its "
            f"weights once with: python -c \"import torch; torch.save(torch.load('{path}', weights_only=False)"
            f"['model'], 'weights.pt')\" (only for a file you trust), then --init weights.pt."
        ) from None


def _random_config(layers: int | None, hidden: int | None, conv_dim: int | None) -> dict[str, Any]:
    hidden = hidden or 768
    if hidden % 64:
        raise TrainError(f"--hidden {hidden} must be a multiple of 64 (attention heads are 64 wide).")
    cfg: dict[str, Any] = {"hidden_size": hidden, "num_attention_heads": hidden // 64,
                           "intermediate_size": 4 * hidden, "num_hidden_layers": layers or 12,
                           "num_conv_pos_embedding_groups": 16}
    if conv_dim:
        cfg["conv_dim"] = (conv_dim,) * 7
    return cfg


def build_model(init: str, layers: int | None = None, hidden: int | None = None,
                conv_dim: int | None = None, seed: int = 0) -> tuple[ScoreqModel, str]:
    """A no-reference :class:`ScoreqModel` (heads included) to train, and a line saying
    where it came from. See the module docs for what ``init`` may be.

    >>> model, what = build_model("random", layers=1, hidden=64, conv_dim=32)
    >>> what, model.backbone.config.num_attention_heads
    ('random encoder (1 layers, width 64)', 1)
    """
    if layers is not None and layers < 1:
        raise TrainError(f"--layers must be at least 1, got {layers}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed, "init"))
        if init == "random":
            model = ScoreqModel("nr", **_random_config(layers, hidden, conv_dim))
            return model, f"random encoder ({model.backbone.config.num_hidden_layers} layers, width {model.embed_dim})"
        if hidden is not None or conv_dim is not None:
            raise TrainError("--hidden and --conv-dim size a random encoder; they cannot change a pre-trained one "
                             f"(--init {init}).")
        path = Path(init)
        if path.is_dir():
            model, what = _from_transformers(path)
        else:
            if not path.exists():
                if init not in hub.CARDS or hub.get_card(init).family != "scoreq":
                    raise TrainError(f"--init {init}: no such file or folder, and not a SCOREQ model name "
                                     f"({', '.join(n for n, c in hub.CARDS.items() if c.family == 'scoreq')}) "
                                     "or 'random'.")
                path = hub.resolve(init)
            model, what = _from_file(path)
    if layers is not None:
        have = model.backbone.config.num_hidden_layers
        if layers > have:
            raise TrainError(f"--layers {layers}: {init} has only {have} transformer layers.")
        model.backbone.encoder.layers = model.backbone.encoder.layers[:layers]
        model.backbone.config.num_hidden_layers = layers
        what += f", first {layers} of {have} layers"
    return model, what


def _from_file(path: Path) -> tuple[ScoreqModel, str]:
    sd = _load_any(path)
    if isinstance(sd.get("model"), dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        sd = sd["model"]  # a fairseq checkpoint: {"args"/"cfg": ..., "model": state_dict, ...}
    if any(k.startswith("pt_model.ssl_model.") for k in sd):
        mode, what, encoder_only = "nr", f"SCOREQ no-reference file {path}", False
    elif any(k.startswith("ssl_model.") for k in sd):
        mode, what, encoder_only = "ref", f"SCOREQ reference file {path} (new MOS head)", False
    elif any(k.startswith("feature_extractor.conv_layers.") for k in sd):
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith(_ENCODER_KEYS)})
        sd = {"ssl_model." + k: v for k, v in sd.items() if k.startswith(_ENCODER_KEYS)}
        mode, encoder_only = "ref", True
        what = f"fairseq wav2vec 2.0 encoder {path} (new heads" + (f"; ignored {', '.join(dropped)})" if dropped else ")")
    else:
        raise TrainError(f"--init {path}: neither a SCOREQ file (pt_model.ssl_model.* / ssl_model.* keys) nor a "
                         "fairseq wav2vec 2.0 checkpoint (feature_extractor.conv_layers.* keys).")
    cfg = infer_config(sd, mode)
    host = ScoreqModel(mode, **cfg)
    try:
        host.load_official(sd, source=str(path), encoder_only=encoder_only)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if mode == "nr":
        return host, what
    model = ScoreqModel("nr", **cfg)  # same encoder and projection, a fresh MOS head
    missing = model.load_state_dict(host.state_dict(), strict=False).missing_keys
    assert set(missing) == {"mos_layer.weight", "mos_layer.bias"}, missing
    return model, what


def _from_transformers(path: Path) -> tuple[ScoreqModel, str]:
    from ..models import require_transformers

    transformers = require_transformers("SCOREQ training")
    if not (path / "config.json").is_file():
        raise TrainError(f"--init {path}: a folder must be a transformers model directory (config.json + weights).")
    config = transformers.Wav2Vec2Config.from_pretrained(str(path))
    if config.feat_extract_norm != "group" or config.do_stable_layer_norm:
        raise TrainError(f"--init {path}: SCOREQ uses the wav2vec 2.0 BASE layout (feat_extract_norm='group', "
                         "do_stable_layer_norm=False); this model is a LARGE-style (layer-norm) one.")
    model = ScoreqModel("nr", **{f: getattr(config, f) for f in _CONFIG_FIELDS})
    hf = transformers.Wav2Vec2Model.from_pretrained(str(path), local_files_only=True)
    missing, unexpected = model.backbone.load_state_dict(hf.state_dict(), strict=False)
    if missing or unexpected:
        raise TrainError(f"--init {path}: the weights do not fit a Wav2Vec2Model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}).")
    model._fuse_qkv()
    return model, f"transformers Wav2Vec2 directory {path} (new heads)"


# ----------------------------------------------------------------------------- outputs


def save_outputs(model: ScoreqModel, out: Path) -> tuple[Path, Path]:
    """Write ``nr.pt`` and ``ref.pt`` (official SCOREQ layout) of a trained NR model.

    >>> import tempfile, torch
    >>> model, _ = build_model("random", layers=1, hidden=64, conv_dim=32)
    >>> nr, ref = save_outputs(model, Path(tempfile.mkdtemp()))
    >>> sorted({k.split(".")[0] for k in torch.load(nr)}), sorted({k.split(".")[0] for k in torch.load(ref)})
    (['mos_layer', 'pt_model'], ['embedding_layer', 'ssl_model'])
    """
    sd = model.state_dict()
    nr = {official_key(k, "nr"): v.detach().cpu().clone() for k, v in sd.items()}
    ref = {official_key(k, "ref"): v.detach().cpu().clone() for k, v in sd.items() if not k.startswith("mos_layer.")}
    return save_atomic(nr, out / "nr.pt"), save_atomic(ref, out / "ref.pt")


# ----------------------------------------------------------------------------- data


class _EpochBatches(Dataset):
    """batch index -> (16 kHz crops, (B,) MOS) of one epoch: a seeded permutation of the
    clips cut into batches (a last batch of fewer than 3 clips is dropped: no triplet),
    and a seeded crop offset per clip."""

    def __init__(self, items: Sequence[MOSItem], lengths: Sequence[tuple[float, int]], batch: int,
                 seconds: float, seed: int, epoch: int) -> None:
        self.items, self.lengths, self.seconds = items, lengths, seconds
        g = torch.Generator().manual_seed(seed_of(seed, "epoch", epoch))
        order = torch.randperm(len(items), generator=g).tolist()
        self.where = torch.rand(len(items), generator=g, dtype=torch.float64).tolist()
        self.batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        if len(self.batches) > 1 and len(self.batches[-1]) < 3:
            self.batches.pop()

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[list[Tensor], Tensor]:
        clips = []
        for i in self.batches[b]:
            it = self.items[i]
            dur = self.lengths[i][0]
            x, sr = crop(audio.AudioEntry(it.path, it.path), self.where[i] * max(0.0, dur - self.seconds),
                         self.seconds)
            clips.append(_long_enough(audio.prepare([x], sr, SAMPLE_RATE, names=[it.path], arg="")[0], it.path))
        return clips, torch.tensor([self.items[i].mos for i in self.batches[b]], dtype=torch.float32)


def _long_enough(x: Tensor, path: str) -> Tensor:
    if x.shape[0] <= HOP:
        raise audio.AudioError(f"{path}: {x.shape[0]} samples at 16 kHz; SCOREQ needs more than {HOP}.")
    return x


def _whole(items: Sequence[MOSItem]) -> list[Tensor]:
    """Every clip of ``items`` whole, at 16 kHz."""
    data = MOSDataset(items, SAMPLE_RATE, None)
    return [_long_enough(data.load(i)[0], it.path) for i, it in enumerate(items)]


# ----------------------------------------------------------------------------- the recipe


class _Recipe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = a = args
        self.out = Path(a.out)
        self.device = pick_device(a.device)
        for name in ("epochs", "batch_size", "head_epochs", "head_batch_size", "patience", "decay_patience",
                     "log_every"):
            if getattr(a, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
        if a.loss == "scoreq" and a.batch_size < 3:
            raise TrainError(f"--batch-size {a.batch_size}: the triplet loss needs at least 3 clips per batch.")
        if a.micro_batch < 0:
            raise TrainError(f"--micro-batch must be 0 (off) or a number of clips, got {a.micro_batch}.")
        if a.crop_seconds < 0.5:
            raise TrainError(f"--crop-seconds {a.crop_seconds} is too short (at least 0.5 s).")
        if not a.mos_range[1] > a.mos_range[0]:
            raise TrainError(f"--mos-range {a.mos_range[0]} {a.mos_range[1]}: HIGH must exceed LOW.")
        if not 0 <= a.dropout < 1:
            raise TrainError(f"--dropout must be in [0, 1), got {a.dropout}.")
        if a.reference and not a.valid:
            raise TrainError("--reference is used to validate: give --valid too.")

    # -- data ----------------------------------------------------------------------

    def _items(self, csv_path: str) -> tuple[list[MOSItem], list[tuple[float, int]]]:
        try:
            items = read_mos_csv(csv_path, mos_range=tuple(self.args.mos_range))
        except (ValueError, FileNotFoundError) as e:
            raise TrainError(str(e)) from None
        lengths = durations([audio.AudioEntry(it.path, it.path) for it in items])
        bad = [f"{it.path}: the CSV says {it.sample_rate} Hz but the file is {sr} Hz"
               for it, (_, sr) in zip(items, lengths) if it.sample_rate is not None and it.sample_rate != sr]
        if bad:
            raise TrainError(f"{csv_path}: {len(bad)} clip(s) with a wrong sample_rate:\n  " + "\n  ".join(bad[:20]))
        return items, lengths

    # -- model pieces --------------------------------------------------------------

    def _train_mode(self, model: ScoreqModel) -> None:
        model.train()
        model.backbone.feature_extractor.eval()
        cfg = model.backbone.config
        cfg.layerdrop, cfg.mask_time_prob, cfg.mask_feature_prob = 0.0, 0.0, 0.0
        for mod in model.backbone.encoder.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = self.args.dropout
        for layer in model.backbone.encoder.layers:
            layer.attention.dropout = self.args.dropout

    def _encode(self, model: ScoreqModel, clips: Sequence[Tensor]) -> Tensor:
        """Differentiable pooled embeddings (fp32)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.precision == "bf16"):
            pooled = model.train_pooled(clips, train_cnn=self.args.train_cnn)
        return pooled.float()

    def _head_out(self, model: ScoreqModel, pooled: Tensor) -> Tensor:
        """What the stage-1 loss sees: the projection z, or (l2) the predicted MOS."""
        if self.args.loss == "scoreq":
            return nn.functional.normalize(model.embedding_layer(pooled), dim=1)
        return model.mos_layer(nn.functional.normalize(pooled, dim=1)).squeeze(-1)

    def _loss(self, out: Tensor, mos: Tensor) -> Tensor:
        if self.args.loss == "scoreq":
            return self.loss_fn(out, mos)
        return nn.functional.mse_loss(out, mos)

    def _step(self, model: ScoreqModel, clips: list[Tensor], mos: Tensor, step: int) -> float:
        """Forward and backward of one batch; with --micro-batch, the batch is encoded in
        parts twice (gradient caching): once without gradients to get the loss's gradient
        with respect to every output, then part by part with the same dropout masks,
        back-propagating that gradient. The result equals the whole-batch gradient."""
        a = self.args
        mos = mos.to(self.device)
        mb = a.micro_batch if 0 < a.micro_batch < len(clips) else len(clips)
        parts = [list(range(i, min(i + mb, len(clips)))) for i in range(0, len(clips), mb)]

        def forward(k: int) -> Tensor:
            torch.manual_seed(seed_of(a.seed, "dropout", step, k))
            return self._head_out(model, self._encode(model, [clips[i] for i in parts[k]]))

        if len(parts) == 1:
            loss = self._loss(forward(0), mos)
            self._check(loss, step)
            loss.backward()
            return float(loss.detach())
        with torch.no_grad():
            outs = torch.cat([forward(k) for k in range(len(parts))])
        outs.requires_grad_(True)
        loss = self._loss(outs, mos)
        self._check(loss, step)
        loss.backward()
        assert outs.grad is not None
        for k, idx in enumerate(parts):
            forward(k).backward(outs.grad[idx[0]:idx[-1] + 1])
        return float(loss.detach())

    @staticmethod
    def _check(loss: Tensor, step: int) -> None:
        if not bool(torch.isfinite(loss)):
            raise TrainError(f"the loss became {float(loss)} at step {step}; lower the learning rates and resume "
                             "from the last checkpoint.")

    @torch.no_grad()
    def _validate(self, model: ScoreqModel) -> dict[str, float]:
        """Stage-1 validation on whole clips, embedded as the metrics embed them."""
        model.eval()
        pooled = model.pooled(self.valid)
        mos = torch.tensor([it.mos for it in self.valid_items], device=pooled.device)
        row: dict[str, float] = {}
        if self.args.loss == "scoreq":  # the loss over fixed batches of the validation clips
            b = self.args.batch_size
            chunks = [range(i, min(i + b, len(mos))) for i in range(0, len(mos), b)]
            chunks = [c for c in chunks if len(c) >= 3] or [range(len(mos))]
            z = self._head_out(model, pooled)
            n = sum(len(c) for c in chunks)
            for key, fn in (("val_loss", self.loss_fn), ("val_hinge", self.hinge_fn)):
                row[key] = sum(float(fn(z[c.start:c.stop], mos[c.start:c.stop])) * len(c) for c in chunks) / n
        else:
            pred = self._head_out(model, pooled)
            row["val_loss"] = row["val_mse"] = float(nn.functional.mse_loss(pred, mos))
            row["val_pearson"], row["val_spearman"] = pearson(pred.cpu(), mos.cpu()), spearman(pred.cpu(), mos.cpu())
        if self.refs:
            refs = model.embed(self.refs)
            dist = model.distance_to_set(self.valid, refs)
            row["val_nmr_spearman"] = spearman(-dist.cpu(), mos.cpu())
        self._train_mode(model)
        return row

    def _better(self, row: dict[str, float], best: float) -> tuple[bool, float]:
        """Whether ``row`` improves on ``best``; the criterion is kept as "lower is better".

        Without references it is the validation triplet loss averaged over all valid
        triplets (``val_hinge``): the training loss's mean over the *violated* triplets can
        rise while fewer triplets are violated. The l2 baseline is selected by its
        validation MSE, with or without references."""
        if self.args.loss == "l2":  # the baseline is selected by its own objective
            value = row["val_mse"]
        else:
            value = -row["val_nmr_spearman"] if self.refs else row["val_hinge"]
        if math.isnan(value):
            return False, best
        return value < best, min(value, best)

    # -- stage 1 -------------------------------------------------------------------

    def _stage1(self, model: ScoreqModel, state: dict[str, Any] | None, log: CsvLog) -> None:
        a = self.args
        head = model.embedding_layer if a.loss == "scoreq" else model.mos_layer
        model.backbone.feature_extractor.requires_grad_(a.train_cnn)
        if model.backbone.masked_spec_embed is not None:  # SpecAugment's mask vector: unused here
            model.backbone.masked_spec_embed.requires_grad_(False)
        (model.embedding_layer if a.loss == "l2" else model.mos_layer).requires_grad_(False)
        if a.loss == "l2" and state is None:  # start the baseline's head at the mean MOS, not near 0
            with torch.no_grad():
                model.mos_layer.weight.zero_()
                model.mos_layer.bias.fill_(sum(it.mos for it in self.items) / len(self.items))
        encoder = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
        opt = torch.optim.Adam([{"params": encoder, "lr": a.lr_encoder}, {"params": list(head.parameters()),
                                                                          "lr": a.lr_head}])
        epoch, step, best, since, elapsed0 = 0, 0, math.inf, 0, 0.0
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            epoch, step, best, since = int(state["epoch"]), int(state["step"]), float(state["best"]), int(state["since"])
            elapsed0 = float(state["elapsed"])
        self._train_mode(model)

        from tqdm.auto import tqdm

        n_batches = len(_EpochBatches(self.items, self.lengths, a.batch_size, a.crop_seconds, a.seed, 0))
        bar = tqdm(total=a.epochs * n_batches, initial=epoch * n_batches, desc=f"scoreq stage 1 ({a.loss})",
                   unit="batch", disable=True if a.no_progress else None, dynamic_ncols=True)
        t0 = time.monotonic()
        try:
            while epoch < a.epochs and since < a.patience:
                data = _EpochBatches(self.items, self.lengths, a.batch_size, a.crop_seconds, a.seed, epoch)
                loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=a.workers)
                losses = []
                for clips, mos in loader:
                    step += 1
                    opt.zero_grad(set_to_none=True)
                    losses.append(self._step(model, clips, mos, step))
                    opt.step()
                    bar.update(1)
                    if step % a.log_every == 0:
                        bar.set_postfix(loss=f"{sum(losses[-a.log_every:]) / len(losses[-a.log_every:]):.4g}")
                epoch += 1
                row: dict[str, Any] = {"loss": sum(losses) / len(losses)}
                if self.valid and (epoch % a.val_every == 0 or epoch == a.epochs):
                    val = self._validate(model)
                    row.update(val)
                    improved, best = self._better(val, best)
                    since = 0 if improved else since + 1
                    if improved:
                        save_atomic(model.state_dict(), self.out / "stage1_best.pt")
                    elif since % a.decay_patience == 0:
                        for g in opt.param_groups:
                            g["lr"] *= a.decay
                    bar.write(f"epoch {epoch}: loss {row['loss']:.4g}, " + ", ".join(
                        f"{k} {v:.4g}" for k, v in val.items()) + (" (best)" if improved else ""))
                elapsed = elapsed0 + time.monotonic() - t0
                row.update(step=step, stage=1, epoch=epoch, time_s=round(elapsed, 2),
                           lr_encoder=opt.param_groups[0]["lr"], lr_head=opt.param_groups[1]["lr"])
                log.write(row)
                done = epoch >= a.epochs or since >= a.patience
                if epoch % a.save_every == 0 or done:
                    self._save_state(model, opt, epoch=epoch, step=step, best=best, since=since, elapsed=elapsed)
        finally:
            bar.close()
        if since >= a.patience:
            print(f"torchmos train scoreq: stage 1 stopped early after epoch {epoch} ({a.patience} epochs without "
                  "improvement).", file=sys.stderr)

    def _save_state(self, model: ScoreqModel, opt: torch.optim.Optimizer, **fields: Any) -> None:
        save_atomic({"version": STATE_VERSION, **fields, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "config": {k: v for k, v in model.backbone.config.to_dict().items()
                                if k in _CONFIG_FIELDS}, "args": plain_args(self.args)}, self.out / "last.pt")

    # -- stage 2 -------------------------------------------------------------------

    def _stage2(self, model: ScoreqModel, log: CsvLog, step: int) -> None:
        """Fit Linear(D -> 1) with MSE on the frozen encoder's normalised embeddings.

        The embeddings of the whole training (and validation) clips are computed once. The
        regression runs on per-dimension standardised embeddings (the unit vectors of a
        fine-tuned encoder lie close together, which makes plain gradient descent on them
        crawl), starting from the mean MOS; the standardisation is then folded into the
        weights, so the head is still one ``Linear(D -> 1)`` on the unit embedding.
        """
        a = self.args
        model.eval()
        x = model.embed(_whole(self.items)).clone().double()
        y = torch.tensor([it.mos for it in self.items], device=x.device, dtype=torch.float64)
        mu, sd = x.mean(0), x.std(0, correction=0).clamp_min(1e-8)
        xs = ((x - mu) / sd).float()
        xv = ((model.embed(self.valid).clone().double() - mu) / sd).float() if self.valid else None
        yv = torch.tensor([it.mos for it in self.valid_items], device=x.device) if self.valid else None
        head = nn.Linear(x.shape[1], 1).to(x.device)
        nn.init.zeros_(head.weight)
        nn.init.constant_(head.bias, float(y.mean()))
        yf = y.float()
        opt = torch.optim.Adam(head.parameters(), lr=a.head_lr)
        g = torch.Generator().manual_seed(seed_of(a.seed, "head"))
        best, since, best_sd = math.inf, 0, None
        from tqdm.auto import tqdm

        bar = tqdm(range(a.head_epochs), desc="scoreq stage 2 (MOS head)", unit="epoch",
                   disable=True if a.no_progress else None, dynamic_ncols=True)
        for epoch in bar:
            total = 0.0
            for idx in torch.randperm(len(yf), generator=g).split(a.head_batch_size):
                idx = idx.to(x.device)
                loss = nn.functional.mse_loss(head(xs[idx]).squeeze(-1), yf[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            row: dict[str, Any] = {"loss": total / len(yf)}
            if xv is not None and yv is not None:
                with torch.no_grad():
                    pred = head(xv).squeeze(-1)
                row["val_mse"] = float(nn.functional.mse_loss(pred, yv))
                row["val_pearson"], row["val_spearman"] = pearson(pred.cpu(), yv.cpu()), spearman(pred.cpu(), yv.cpu())
                if row["val_mse"] < best:
                    best, since = row["val_mse"], 0
                    best_sd = {k: v.detach().clone() for k, v in head.state_dict().items()}
                else:
                    since += 1
                bar.set_postfix(val_mse=f"{row['val_mse']:.4g}")
            if (epoch + 1) % a.log_every == 0 or since >= a.head_patience or epoch + 1 == a.head_epochs:
                row.update(step=step + epoch + 1, stage=2, epoch=epoch + 1, lr_head=a.head_lr)
                log.write(row)
            if since >= a.head_patience:
                break
        bar.close()
        if best_sd is not None:
            head.load_state_dict(best_sd)
        with torch.no_grad():  # fold the standardisation: w . (x - mu) / sd + b
            w = head.weight.double()[0] / sd
            model.mos_layer.weight.copy_(w[None].to(model.mos_layer.weight))
            model.mos_layer.bias.fill_(float(head.bias.double()[0] - (w * mu).sum()))

    # -- the run -------------------------------------------------------------------

    def fit(self) -> int:
        a = self.args
        state = start_run(a, self.out, STATE_VERSION, FIXED_ON_RESUME)
        self.items, self.lengths = self._items(a.train)
        if len(self.items) < 3:
            raise TrainError(f"{a.train}: {len(self.items)} clip(s); training needs at least 3.")
        self.valid_items = self._items(a.valid)[0] if a.valid else []
        self.valid = _whole(self.valid_items)
        self.refs: list[Tensor] = []
        if a.reference:
            entries = audio.find_audio(a.reference)
            for e in entries:
                x, sr = e.read()
                self.refs.append(audio.prepare([x], sr, SAMPLE_RATE, names=[e.source], arg="")[0])
        self.loss_fn = ScoreqLoss(margin=a.margin, mos_range=tuple(a.mos_range))
        self.hinge_fn = ScoreqLoss(margin=a.margin, mos_range=tuple(a.mos_range), reduction="mean")

        if state is None:
            (self.out / "stage1_best.pt").unlink(missing_ok=True)  # of an overwritten run
            model, what = build_model(a.init, a.layers, a.hidden, a.conv_dim, a.seed)
            print(f"torchmos train scoreq: initialised from {what}.", file=sys.stderr)
            (self.out / "args.json").write_text(json.dumps(plain_args(a), indent=2) + "\n")
        else:
            model = ScoreqModel("nr", **state["config"])
            model.load_state_dict(state["model"])
        model.to(self.device)
        log = CsvLog(self.out / "metrics.csv", COLUMNS, keep_until=int(state["step"]) if state else None,
                     tensorboard=self.out / "tb")
        try:
            # stage 1 goes on while --epochs and --patience allow (a finished run resumed with
            # a larger --epochs continues); stage 2 is recomputed from the best stage-1 model
            self._stage1(model, state, log)
            state = torch.load(self.out / "last.pt", map_location="cpu", weights_only=True)
            best = self.out / "stage1_best.pt"
            if best.is_file():  # the best epoch of stage 1 (by validation)
                model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
            if a.loss == "scoreq":
                self._stage2(model, log, int(state["step"]))
        finally:
            log.close()
        nr, ref = save_outputs(model, self.out)
        print(f"torchmos train scoreq: wrote {nr} (ScoreqNR) and {ref} (ScoreqRef).", file=sys.stderr)
        return 0

