"""The Trainer options of ``torchmos train``: ``--precision`` reaches the training step
(Lightning's autocast; mixed precision only) and ``--max-steps`` stops an epoch-based
recipe after that many optimiser steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.helpers import speechlike
from torchmos import cli, synth
from torchmos.training import scoreq, vqscore

pytestmark = pytest.mark.usefixtures("tmp_home")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("options_data")
    (root / "clean").mkdir()
    for i in range(3):
        sf.write(root / "clean" / f"c{i}.wav", speechlike(1.0, 16000, seed=90 + i).numpy(), 16000)
    return {"root": root, "train": synth.labelled_set(root / "train", 8, seconds=1.0, seed=5),
            "valid": synth.labelled_set(root / "valid", 3, seconds=1.0, seed=6)}


def _spy(monkeypatch: pytest.MonkeyPatch, module_class: type) -> list[tuple[bool, torch.dtype, torch.dtype]]:
    """Record (CPU autocast on, its dtype, the first parameter's dtype) at every training step."""
    seen: list[tuple[bool, torch.dtype, torch.dtype]] = []
    real = module_class.training_step

    def step(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     next(self.parameters()).dtype))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(module_class, "training_step", step)
    return seen


def _vqscore(data: dict[str, Path], out: Path, *extra: str) -> int:
    return cli.main(["train", "vqscore", "--clean", str(data["root"] / "clean"), "--out", str(out), "--steps", "2",
                     "--batch-size", "2", "--crop-seconds", "0.5", "--codebook-size", "16", "--codebook-dim", "4",
                     "--channels", "8", "8", "--lr", "1e-3", "--dead-code-threshold", "1.0", "--val-every", "0",
                     "--device", "cpu", "--no-progress", *extra])


@pytest.mark.parametrize("given, autocast", [("fp32", None), ("bf16", torch.bfloat16), ("bf16-mixed", torch.bfloat16)])
def test_precision_reaches_the_training_step(given, autocast, data, tmp_path, monkeypatch):
    seen = _spy(monkeypatch, vqscore._VQScore)
    assert _vqscore(data, tmp_path / "run", "--precision", given) == 0
    assert len(seen) == 2
    for on, dtype, weights in seen:
        assert on == (autocast is not None) and weights == torch.float32
        if autocast is not None:
            assert dtype == autocast
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["torchmos"]["args"]["precision"] == ("32-true" if given == "fp32" else "bf16-mixed")
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("given", ["fp8", "bf16-true", "64-true"])
def test_other_precisions_are_refused_with_the_reason(given, data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _vqscore(data, tmp_path / "run", "--precision", given)
    err = capsys.readouterr().err
    assert f"--precision {given!r}" in err and "bf16-mixed" in err
    assert ("lose Adam's small updates" in err) == given.endswith("-true")


def test_max_steps_stops_an_epoch_based_recipe_and_precision_reaches_scoreq(data, tmp_path, monkeypatch):
    seen = _spy(monkeypatch, scoreq._Stage1)
    out = tmp_path / "run"
    # 8 clips in batches of 4: two optimiser steps an epoch; --max-steps 3 stops in the second epoch
    assert cli.main(["train", "scoreq", "--train", str(data["train"]), "--valid", str(data["valid"]), "--init",
                     "random", "--layers", "1", "--hidden", "64", "--conv-dim", "32", "--batch-size", "4",
                     "--crop-seconds", "0.6", "--epochs", "5", "--max-steps", "3", "--head-epochs", "2",
                     "--precision", "bf16", "--device", "cpu", "--no-progress", "--threads", "2", "--out", str(out)]) == 0
    assert len(seen) == 3 and all(on and dtype == torch.bfloat16 for on, dtype, _ in seen)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert (out / "nr.pt").is_file() and (out / "ref.pt").is_file()
