"""DistillMOS: our implementation against the reference package `distillmos` 0.9.1.

The reference (its own ConvTransformerSQAModel and the same official weights) is a test
dependency only; torchmos never imports it at run time.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import pytest
import torch
import torchaudio

import torchmos.functional as F
from torchmos import hub, synth
from torchmos.models import distillmos as dm
from torchmos.models.distillmos import SEQ_LEN, DistillMOSModel, crop_starts

distillmos_ref = importlib.import_module("distillmos")  # the reference package (a dependency)

TOL = 1e-4


@functools.lru_cache(maxsize=1)
def reference() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return distillmos_ref.ConvTransformerSQAModel().eval()


@functools.lru_cache(maxsize=1)
def ours() -> DistillMOSModel:
    return DistillMOSModel.from_pretrained()


def ref_score(x16: torch.Tensor) -> float:
    with torch.no_grad():
        return float(reference()(x16[None]))


def signal(seconds: float, seed: int, fs: int = 16000) -> torch.Tensor:
    return synth.degrade(synth.speech_like(seconds, fs, seed=seed), fs, "noise_20dB", seed=seed)


LENGTHS = {0.5: 8000, 3: 48000, 7.68: SEQ_LEN, 7.69: 123040, 20: 320000, 61: 976000}


@functools.lru_cache(maxsize=1)
def length_cases() -> dict[float, tuple[torch.Tensor, float]]:
    out = {}
    for i, (sec, n) in enumerate(LENGTHS.items()):
        x = signal(n / 16000 + 0.01, seed=i)[:n]
        assert x.shape[0] == n
        out[sec] = (x, ref_score(x))
    return out


def test_official_weights_resolve_from_installed_package(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHMOS_HOME", str(tmp_path))
    path = hub.resolve("distillmos")
    assert path.name == "distill_mos_v7.pt" and "site-packages" in str(path)
    assert hub.sha256sum(path) == hub.get_card("distillmos").weights.sha256


def test_parameter_count_matches_reference():
    # SPECS quotes 4.38 M; the official checkpoint (and the reference model) hold 4,133,226.
    n = sum(p.numel() for p in ours().parameters())
    assert n == sum(p.numel() for p in reference().parameters()) == 4_133_226


def test_crop_starts_follow_spec():
    assert crop_starts(1) == [0]
    assert crop_starts(SEQ_LEN) == [0]
    assert crop_starts(SEQ_LEN + 1) == [0, 1]
    over = 976000 - SEQ_LEN
    starts = crop_starts(976000)
    assert len(starts) == -(-over // 16000) + 1 and starts[0] == 0 and starts[-1] == over
    assert max(b - a for a, b in zip(starts, starts[1:])) <= 16000


@pytest.mark.parametrize("seconds", list(LENGTHS))
def test_parity_one_clip(seconds):
    x, want = length_cases()[seconds]
    got = float(ours()([x]))
    assert abs(got - want) <= TOL, (seconds, got, want)


def test_parity_mixed_batches_score_each_clip_by_its_own_length():
    cases = length_cases()
    keys = [0.5, 61, 3, 7.69, 7.68, 20]
    got = ours()([cases[k][0] for k in keys])
    want = torch.tensor([cases[k][1] for k in keys])
    assert (got - want).abs().max() <= TOL
    # the same clips through the functional API as a padded (B, T) tensor + lengths
    short = [0.5, 3, 7.69]
    padded, lengths = torch.zeros(3, LENGTHS[7.69]), [LENGTHS[k] for k in short]
    for i, k in enumerate(short):
        padded[i, : LENGTHS[k]] = cases[k][0]
    got = F.distillmos(padded, fs=16000, lengths=lengths)
    assert (got - torch.tensor([cases[k][1] for k in short])).abs().max() <= TOL


def test_reference_batch_padding_changes_short_clips_but_ours_does_not():
    """The documented deviation: the reference pads a batch to one length."""
    x3, want3 = length_cases()[3]
    x_long, _ = length_cases()[7.69]
    padded = torch.zeros(2, x_long.shape[0])
    padded[0, : x3.shape[0]] = x3
    padded[1] = x_long
    with torch.no_grad():
        ref_batch = reference()(padded).reshape(-1)
    assert abs(float(ref_batch[0]) - want3) > 1e-3  # the reference's short-clip score moves
    assert abs(float(ours()([x3, x_long])[0]) - want3) <= TOL


@pytest.mark.parametrize("fs", [8000, 22050, 44100, 48000])
def test_parity_other_sample_rates(fs):
    x = signal(3.0, seed=fs, fs=fs)
    want = ref_score(torchaudio.transforms.Resample(fs, 16000)(x[None])[0])
    got = float(F.distillmos(x, fs=fs))
    assert abs(got - want) <= TOL, (fs, got, want)


def test_strict_loading_names_bad_keys():
    sd = hub.load_checkpoint(hub.resolve("distillmos"))["model"]
    model = DistillMOSModel()
    missing = dict(sd)
    missing.pop("transformer_pool_attn.pool.linear3.bias")
    with pytest.raises(ValueError, match="linear3.bias"):
        model.load_official({"model": missing})
    extra = dict(sd, **{"head.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="head.extra"):
        model.load_official({"model": extra})
    shaped = dict(sd, **{"cnn.cnn.0.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"cnn\.cnn\.0\.bias.*\(3,\)"):
        model.load_official({"model": shaped})


def test_checkpoint_argument_and_pinned_sha(tmp_path):
    src = hub.resolve("distillmos")
    model = DistillMOSModel.from_pretrained(checkpoint=src, sha256=hub.get_card("distillmos").weights.sha256)
    x = length_cases()[3][0]
    assert float(model([x])) == pytest.approx(length_cases()[3][1], abs=TOL)
    with pytest.raises(hub.HubError, match="does not match"):
        DistillMOSModel.from_pretrained(checkpoint=src, sha256="0" * 64)


def test_stays_in_eval_mode():
    model = DistillMOSModel.from_pretrained()
    model.train()
    assert not model.training and not model.transformer_pool_attn.norm_input.training


@pytest.mark.skipif(not dm.bf16_supported(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX): "
                    "the bf16 path cannot run here, so its error cannot be measured")
def test_bf16_error_is_small():
    xs = [length_cases()[k][0] for k in (0.5, 3, 7.69)]
    want = torch.tensor([length_cases()[k][1] for k in (0.5, 3, 7.69)])
    model = DistillMOSModel.from_pretrained(precision="bf16")
    assert model.precision == "bf16"
    got = model(xs)
    assert (got - want).abs().max() <= 0.02
    assert (got - want).abs().max() > 0  # it really ran in bf16, not the exact path


def test_bf16_falls_back_with_warning_without_native_bf16(monkeypatch):
    xs = [length_cases()[k][0] for k in (0.5, 3, 7.69)]
    want = torch.tensor([length_cases()[k][1] for k in (0.5, 3, 7.69)])
    monkeypatch.setattr(dm, "bf16_supported", lambda: False)
    model = DistillMOSModel.from_pretrained(precision="bf16")
    assert model.precision == "fp32"
    # decided for the device the model runs on, so the warning comes with the first call
    with pytest.warns(RuntimeWarning, match="falling back to exact fp32"):
        got = model(xs)
    assert (got - want).abs().max() <= TOL


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        DistillMOSModel(precision="fp8")
