"""Metrics share the frozen networks of the functional model cache.

Two metrics of the same model, checkpoint and options on one device hold one network,
the one :func:`torchmos.functional.get_model` hands to functional calls and adapters
too; ``copy.deepcopy`` and ``MetricCollection.clone`` copy the metric's state but not
its network (counted in parameters, on a small SCOREQ in the official format); the
network never enters ``state_dict``; ``.to(device)`` gives a metric the cached network of
that device and leaves every other holder's where it is; ``train()`` changes no network.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection

import torchmos.functional as F
from torchmos import DistillMOS, MsrUtmos, ScoreqNR, ScoreqRef, models, synth
from torchmos.functional import _cache
from torchmos.models.msr_utmos import MsrUtmosModel, SFISSLModel, load_teacher
from torchmos.models.scoreq import ScoreqModel

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
            num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)


@pytest.fixture(scope="module")
def scoreq_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("scoreq") / "adapt_nr_telephone.pt")
    torch.save(ScoreqModel("nr", **TINY).to_official_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [synth.speech_like(s, seed=i) for i, s in enumerate((1.0, 0.6))]


def _unique_parameters(*nets: nn.Module) -> int:
    """Parameters held by ``nets`` together, each tensor of memory counted once."""
    seen: dict[int, int] = {}
    for net in nets:
        for p in net.parameters():
            seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def test_metrics_of_one_model_share_the_cached_network(scoreq_file):
    a = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY)
    b = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY, per_utterance=True)
    assert a.net is b.net
    assert a.net is F.get_model("scoreq-nr-natural", scoreq_file, chunk_seconds=None, precision="fp32", **TINY)
    assert DistillMOS().net is DistillMOS().net is F.get_model("distillmos", precision="fp32")
    # options that change the network are another entry
    assert ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY, chunk_seconds=1.0).net is not a.net
    assert DistillMOS(precision="bf16").net is not DistillMOS().net


@pytest.mark.parametrize("how", ["deepcopy", "clone", "collection"])
def test_copies_share_the_network_and_not_the_state(how, scoreq_file, clips):
    m = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY, per_utterance=True)
    m.update(clips[:1], ids=["a"])
    if how == "collection":
        original = MetricCollection({"mos": m})
        other = original.clone(prefix="copy/")["mos"]
    else:
        other = copy.deepcopy(m) if how == "deepcopy" else m.clone()
    assert other is not m and other.net is m.net
    one = sum(p.numel() for p in m.net.parameters())
    assert one > 10_000 and _unique_parameters(m.net, other.net) == one  # nothing was copied
    other.update(clips[1:], ids=["b"])
    assert m.compute()["ids"] == ["a"] and other.compute()["ids"] == ["a", "b"]
    for metric in (m, other):
        assert not list(metric.parameters()) and not list(metric.buffers())
        assert not any(k.startswith(("_net", "net", "_shared")) or "backbone" in k for k in metric.state_dict())


def test_moving_a_metric_takes_the_cached_network_of_the_device(scoreq_file, clips):
    a = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY)
    b = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY)
    shared = a.net
    a.to("meta")  # the only other device on a CPU-only machine
    assert next(a.net.parameters()).device.type == "meta"
    assert a.net is F.get_model("scoreq-nr-natural", scoreq_file, device="meta", chunk_seconds=None,
                                precision="fp32", **TINY)
    assert b.net is shared and next(shared.parameters()).device.type == "cpu"  # the other one stayed
    c = copy.deepcopy(b).to("meta")
    assert c.net is a.net and b.net is shared  # the cached meta network, not another move
    b.update(clips)  # the one that stayed still scores as the functional twin
    torch.testing.assert_close(b.compute(), F.scoreq_nr(clips, checkpoint=scoreq_file, backbone_config=TINY).mean())


def test_a_dtype_change_moves_no_network(scoreq_file):
    m = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY)
    net = m.net
    m.to(torch.float64).half()
    assert m.net is net and {p.dtype for p in net.parameters()} == {torch.float32}


def test_train_mode_reaches_no_network():
    a, b = DistillMOS(), DistillMOS()
    parent = nn.ModuleDict({"mos": a, "head": nn.Linear(2, 2)})
    parent.train()
    assert a.training and parent["head"].training
    for m in (a, b):
        assert not m.net.training and not any(p.requires_grad for p in m.net.parameters())
    a.eval().train(True)
    assert not b.net.training


def test_a_metric_built_under_bf16_gets_a_full_precision_network(scoreq_file, clips):
    F._clear_cache()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # what Lightning's init_module() does under bf16-true
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m = ScoreqNR(checkpoint=scoreq_file, backbone_config=TINY, per_utterance=True)
    finally:
        torch.set_default_dtype(previous)
    assert {p.dtype for p in m.net.parameters()} == {torch.float32}
    # the cache holds that network: a later functional call gets it, and the same scores
    m.update(clips)
    torch.testing.assert_close(m.compute()["scores"], F.scoreq_nr(clips, checkpoint=scoreq_file, backbone_config=TINY))


def test_a_network_first_loaded_under_inference_mode_serves_every_later_caller(scoreq_file, clips):
    F._clear_cache()
    with torch.inference_mode():  # an adapter or a user scoring inside inference_mode
        first = F.scoreq_nr(clips, checkpoint=scoreq_file, backbone_config=TINY)
    (net,) = _cache._models.values()  # the network the call above loaded
    assert not any(p.is_inference() for p in net.parameters())
    # an ordinary caller (no inference mode) gets the same network and the same scores
    torch.testing.assert_close(F.scoreq_nr(clips, checkpoint=scoreq_file, backbone_config=TINY), first)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))


def test_a_held_network_stays_shared_after_the_cache_drops_it(monkeypatch):
    loads: list[dict] = []

    def load(name, checkpoint=None, sha256=None, **options):
        loads.append(options)
        return _Net()

    monkeypatch.setattr(models, "load", load)
    F._clear_cache()
    held = F.get_model("distillmos", tag=0)
    for i in range(1, _cache._CACHE_SIZE + 2):  # more entries than the cache keeps
        F.get_model("distillmos", tag=i)
    assert len(loads) == _cache._CACHE_SIZE + 2
    assert F.get_model("distillmos", tag=0) is held and len(loads) == _cache._CACHE_SIZE + 2
    assert not held.training and not held.w.requires_grad
    gc.collect()
    F.get_model("distillmos", tag=1)  # dropped too, and nobody holds it: loaded again
    assert len(loads) == _cache._CACHE_SIZE + 3
    F._clear_cache()


def test_an_msr_utmos_metric_shares_the_network_of_its_twin(tmp_path):
    teacher = load_teacher("tiny", seed=0)
    torch.manual_seed(0)
    MsrUtmosModel(SFISSLModel.from_teacher(teacher, sfi={"filter": "gauss"}, fit_steps=0)).save(tmp_path / "m.pt")
    m = MsrUtmos(fs=24000, checkpoint=tmp_path / "m.pt", listener_ids=[1, 2], per_utterance=True)
    assert m.net is MsrUtmos(fs=8000, checkpoint=tmp_path / "m.pt", listener_ids=(1, 2)).net
    assert m.net is not MsrUtmos(fs=24000, checkpoint=tmp_path / "m.pt").net  # other listeners
    x = [synth.speech_like(0.5, 24000, seed=3)]
    m.update(x)
    want = F.msr_utmos(x, 24000, checkpoint=tmp_path / "m.pt", listener_ids=[1, 2])
    torch.testing.assert_close(m.compute()["scores"], want)
    assert not torch.equal(want, F.msr_utmos(x, 24000, checkpoint=tmp_path / "m.pt"))  # the option is used


def test_references_are_per_metric_state_not_shared(tmp_path, clips):
    torch.manual_seed(0)
    path = str(tmp_path / "fixed_nmr_telephone.pt")
    torch.save(ScoreqModel("ref", **TINY).to_official_state_dict(), path)
    a = ScoreqRef(checkpoint=path, backbone_config=TINY, references=clips[:1])
    b = copy.deepcopy(a)
    assert b.net is a.net and b.reference_embeddings is not a.reference_embeddings
    torch.testing.assert_close(b.reference_embeddings, a.reference_embeddings)
