"""Lightning: self.log("val/mos", metric) in a real Trainer, per-utterance and in reduced precision.

The example (integrations/lightning) is run as shipped: the logged ``val/mos`` and every
clip's score match ``torchmos.functional`` on the same enhanced clips, and checkpoints
hold no MOS network. A second LightningModule scores its own bf16 outputs under
``precision="bf16-true"`` and ``"bf16-mixed"``: the metrics keep float64 sums, an fp32
network and fp32 scores within the documented 1e-4.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", minversion="2", reason="needs Lightning 2.x: pip install -e '.[lightning]'")

import lightning as L  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import torchmos.functional as F  # noqa: E402
from torchmos import DistillMOS, synth  # noqa: E402
from torchmos.metrics.vqscore import VQScore  # noqa: E402
from torchmos.models.vqscore import VQScoreModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "integrations" / "lightning"
TOL = 1e-4
FS = 16000


def _run_example(out: Path, *args: str):
    sys.path.insert(0, str(EXAMPLE))
    try:
        import train  # integrations/lightning/train.py
        from mos_module import dataloaders

        n_train, n_valid = int(args[args.index("--n_train") + 1]), int(args[args.index("--n_valid") + 1])
        return (*train.main(["--out", str(out), *args]), dataloaders(n_train, n_valid)[1])
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("train", "mos_module"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning")
    return (out, *_run_example(out, "--n_train", "4", "--n_valid", "3"))


def _enhanced(model, valid, dtype=torch.float32) -> tuple[list[str], list[torch.Tensor]]:
    """The example's validation clips, enhanced again by the trained model (as the Trainer did)."""
    model.eval()
    ids, clips = [], []
    with torch.no_grad():
        for batch in valid:
            enhanced = model(batch["noisy"].to(dtype))
            clips += [e[:n].float() for e, n in zip(enhanced, batch["lengths"].tolist())]
            ids += batch["ids"]
    return ids, clips


def _check_per_clip(out: Path, model, ids: list[str], want: torch.Tensor) -> None:
    """The module's ``val_scores`` and train.py's CSV hold every clip's score, worst first."""
    assert list(model.val_scores) == ids
    assert max(abs(model.val_scores[i] - float(w)) for i, w in zip(ids, want)) <= TOL
    with open(out / "val_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == sorted(ids, key=model.val_scores.get)  # worst first
    assert all(float(r["mos"]) == model.val_scores[r["id"]] for r in rows)


def test_logged_val_mos_equals_functional(run):
    out, trainer, model, best, valid = run
    logged = float(trainer.callback_metrics["val/mos"])
    ids, clips = _enhanced(model, valid)
    assert len({c.shape[0] for c in clips}) > 1  # the batches were padded
    want = F.distillmos(clips)
    assert logged == pytest.approx(float(want.double().mean()), abs=TOL)  # per_utterance=True logs the mean
    _check_per_clip(out, model, ids, want)
    # and it reached the logger
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    assert any(r.get("val/mos") for r in rows)
    assert float(next(r["val/mos"] for r in rows if r.get("val/mos"))) == pytest.approx(logged, abs=TOL)


def test_example_in_bf16_true_scores_in_fp32(tmp_path):
    trainer, model, best, valid = _run_example(tmp_path, "--n_train", "2", "--n_valid", "2",
                                               "--precision", "bf16-true")
    assert model.net[0].weight.dtype == torch.bfloat16  # the enhancer trained in bf16
    assert {p.dtype for p in model.mos.net.parameters()} == {torch.float32}
    ids, clips = _enhanced(model, valid, torch.bfloat16)
    want = F.distillmos(clips)
    assert float(trainer.callback_metrics["val/mos"]) == pytest.approx(float(want.double().mean()), abs=TOL)
    _check_per_clip(tmp_path, model, ids, want)


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


# ----------------------------------------------------------------------------- per-utterance and precision
# A LightningModule that scores its own outputs: a small conv "enhancer" (converted to
# bf16 by precision="bf16-true", run under autocast by "bf16-mixed") produces waveforms,
# and two torchmos metrics score them. Every clip handed to a metric is kept, so each
# logged value is checked against the functional twins in fp32 on exactly those clips.


class Scorer(L.LightningModule):
    def __init__(self, vq_checkpoint: str) -> None:
        super().__init__()
        self.enhancer = nn.Conv1d(1, 1, 9, padding=4)
        self.mos = DistillMOS(fs=FS, per_utterance=True)
        self.vq = VQScore(fs=FS, checkpoint=vq_checkpoint)  # fails in a bf16 default dtype unguarded
        self.clips: list[torch.Tensor] = []
        self.seen: dict = {}

    def validation_step(self, batch, batch_idx):
        noisy, lengths = batch
        residual = self.enhancer(noisy.unsqueeze(1)).squeeze(1)
        enhanced = noisy + residual
        self.seen.setdefault("residual_dtype", residual.dtype)
        self.seen.setdefault("enhancer_dtype", self.enhancer.weight.dtype)
        self.seen.setdefault("default_dtype", torch.get_default_dtype())
        self.seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))
        self.clips += [e[:n].detach().clone() for e, n in zip(enhanced, lengths.tolist())]
        self.mos.update(enhanced, lengths)
        self.vq.update(enhanced, lengths)
        self.log("val/mos", self.mos, batch_size=len(lengths))  # per_utterance=True
        self.log("val/vq", self.vq, batch_size=len(lengths))

    def on_validation_epoch_end(self):
        # before Lightning computes and resets the metrics: the per-utterance result
        self.seen["result"] = self.mos.compute()
        self.seen["state_dtypes"] = (self.mos.sum_score.dtype, self.mos.scores[0].dtype, self.vq.sum_score.dtype)
        self.seen["net_dtypes"] = {p.dtype for m in (self.mos, self.vq) for p in m.net.parameters()}


@pytest.fixture(scope="module")
def vq_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("vq") / "vq.pt")
    VQScoreModel(codebook_size=64, kmeans_init=False).save(path)  # untrained: only scores are compared
    return path


@pytest.fixture(scope="module")
def batches() -> DataLoader:
    lengths = [12000, 8000, 10000]  # 0.5-0.75 s, padded in the first batch
    clean = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        clean[i, :n] = synth.add_noise(synth.speech_like(n / FS, seed=i), snr_db=10.0, seed=i)[:n]
    return DataLoader(list(zip(clean, torch.tensor(lengths))), batch_size=2)


def _validate(precision: str, vq_checkpoint: str, batches: DataLoader) -> tuple[Scorer, dict]:
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with trainer.init_module():  # under "bf16-true" this builds modules with bfloat16 as the default dtype
        model = Scorer(vq_checkpoint)
    logged = trainer.validate(model, batches, verbose=False)[0]
    assert set(logged) == {"val/mos", "val/vq"} and logged.keys() <= trainer.callback_metrics.keys()
    return model, logged


def _want(model: Scorer, vq_checkpoint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The functional twins in fp32 on the very clips the metrics were given."""
    clips = [c.float() for c in model.clips]
    assert len(clips) == 3 and len({c.shape[0] for c in clips}) == 3
    return F.distillmos(clips), F.vqscore(clips, checkpoint=vq_checkpoint)


def test_per_utterance_metric_logs_its_mean(vq_checkpoint, batches):
    model, logged = _validate("32-true", vq_checkpoint, batches)
    result = model.seen["result"]  # what the module read in on_validation_epoch_end
    want, _ = _want(model, vq_checkpoint)
    assert result["ids"] == ["0", "1", "2"]
    assert (result["scores"] - want).abs().max() <= TOL
    assert logged["val/mos"] == pytest.approx(float(result["mean"]), abs=1e-6)
    assert logged["val/mos"] == pytest.approx(float(want.double().mean()), abs=TOL)
    # Lightning reset the metric after logging; compute() on a fresh epoch is a dict again
    assert int(model.mos.total) == 0
    model.mos.update(model.clips[0])
    direct = model.mos.compute()
    assert isinstance(direct, dict) and direct["scores"].shape == (1,)


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_reduced_precision_trainer_keeps_scores_exact(precision, vq_checkpoint, batches):
    model, logged = _validate(precision, vq_checkpoint, batches)
    seen = model.seen
    # the Trainer really ran the step in reduced precision ...
    assert seen["residual_dtype"] == torch.bfloat16
    if precision == "bf16-true":
        assert seen["enhancer_dtype"] == torch.bfloat16 and seen["default_dtype"] == torch.bfloat16
    else:
        assert seen["autocast"] and seen["enhancer_dtype"] == torch.float32
    # ... but the metrics kept float64 sums, float32 scores and an fp32 network
    assert seen["state_dtypes"] == (torch.float64, torch.float32, torch.float64)
    assert seen["net_dtypes"] == {torch.float32}
    want_mos, want_vq = _want(model, vq_checkpoint)
    assert (seen["result"]["scores"] - want_mos).abs().max() <= TOL
    assert logged["val/mos"] == pytest.approx(float(want_mos.double().mean()), abs=TOL)
    assert logged["val/vq"] == pytest.approx(float(want_vq.double().mean()), abs=TOL)
