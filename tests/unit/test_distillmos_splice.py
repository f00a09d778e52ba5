"""DistillMOS's CNN spliced over the zero padding (torchmos.models.distillmos_splice) gives
the unspliced result: features and scores to 1e-6, at the boundary lengths, for any
CNN size, after weight changes, and with gradients."""

from __future__ import annotations

import functools
import importlib
import warnings

import pytest
import torch
from torch import nn

from torchmos import synth
from torchmos.models import distillmos_splice as sp
from torchmos.models.distillmos import HOP, SEQ_LEN, WIN, DistillMOSModel, _ComplexSpecCNN

FRAMES = 768


@functools.lru_cache(maxsize=1)
def model() -> DistillMOSModel:
    return DistillMOSModel.from_pretrained()


def no_splice(monkeypatch) -> None:
    monkeypatch.setattr(sp.TailSplice, "plan", lambda self, seq, zero_from, spec=None: None)


def clip(n: int, seed: int = 0) -> torch.Tensor:
    x = synth.degrade(synth.speech_like(n / 16000 + 0.05, 16000, seed=seed), 16000, "noise_20dB", seed=seed)[:n]
    x[-1] = 0.5  # the clip's last sample is not zero: its length is its content
    return x


def normalised_crop(x: torch.Tensor) -> torch.Tensor:
    crop = nn.functional.pad(x, (0, SEQ_LEN - x.shape[0]))[None]
    return crop / (crop.abs().amax(dim=1, keepdim=True) + 1e-8)


def features(cnn: _ComplexSpecCNN, crop: torch.Tensor, splice: bool) -> torch.Tensor:
    """The CNN features of normalised crops, the way score_crops computes them."""
    z = cnn.zero_from(sp.content_end(crop))
    width = cnn.frames_needed(z) if splice else FRAMES
    spec = cnn.spectrum(crop[:, : width * HOP + (WIN - HOP) // 2] if width < FRAMES else crop)
    return cnn(spec.contiguous(memory_format=torch.channels_last), z if splice else None)


# a frame edge: frame 100 is the first to read none of the clip; one sample more and it does
EDGE = 100 * HOP - (WIN - HOP) // 2
BOUNDARY = [1, 2, 240, EDGE, EDGE + 1, 16000, 47999, 96000, SEQ_LEN - 81, SEQ_LEN - 1, SEQ_LEN]


@pytest.mark.parametrize("n", [1, 80, 81, EDGE, EDGE + 1, 30001, SEQ_LEN - 81, SEQ_LEN - 80, SEQ_LEN - 1])
def test_zero_frames_are_exactly_zero_and_the_one_before_is_not(n):
    crop = normalised_crop(clip(n, seed=n))
    spec = model().cnn.spectrum(crop)
    t0 = model().cnn.zero_from(sp.content_end(crop))
    assert sp.content_end(crop) == n
    assert bool((spec[..., t0:] == 0).all())
    assert t0 > 768 or bool((spec[..., t0 - 1] != 0).any())  # the first zero frame, not a later one


def test_a_truncated_spectrum_is_the_leading_frames_of_the_full_one():
    crop = normalised_crop(clip(50000))
    full = model().cnn.spectrum(crop)
    for width in (12, 313, 767):
        part = model().cnn.spectrum(crop[:, : width * HOP + (WIN - HOP) // 2])
        assert part.shape[-1] == width
        assert (part - full[..., :width]).abs().max() <= 1e-6


@pytest.mark.parametrize("n", BOUNDARY)
def test_spliced_features_equal_the_unspliced(n):
    cnn = model().cnn
    crop = normalised_crop(clip(n, seed=n))
    with torch.no_grad():
        spliced, full = features(cnn, crop, True), features(cnn, crop, False)
    z = cnn.zero_from(n)
    with torch.no_grad():
        width = cnn.frames_needed(z)
    if n <= 96000:  # the splice is used...
        assert width < FRAMES
    if n >= SEQ_LEN - 200:  # ...unless no output frame's receptive field is all zero
        assert width == FRAMES
    assert spliced.shape == full.shape == (1, 1024, 384)
    assert (spliced - full).abs().max() <= 1e-6


@functools.lru_cache(maxsize=1)
def reference() -> nn.Module:
    ref = importlib.import_module("distillmos")  # the reference package (a test dependency)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.ConvTransformerSQAModel().eval()


@pytest.mark.parametrize("n", [1, EDGE, 24000, SEQ_LEN - 1, SEQ_LEN, SEQ_LEN + 2 * 16000 + 7])
def test_scores_equal_unspliced_and_reference(n, monkeypatch):
    x = clip(n, seed=n)
    spliced = model()([x])
    no_splice(monkeypatch)
    full = model()([x])
    with torch.no_grad():
        ref = reference()(x[None]).squeeze()
    assert (spliced - full).abs().max() <= 1e-6
    assert (spliced - ref).abs().max() <= 1e-4


def test_a_long_clip_with_digital_silence_at_its_end(monkeypatch):
    """Crops of a long clip are full, but the last ones may end in exact zeros."""
    x = torch.cat([clip(3 * 16000), torch.zeros(6 * 16000)])
    spliced = model()([x])
    with torch.no_grad():
        z = model().cnn.zero_from(sp.content_end(normalised_crop(x[-SEQ_LEN:])))
        assert model().cnn.frames_needed(z) < FRAMES  # the last crop is spliced
    no_splice(monkeypatch)
    assert (spliced - model()([x])).abs().max() <= 1e-6


def test_batched_crops_of_different_lengths(monkeypatch):
    clips = [clip(n, seed=i) for i, n in enumerate([1600, 40000, 70000, SEQ_LEN + 5000])]
    m = DistillMOSModel.from_pretrained(crops_per_batch=4)
    spliced = m(clips)
    singly = torch.cat([model()([c]) for c in clips])
    no_splice(monkeypatch)
    assert (spliced - m(clips)).abs().max() <= 1e-6
    assert (spliced - singly).abs().max() <= 1e-6


def test_constants_follow_the_weights():
    """Changed in place, replaced or moved weights give new constants, not stale ones."""
    m = DistillMOSModel.from_pretrained()
    crop = normalised_crop(clip(20000))
    with torch.no_grad():
        features(m.cnn, crop, True)  # constants cached for the official weights
        m.cnn.cnn[10].bias.add_(0.25)  # in place
        a, b = features(m.cnn, crop, True), features(m.cnn, crop, False)
        assert (a - b).abs().max() <= 1e-6
        m.cnn.cnn[8].weight = nn.Parameter(m.cnn.cnn[8].weight * 1.5, requires_grad=False)  # replaced
        a2, b2 = features(m.cnn, crop, True), features(m.cnn, crop, False)
        assert (a2 - b2).abs().max() <= 1e-6
        assert (a2 - a).abs().max() > 1e-3  # the change reached the spliced frames too
        m.load_state_dict(model().state_dict())  # loaded back (copy_ in place)
        assert (features(m.cnn, crop, True) - features(model().cnn, crop, False)).abs().max() <= 1e-6


@pytest.mark.parametrize("channels", [[8, 8, 16, 16, 32, 32], [3, 5, 7, 9, 11, 13]])
def test_any_cnn_width(channels):
    torch.manual_seed(0)
    cnn = _ComplexSpecCNN(channels)
    for p in cnn.parameters():
        nn.init.normal_(p, std=0.3)
    crop = normalised_crop(clip(33333))
    with torch.no_grad():
        a, b = features(cnn, crop, True), features(cnn, crop, False)
    assert a.shape == b.shape == (1, channels[-1] * 4, 384)
    assert (a - b).abs().max() <= 1e-6 * max(1.0, float(b.abs().max()))


def test_any_geometry_in_time():
    """Kernels, strides, paddings and dilations in time other than DistillMOS's own."""
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(2, 6, (3, 5), padding=(0, 2)), nn.LeakyReLU(0.1),
                        nn.Conv2d(6, 6, 3, stride=(2, 2), padding=(0, 3), dilation=(1, 3)), nn.ReLU(),
                        nn.Conv2d(6, 4, (3, 4), stride=(1, 3), padding=(0, 1)), nn.Tanh())
    for p in seq.parameters():
        nn.init.normal_(p, std=0.4)
    for p in seq.parameters():
        p.requires_grad_(False)
    splice = sp.TailSplice(FRAMES)
    for t0 in (0, 1, 37, 300, 700):
        spec = torch.randn(2, 2, 20, FRAMES)
        spec[..., t0:] = 0
        full = sp.run_layers(seq, spec.clone())
        width = splice.frames_needed(seq, t0)
        assert width < FRAMES
        out = splice(seq, spec[..., :width].clone(), t0)
        assert out.shape == full.shape
        assert (out - full).abs().max() <= 1e-6


def test_not_spliceable_runs_whole():
    seq = nn.Sequential(nn.Conv2d(2, 4, 3, padding=(0, 1)), nn.BatchNorm2d(4))
    assert sp.TailSplice(FRAMES).plan(seq, 10) is None
    seq = nn.Sequential(nn.Conv2d(2, 4, 3, padding=(0, 1), padding_mode="reflect"))
    assert sp.TailSplice(FRAMES).plan(seq, 10) is None


def test_no_splice_where_a_gradient_is_recorded():
    """The constants depend on the weights, and the zero frames would get no gradient
    through them: with a gradient recorded through the CNN's weights or its input, the CNN
    runs whole, and both gradients are those of the unspliced path."""
    m = DistillMOSModel.from_pretrained()
    for p in m.parameters():
        p.requires_grad_(False)
    z = m.cnn.zero_from(20000)
    torch.manual_seed(0)
    spec = torch.zeros(1, 2, 161, FRAMES)
    spec[..., :z] = torch.randn(1, 2, 161, z)
    w = torch.randn(1, 1024, 384)
    with torch.no_grad():
        assert m.cnn.frames_needed(z, spec) < FRAMES
    assert m.cnn.frames_needed(z, spec) < FRAMES  # nothing needs a gradient
    s1, s2 = spec.clone().requires_grad_(True), spec.clone().requires_grad_(True)
    assert m.cnn.frames_needed(z, s1) == FRAMES
    (m.cnn(s1, z) * w).sum().backward()
    (m.cnn(s2) * w).sum().backward()
    assert bool((s1.grad[..., z:] != 0).any())  # the zero frames have their gradient
    assert (s1.grad - s2.grad).abs().max() <= 1e-6 * float(s2.grad.abs().max())

    m.cnn.cnn[4].weight.requires_grad_(True)
    assert m.cnn.frames_needed(z) == FRAMES
    (m.cnn(spec, z) * w).sum().backward()
    g_spliced_api = m.cnn.cnn[4].weight.grad.clone()
    m.cnn.cnn[4].weight.grad = None
    (m.cnn(spec) * w).sum().backward()
    assert torch.allclose(g_spliced_api, m.cnn.cnn[4].weight.grad, rtol=1e-5, atol=1e-6)


def test_constants_are_ordinary_tensors_inside_inference_mode():
    m = DistillMOSModel.from_pretrained()
    with torch.inference_mode():
        m([clip(16000)])
    (const,) = m.cnn._splice._const.values()
    assert not const.is_inference() and not const.requires_grad


def test_a_used_model_copies_and_pickles():
    import copy
    import io

    m = DistillMOSModel.from_pretrained()
    x = clip(20000)
    first = m([x])
    twin = copy.deepcopy(m)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(twin([x]), first) and torch.equal(loaded([x]), first)
    assert not twin.cnn._splice._const or twin.cnn._splice is not m.cnn._splice
