"""SpeechBrain: MOSStats (both call forms) and MOSEstimator against torchmos.functional,
from YAML, offline, and the miniature recipe end to end."""

from __future__ import annotations

import doctest
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("speechbrain", reason="needs SpeechBrain: pip install -e '.[speechbrain]'")

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
    with pytest.raises(ValueError, match="lengths= goes with a padded"):
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


# ----------------------------------------------------------------------------- reference models

TINY = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
            num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory) -> Path:
    """A tiny random-weight SCOREQ reference model, saved in the official format."""
    from torchmos.models import scoreq

    ckpt = tmp_path_factory.mktemp("tiny") / "fixed_nmr_telephone.pt"
    torch.manual_seed(0)
    torch.save(scoreq.ScoreqModel("ref", **TINY).to_official_state_dict(), ckpt)
    return ckpt


@pytest.fixture(scope="module")
def clean(clips) -> list[torch.Tensor]:
    return [synth.speech_like(c.shape[0] / 16000, seed=50 + i) for i, c in enumerate(clips)]


@pytest.fixture(scope="module")
def ref_distance(tiny_ref, clips, clean) -> torch.Tensor:
    """What torchmos' own ScoreqRef metric gives each (clip, reference) pair."""
    from torchmos.metrics.scoreq import ScoreqRef

    metric = ScoreqRef(checkpoint=tiny_ref, backbone_config=TINY, per_utterance=True)
    metric.update(clips, clean)
    return metric.compute()["scores"]


def test_reference_model_with_target_as_voicebank_pesq(tiny_ref, clips, clean, ref_distance):
    """append(ids, predict=, target=, lengths=): one `lengths` for both, as SpeechBrain's PESQ stats."""
    wavs, lens = padded(clips)
    refs, _ = padded(clean)  # padded like the clips: same relative lengths
    stats = MOSStats(model="scoreq-ref-natural", checkpoint=tiny_ref, **TINY)
    assert not stats.higher_is_better and stats.needs_target
    stats.append(["a", "b", "c"], predict=wavs, target=refs, lengths=lens)
    assert stats.scores == pytest.approx(ref_distance.tolist(), abs=TOL)

    # references padded differently need their own lengths (target_lengths=, alias ref_lens=)
    long_refs = torch.nn.functional.pad(refs, (0, 800), value=0.3)
    long_lens = torch.tensor([c.shape[0] / long_refs.shape[1] for c in clean])
    with pytest.raises(ValueError, match="target_lengths="):
        stats.append(["a", "b", "c"], predict=wavs, target=long_refs, lengths=lens)
    stats.append(["a", "b", "c"], wavs, lens, target=long_refs, target_lengths=long_lens)
    stats.append(["a", "b", "c"], wavs, lens, refs=long_refs, ref_lens=long_lens)
    assert stats.scores == pytest.approx(ref_distance.tolist() * 3, abs=TOL)
    with pytest.raises(ValueError, match="compares each clip with a reference; pass target="):
        stats.append(["a"], wavs[:1], lens[:1])
    assert len(stats.scores) == 9


def test_no_reference_model_refuses_target_unless_told_to_ignore_it(clips, reference):
    wavs, lens = padded(clips)
    clean_wavs = wavs.flip(0)  # any waveforms of the right shape
    strict = MOSStats(model="distillmos")
    assert not strict.needs_target
    with pytest.raises(ValueError, match="no-reference.*ignore_target=True"):
        strict.append(["a", "b", "c"], predict=wavs, target=clean_wavs, lengths=lens)
    assert strict.ids == [] and strict.scores == []
    lenient = MOSStats(model="distillmos", ignore_target=True)
    lenient.append(["a", "b", "c"], predict=wavs, target=clean_wavs, lengths=lens)
    assert torch.allclose(torch.tensor(lenient.scores), reference, atol=TOL)


# ----------------------------------------------------------------------------- call forms


def test_keyword_call_form_as_voicebank_recipes(clips, reference):
    """append(batch.id, predict=..., lengths=lens) == the positional form == functional."""
    wavs, lens = padded(clips)
    kw = MOSStats(model="distillmos")
    kw.append(["a", "b", "c"], predict=wavs, lengths=lens)
    pos = MOSStats(model="distillmos")
    pos.append(["a", "b", "c"], wavs, lens)
    old = MOSStats(model="distillmos")  # the earlier names still work
    old.append(["a", "b", "c"], wavs=wavs, lens=lens)
    for stats in (kw, pos, old):
        assert stats.ids == ["a", "b", "c"]
        assert torch.allclose(torch.tensor(stats.scores), reference, atol=TOL)


def _bad_calls(wavs, lens):
    """(call, error type, message pattern): each names what was wrong."""
    return [
        (lambda s: s.append(["a", "b", "c"], wavs, wavs.flip(0), lens, reduction="batch"),
         TypeError, "positionally.*target="),
        (lambda s: s.append(["a", "b", "c"], wavs, wavs.flip(0)), ValueError, "lengths=.*target="),
        (lambda s: s.append(["a", "b", "c"], predict=wavs, lengths=lens, reduction="batch"),
         TypeError, "reduction"),
        (lambda s: s.append(["a", "b"], predict=wavs, lengths=lens), ValueError, "2 ids for a batch of 3"),
        (lambda s: s.append("abc", predict=wavs, lengths=lens), TypeError, "ids must be a list"),
        (lambda s: s.append(["a", "b", "c"], lengths=lens), TypeError, "needs the waveforms"),
        (lambda s: s.append(["a", "b", "c"], predict=wavs, wavs=wavs), TypeError, "predict= and wavs="),
        (lambda s: s.append(["a", "b", "c"], predict=wavs, lengths=lens * 24000), ValueError,
         "relative lengths"),
        (lambda s: s.append(["a", "b", "c"], predict=wavs, lengths=lens[:2]), ValueError, r"shape \(3,\)"),
        (lambda s: s.append(["a", "b", "c"], predict=wavs[..., None, None]), ValueError, "predict: expected"),
        (lambda s: s.append(["a", "b", "c"], predict=wavs, target_lengths=lens), ValueError,
         "target_lengths= given without target="),
        # fails only inside the predictor's input checks (one clip too short): nothing stored either
        (lambda s: s.append(["a", "b", "c"], predict=wavs, lengths=torch.tensor([1.0, 1.0, 1 / wavs.shape[1]])),
         ValueError, "c"),
    ]


def test_wrong_calls_raise_clearly_and_store_nothing(clips):
    wavs, lens = padded(clips)
    stats = MOSStats(model="distillmos")
    stats.append(["x", "y", "z"], predict=wavs, lengths=lens)
    before = (list(stats.ids), list(stats.scores), stats.summarize())
    cases = _bad_calls(wavs, lens)
    assert len(cases) == 12
    for i, (call, error, pattern) in enumerate(cases):
        with pytest.raises(error, match=pattern):
            call(stats)
        assert (stats.ids, stats.scores, stats.summarize()) == before, f"bad call {i} changed the stats"


def test_write_stats_after_more_appends_is_current(clips, reference):
    wavs, lens = padded(clips)
    stats = MOSStats(model="distillmos")
    stats.append(["a"], wavs[:1], lens[:1] * wavs.shape[1] / wavs.shape[1])
    stats.summarize()
    stats.append(["b", "c"], predict=wavs[1:], lengths=lens[1:])
    out = io.StringIO()
    stats.write_stats(out)
    average = next(ln for ln in out.getvalue().splitlines() if ln.startswith("Average score:"))
    assert float(average.split(":")[1]) == pytest.approx(float(reference.mean()), abs=TOL)


# ----------------------------------------------------------------------------- MOSEstimator

PRETRAINED = RECIPE / "pretrained"


def test_estimator_from_the_example_folder_equals_functional(clips, reference, tmp_path):
    from torchmos.adapters.speechbrain_inference import MOSEstimator

    save = tmp_path / "save"
    mos = MOSEstimator.from_hparams(source=PRETRAINED, savedir=save, run_opts={"device": "cpu"})
    assert (save / "hyperparams.yaml").is_symlink()  # SpeechBrain's fetch linked it, as for a hub folder
    assert mos.model == "distillmos" and mos.device == "cpu" and mos.hparams.sample_rate == 16000
    wavs, lens = padded(clips)
    got = mos.estimate_batch(wavs, lens)
    assert got.shape == (3,)  # (B,), as SNREstimator.estimate_batch
    assert torch.allclose(got, reference, atol=TOL)
    assert torch.allclose(mos(wavs[:1], lens[:1]), reference[:1], atol=TOL)  # forward == estimate_batch
    multichannel = torch.stack([wavs, wavs], dim=-1)  # (B, T, C)
    assert torch.allclose(mos.estimate_batch(multichannel, lens), reference, atol=TOL)
    one = mos.estimate_batch(clips[1])  # (T,): a batch of one, no lengths
    assert one.shape == (1,) and one.item() == pytest.approx(float(reference[1]), abs=TOL)
    # frozen, in eval mode, and a private copy: the shared functional model is untouched
    net = mos.mods.mos_model.net
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert net is not F.get_model("distillmos")


def test_estimator_from_card_name_with_sample_rate_override():
    from torchmos.adapters.speechbrain import MOSEstimator

    x8 = [synth.speech_like(1.0, fs=8000, seed=7), synth.speech_like(0.75, fs=8000, seed=8)]
    wavs, lens = padded(x8)
    mos = MOSEstimator.from_hparams(source="distillmos", overrides={"sample_rate": 8000},
                                    run_opts={"device": "cpu"})
    assert mos.hparams.sample_rate == 8000
    assert torch.allclose(mos.estimate_batch(wavs, lens), F.distillmos(x8, fs=8000), atol=TOL)


def test_estimate_file_equals_functional_on_the_file(tmp_path):
    import soundfile as sf

    from torchmos.adapters.speechbrain import MOSEstimator

    x = synth.degrade(synth.speech_like(1.2, fs=22050, seed=3), 22050, "noise_5dB", seed=3)
    path = tmp_path / "clip.wav"
    sf.write(path, torch.stack([x, 0.5 * x], dim=1).numpy(), 22050, subtype="FLOAT")  # stereo, 22.05 kHz
    mos = MOSEstimator.from_hparams(source="distillmos", run_opts={"device": "cpu"})
    got = mos.estimate_file(path)
    wav, fs = audio.read(path)
    assert got.shape == (1,) and fs == 22050
    assert torch.allclose(got, F.distillmos(wav, fs=fs), atol=TOL)
    loaded = mos.load_audio(path)  # at hparams.sample_rate, mono, read locally
    assert loaded.dim() == 1 and loaded.shape[0] == round(wav.shape[0] * 16000 / 22050)
    assert torch.allclose(mos.estimate_batch(loaded), got, atol=TOL)
    for read in (mos.estimate_file, mos.load_audio):
        with pytest.raises(ValueError, match="missing.wav"):
            read(tmp_path / "missing.wav")


def test_estimator_local_folder_with_pretrainer_weights(tiny_ref, clips, clean, ref_distance, tmp_path):
    """A folder as on a model hub: hyperparams.yaml + mos_model.ckpt, linked into savedir."""
    from torchmos.adapters.speechbrain_inference import MOSEstimator

    src = tmp_path / "src"
    src.mkdir()
    (src / "mos_model.ckpt").write_bytes(tiny_ref.read_bytes())
    options = "".join(f"    {k}: {list(v) if isinstance(v, tuple) else v}\n" for k, v in TINY.items())
    (src / "hyperparams.yaml").write_text(
        "mos_model: !new:torchmos.adapters.speechbrain_inference.MOSModel\n"
        "    model: scoreq-ref-natural\n" + options +
        "modules:\n    mos_model: !ref <mos_model>\n"
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        "    loadables:\n        mos_model: !ref <mos_model>\n"
    )
    save = tmp_path / "save"
    mos = MOSEstimator.from_hparams(source=str(src), savedir=save, run_opts={"device": "cpu"})
    assert (save / "mos_model.ckpt").is_symlink()
    assert mos.mods.mos_model.checkpoint == str(save / "mos_model.ckpt")  # loaded by the pretrainer
    assert mos.needs_reference and not mos.higher_is_better

    wavs, lens = padded(clips)
    refs, _ = padded(clean)
    got = mos.estimate_batch(wavs, lens, refs=refs)  # ref_lens default: wav_lens
    assert torch.allclose(got, ref_distance, atol=TOL)
    with pytest.raises(ValueError, match="compares each clip with a reference"):
        mos.estimate_batch(wavs, lens)
    with pytest.raises(ValueError, match="ref_lens="):
        mos.estimate_batch(wavs, lens, refs=torch.nn.functional.pad(refs, (0, 10)))


def test_estimator_never_reaches_the_network(tmp_path, monkeypatch):
    import huggingface_hub
    import speechbrain.utils.fetching as fetching

    from torchmos.adapters.speechbrain_inference import MOSEstimator

    calls = []
    monkeypatch.setattr(fetching, "download_file", lambda *a, **k: calls.append(("url", a)))

    def hf_download(**kwargs):
        calls.append(("hf", kwargs))
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_download)
    # a hub id or URL as source: refused before any fetch
    for source in ("speechbrain/some-mos-model", "https://example.org/mos"):
        with pytest.raises(ValueError, match="neither a local folder nor a torchmos card"):
            MOSEstimator.from_hparams(source=source, savedir=tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="hyperparams.yaml"):
        MOSEstimator.from_hparams(source=tmp_path)
    # a local folder whose pretrainer names a URL: not downloaded, even when the caller allows it
    src = tmp_path / "remote"
    src.mkdir()
    (src / "hyperparams.yaml").write_text(
        (PRETRAINED / "hyperparams.yaml").read_text().replace(
            "    # loadables:\n    #     mos_model: !ref <mos_model>",
            "    loadables:\n        mos_model: !ref <mos_model>\n"
            "    paths:\n        mos_model: https://example.org/mos/mos_model.ckpt"))
    with pytest.raises(ValueError, match="allow_network"):
        MOSEstimator.from_hparams(source=src, savedir=tmp_path / "s2",
                                  fetch_config=fetching.FetchConfig(allow_network=True))
    assert calls == []


def test_estimator_wrong_inputs_are_named():
    from torchmos.adapters.speechbrain_inference import MOSEstimator, MOSModel

    mos = MOSEstimator.from_hparams(source="distillmos", run_opts={"device": "cpu"})
    wavs = torch.randn(2, 16000) * 0.1
    with pytest.raises(ValueError, match="no-reference"):
        mos.estimate_batch(wavs, refs=wavs)
    with pytest.raises(ValueError, match=r"wav_lens= must hold one relative length.*\(2,\)"):
        mos.estimate_batch(wavs, torch.ones(3))
    with pytest.raises(ValueError, match="relative lengths"):
        mos.estimate_batch(wavs, torch.tensor([16000.0, 8000.0]))
    with pytest.raises(ValueError, match="mos_model"):
        MOSEstimator(modules={"mos_model": torch.nn.Linear(1, 1)}, hparams={})
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        MOSModel("nope")


@pytest.mark.parametrize("name", ["torchmos.adapters.speechbrain", "torchmos.adapters.speechbrain_inference",
                                  "torchmos.adapters.speechbrain_lengths"])
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
