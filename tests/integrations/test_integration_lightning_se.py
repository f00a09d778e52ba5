"""integrations/lightning/mos_loss_example.py: an enhancer trained with and without a MOS
term, checked on held-out PESQ and SI-SDR. Run here at a tiny size (a couple of steps)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", minversion="2", reason="needs Lightning 2.x: pip install -e '.[test]'")
pytest.importorskip("pesq", reason="the example's PESQ needs the pesq package: pip install -e '.[test]'")

import torch  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "integrations" / "lightning"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import mos_loss_example

        yield mos_loss_example
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_runs_both_arms_and_reports_real_measures(example, tmp_path):
    out = tmp_path / "results.json"
    result = example.main(["--train-clips", "4", "--test-clips", "2", "--pretrain-steps", "2", "--steps", "2",
                           "--batch-size", "2", "--arms", "recon", "recon+mos", "--threads", "1",
                           "--json", str(out)])
    held = result["held_out"]
    assert list(held) == ["noisy", "pretrained", "recon", "recon+mos"]
    for name, r in held.items():
        assert 1.0 <= r["distillmos"] <= 5.0, name
        assert 1.0 <= r["pesq_wb"] <= 4.65, name
        assert math.isfinite(r["si_sdr_db"]), name
    # the MOS term changed training: the two arms start from the same weights and data
    assert held["recon+mos"] != held["recon"]
    saved = json.loads(out.read_text())
    assert saved["held_out"] == json.loads(json.dumps(held))
    assert "commit" in saved["provenance"] and "tree_clean" in saved["provenance"]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_mos_network_is_not_trained_or_saved(example):
    module = example.Enhancement(example.MaskEnhancer(), mos_weight=1.0)
    assert all(k.startswith("enhancer.") for k in module.state_dict())
    params = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    net = module.mos_loss.network()
    assert not params & {id(p) for p in net.parameters()}
    noisy = torch.randn(2, 16000) * 0.05
    loss = module.training_step((noisy, noisy), 0)
    loss.backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None and p.grad.isfinite().all() for p in module.enhancer.parameters())
