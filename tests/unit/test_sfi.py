"""The sampling-frequency-independent convolution: geometry, design, SFI property, cache."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from torchmos.models.sfi import ModulatedGaussian, SFIConv1d, erb_to_hz, hz_to_erb

pytestmark = pytest.mark.usefixtures("one_thread")

RATES = (16000, 24000, 48000)
SMALL_NAF = {"n_rff": 32, "hidden": (32, 32)}


def bandlimited(fs: int, seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The same analog signal, 12 sinusoids in 50-1500 Hz, sampled at ``fs``."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(12, generator=g, dtype=torch.float64) * 1450 + 50
    a = torch.rand(12, generator=g, dtype=torch.float64)
    ph = torch.rand(12, generator=g, dtype=torch.float64) * 2 * math.pi
    t = torch.arange(int(round(seconds * fs)), dtype=torch.float64) / fs
    return (a[:, None] * torch.sin(2 * math.pi * f[:, None] * t + ph[:, None])).sum(0).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("fs,k,s,q", [(8000, 5, 2, 2), (16000, 10, 5, 1), (24000, 15, 7, 2),
                                      (44100, 27, 13, 32), (48000, 30, 15, 1)])
def test_kernel_size_and_stride_scale_with_the_rate(fs, k, s, q):
    layer = SFIConv1d(1, 4, 10, 5)
    g = layer.geometry(fs)
    assert (g.kernel_size, g.stride, g.q) == (k, s, q)
    assert layer.kernel_size_at(fs) == k and layer.stride_at(fs) == s
    assert layer.kernels(fs).shape == (q, 4, 1, k)


def test_same_duration_gives_same_frame_count_at_every_rate():
    layer = SFIConv1d(1, 4, 10, 5)
    for seconds in (0.05, 0.5, 1.0, 3.0):  # whole numbers of samples at every rate
        counts = {fs: layer.output_length(round(seconds * fs), fs) for fs in (8000, 16000, 24000, 44100, 48000)}
        assert len(set(counts.values())) == 1, counts
    assert layer.output_length(399, 16000) == 78 and layer.output_length(9, 16000) == 0


def test_frames_cover_the_same_time_span_at_every_rate():
    """Frame m starts at m * S0 / F0 seconds (rounded down to a sample), its taps stay
    inside the window, and the fractional start is built into the kernel's delays."""
    layer = SFIConv1d(1, 4, 10, 5)
    for fs in (8000, 24000, 44100):
        g = layer.geometry(fs)
        starts = g.starts(200)
        for m, st in enumerate(starts):
            start = Fraction(m * 5 * fs, 16000)  # m S0 / F0 seconds, in samples at fs
            assert st <= start < st + 1
            assert st + g.kernel_size <= start + Fraction(10 * fs, 16000)
        d = layer.delays(fs)  # (q, K): delay before the frame centre, per phase
        for j in range(g.q):
            m = j  # frame j has phase j; its taps are at times starts[m] + k
            tap_times = (starts[m] + torch.arange(g.kernel_size, dtype=torch.float64)) / fs
            centre = m * 5 / 16000 + 10 / 32000
            assert torch.allclose(centre - tap_times, d[j], atol=1e-12)


def test_polyphase_output_equals_a_frame_by_frame_computation():
    torch.manual_seed(0)
    layer = SFIConv1d(2, 3, 10, 5, filter="gauss").eval()
    x = torch.randn(2, 2, 2400)
    with torch.no_grad():
        for fs in (24000, 44100, 8000):
            g = layer.geometry(fs)
            y = layer(x, fs)
            w = layer.kernels(fs)
            n = g.frames(x.shape[-1])
            assert y.shape == (2, 3, n)
            want = torch.stack([
                torch.einsum("bik,oik->bo", x[..., s : s + g.kernel_size], w[m % g.q])
                for m, s in enumerate(g.starts(n))], dim=-1)
            assert torch.allclose(y, want, atol=1e-5)


def test_at_the_reference_rate_it_is_an_ordinary_conv():
    torch.manual_seed(0)
    layer = SFIConv1d(1, 8, 10, 5, filter="naf", bias=True, **SMALL_NAF).eval()
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(3, 1, 1234)
        want = F.conv1d(x, layer.weight(16000), layer.bias, stride=5)
        assert torch.allclose(layer(x, 16000), want, atol=1e-6)
        assert torch.allclose(layer(x[:, 0]), want, atol=1e-6)  # (B, L) and the default rate


def test_erb_scale_round_trip_and_initial_centres():
    f = torch.tensor([0.0, 50.0, 1000.0, 8000.0])
    assert torch.allclose(erb_to_hz(hz_to_erb(f)), f.double(), atol=1e-9)
    mg = ModulatedGaussian(16, 16000)
    c = mg.centre_hz().detach().double()
    assert float(c[0]) == pytest.approx(50.0, rel=1e-4) and float(c[-1]) == pytest.approx(8000.0, rel=1e-4)
    assert torch.allclose(torch.diff(hz_to_erb(c)), torch.diff(hz_to_erb(c))[0], atol=1e-4)  # equal ERB steps


# ----------------------------------------------------------------------------- the SFI property


@pytest.mark.parametrize("filt,design,options", [
    ("gauss", "freq", {}),
    ("gauss", "time", {}),
    ("naf", "freq", {}),  # default size: 128 random Fourier features, hidden 224 x 2
])
def test_same_band_limited_signal_gives_the_same_output_at_16_24_48_khz(filt, design, options):
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        layer = SFIConv1d(1, 64, 10, 5, filter=filt, design=design, **options).eval()
        with torch.no_grad():
            out = {fs: layer(bandlimited(fs, seed=seed)[None, None], fs) for fs in RATES}
        assert len({y.shape for y in out.values()}) == 1  # same frame count
        worst = max(rel(out[a], out[b]) for a, b in itertools.permutations(RATES, 2))
        assert worst < 0.12, (seed, worst)


def test_frequency_design_reproduces_the_analog_response_at_the_reference_rate():
    # a filter the window can hold (32 taps, wide Gaussians): the realised response is the analog one
    layer = SFIConv1d(1, 6, 32, 16, filter="gauss", init_sigma_hz=1000.0, freq_range=(1000.0, 6000.0)).eval()
    f = torch.linspace(0, 8000, 400)
    with torch.no_grad():
        analog = layer.analog_response(f).to(torch.complex128)
        realised = layer.realised_response(16000, f)
    assert rel(realised, analog) < 0.02
    # the default wav2vec 2.0 layer (10 taps): the kernel is the least-squares optimum, i.e. the
    # residual of the sampled response is orthogonal to every tap's column (normal equations)
    layer = SFIConv1d(1, 8, 10, 5, filter="gauss").eval()
    with torch.no_grad():
        w = layer.kernels(16000)[0, :, 0].double()  # (8, 10)
        om = layer.omega(16000, dtype=torch.float64)
        re, im = layer.analog.response(om.float())
        d = layer.delays(16000)[0]
        a = torch.cat([torch.cos(-om[:, None] * d), torch.sin(-om[:, None] * d)])  # (2M, K)
        resid = a @ w.T - torch.cat([re, im], dim=1).double().T
    assert float((a.T @ resid).abs().max()) < 1e-3 * float((a.T @ a).abs().max())


def test_time_design_samples_the_analog_impulse_response():
    layer = SFIConv1d(1, 5, 10, 5, filter="gauss", design="time").eval()
    with torch.no_grad():
        for fs in (16000, 48000):
            d = layer.delays(fs)[0].float()
            want = layer.analog.impulse(d) / fs
            assert torch.allclose(layer.kernels(fs)[0, :, 0], want, atol=1e-7)
    # the neural filter's time design: the band-limited impulse response, here of a pure
    # delay (H = exp(-j w tau) -> h(t) = Fs sinc(Fs (t - tau))), sampled at the taps
    naf = SFIConv1d(1, 1, 10, 5, filter="naf", design="time", n_freq=4001, **SMALL_NAF)
    tau = 0.5 / 16000
    naf.analog.response = lambda om: (torch.cos(om * tau)[None], -torch.sin(om * tau)[None])
    with torch.no_grad():
        w = naf.kernels(16000)[0, 0, 0].double()
    d = naf.delays(16000)[0]
    assert torch.allclose(w, torch.sinc(16000 * (d - tau)), atol=2e-3)


def test_filters_above_the_new_nyquist_are_masked_below_the_reference_rate():
    layer = SFIConv1d(1, 16, 10, 5, filter="gauss").eval()
    centres = layer.analog.centre_hz()
    with torch.no_grad():
        w8 = layer.kernels(8000)[0, :, 0]
        w16 = layer.kernels(16000)[0, :, 0]
    above = centres > 4000
    assert above.any() and (~above).any()
    assert torch.all(w8[above] == 0) and torch.all(w8[~above].abs().sum(1) > 0)
    assert torch.all(w16.abs().sum(1) > 0)  # nothing masked at or above F0
    naf = SFIConv1d(1, 16, 10, 5, filter="naf", **SMALL_NAF).eval()
    with torch.no_grad():
        mask = naf._masked(8000)
        assert mask is not None and naf._masked(16000) is None
        assert torch.equal(naf.kernels(8000)[0, :, 0].abs().sum(1) > 0, mask.bool())


# ----------------------------------------------------------------------------- training and the cache


@pytest.mark.parametrize("design", ["freq", "time"])
def test_gradients_reach_mu_sigma_phi(design):
    layer = SFIConv1d(1, 8, 10, 5, filter="gauss", design=design).train()
    for fs in (8000, 24000, 48000):
        layer.zero_grad()
        layer(torch.randn(2, 1, fs // 10), fs).pow(2).mean().backward()
        for name in ("mu", "sigma", "phi"):
            grad = getattr(layer.analog, name).grad
            assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, (fs, name)


def test_gradients_reach_every_neural_filter_parameter():
    layer = SFIConv1d(1, 8, 10, 5, filter="naf", **SMALL_NAF).train()
    layer(torch.randn(2, 1, 4800), 48000).pow(2).mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_kernels_are_cached_only_when_no_gradient_can_reach_them():
    torch.manual_seed(0)
    layer = SFIConv1d(1, 8, 10, 5, filter="gauss")
    with torch.no_grad():
        a, b = layer.kernels(48000), layer.kernels(48000)
    assert a is b  # cached
    with torch.no_grad():
        assert layer.kernels(24000) is not a  # per rate
    c = layer.kernels(48000)  # grad enabled, parameters trainable: generated afresh, in the graph
    assert c is not a and c.grad_fn is not None
    assert torch.equal(c.detach(), a)
    for p in layer.parameters():
        p.requires_grad_(False)
    assert layer.kernels(48000) is a  # frozen filters: cached even with grad enabled
    for p in layer.parameters():
        p.requires_grad_(True)
    assert len(layer._design) == 2  # design matrices: per rate, parameter-free


def test_an_optimiser_step_or_a_state_load_invalidates_the_cache():
    torch.manual_seed(0)
    layer = SFIConv1d(1, 8, 10, 5, filter="naf", **SMALL_NAF)
    x = torch.randn(1, 1, 4800)
    with torch.no_grad():
        before = layer(x, 48000)
        assert torch.equal(layer(x, 48000), before)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x, 48000).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        after = layer(x, 48000)
        assert torch.equal(layer.kernels(48000), layer._generate(48000))  # not the stale kernel
    assert not torch.allclose(after, before)
    other = SFIConv1d(1, 8, 10, 5, filter="naf", **SMALL_NAF)
    with torch.no_grad():
        layer.load_state_dict(other.state_dict())
        assert torch.allclose(layer(x, 48000), other(x, 48000))


def test_inference_mode_then_training_works():
    layer = SFIConv1d(1, 8, 10, 5, filter="gauss")
    x = torch.randn(2, 1, 2400)
    with torch.inference_mode():
        layer(x, 24000)
    with torch.no_grad():
        layer(x, 24000)
    layer.requires_grad_(False)
    xin = x.clone().requires_grad_(True)
    layer(xin, 24000).sum().backward()  # cached kernels from inference mode are saved for backward
    assert xin.grad is not None


# ----------------------------------------------------------------------------- initialisation and errors


def test_fit_to_kernel_reproduces_an_ordinary_first_layer():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 16, 10, 5, bias=False)
    naf = SFIConv1d(1, 16, 10, 5, filter="naf", **SMALL_NAF)
    assert naf.fit_to_kernel(conv.weight, steps=300) < 1e-3
    x = torch.randn(2, 1, 1600)
    with torch.no_grad():
        assert rel(naf.eval()(x, 16000), conv(x)) < 0.03
    # Gaussians match the shape of band-pass kernels (gain is theirs: unit peak)
    src = SFIConv1d(1, 16, 10, 5, filter="gauss", init_sigma_hz=900.0, freq_range=(300.0, 6000.0))
    gauss = SFIConv1d(1, 16, 10, 5, filter="gauss")
    with torch.no_grad():
        target = src.weight(16000) * torch.linspace(0.5, 2.0, 16)[:, None, None]
    assert gauss.fit_to_kernel(target, steps=300) < 0.02


def test_errors_name_the_problem():
    layer = SFIConv1d(1, 4, 10, 5)
    with pytest.raises(ValueError, match="too low"):
        layer(torch.randn(1, 1, 100), 1000)
    with pytest.raises(ValueError, match="positive whole number"):
        layer.geometry(-8000)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, L\)"):
        layer(torch.randn(1, 2, 100), 16000)
    with pytest.raises(ValueError, match="filter must be"):
        SFIConv1d(1, 4, 10, 5, filter="sinc")
    assert layer(torch.randn(1, 1, 5), 16000).shape == (1, 4, 0)  # shorter than one window
