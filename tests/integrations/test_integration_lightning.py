"""Lightning: self.log("val/mos", metric) in a real Trainer.fit; checkpoints without the MOS network."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", minversion="2", reason="needs Lightning 2.x: pip install -e '.[integrations]'")

import torchmos.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "integrations" / "lightning"
TOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE))
    try:
        import train  # integrations/lightning/train.py

        out = tmp_path_factory.mktemp("lightning")
        trainer, model, best = train.main(["--out", str(out), "--n_train", "4", "--n_valid", "3"])
        from mos_module import dataloaders

        yield out, trainer, model, best, dataloaders(4, 3)[1]
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("train", "mos_module"):
            sys.modules.pop(name, None)


def test_logged_val_mos_equals_functional(run):
    out, trainer, model, best, valid = run
    logged = float(trainer.callback_metrics["val/mos"])
    model.eval()
    clips = []
    with torch.no_grad():
        for batch in valid:
            enhanced = model(batch["noisy"])
            clips += [e[:n] for e, n in zip(enhanced, batch["lengths"].tolist())]
    assert len({c.shape[0] for c in clips}) > 1  # the batches were padded
    assert logged == pytest.approx(float(F.distillmos(clips).mean()), abs=TOL)
    # and it reached the logger
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    assert any(r.get("val/mos") for r in rows)
    assert float(next(r["val/mos"] for r in rows if r.get("val/mos"))) == pytest.approx(logged, abs=TOL)


def test_checkpoint_has_no_mos_network(run):
    _, _, model, best, _ = run
    path = Path(best.best_model_path)
    assert path.is_file() and best.best_model_score is not None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    assert not any(k.startswith("mos.") for k in keys)
    assert path.stat().st_size < 200_000  # the DistillMOS weights alone are ~17 MB
    assert sum(p.numel() for p in model.mos.net.parameters()) > 4_000_000
    # the metric network stayed in eval mode and out of the optimizer
    assert not model.mos.net.training
    opt_params = {id(p) for g in ckpt["optimizer_states"][0]["param_groups"] for p in g["params"]}
    assert len(opt_params) == len(keys)
