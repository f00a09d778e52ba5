"""A LightningModule that monitors predicted MOS with a torchmos metric.

The whole integration is three lines, because a torchmos metric is a
``torchmetrics.Metric``::

    self.mos = DistillMOS(fs=16000, per_utterance=True)   # in __init__
    self.mos.update(enhanced, lengths, ids=ids)           # in validation_step
    self.log("val/mos", self.mos, on_epoch=True)          # Lightning logs the mean, then resets it

``per_utterance=True`` also keeps every clip's score: ``on_validation_epoch_end`` reads
them (``self.mos.compute()``) before Lightning resets the metric. Without it the metric
keeps only a sum and a count.

The predictor network is not part of the metric's ``state_dict``, so it is neither
trained nor saved in checkpoints; it follows the module's device and stays in eval mode,
and under DDP the states are reduced across ranks. Under ``Trainer(precision=
"bf16-mixed")`` or ``"bf16-true"`` it still scores in fp32 (the metric turns autocast and
a bf16 default dtype off while it scores), so ``val/mos`` keeps its 1e-4 fidelity.

``TinyEnhancer`` is a deliberately small denoiser (a residual 1-D conv net on the
waveform) so that an epoch runs in seconds on a CPU; replace it with your model.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchmos import DistillMOS, synth


class NoisySpeech(Dataset):
    """Generated (id, noisy, clean) triples of speech-like clips of 1-2 s at ``fs``."""

    def __init__(self, n: int, fs: int = 16000, seed: int = 0) -> None:
        self.items = []
        for i in range(n):
            k = seed + i
            clean = synth.speech_like(1.0 + 0.25 * (k % 5), fs=fs, seed=k)
            noisy = synth.add_noise(clean, snr_db=5.0 + 2 * (k % 4), seed=k).clamp(-1, 1)
            self.items.append((f"clip{k:04d}", noisy, clean))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        return self.items[i]


def pad_collate(batch: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict:
    """Zero-pad to the longest clip; ``lengths`` keeps the true sample counts."""
    lengths = torch.tensor([noisy.shape[0] for _, noisy, _ in batch])
    noisy = torch.zeros(len(batch), int(lengths.max()))
    clean = torch.zeros_like(noisy)
    for i, (_, n, c) in enumerate(batch):
        noisy[i, : n.shape[0]] = n
        clean[i, : c.shape[0]] = c
    return {"ids": [name for name, _, _ in batch], "noisy": noisy, "clean": clean, "lengths": lengths}


class TinyEnhancer(L.LightningModule):
    """Residual conv denoiser trained with a masked L1 loss; logs ``val/mos`` and keeps
    the last validation epoch's score of every clip in ``val_scores`` ({id: MOS})."""

    def __init__(self, lr: float = 1e-3, sample_rate: int = 16000, channels: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 15, padding=7),
            nn.Tanh(),
            nn.Conv1d(channels, 1, 15, padding=7),
        )
        # Any torchmos metric works here (e.g. ScoreqNR()); it is not in state_dict.
        self.mos = DistillMOS(fs=sample_rate, per_utterance=True)
        self.val_scores: dict[str, float] = {}

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy + self.net(noisy.unsqueeze(1)).squeeze(1)

    def _loss(self, enhanced: torch.Tensor, clean: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(clean.shape[1], device=clean.device)[None] < lengths[:, None]
        return (enhanced - clean).abs()[mask].mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        enhanced = self(batch["noisy"])
        loss = self._loss(enhanced, batch["clean"], batch["lengths"])
        self.log("train/loss", loss, batch_size=len(batch["lengths"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        enhanced = self(batch["noisy"])
        n = len(batch["lengths"])
        self.log("val/loss", self._loss(enhanced, batch["clean"], batch["lengths"]), batch_size=n)
        # padding beyond each length is never scored
        self.mos.update(enhanced, batch["lengths"], ids=batch["ids"])
        self.log("val/mos", self.mos, on_step=False, on_epoch=True, batch_size=n)  # logs the mean

    def on_validation_epoch_end(self) -> None:
        # Lightning computes (cached, so this costs nothing more) and resets the metric
        # after this hook: the per-clip scores are read here.
        result = self.mos.compute()
        self.val_scores = dict(zip(result["ids"], result["scores"].tolist()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)


def dataloaders(n_train: int = 8, n_valid: int = 4, batch_size: int = 2, fs: int = 16000):
    train = DataLoader(NoisySpeech(n_train, fs, seed=0), batch_size=batch_size, shuffle=True,
                       collate_fn=pad_collate)
    valid = DataLoader(NoisySpeech(n_valid, fs, seed=1000), batch_size=batch_size, collate_fn=pad_collate)
    return train, valid
