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
``args.json``, ``stage1_best.pt`` and ``checkpoints/last.ckpt`` (Lightning's checkpoint,
for ``--resume``).

Stage 1 is a LightningModule with manual optimisation run by a Lightning Trainer
(``--devices``, ``--strategy``, ``--precision``, ``--max-steps``:
:mod:`torchmos.training.trainer`). On several devices each process encodes its part of
the batch and the loss is computed over the embeddings of the whole batch, gathered, so
the gradient is the whole-batch one; with ``--micro-batch`` the embeddings are first
computed without gradients, the loss's gradient with respect to each of them taken, and
the parts re-run with gradients (``manual_backward``). Stage 2 is a LightningModule too,
fitted by a one-device Trainer in the first process
(:mod:`torchmos.training.scoreq_head`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import audio
from ..hub import save_atomic
from ..losses import ScoreqLoss
from ..models.scoreq import ScoreqModel
from . import TrainError, add_run_arguments, pearson, spearman
from .data import seed_of
from .scoreq_data import Stage1Data, check_options, read_items, whole_clips
from .scoreq_head import fit_mos_head
from .scoreq_model import CONFIG_FIELDS, build_model, save_outputs
from .trainer import RecipeModule, Run

__all__ = ["TrainError", "add_arguments", "build_model", "run", "save_outputs"]

SAMPLE_RATE = ScoreqModel.sample_rate
FIXED_ON_RESUME = ["init", "train", "valid", "reference", "loss", "margin", "layers", "hidden", "conv_dim", "train_cnn",
                   "batch_size", "crop_seconds", "seed", "mos_range"]
# the columns of the per-epoch rows of metrics.csv (Lightning's CSVLogger sorts them)
COLUMNS = ["step", "stage", "epoch", "lr_encoder", "lr_head", "loss", "val_loss", "val_hinge",
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
    return _fit(args)


# ----------------------------------------------------------------------------- stage 1


class _Stage1(RecipeModule):
    """Stage 1 (or the l2 baseline): manual optimisation, for the micro-batch trick."""

    recipe = "scoreq"

    def __init__(self, args: argparse.Namespace, model: ScoreqModel, valid: list[Tensor], valid_mos: list[float],
                 refs: list[Tensor]) -> None:
        super().__init__(args)
        self.automatic_optimization = False
        self.model, self.valid, self.valid_mos, self.refs = model, valid, valid_mos, refs
        self.loss_fn = ScoreqLoss(margin=args.margin, mos_range=tuple(args.mos_range))
        self.hinge_fn = ScoreqLoss(margin=args.margin, mos_range=tuple(args.mos_range), reduction="mean")
        model.backbone.feature_extractor.requires_grad_(args.train_cnn)
        if model.backbone.masked_spec_embed is not None:  # SpecAugment's mask vector: unused here
            model.backbone.masked_spec_embed.requires_grad_(False)
        (model.embedding_layer if args.loss == "l2" else model.mos_layer).requires_grad_(False)
        self.best, self.since = math.inf, 0
        self._losses: list[float] = []
        self._val: dict[str, float] = {}

    @property
    def head(self) -> nn.Module:
        """The head trained in stage 1: the projection, or (l2) the MOS head."""
        return self.model.embedding_layer if self.args.loss == "scoreq" else self.model.mos_layer

    def run_state(self) -> dict[str, Any]:
        return {"best": self.best, "since": self.since,
                "config": {k: v for k, v in self.model.backbone.config.to_dict().items() if k in CONFIG_FIELDS}}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.best, self.since = float(state.get("best", math.inf)), int(state.get("since", 0))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        a = self.args
        encoder = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return torch.optim.Adam([{"params": encoder, "lr": a.lr_encoder},
                                 {"params": list(self.head.parameters()), "lr": a.lr_head}])

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.since >= self.args.patience:  # a resumed run that had stopped early
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        """Training mode: the conv encoder frozen (eval), dropout --dropout, LayerDrop and
        SpecAugment off."""
        model = self.model
        model.train()
        model.backbone.feature_extractor.eval()
        cfg = model.backbone.config
        cfg.layerdrop, cfg.mask_time_prob, cfg.mask_feature_prob = 0.0, 0.0, 0.0
        for mod in model.backbone.encoder.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = self.args.dropout
        for layer in model.backbone.encoder.layers:
            layer.attention.dropout = self.args.dropout
        self._losses = []

    def _head_out(self, pooled: Tensor) -> Tensor:
        """What the stage-1 loss sees: the projection z, or (l2) the predicted MOS; in fp32."""
        with torch.autocast(pooled.device.type, enabled=False):
            pooled = pooled.float()
            if self.args.loss == "scoreq":
                return nn.functional.normalize(self.model.embedding_layer(pooled), dim=1)
            return self.model.mos_layer(nn.functional.normalize(pooled, dim=1)).squeeze(-1)

    def _loss(self, out: Tensor, mos: Tensor) -> Tensor:
        with torch.autocast(out.device.type, enabled=False):
            return self.loss_fn(out, mos) if self.args.loss == "scoreq" else nn.functional.mse_loss(out, mos)

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> None:
        """Forward and backward of one batch. Each process encodes its part; the loss is
        that of the whole batch. With --micro-batch (gradient caching) the part is encoded
        twice: without gradients, to get the loss's gradient with respect to every output,
        then micro-batch by micro-batch with the same dropout masks, back-propagating that
        gradient. The result equals the whole-batch gradient."""
        clips, mos = batch
        a, step = self.args, self.global_step + 1
        own = self.part(len(mos))
        mb = a.micro_batch if 0 < a.micro_batch < len(clips) else len(clips)
        parts = [range(i, min(i + mb, len(clips))) for i in range(0, len(clips), mb)]

        def forward(k: int) -> Tensor:  # the same dropout masks in both passes (other processes: others)
            torch.manual_seed(seed_of(a.seed, "dropout", step, *([self.global_rank] if self.global_rank else []), k))
            return self._head_out(self.model.train_pooled([clips[i] for i in parts[k]], train_cnn=a.train_cnn))

        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        if len(parts) == 1:  # every other process's outputs enter the loss as constants
            out = forward(0)
            every = self.gather(out.detach())
            loss = self._loss(torch.cat([every[: own.start], out, every[own.stop:]]), mos)
            self.check_finite(loss, "lower the learning rates")
            self.manual_backward(loss * self.world)  # DDP averages the processes' gradients
        else:
            with torch.no_grad():
                every = self.gather(torch.cat([forward(k) for k in range(len(parts))]))
            every.requires_grad_(True)
            loss = self._loss(every, mos)
            self.check_finite(loss, "lower the learning rates")
            (grad,) = torch.autograd.grad(loss, every)
            grad = grad[own.start:own.stop] * self.world
            for k, idx in enumerate(parts):
                self.manual_backward(forward(k), gradient=grad[idx.start:idx.stop])
        opt.step()
        self._losses.append(float(loss.detach()))
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=1)

    # -- validation: whole clips, then the references (index >= len(valid)) ------------

    def validation_step(self, i: int, batch_idx: int) -> None:
        n = len(self.valid)
        if 0 <= i < n + len(self.refs):
            clip = self.valid[i] if i < n else self.refs[i - n]
            self._rows.append(torch.cat([torch.tensor([float(i)]), self.model.pooled([clip])[0].double().cpu()]))

    def on_validation_epoch_end(self) -> None:
        """The validation criteria on whole clips, embedded as the metrics embed them; the
        best epoch kept, the learning rates decayed, early stopping."""
        a, n = self.args, len(self.valid)
        rows = torch.stack(self._rows) if self._rows else torch.zeros(0, 1 + self.model.embed_dim, dtype=torch.float64)
        rows = self.gather(rows.to(self.device)).cpu()
        rows = rows[rows[:, 0].argsort()]
        pooled = rows[rows[:, 0] < n, 1:].float().to(self.device)
        mos = torch.tensor(self.valid_mos, device=self.device)
        row: dict[str, float] = {}
        with torch.no_grad():
            out = self._head_out(pooled)
            if a.loss == "scoreq":  # the loss over fixed batches of the validation clips
                chunks = [range(i, min(i + a.batch_size, n)) for i in range(0, n, a.batch_size)]
                chunks = [c for c in chunks if len(c) >= 3] or [range(n)]
                total = sum(len(c) for c in chunks)
                for key, fn in (("val_loss", self.loss_fn), ("val_hinge", self.hinge_fn)):
                    row[key] = sum(float(fn(out[c.start:c.stop], mos[c.start:c.stop])) * len(c) for c in chunks) / total
            else:
                row["val_loss"] = row["val_mse"] = float(nn.functional.mse_loss(out, mos))
                row["val_pearson"], row["val_spearman"] = pearson(out, mos), spearman(out, mos)
            if self.refs:
                e = nn.functional.normalize(pooled, dim=1)
                r = nn.functional.normalize(rows[rows[:, 0] >= n, 1:].float().to(self.device), dim=1)
                dist = torch.linalg.vector_norm(e[:, None, :] - r[None, :, :], dim=-1).mean(1)
                row["val_nmr_spearman"] = spearman(-dist, mos)
        # the criterion, "lower is better": without references the validation triplet loss
        # averaged over all valid triplets (the mean over the violated ones can rise while
        # fewer are violated); the l2 baseline by its own objective
        value = row["val_mse"] if a.loss == "l2" else (-row["val_nmr_spearman"] if self.refs else row["val_hinge"])
        improved = not math.isnan(value) and value < self.best
        self.best, self.since = (value, 0) if improved else (self.best, self.since + 1)
        if improved and self.trainer.is_global_zero:
            save_atomic(self.model.state_dict(), Path(a.out) / "stage1_best.pt")
        elif not improved and self.since % a.decay_patience == 0:
            for g in self.trainer.optimizers[0].param_groups:
                g["lr"] *= a.decay
        if self.since >= a.patience:
            self.trainer.should_stop = True
        self._val = row
        self.report({"loss": sum(self._losses) / max(1, len(self._losses)), **row},
                    f" (epoch {self.current_epoch + 1}{', best' if improved else ''})")

    def on_train_epoch_end(self) -> None:
        """One row per epoch: the mean training loss, learning rates, validation."""
        groups = self.trainer.optimizers[0].param_groups
        row = {"stage": 1, "epoch": self.current_epoch + 1, "loss": sum(self._losses) / max(1, len(self._losses)),
               "lr_encoder": groups[0]["lr"], "lr_head": groups[1]["lr"], **self._val}
        self._val = {}
        self.log_eval(row)


# ----------------------------------------------------------------------------- the run


def _fit(a: argparse.Namespace) -> int:
    check_options(a)
    run = Run(a, "scoreq", FIXED_ON_RESUME, ["nr.pt", "ref.pt", "stage1_best.pt"])
    items, lengths = read_items(a.train, a.mos_range)
    if len(items) < 3:
        raise TrainError(f"{a.train}: {len(items)} clip(s); training needs at least 3.")
    valid_items = read_items(a.valid, a.mos_range)[0] if a.valid else []
    refs = []
    for e in audio.find_audio(a.reference) if a.reference else []:
        x, sr = e.read()
        refs.append(audio.prepare([x], sr, SAMPLE_RATE, names=[e.source], arg="")[0])
    if run.state:
        model = ScoreqModel("nr", **run.state["config"])
    else:
        model, what = build_model(a.init, a.layers, a.hidden, a.conv_dim, a.seed)
        print(f"torchmos train scoreq: initialised from {what}.", file=sys.stderr)
        if a.loss == "l2":  # start the baseline's head at the mean MOS, not near 0
            with torch.no_grad():
                model.mos_layer.weight.zero_()
                model.mos_layer.bias.fill_(sum(it.mos for it in items) / len(items))
    valid = whole_clips(valid_items)
    module = _Stage1(a, model, valid, [it.mos for it in valid_items], refs)
    # stage 1 goes on while --epochs, --patience (and --max-steps) allow: a finished run
    # resumed with a larger --epochs continues; stage 2 is recomputed from the best epoch
    trainer = run.trainer(max_epochs=a.epochs, max_steps=a.max_steps, val_every_epochs=1,
                          save_every_epochs=a.save_every)
    run.fit(trainer, module, Stage1Data(a, items, lengths, len(valid) + len(refs) if valid else 0))
    if module.since >= a.patience:
        print(f"torchmos train scoreq: stage 1 stopped early after epoch {trainer.current_epoch} "
              f"({a.patience} epochs without improvement).", file=sys.stderr)
    if not trainer.is_global_zero:
        return 0
    best = run.out / "stage1_best.pt"
    if best.is_file():  # the best epoch of stage 1 (by validation)
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    if a.loss == "scoreq":
        model.eval()
        step, logger = trainer.global_step, trainer.loggers

        def log(epoch: int, row: dict[str, Any]) -> None:
            for lg in logger:
                lg.log_metrics({**row, "stage": 2, "epoch": epoch, "lr_head": a.head_lr}, step=step + epoch)
                lg.save()

        fit_mos_head(model, model.embed(whole_clips(items)).clone(),
                     torch.tensor([it.mos for it in items], dtype=torch.float64),
                     model.embed(valid).clone() if valid else None,
                     torch.tensor([it.mos for it in valid_items]) if valid else None,
                     lr=a.head_lr, epochs=a.head_epochs, patience=a.head_patience, batch_size=a.head_batch_size,
                     seed=a.seed, log=log, log_every=a.log_every, progress=not a.no_progress)
        for lg in logger:
            lg.finalize("success")
    nr, ref = save_outputs(model, run.out)
    print(f"torchmos train scoreq: wrote {nr} (ScoreqNR) and {ref} (ScoreqRef).", file=sys.stderr)
    return 0
