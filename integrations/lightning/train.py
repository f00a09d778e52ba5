#!/usr/bin/env python3
"""Train the tiny enhancer of mos_module.py with Lightning, monitoring ``val/mos``.

    python train.py [--out lightning_runs] [--epochs 1] [--accelerator cpu] [--precision 32-true]

Keeps the checkpoint with the best validation MOS (``ModelCheckpoint(monitor="val/mos",
mode="max")``) and logs to CSV. The checkpoint holds the enhancer only: the MOS
predictor is not part of the LightningModule's state_dict. The last validation epoch's
score of every clip goes to ``<out>/val_scores.csv``, worst first. ``--precision
bf16-mixed`` (or ``bf16-true``) trains the enhancer in bfloat16; the MOS predictor still
scores in fp32.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mos_module import TinyEnhancer, dataloaders  # noqa: E402


def main(argv: list[str] | None = None) -> tuple[L.Trainer, TinyEnhancer, ModelCheckpoint]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="lightning_runs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed, bf16-true, 16-mixed (GPU)")
    parser.add_argument("--n_train", type=int, default=8)
    parser.add_argument("--n_valid", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    train, valid = dataloaders(args.n_train, args.n_valid)
    model = TinyEnhancer()
    best = ModelCheckpoint(dirpath=os.path.join(args.out, "checkpoints"), monitor="val/mos", mode="max",
                           filename="best-{epoch}", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        precision=args.precision,
        devices=1,
        logger=CSVLogger(args.out, name="tiny_enhancer"),
        callbacks=[best],
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, train, valid)
    worst = sorted(model.val_scores.items(), key=lambda item: item[1])
    with open(os.path.join(args.out, "val_scores.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("id", "mos"), *worst])
    print(f"val/mos {float(trainer.callback_metrics['val/mos']):.4f}, worst clip {worst[0][0]} "
          f"({worst[0][1]:.2f}), best checkpoint {best.best_model_path}")
    return trainer, model, best


if __name__ == "__main__":
    main()
