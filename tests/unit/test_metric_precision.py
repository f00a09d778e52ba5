"""A metric scores in the precision it was built with, whatever its caller's context.

Lightning's reduced-precision Trainers reach a metric three ways, each reproduced here
without Lightning: ``precision="bf16-mixed"`` / ``"16-mixed"`` wrap every step in
``torch.autocast``; ``"bf16-true"`` converts the LightningModule (and so its child
metrics) with ``.to(torch.bfloat16)`` and makes bfloat16 the default dtype while a step
runs and while ``trainer.init_module()`` builds the model. Every score is checked against
the functional twin computed in plain fp32, and each test first shows that the context
really changes an unguarded result. tests/integrations/test_integration_lightning.py
runs the same checks inside a real Trainer, and checks ``self.log`` of a per-utterance
metric there.
"""

from __future__ import annotations

import contextlib
import doctest

import pytest
import torch
from torch import nn

import torchmos.functional as F
from torchmos import DistillMOS, models, synth
from torchmos.audio import AudioError
from torchmos.metrics import _context
from torchmos.metrics.scoreq import ScoreqNR
from torchmos.metrics.vqscore import VQScore
from torchmos.models.scoreq import ScoreqModel
from torchmos.models.vqscore import VQScoreModel

TOL = 1e-4  # the documented fidelity
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
TINY = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
            num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [synth.add_noise(synth.speech_like(s, seed=i), snr_db=10.0, seed=i) for i, s in enumerate((1.0, 0.75))]


@pytest.fixture(scope="module")
def want(clips) -> torch.Tensor:
    return F.distillmos(clips)


@pytest.fixture(scope="module")
def vq_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("vq") / "vq.pt")
    VQScoreModel(codebook_size=64, kmeans_init=False).save(path)
    return path


@pytest.fixture(scope="module")
def scoreq_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("scoreq") / "adapt_nr_telephone.pt")
    torch.save(ScoreqModel("nr", **TINY).to_official_state_dict(), path)
    return path


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """What Lightning's "bf16-true" does around a step and around ``init_module()``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _scores(metric) -> torch.Tensor:
    return metric.compute()["scores"]


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("kind", list(AUTOCAST))
def test_autocast_does_not_reach_the_network(kind, clips, want):
    with torch.autocast("cpu", dtype=AUTOCAST[kind]):
        unguarded = F.distillmos(clips[:1])  # a functional call is the caller's business
        m = DistillMOS(per_utterance=True)
        m.update(clips[:1])
        m(clips[1:])  # forward too
        assert torch.is_autocast_enabled("cpu")  # and the caller's context is left as it was
    assert (unguarded - want[:1]).abs().max() > TOL  # the context does change an unguarded score
    assert (_scores(m) - want).abs().max() <= 1e-6
    assert m.compute()["mean"].dtype == torch.float32


def test_a_models_own_bf16_option_still_applies(clips, scoreq_checkpoint):
    def scores(precision: str, ctx=None) -> torch.Tensor:
        m = ScoreqNR(checkpoint=scoreq_checkpoint, backbone_config=TINY, precision=precision, per_utterance=True)
        with ctx or contextlib.nullcontext():
            m.update(clips)
        return _scores(m)

    fp32, bf16 = scores("fp32"), scores("bf16")
    assert (bf16 - fp32).abs().max() > 1e-5  # its own bf16 path really runs
    for dtype in AUTOCAST.values():  # an enclosing autocast changes neither
        assert torch.equal(scores("bf16", torch.autocast("cpu", dtype=dtype)), bf16)
        assert torch.equal(scores("fp32", torch.autocast("cpu", dtype=dtype)), fp32)


# ----------------------------------------------------------------------------- bf16 default dtype


def test_bf16_default_dtype_neither_builds_nor_scores_in_bf16(clips, want, vq_checkpoint):
    vq_net = models.load("vqscore", checkpoint=vq_checkpoint)
    with default_dtype(torch.bfloat16):
        with pytest.raises(RuntimeError, match="dtype"):  # the unguarded network fails here
            vq_net(clips)
        assert {p.dtype for p in models.load("distillmos").parameters()} == {torch.bfloat16}  # and builds in bf16
        mos, vq = DistillMOS(per_utterance=True), VQScore(checkpoint=vq_checkpoint, per_utterance=True)
        mos.update(clips)
        vq.update(clips)
        assert torch.get_default_dtype() == torch.bfloat16
    for m in (mos, vq):
        assert {p.dtype for p in m.net.parameters()} == {torch.float32}
    assert (_scores(mos) - want).abs().max() <= 1e-6
    assert (_scores(vq) - F.vqscore(clips, checkpoint=vq_checkpoint)).abs().max() <= 1e-6


def test_a_rejected_batch_restores_the_callers_context():
    m = DistillMOS()
    with torch.autocast("cpu", dtype=torch.bfloat16), default_dtype(torch.bfloat16):
        with pytest.raises(AudioError, match="shorter than"):
            m.update(torch.randn(100))
        assert torch.get_default_dtype() == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert int(m.total) == 0


# ----------------------------------------------------------------------------- .to(bfloat16)


def test_a_parent_modules_to_bfloat16_changes_no_state_and_no_network(clips, want):
    m = DistillMOS(per_utterance=True)
    m.update(clips[:1], ids=["a"])
    cached = m.compute()
    parent = nn.ModuleDict({"mos": m, "head": nn.Linear(2, 2)}).to(torch.bfloat16)  # as "bf16-true" does
    assert parent["head"].weight.dtype == torch.bfloat16  # the conversion really happened
    assert m.dtype == torch.bfloat16  # torchmetrics records it ...
    assert (m.sum_score.dtype, m.total.dtype) == (torch.float64, torch.long)  # ... the states keep theirs
    assert [s.dtype for s in m.scores] == [torch.float32]
    assert {p.dtype for p in m.net.parameters()} == {torch.float32}
    again = m.compute()  # the cached result is not rounded either
    assert (again["mean"].dtype, again["scores"].dtype) == (torch.float32, torch.float32)
    assert torch.equal(again["scores"], cached["scores"])
    m.update(clips[1:], ids=["b"])
    out = m.compute()
    assert out["ids"] == ["a", "b"] and out["mean"].dtype == torch.float32
    assert (out["scores"] - want).abs().max() <= 1e-6
    assert float(out["mean"]) == pytest.approx(float(want.double().mean()), abs=1e-6)


def test_mean_of_an_empty_metric_is_float32_under_bf16_default():
    with default_dtype(torch.bfloat16):
        m = DistillMOS()
        with pytest.warns(UserWarning, match="before the ``update``"):
            value = m.compute()
    assert value.dtype == torch.float32 and torch.isnan(value)


# ----------------------------------------------------------------------------- Lightning's logger


def _called_from(module_name: str, metric):
    """Call ``metric.compute()`` from a function named ``compute`` defined in ``module_name``."""
    namespace = {"__name__": module_name}
    exec("def compute(metric):\n    return metric.compute()\n", namespace)  # noqa: S102 - a fixed snippet
    return namespace["compute"](metric)


@pytest.mark.parametrize("module", sorted(_context._LIGHTNING_RESULT))
def test_lightnings_logger_is_given_the_mean(module, clips, want):
    m = DistillMOS(per_utterance=True)
    m.update(clips)
    logged = _called_from(module, m)
    assert isinstance(logged, torch.Tensor) and logged.shape == () and logged.dtype == torch.float32
    assert float(logged) == pytest.approx(float(want.double().mean()), abs=1e-6)
    # everyone else (and any other function named compute) still gets the whole result
    assert set(_called_from("my_project.metrics", m)) == {"mean", "scores", "ids"}
    assert (m.compute()["scores"] - want).abs().max() <= 1e-6


def test_context_doctests():
    res = doctest.testmod(_context, verbose=False)
    assert res.attempted > 0 and res.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_does_not_reach_the_network(clips, want):  # pragma: no cover - GPU machine
    m = DistillMOS(per_utterance=True).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m.update([c.cuda() for c in clips])
    assert (_scores(m).cpu() - want).abs().max() <= TOL
