"""SCOREQ's stage 2: the MOS head fitted on the frozen encoder's embeddings, run by a
Lightning ``Trainer`` (part of :mod:`torchmos.training.scoreq`).

The embeddings of the training and validation clips are computed once, by the caller;
this fits ``Linear(D -> 1)`` on them with MSE, one epoch a pass over the training
embeddings in a seeded order, validated after every epoch and stopped early on the
validation MSE. It takes seconds, in one process, on the device the embeddings are on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..models.scoreq import ScoreqModel
from . import pearson, spearman
from .data import seed_of
from .trainer import quiet_warnings, trainer_device

__all__ = ["fit_mos_head"]


class _HeadFit(pl.LightningModule):
    """``Linear(D -> 1)`` on standardised embeddings ``xs`` with MOS ``y``; validation on
    ``xv``/``yv`` after every epoch keeps the best head and stops after ``patience``
    epochs without a lower MSE."""

    def __init__(self, xs: Tensor, y: Tensor, xv: Tensor | None, yv: Tensor | None, *, lr: float, patience: int,
                 batch_size: int, seed: int, log: Callable[[int, dict[str, Any]], None], log_every: int,
                 epochs: int) -> None:
        super().__init__()
        self.xs, self.y, self.xv, self.yv = xs, y.float(), xv, yv
        self.lr, self.patience, self.batch_size = lr, patience, batch_size
        self.write, self.log_every, self.epochs = log, log_every, epochs
        self.head = nn.Linear(xs.shape[1], 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, float(y.mean()))
        self.order = torch.Generator().manual_seed(seed_of(seed, "head"))
        self.best, self.since, self.best_state = math.inf, 0, None
        self._total = 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.head.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        """This epoch's batches of indices (reloaded every epoch: a new seeded order)."""
        return DataLoader(torch.randperm(len(self.y), generator=self.order).split(self.batch_size), batch_size=None)

    def on_train_epoch_start(self) -> None:
        self._total = 0.0

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        idx = idx.to(self.xs.device)
        loss = nn.functional.mse_loss(self.head(self.xs[idx]).squeeze(-1), self.y[idx])
        self._total += float(loss.detach()) * len(idx)
        return loss

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        row: dict[str, Any] = {"loss": self._total / len(self.y)}
        if self.xv is not None and self.yv is not None:
            with torch.no_grad():
                pred = self.head(self.xv).squeeze(-1)
            row["val_mse"] = float(nn.functional.mse_loss(pred, self.yv.float()))
            row["val_pearson"], row["val_spearman"] = pearson(pred, self.yv), spearman(pred, self.yv)
            if row["val_mse"] < self.best:
                self.best, self.since = row["val_mse"], 0
                self.best_state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
            else:
                self.since += 1
            self.log("val_mse", row["val_mse"], prog_bar=True, logger=False)
        if epoch % self.log_every == 0 or self.since >= self.patience or epoch == self.epochs:
            self.write(epoch, row)
        if self.since >= self.patience:
            self.trainer.should_stop = True


def fit_mos_head(model: ScoreqModel, x: Tensor, y: Tensor, xv: Tensor | None, yv: Tensor | None, *, lr: float,
                 epochs: int, patience: int, batch_size: int, seed: int,
                 log: Callable[[int, dict[str, Any]], None], log_every: int = 10, progress: bool = True) -> None:
    """Fit ``model.mos_layer`` (Linear(D -> 1)) with MSE on the frozen encoder's unit
    embeddings ``x`` (N, D) of the training clips with MOS ``y`` (N,; give it in float64,
    as the labels were read), early-stopped on the validation MSE (``xv``, ``yv``), and
    write it into the model.

    The regression runs on per-dimension standardised embeddings (the unit vectors of a
    fine-tuned encoder lie close together, which makes plain gradient descent on them
    crawl), starting from the mean MOS; the standardisation is then folded into the
    weights, so the head is still one ``Linear(D -> 1)`` on the unit embedding. ``log(epoch,
    row)`` receives every ``log_every``-th epoch's losses (and the last one's).

    >>> import torch
    >>> from torchmos.training.scoreq_model import build_model
    >>> model, _ = build_model("random", layers=1, hidden=64, conv_dim=32)
    >>> x = nn.functional.normalize(torch.randn(440, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    >>> y = (3 + 4 * x[:, 0]).double()  # a MOS the embeddings determine
    >>> fit_mos_head(model, x[:400], y[:400], x[400:], y[400:], lr=1e-2, epochs=20, patience=5, batch_size=32,
    ...              seed=0, log=lambda epoch, row: None, progress=False)
    >>> bool((model.mos_layer(x[400:]).squeeze(-1) - y[400:].float()).abs().mean() < 0.01)  # held-out error
    True
    """
    x, y = x.double(), y.to(x.device).double()
    yv = yv.to(x.device) if yv is not None else None
    mu, sd = x.mean(0), x.std(0, correction=0).clamp_min(1e-8)
    xs = ((x - mu) / sd).float()
    xv = ((xv.double() - mu) / sd).float() if xv is not None else None
    fit = _HeadFit(xs, y, xv, yv, lr=lr, patience=patience, batch_size=batch_size, seed=seed, log=log,
                   log_every=log_every, epochs=epochs)
    quiet = logging.getLogger("lightning.pytorch")  # stage 1 already said which devices Lightning found
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        _fit(fit, x.device, epochs, progress)
    finally:
        quiet.setLevel(level)
    head = fit.head
    if fit.best_state is not None:
        head.load_state_dict(fit.best_state)
    with torch.no_grad():  # fold the standardisation: w . (x - mu) / sd + b
        w = head.weight.double()[0] / sd
        model.mos_layer.weight.copy_(w[None].to(model.mos_layer.weight))
        model.mos_layer.bias.fill_(float(head.bias.double()[0] - (w * mu).sum()))


def _fit(fit: _HeadFit, device: torch.device, epochs: int, progress: bool) -> None:
    accelerator, devices = trainer_device(str(device), 1)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy="auto", precision="32-true",
                         max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                         reload_dataloaders_every_n_epochs=1)
    with quiet_warnings(".*does not have many workers"):  # batches of indices: nothing to read
        trainer.fit(fit)
