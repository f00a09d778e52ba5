"""SpeechBrain: MOSStats against torchmos.functional, from YAML, and the miniature recipe end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("speechbrain", reason="needs SpeechBrain: pip install -e '.[integrations]'")

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters.speechbrain import MOSStats, absolute_lengths  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "integrations" / "speechbrain"
TOL = 1e-4


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    # different lengths, so the batch is padded; one 8 kHz-native clip comes later
    return [synth.degrade(synth.speech_like(s, seed=i), 16000, k, seed=i)
            for i, (s, k) in enumerate([(1.0, "clean"), (1.5, "noise_5dB"), (1.25, "lowpass_1k")])]


@pytest.fixture(scope="module")
def reference(clips) -> torch.Tensor:
    return F.distillmos(clips)


def padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, n = audio.pad_batch(clips)
    x[0, n[0]:] = 0.3  # padding that would change the score if it were scored
    return x, n.double() / x.shape[1]


def test_append_with_relative_lengths_equals_functional(clips, reference):
    wavs, lens = padded(clips)
    stats = MOSStats(model="distillmos")
    stats.append(["a", "b", "c"], wavs, lens)
    assert stats.ids == ["a", "b", "c"]
    assert torch.allclose(torch.tensor(stats.scores), reference, atol=TOL)


def test_batching_and_multichannel_do_not_change_scores(clips, reference):
    stats = MOSStats(model="distillmos")
    for i, c in enumerate(clips):  # one at a time, as a (1, T, 2) multichannel batch
        stats.append([f"u{i}"], torch.stack([c, c], dim=-1).unsqueeze(0), torch.ones(1))
    assert torch.allclose(torch.tensor(stats.scores), reference, atol=TOL)


def test_sample_rate_is_resampled_like_functional():
    x8 = [synth.speech_like(1.0, fs=8000, seed=7), synth.speech_like(0.75, fs=8000, seed=8)]
    wavs, lens = padded(x8)
    stats = MOSStats(model="distillmos")
    stats.append(["x", "y"], wavs, lens, sample_rate=8000)
    assert torch.allclose(torch.tensor(stats.scores), F.distillmos(x8, fs=8000), atol=TOL)


def test_summarize_min_max_and_write_stats(clips, reference):
    wavs, lens = padded(clips)
    stats = MOSStats(model="distillmos")
    stats.append(["a", "b", "c"], wavs, lens)
    s = stats.summarize()
    ids = ["a", "b", "c"]
    assert s["average"] == pytest.approx(float(reference.mean()), abs=TOL)
    assert s["min_id"] == ids[int(reference.argmin())] and s["max_id"] == ids[int(reference.argmax())]
    assert s["min_score"] == pytest.approx(float(reference.min()), abs=TOL)
    assert stats.summarize("max_score") == pytest.approx(float(reference.max()), abs=TOL)
    out = io.StringIO()
    stats.write_stats(out)
    text = out.getvalue()
    assert "Average score:" in text and "Min score:" in text and "Max score:" in text
    per_utt = dict(ln.split() for ln in text.splitlines() if ln.split()[0] in ids and len(ln.split()) == 2)
    assert [float(per_utt[i]) for i in ids] == pytest.approx(reference.tolist(), abs=TOL)
    stats.clear()
    with pytest.raises(ValueError, match="append"):
        stats.summarize()


def test_relative_lengths_are_checked():
    assert absolute_lengths(torch.tensor([1.0, 0.5]), 16000).tolist() == [16000, 8000]
    with pytest.raises(ValueError, match="relative lengths"):
        absolute_lengths(torch.tensor([16000.0]), 16000)
    stats = MOSStats()
    with pytest.raises(ValueError, match="lens="):
        stats.append(["a"], [torch.zeros(100)], torch.ones(1))


def test_built_from_hparams_yaml(clips, reference):
    from hyperpyyaml import load_hyperpyyaml

    hp = load_hyperpyyaml("""
    mos_model: distillmos
    fresh: !name:torchmos.adapters.speechbrain.MOSStats
        model: !ref <mos_model>
        sample_rate: 16000
    single: !new:torchmos.adapters.speechbrain.MOSStats
        model: !ref <mos_model>
    """)
    a, b = hp["fresh"](), hp["fresh"]()
    assert isinstance(a, MOSStats) and a is not b and a.model == "distillmos"
    assert isinstance(hp["single"], MOSStats)
    a.append(["a"], clips[0].unsqueeze(0))
    assert a.scores[0] == pytest.approx(float(reference[0]), abs=TOL)


def test_recipe_end_to_end(tmp_path):
    """train.py: one epoch, valid MOS logged, best checkpoint by MOS, test MOS == functional."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "hparams/train.yaml", "--output_folder", str(out), "--device", "cpu"],
        cwd=RECIPE, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = (out / "train_log.txt").read_text()
    assert "valid mos:" in log and "test mos:" in log

    # the kept checkpoint recorded its MOS (save_and_keep_only(meta=stats, max_keys=["mos"]))
    ckpts = sorted((out / "save").glob("CKPT*"))
    assert len(ckpts) == 1
    meta = (ckpts[0] / "CKPT.yaml").read_text()
    assert "mos:" in meta
    # and holds only the enhancer: no MOS network in any checkpoint file
    for f in ckpts[0].iterdir():
        assert f.stat().st_size < 1_000_000, f

    # per-utterance test MOS (MOSStats.write_stats) == functional on the enhanced clips
    lines = (out / "test_mos.txt").read_text().splitlines()
    scores = {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln.startswith("test_")}
    test_set = json.loads((out / "data" / "test.json").read_text())
    assert set(scores) == set(test_set)
    enhanced = [audio.read(out / "enhanced" / f"{u}.wav")[0] for u in sorted(scores)]
    for u, x in zip(sorted(scores), enhanced):
        assert x.shape[0] == round(test_set[u]["length"] * 16000)  # padding was cut, not scored
    want = F.distillmos(enhanced)
    got = torch.tensor([scores[u] for u in sorted(scores)])
    assert torch.allclose(got, want, atol=TOL)
    average = next(ln for ln in lines if ln.startswith("Average score:"))
    assert float(average.split(":")[1]) == pytest.approx(float(want.mean()), abs=TOL)


def test_reference_model_with_refs_and_ref_lens(clips, tmp_path):
    """A reference model (tiny random-weight SCOREQ, official format) gets refs= with their lens."""
    from torchmos.metrics.scoreq import ScoreqRef
    from torchmos.models import scoreq

    tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
                num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
    ckpt = tmp_path / "fixed_nmr_telephone.pt"
    torch.manual_seed(0)
    torch.save(scoreq.ScoreqModel("ref", **tiny).to_official_state_dict(), ckpt)
    clean = [synth.speech_like(c.shape[0] / 16000, seed=50 + i) for i, c in enumerate(clips)]
    wavs, lens = padded(clips)
    refs, ref_lens = padded(clean)
    stats = MOSStats(model="scoreq-ref-natural", checkpoint=ckpt, **tiny)
    assert not stats.higher_is_better
    stats.append(["a", "b", "c"], wavs, lens, refs=refs, ref_lens=ref_lens)
    metric = ScoreqRef(checkpoint=ckpt, backbone_config=tiny, per_utterance=True)
    metric.update(clips, clean)
    assert stats.scores == pytest.approx(metric.compute()["scores"].tolist(), abs=TOL)
    with pytest.raises(ValueError, match="reference"):
        stats.append(["a"], wavs[:1], lens[:1])
