"""The degradations of torchmos.synth used by `torchmos train distill`: each is
deterministic for a seed, changes the signal, keeps the length and the rate's meaning."""

from __future__ import annotations

import math

import pytest
import torch

from torchmos import synth

FS = 16000


@pytest.fixture(scope="module")
def clip():
    return synth.speech_like(1.5, FS, seed=7)


@pytest.mark.parametrize("kind", list(synth.KINDS))
@pytest.mark.parametrize("end", [0, 1])
def test_every_kind_is_deterministic_changes_the_signal_and_keeps_length(clip, kind, end):
    severity = synth.KINDS[kind][end]
    if kind == "dropouts" and severity == 0.0:
        severity = 0.05  # the mild end of dropouts is "none lost"
    a = synth.apply_kind(clip, FS, kind, severity, seed=3)
    b = synth.apply_kind(clip, FS, kind, severity, seed=3)
    assert torch.equal(a, b)
    assert a.shape == clip.shape and a.dtype == clip.dtype
    assert float(a.abs().max()) <= 1.0 and bool(torch.isfinite(a).all())
    assert float((a - clip).pow(2).mean()) > 1e-8 * float(clip.pow(2).mean())


@pytest.mark.parametrize("kind", ["noise", "dropouts", "reverb"])
def test_random_kinds_depend_on_the_seed(clip, kind):
    lo, hi = synth.KINDS[kind]
    sev = (lo + hi) / 2
    assert not torch.equal(synth.apply_kind(clip, FS, kind, sev, seed=1), synth.apply_kind(clip, FS, kind, sev, seed=2))


def test_severity_orders_the_damage(clip):
    """The severe end of each kind's range does more damage than the mild end."""
    for kind, (mild, severe) in synth.KINDS.items():
        if kind == "dropouts":
            mild = 0.05
        err = [float((synth.apply_kind(clip, FS, kind, s, seed=0) - clip).pow(2).mean()) for s in (mild, severe)]
        if kind != "reverb":  # reverb's RMS is kept: compare its decay instead (below)
            assert err[1] > err[0], kind


def _decay_time(ir: torch.Tensor, fs: int) -> float:
    """RT60 from the Schroeder integral's slope between -5 and -25 dB (T20 x 3)."""
    edc = ir.double().flip(0).pow(2).cumsum(0).flip(0)
    db = 10 * torch.log10(edc / edc[0])
    t5 = int(torch.nonzero(db <= -5)[0])
    t25 = int(torch.nonzero(db <= -25)[0])
    return 3 * (t25 - t5) / fs


@pytest.mark.parametrize("rt60", [0.3, 0.9])
def test_room_response_decays_by_60_db_in_rt60(rt60):
    ir = synth.room_response(FS, rt60, seed=0, direct=0.0)
    assert ir.shape[0] == int(rt60 * FS)
    assert math.isclose(float(ir.pow(2).sum()), 1.0, rel_tol=1e-4)
    assert abs(_decay_time(ir, FS) - rt60) < 0.15 * rt60


def test_reverb_smears_in_time(clip):
    """Energy moves into the pauses: the quietest 10 % of frames get louder."""
    def quiet_floor(x):
        frames = x[: x.shape[0] // 320 * 320].reshape(-1, 320).pow(2).mean(1)
        return float(frames.sort().values[: frames.shape[0] // 10].mean())

    y = synth.reverb(clip, FS, 1.0, seed=0)
    assert quiet_floor(y) > 3 * quiet_floor(clip)
    assert math.isclose(float(y.pow(2).mean()), float(clip.pow(2).mean()), rel_tol=1e-3)


def test_quantisation_levels_and_error():
    x = torch.linspace(-0.9, 0.9, 5000)
    for bits in (3, 6):
        q = synth.quantise(x, bits)
        assert q.unique().numel() <= 2**bits + 1
        assert float((q - x).abs().max()) <= 1.0 / 2**bits + 1e-6
    coarse, fine = (float((synth.mulaw(x, b) - x).pow(2).mean()) for b in (3, 8))
    assert fine < coarse / 10
    # mu-law spends its levels near zero: small values are kept better than by uniform quantisation
    sig = torch.cat([torch.linspace(-0.02, 0.02, 1000), torch.tensor([0.9])])
    err_mu = float((synth.mulaw(sig, 6) - sig)[:-1].abs().mean())
    err_lin = float((synth.quantise(sig, 6) - sig)[:-1].abs().mean())
    assert err_mu < err_lin / 2


def test_bad_parameters_are_refused(clip):
    with pytest.raises(KeyError, match="reverb"):
        synth.apply_kind(clip, FS, "echo", 1.0)
    with pytest.raises(ValueError, match="rt60"):
        synth.room_response(FS, 0.0)
    with pytest.raises(ValueError, match="bits"):
        synth.mulaw(clip, 0)
