#!/usr/bin/env python3
"""Train a tiny speech enhancer with and without a MOS term, and check whether the gain is real.

    python mos_loss_example.py                         # a few minutes on 2 CPU cores
    python mos_loss_example.py --arms recon recon+mos mos-only --json results.json

A mask-based STFT enhancer (about 0.1 M parameters) is first trained on generated noisy
speech (``torchmos.synth``) with a reconstruction loss (negative SI-SDR). From those
weights, each *arm* is fine-tuned for the same number of steps with Lightning:

* ``recon``: the reconstruction loss alone (the control);
* ``recon+mos``: plus ``weight * MOSLoss("distillmos")`` as an auxiliary term, its weight
  ramped up linearly over the first half of the steps, scored on a random crop at a
  random gain of the first ``--mos-clips`` clips of each batch (so no single framing of
  the audio is optimised);
* ``mos-only``: ``MOSLoss`` alone, the predictor as the only teacher (how it is fooled).

Held-out clips are then scored with DistillMOS (the trained-on predictor) and with
measures the loss does not optimise, against the clean speech: PESQ (wideband, the
``pesq`` package) and SI-SDR (torchmetrics). A MOS gain that PESQ and SI-SDR do not
share is the predictor being fooled, not better audio.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchmos import synth
from torchmos.functional import distillmos
from torchmos.losses import MOSLoss

FS = 16000
ARMS = ("recon", "recon+mos", "mos-only")


class NoisySpeech(Dataset):
    """``n`` (noisy, clean) pairs of generated speech of ``seconds`` at 5-15 dB SNR."""

    def __init__(self, n: int, seconds: float, seed: int) -> None:
        self.items = []
        for i in range(n):
            k = seed + i
            clean = synth.speech_like(seconds, fs=FS, seed=k)
            noisy = synth.add_noise(clean, snr_db=5.0 + k % 11, seed=k, colour="pink" if k % 2 else "white")
            self.items.append((noisy.clamp(-1, 1), clean))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


class MaskEnhancer(nn.Module):
    """Log-magnitude STFT -> two 1-D convs over time (frequency bins as channels) -> a
    [0, 1] mask on the complex STFT -> inverse STFT."""

    def __init__(self, n_fft: int = 512, hop: int = 128, hidden: int = 96) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        self.net = nn.Sequential(nn.Conv1d(bins, hidden, 5, padding=2), nn.ReLU(),
                                 nn.Conv1d(hidden, bins, 5, padding=2))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(noisy, self.n_fft, self.hop, window=self.window, return_complex=True)
        mask = torch.sigmoid(self.net(torch.log1p(spec.abs())))
        return torch.istft(spec * mask, self.n_fft, self.hop, window=self.window, length=noisy.shape[-1])


def neg_si_sdr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    return -scale_invariant_signal_distortion_ratio(est, ref).mean()


class Enhancement(L.LightningModule):
    """The enhancer with its training objective: ``recon`` weight 1 or 0 and a MOS term."""

    def __init__(self, enhancer: nn.Module, recon: float = 1.0, mos_weight: float = 0.0, ramp_steps: int = 0,
                 crop_seconds: float = 0.75, mos_clips: int = 2, lr: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        self.enhancer = enhancer
        self.recon, self.mos_weight, self.ramp_steps = recon, mos_weight, ramp_steps
        self.crop = int(crop_seconds * FS)
        self.mos_clips, self.lr = mos_clips, lr
        # frozen, shared with the metrics, not in this module's state_dict or optimiser
        self.mos_loss = MOSLoss("distillmos", fs=FS) if mos_weight > 0 else None
        self.gen = torch.Generator().manual_seed(seed)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        noisy, clean = batch
        enhanced = self.enhancer(noisy)
        loss = self.recon * neg_si_sdr(enhanced, clean) if self.recon else enhanced.new_zeros(())
        if self.mos_loss is not None:
            ramp = min(1.0, (self.global_step + 1) / self.ramp_steps) if self.ramp_steps else 1.0
            views = []
            for y in enhanced[: self.mos_clips]:  # a random crop at a random gain (-6..+6 dB)
                start = int(torch.randint(0, max(1, y.shape[0] - self.crop + 1), (1,), generator=self.gen))
                gain = 10 ** ((float(torch.rand(1, generator=self.gen)) * 12 - 6) / 20)
                views.append(y[start:start + self.crop] * gain)
            mos_term = self.mos_loss(views)
            self.log("train/5-mos", mos_term)
            loss = loss + self.mos_weight * ramp * mos_term
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.enhancer.parameters(), lr=self.lr)


def fit(module: Enhancement, data: Dataset, steps: int, batch_size: int, seed: int) -> float:
    """Train ``module`` for ``steps`` optimiser steps; returns the wall time."""
    L.seed_everything(seed, verbose=False)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
        trainer.fit(module, loader)
    return time.perf_counter() - t


@torch.no_grad()
def evaluate(outputs: list[torch.Tensor], cleans: list[torch.Tensor]) -> dict[str, float]:
    """Mean DistillMOS, PESQ (wideband) and SI-SDR over the held-out clips."""
    from pesq import pesq
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    mos = distillmos(outputs, fs=FS)
    pesqs = [pesq(FS, c.double().numpy(), o.double().numpy(), "wb") for o, c in zip(outputs, cleans)]
    sdr = [float(scale_invariant_signal_distortion_ratio(o, c)) for o, c in zip(outputs, cleans)]
    return {"distillmos": float(mos.mean()), "pesq_wb": sum(pesqs) / len(pesqs), "si_sdr_db": sum(sdr) / len(sdr)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["recon", "recon+mos"], choices=ARMS)
    ap.add_argument("--train-clips", type=int, default=32)
    ap.add_argument("--test-clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, default=20, help="fine-tuning steps of each arm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mos-clips", type=int, default=2, help="clips of each batch the MOS term scores")
    ap.add_argument("--mos-weight", type=float, nargs="+", default=[2.0],
                    help="weight(s) of 5 - MOS (SI-SDR is in dB); one recon+mos arm per weight")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures here (with the commit, when in a checkout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = NoisySpeech(args.train_clips, args.seconds, seed=args.seed)
    test = NoisySpeech(args.test_clips, args.seconds, seed=10_000 + args.seed)
    noisy_test, clean_test = [n for n, _ in test.items], [c for _, c in test.items]

    torch.manual_seed(args.seed)
    base = Enhancement(MaskEnhancer(), lr=args.lr)
    pre_s = fit(base, train, args.pretrain_steps, args.batch_size, args.seed)

    def enhance(enhancer: nn.Module) -> list[torch.Tensor]:
        with torch.no_grad():
            return [enhancer.eval()(n[None])[0] for n in noisy_test]

    result = {"config": vars(args), "held_out": {"noisy": evaluate(noisy_test, clean_test),
                                                 "pretrained": evaluate(enhance(base.enhancer), clean_test)},
              "seconds": {"pretrain": pre_s}}
    runs = []  # (name, arm, MOS weight)
    for arm in args.arms:
        if arm == "recon+mos" and len(args.mos_weight) > 1:
            runs += [(f"recon+mos w={w:g}", arm, w) for w in args.mos_weight]
        else:
            runs.append((arm, arm, 0.0 if arm == "recon" else args.mos_weight[-1]))
    for name, arm, weight in runs:
        module = Enhancement(copy.deepcopy(base.enhancer).train(), recon=0.0 if arm == "mos-only" else 1.0,
                             mos_weight=weight, ramp_steps=max(1, args.steps // 2) if arm == "recon+mos" else 0,
                             mos_clips=args.mos_clips, lr=args.lr, seed=args.seed)
        result["seconds"][name] = fit(module, train, args.steps, args.batch_size, args.seed)
        result["held_out"][name] = evaluate(enhance(module.enhancer), clean_test)
        print(name, json.dumps(result["held_out"][name]), file=sys.stderr, flush=True)
    print(table(result))
    if args.json:
        root = Path(__file__).resolve().parents[2]
        if (root / "benchmarks" / "common.py").is_file():
            sys.path.insert(0, str(root / "benchmarks"))
            from common import provenance

            result = {"provenance": provenance(), **result}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    rows = ["| held-out clips | DistillMOS | PESQ (wb) | SI-SDR (dB) |", "|---|---|---|---|"]
    for name, r in result["held_out"].items():
        rows.append(f"| {name} | {r['distillmos']:.2f} | {r['pesq_wb']:.2f} | {r['si_sdr_db']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
