"""Winograd F(4, 3) along time for DistillMOS's 3x3 convolutions (CPU, float32, inference):
the same convolution to float rounding, used only where it applies and pays (AVX2 kernels),
and the same scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchmos import synth
from torchmos.models import distillmos_splice, winograd
from torchmos.models.distillmos import DistillMOSModel


def _conv(cin: int, cout: int, stride_f: int, pad_f: int, bias: bool = True, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, 3, stride=(stride_f, 1), padding=(pad_f, 1), bias=bias)


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to float32 rounding: within 1e-5 of the largest output."""
    return torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("frames", [8, 9, 10, 11, 12, 13, 31, 100])
@pytest.mark.parametrize(("stride_f", "pad_f", "bias"), [(1, 0, True), (2, 0, True), (2, 1, False), (1, 1, True)])
@pytest.mark.parametrize("block", [winograd.BLOCK, 1, 3])  # tiles per pass: one pass, and many with a ragged last
def test_it_is_the_convolution(frames, stride_f, pad_f, bias, block):
    conv = _conv(128, 128, stride_f, pad_f, bias, seed=frames)
    x = torch.randn(2, 128, 11, frames).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert winograd.eligible(conv, x)
        want, got = conv(x), winograd.conv2d(conv, x, block)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert _close(got, want)


def test_a_contiguous_input_works_too():
    conv = _conv(128, 128, 2, 0)
    x = torch.randn(1, 128, 9, 20)
    with torch.no_grad():
        assert _close(winograd.conv2d(conv, x), conv(x))


def test_it_is_eligible_only_for_float32_cpu_inference_of_plain_3x3_time_stride_1(monkeypatch):
    monkeypatch.setattr(winograd, "pays_here", lambda: True)
    conv, x = _conv(128, 128, 2, 0), torch.randn(1, 128, 9, 20)
    assert not winograd.applies(conv, x)  # a gradient is being recorded
    with torch.no_grad():
        assert winograd.applies(conv, x)
        monkeypatch.setattr(winograd, "pays_here", lambda: False)  # an AVX-512 CPU
        assert not winograd.applies(conv, x) and winograd.eligible(conv, x)
        monkeypatch.setattr(winograd, "pays_here", lambda: True)
        assert not winograd.applies(conv, x[..., : winograd.MIN_FRAMES - 1])
        assert not winograd.applies(conv.double(), x.double())
        assert not winograd.applies(_conv(128, winograd.MIN_CHANNELS - 1, 2, 0), x)
        x64 = torch.randn(1, winograd.MIN_CHANNELS // 2, 9, 20)
        assert not winograd.applies(_conv(winograd.MIN_CHANNELS // 2, 256, 2, 0), x64)
        assert not winograd.applies(nn.Conv2d(128, 128, 3, stride=(2, 2), padding=(0, 1)), x)
        assert not winograd.applies(nn.Conv2d(128, 128, 3, padding=(0, 2), dilation=(1, 2)), x)
        assert not winograd.applies(nn.Conv2d(128, 128, (3, 5), padding=(0, 2)), x)
        assert not winograd.applies(nn.Conv2d(128, 128, 3, padding=(0, 1), padding_mode="circular"), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies(conv, x)
    with torch.inference_mode():
        assert winograd.applies(_conv(128, 128, 2, 0), x)


def test_it_pays_with_avx2_kernels_only(monkeypatch):
    for cap, want in (("AVX2", True), ("AVX512", False), ("DEFAULT", False), ("NEON", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        assert winograd.pays_here() is want


def test_the_kernels_follow_the_weights():
    conv, x = _conv(128, 128, 1, 0), torch.randn(1, 128, 9, 20)
    with torch.no_grad():
        winograd.conv2d(conv, x)
        conv.weight.mul_(-2.0)  # in place
        assert _close(winograd.conv2d(conv, x), conv(x))
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # replaced
        assert _close(winograd.conv2d(conv, x), conv(x))


def test_distillmos_runs_its_wide_layers_by_winograd_and_scores_as_direct_convolution(monkeypatch):
    monkeypatch.setattr(winograd, "pays_here", lambda: True)
    model = DistillMOSModel.from_pretrained()
    clips = [synth.add_noise(synth.speech_like(s, seed=i), snr_db=10.0, seed=i) for i, s in enumerate((1.3, 4.0, 9.0))]
    calls = []
    real = winograd.conv2d

    def counted(conv, x):
        calls.append(conv.out_channels)
        return real(conv, x)

    monkeypatch.setattr(winograd, "conv2d", counted)
    fast = model(clips)
    assert calls and set(calls) == {256}  # layers 4-5 (128 and 256 in, 256 out), not 1-3 (2 or 64 in) or 6 (time stride 2)
    monkeypatch.setattr(winograd, "applies", lambda conv, x: False)
    calls.clear()
    direct = model(clips)
    assert not calls
    assert torch.allclose(fast, direct, rtol=0, atol=1e-5), (fast - direct).abs().max()


def test_not_with_a_gradient(monkeypatch):
    model = DistillMOSModel.from_pretrained()
    monkeypatch.setattr(winograd, "pays_here", lambda: True)
    monkeypatch.setattr(winograd, "conv2d", lambda conv, x: pytest.fail("Winograd under a gradient"))
    x = torch.randn(1, 2, 161, 40, requires_grad=True)
    distillmos_splice.run_layers(model.cnn.cnn, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
