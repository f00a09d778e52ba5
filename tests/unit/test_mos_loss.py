"""Predicted quality as a training loss (torchmos.losses.MOSLoss) and the gradient paths
behind it (torchmos.models.gradients), and metrics built with ``differentiable=True``.

DistillMOS runs with its official weights (shipped in the distillmos package); SCOREQ with
small random files in the official format, as the other SCOREQ tests build them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmos.functional as F
from torchmos import DistillMOS, ScoreqNR, ScoreqRef, audio, synth
from torchmos.losses import MOSLoss
from torchmos.models import distillmos as dm
from torchmos.models import gradients
from torchmos.models.scoreq import ScoreqModel

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
            num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)


def _reference_spectrum(self, x: torch.Tensor) -> torch.Tensor:
    """The compressed spectrum as the reference package (and torchmos before) wrote it:
    ``sqrt`` of the power everywhere, NaN gradients at zero."""
    pad = (dm.WIN - dm.HOP) // 2
    x = torch.nn.functional.pad(x, (pad, pad), mode="reflect")
    spec = torch.stft(x, n_fft=dm.WIN, hop_length=dm.HOP, win_length=dm.WIN, window=self.window,
                      center=False, return_complex=True)
    re_im = torch.view_as_real(spec)
    mag = torch.sum(re_im**2, dim=-1, keepdim=True) ** 0.5
    mag = torch.clip(mag, 1e-12)
    return (mag**0.3 * re_im / mag).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    """Two noisy speech-like clips of different lengths (each zero-padded to 7.68 s inside
    the model)."""
    return [synth.add_noise(synth.speech_like(s, seed=i), snr_db=10.0, seed=i) for i, s in enumerate((1.0, 0.6))]


@pytest.fixture(scope="module")
def scoreq_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mosloss")
    torch.manual_seed(0)
    out = {"nr": str(d / "adapt_nr_telephone.pt"), "ref": str(d / "fixed_nmr_telephone.pt")}
    torch.save(ScoreqModel("nr", **TINY).to_official_state_dict(), out["nr"])
    torch.save(ScoreqModel("ref", **TINY).to_official_state_dict(), out["ref"])
    return out


def _padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    x, n = audio.pad_batch(clips)
    return x.clone().requires_grad_(), n.tolist()


# ----------------------------------------------------------------------------- inference unchanged


def test_spectrum_values_are_the_references_bit_for_bit(clips):
    net = F.get_model("distillmos", precision="fp32")
    crop = torch.nn.functional.pad(clips[0], (0, dm.SEQ_LEN - clips[0].shape[0]))  # zero tail
    x = torch.stack([crop, crop * 0.01, torch.zeros(dm.SEQ_LEN)])
    assert torch.equal(net.cnn.spectrum(x), _reference_spectrum(net.cnn, x))


def test_inference_path_is_unchanged_bit_for_bit(clips, monkeypatch):
    net = F.get_model("distillmos", precision="fp32")
    long = synth.speech_like(8.5, seed=3)
    now = net([*clips, long])
    monkeypatch.setattr(dm._ComplexSpecCNN, "spectrum", _reference_spectrum)
    assert torch.equal(now, net([*clips, long]))


def test_the_reference_spectrum_gives_nan_gradients_the_fix_finite_ones(clips, monkeypatch):
    """The root cause: sqrt at the zero-padded bins. The same loss with the reference
    spectrum has NaN gradients; with the fix, finite ones."""
    loss_fn = MOSLoss("distillmos")
    x = clips[1].clone().requires_grad_()
    loss_fn([x]).backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    monkeypatch.setattr(dm._ComplexSpecCNN, "spectrum", _reference_spectrum)
    y = clips[1].clone().requires_grad_()
    loss_fn([y]).backward()
    assert y.grad.isnan().any()


# ----------------------------------------------------------------------------- DistillMOS loss


def test_distillmos_loss_gradients_of_a_padded_batch(clips):
    x, lengths = _padded(clips)
    loss_fn = MOSLoss("distillmos", fs=16000, reduction="none")
    per = loss_fn(x, lengths=lengths)
    want = 5.0 - DistillMOS(per_utterance=True).forward(list(clips))["scores"]
    torch.testing.assert_close(per.detach(), want, atol=1e-4, rtol=0)  # the inference path's scores
    per.sum().backward()
    g = x.grad
    assert g.isfinite().all()
    for b, n in enumerate(lengths):
        assert g[b, :n].abs().sum() > 0, f"clip {b}: no gradient"
        assert torch.equal(g[b, n:], torch.zeros_like(g[b, n:])), "gradient leaked into the padding"
    # each clip scored by its own length: its value is the same alone as in the batch
    alone = loss_fn(clips[1][None].clone())
    torch.testing.assert_close(per[1].detach(), alone.detach()[0], atol=1e-6, rtol=0)


def test_network_frozen_shared_and_outside_the_loss(clips):
    loss_fn = MOSLoss("distillmos")
    net = loss_fn.network()
    assert list(loss_fn.parameters()) == [] and len(loss_fn.state_dict()) == 0
    assert net is F.get_model("distillmos", precision="fp32") is DistillMOS().net  # the model cache's
    loss_fn.train()
    x = clips[1].clone().requires_grad_()
    loss_fn([x]).backward()
    assert not net.training
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    import copy

    assert copy.deepcopy(loss_fn).network() is net  # copies share, never copy, the network


def test_checkpoint_cnn_same_loss_and_gradient(clips):
    x = clips[0].clone().requires_grad_()
    y = clips[0].clone().requires_grad_()
    a = MOSLoss("distillmos")([x])
    b = MOSLoss("distillmos", checkpoint_cnn=True)([y])
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-7, rtol=1e-5)


def test_resampling_is_differentiable_and_lengths_at_fs():
    x = synth.add_noise(synth.speech_like(0.5, fs=8000, seed=5), snr_db=5.0, seed=5)
    batch = torch.stack([x, x]).clone().requires_grad_()
    loss = MOSLoss("distillmos", fs=8000, reduction="sum")(batch, lengths=[4000, 3000])
    loss.backward()
    assert batch.grad.isfinite().all() and batch.grad[1, :3000].abs().sum() > 0
    assert batch.grad[1, 3000:].eq(0).all()


def _small_float64_model() -> dm.DistillMOSModel:
    """The DistillMOS network, every code path of it, at a small width (random weights):
    float64 gradchecks of the official size take minutes on a CPU."""
    torch.manual_seed(0)
    net = dm.DistillMOSModel(channels=(4, 4, 8, 8, 8, 8), d_model=16, layers=1, heads=2).double()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.mark.parametrize("checkpoint_cnn", [False, True])
def test_gradcheck_float64_zero_padded_short_clip(checkpoint_cnn):
    """A 3 ms clip, zero-padded to 7.68 s inside (every column of the Jacobian; checkpointed:
    a random direction). The compressed spectrum |z|^0.3 has a steep derivative at the small
    bins where the clip meets the padding, so the finite differences need a tiny step
    (1e-10 in float64; at 1e-6 they are off by up to 2x there)."""
    net = _small_float64_model()
    x = synth.add_noise(synth.speech_like(0.01, seed=7), snr_db=10.0, seed=7)[:48].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: gradients.mos(net, [w], checkpoint_cnn=checkpoint_cnn), (x,),
                                    eps=1e-10, atol=1e-5, rtol=1e-3, fast_mode=checkpoint_cnn)


def test_gradcheck_float64_two_crops_and_spectrum():
    """A clip of two overlapping crops (their mean), random direction (fast mode); and the
    compressed spectrum alone."""
    net = _small_float64_model()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(dm.SEQ_LEN + 8000, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: gradients.mos(net, [w]), (x,), fast_mode=True)
    y = (torch.randn(1, 480, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(net.cnn.spectrum, (y,))


def test_gradient_of_the_official_network_along_a_direction(clips):
    """The official weights (float32): the derivative along a random direction agrees with
    a central difference of the scores (loose: float32)."""
    net = F.get_model("distillmos", precision="fp32")
    x = clips[0].clone().requires_grad_()
    gradients.mos(net, [x]).sum().backward()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    v = v / v.norm() * x.detach().norm() * 1e-3
    with torch.no_grad():
        fd = (net([x.detach() + v]) - net([x.detach() - v])) / 2
    torch.testing.assert_close(fd[0], (x.grad * v).sum(), rtol=0.1, atol=1e-4)


# ----------------------------------------------------------------------------- SCOREQ


def test_scoreq_nr_loss(scoreq_files, clips):
    x, lengths = _padded(clips)
    loss_fn = MOSLoss("scoreq-nr", checkpoint=scoreq_files["nr"], backbone_config=TINY, reduction="none")
    per = loss_fn(x, lengths=lengths)
    want = 5.0 - F.scoreq_nr(list(clips), checkpoint=scoreq_files["nr"], backbone_config=TINY)
    torch.testing.assert_close(per.detach(), want, atol=1e-5, rtol=0)
    per.mean().backward()
    assert x.grad.isfinite().all() and all(x.grad[b, :n].abs().sum() > 0 for b, n in enumerate(lengths))
    assert all(x.grad[b, n:].eq(0).all() for b, n in enumerate(lengths))
    net = loss_fn.network()
    assert all(not p.requires_grad and p.grad is None for p in net.parameters()) and not net.training


def test_scoreq_ref_loss_with_target_and_references(scoreq_files, clips):
    clean = [synth.speech_like(1.0, seed=0), synth.speech_like(0.6, seed=1)]
    x, lengths = _padded(clips)
    ref = MOSLoss("scoreq-ref", checkpoint=scoreq_files["ref"], backbone_config=TINY, reduction="none")
    per = ref(x, lengths=lengths, target=clean)
    want = F.scoreq_ref(list(clips), clean, checkpoint=scoreq_files["ref"], backbone_config=TINY)
    torch.testing.assert_close(per.detach(), want, atol=1e-5, rtol=0)
    per.sum().backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    # a clip against itself: distance 0, a finite (zero) gradient
    same = clean[0].clone().requires_grad_()
    d = ref([same], target=[clean[0]])
    d.sum().backward()
    assert float(d.detach().abs().max()) < 1e-3 and same.grad.isfinite().all()
    # a fixed set of clean references (non-matching mode)
    nmr = MOSLoss("scoreq-ref", checkpoint=scoreq_files["ref"], backbone_config=TINY, references=clean)
    y = clips[0].clone().requires_grad_()
    value = nmr([y])
    value.backward()
    want = F.scoreq_ref([clips[0]], references=clean, checkpoint=scoreq_files["ref"], backbone_config=TINY)
    torch.testing.assert_close(value.detach(), want[0], atol=1e-5, rtol=0)
    assert y.grad.isfinite().all() and y.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- metrics


def test_differentiable_metric_forward_carries_gradients_update_does_not(clips):
    plain = DistillMOS()
    diff = DistillMOS(differentiable=True)
    assert (plain.is_differentiable, diff.is_differentiable) == (False, True)
    x = clips[1][None].clone().requires_grad_()
    value = diff(x)
    value.backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    assert not diff.sum_score.requires_grad  # the state holds no graph
    plain.update(clips[1][None])
    diff.reset()
    diff.update(clips[1][None])  # update alone: the inference path, bit for bit
    assert torch.equal(diff.compute(), plain.compute())
    torch.testing.assert_close(value.detach(), plain.compute(), atol=1e-5, rtol=0)
    # the functional twin
    z = clips[1].clone().requires_grad_()
    F.distillmos([z], differentiable=True).sum().backward()
    assert z.grad.isfinite().all() and z.grad.abs().sum() > 0
    assert not F.distillmos([clips[1]]).requires_grad


def test_differentiable_scoreq_metrics(scoreq_files, clips):
    nr = ScoreqNR(checkpoint=scoreq_files["nr"], backbone_config=TINY, differentiable=True)
    x = clips[0][None].clone().requires_grad_()
    nr(x).backward()
    assert nr.is_differentiable and x.grad.isfinite().all() and x.grad.abs().sum() > 0
    ref = ScoreqRef(checkpoint=scoreq_files["ref"], backbone_config=TINY, differentiable=True)
    y = clips[0][None].clone().requires_grad_()
    ref(y, synth.speech_like(1.0, seed=0)[None]).backward()
    assert y.grad.isfinite().all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="chunk_seconds"):
        ScoreqNR(checkpoint=scoreq_files["nr"], backbone_config=TINY, differentiable=True, chunk_seconds=1.0)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_errors(scoreq_files, clips):
    loss_fn = MOSLoss("distillmos")
    with pytest.raises(TypeError, match=r"preds must be a torch.Tensor"):
        loss_fn(np.zeros(16000, dtype=np.float32))
    with pytest.raises(TypeError, match=r"preds\[1\] must be a float tensor"):
        loss_fn([clips[0], torch.zeros(100, dtype=torch.int16)])
    with pytest.raises(audio.AudioError, match="3 lengths for a batch of 2"):
        loss_fn(torch.zeros(2, 16000), lengths=[1, 2, 3])
    with pytest.raises(audio.AudioError, match="expected shape"):
        loss_fn(torch.zeros(1, 2, 16000))
    with pytest.raises(audio.AudioError, match="NaN"):
        loss_fn(torch.full((16000,), float("nan")))
    with pytest.raises(ValueError, match="no-reference model; it takes no target"):
        loss_fn([clips[0]], target=[clips[0]])
    with pytest.raises(ValueError, match="no gradient path"):
        MOSLoss("vqscore")
    with pytest.raises(KeyError, match="unknown model"):
        MOSLoss("nosuchmodel")
    with pytest.raises(ValueError, match="domain must be"):
        MOSLoss("scoreq-nr", domain="music")
    with pytest.raises(ValueError, match="reduction"):
        MOSLoss(reduction="max")
    with pytest.raises(TypeError, match="unknown DistillMOS options"):
        MOSLoss(chunk_seconds=1.0)
    with pytest.raises(ValueError, match="references= is for SCOREQ REF"):
        MOSLoss(references=[clips[0]])
    ref = MOSLoss("scoreq-ref", checkpoint=scoreq_files["ref"], backbone_config=TINY)
    with pytest.raises(ValueError, match="needs target="):
        ref([clips[0]])
    with pytest.raises(audio.AudioError, match="2 clips in preds but 1 in target"):
        ref(list(clips), target=[clips[0]])
    with pytest.raises(TypeError, match="Linear has no gradient path"):
        gradients.mos(torch.nn.Linear(2, 1), [clips[0]])  # not a predictor


def test_docstring_examples():
    import doctest

    from torchmos import losses_mos

    for module in (losses_mos, gradients):
        res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert res.attempted > 0 and res.failed == 0, module.__name__
