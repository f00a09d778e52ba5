"""VQScore on real speech (opt-in): the noisy or coded file of each pair scores below its
clean original.

Data: ``../shared/data/speech`` beside the repository (or ``$TORCHMOS_SPEECH_DATA``):
``pesq_speech.wav`` / ``pesq_speech_bab_0dB.wav`` (babble noise at 0 dB) and
``scoreq_ref.wav`` / ``scoreq_opus.wav`` (Opus-coded). The files are read where they are,
never copied into the project; the test is skipped with the reason when they are absent.

The model is either a checkpoint given as ``$TORCHMOS_VQSCORE_CKPT`` (e.g. the authors'
released ``.pkl`` or a ``vqscore.pt`` from ``torchmos train vqscore``), which must rank
both pairs, or a small VQScore trained here by the recipe. What keeps the latter honest:
the model must never have heard what it is tested on. Training on the clean originals
would let it memorise the very frames it is then asked about, so each pair is scored by
a model trained on speech-like signals plus the *other* pair's clean recording (another
speaker, sentence and microphone): leave one pair out.

Known limitation, measured: such a small model (256 codes, about 100 s of training audio
of which 3-5 s is real speech) ranks the babble-noise pair correctly (0.870 vs 0.853) but
not the Opus-coded one (original 0.8250, coded 0.8257; the same with a model four
times larger, with more real data or without dead-code replacement); that case is marked
xfail and reports XPASS when it passes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.helpers import speechlike
from torchmos import audio
from torchmos.models.vqscore import VQScoreModel
from torchmos.training import vqscore as recipe

pytestmark = pytest.mark.realdata

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("TORCHMOS_SPEECH_DATA") or ROOT.parent / "shared" / "data" / "speech")
PAIRS = [("pesq_speech.wav", "pesq_speech_bab_0dB.wav"), ("scoreq_ref.wav", "scoreq_opus.wav")]


def _need_data() -> None:
    missing = [f for pair in PAIRS for f in pair if not (DATA / f).is_file()]
    if missing:
        pytest.skip(f"real speech not found: {', '.join(missing)} in {DATA} "
                    "(set TORCHMOS_SPEECH_DATA to the folder holding them)")


def _load(name: str) -> torch.Tensor:
    x, sr = audio.read(DATA / name)
    return audio.resample(x, sr, 16000)


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """One torch thread (shared machines; see tests/unit/test_vqscore.py)."""


def test_given_checkpoint_scores_degraded_below_clean() -> None:
    ckpt = os.environ.get("TORCHMOS_VQSCORE_CKPT")
    if not ckpt:
        pytest.skip("set TORCHMOS_VQSCORE_CKPT to a VQScore checkpoint to score the real pairs with it")
    _need_data()
    model = VQScoreModel.from_pretrained(checkpoint=ckpt)
    for clean, degraded in PAIRS:
        s = model([_load(clean), _load(degraded)])
        print(f"{clean} {float(s[0]):.4f} > {degraded} {float(s[1]):.4f}")
        assert float(s[1]) < float(s[0]), (clean, degraded, s.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("pair", [
    pytest.param(0, id="babble-0dB"),
    pytest.param(1, id="opus", marks=pytest.mark.xfail(
        reason="a small model trained on speech-like signals and 3 s of other real speech does not "
        "detect these Opus artefacts (measured: original 0.8250, coded 0.8257)", strict=False)),
])
def test_model_trained_without_the_pair(tmp_path: Path, pair: int) -> None:
    _need_data()
    clean, degraded = PAIRS[pair]
    other_clean = PAIRS[1 - pair][0]
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    lines = []
    for i in range(32):
        path = synthetic / f"s{i:02d}.wav"
        sf.write(path, speechlike(3.0, 16000, seed=i).numpy(), 16000, subtype="FLOAT")
        lines.append(str(path))
    lines += [str(DATA / other_clean)] * 8  # read where it is; a fifth of the training crops
    listing = tmp_path / "clean.txt"
    listing.write_text("\n".join(lines) + "\n")
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    # the small configuration of the unit learning test (tests/unit/test_vqscore.py)
    args = parser.parse_args([
        "--clean", str(listing), "--out", str(tmp_path / "run"), "--steps", "800", "--batch-size", "8",
        "--codebook-size", "256", "--codebook-dim", "16", "--channels", "32", "16", "--lr", "2e-3",
        "--betas", "0.9", "0.999", "--seed", "0", "--val-every", "0", "--log-every", "100", "--no-progress",
    ])
    assert recipe.run(args) == 0
    model = VQScoreModel.from_pretrained(checkpoint=tmp_path / "run" / "vqscore.pt")
    s = model([_load(clean), _load(degraded)])
    print(f"trained without {clean}: {clean} {float(s[0]):.4f}, {degraded} {float(s[1]):.4f}")
    assert float(s[1]) < float(s[0]), (clean, degraded, s.tolist())
