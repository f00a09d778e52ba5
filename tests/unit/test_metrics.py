"""The torchmetrics side: states, batching invariance, per-utterance mode, devices, DDP."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

import torchmos
import torchmos.functional as F
from tests.helpers import free_port
from torchmos import DistillMOS, synth
from torchmos.audio import AudioError, SilentAudioWarning


def clips(n: int = 4, seconds: float = 1.0, fs: int = 16000, seed: int = 0) -> list[torch.Tensor]:
    kinds = list(synth.DEGRADATIONS)
    return [synth.degrade(synth.speech_like(seconds + 0.25 * i, fs, seed=seed + i), fs, kinds[i % len(kinds)], seed=i)
            for i in range(n)]


@pytest.fixture(scope="module")
def data() -> list[torch.Tensor]:
    return clips(4)


@pytest.fixture(scope="module")
def per_clip(data) -> torch.Tensor:
    return torch.cat([F.distillmos(x) for x in data])


def test_network_is_not_in_state_dict_nor_parameters():
    m = DistillMOS()
    assert list(m.state_dict()) == []
    assert list(m.parameters()) == []
    assert sum(p.numel() for p in m.net.parameters()) > 4e6
    outer = torch.nn.Module()
    outer.mos = m
    outer.layer = torch.nn.Linear(2, 2)
    assert set(outer.state_dict()) == {"layer.weight", "layer.bias"}


def test_attributes_follow_torchmetrics_conventions():
    assert DistillMOS.higher_is_better is True
    assert DistillMOS.is_differentiable is False
    assert DistillMOS.full_state_update is False
    assert (DistillMOS.plot_lower_bound, DistillMOS.plot_upper_bound) == (1.0, 5.0)


def test_mean_over_updates_equals_functional(data, per_clip):
    m = DistillMOS()
    m.update(data[0])  # (T,)
    m.update(torch.stack([data[1][:16000], data[2][:16000]]))  # (B, T)
    m.update(data[3:])  # list
    want = torch.cat([per_clip[:1], F.distillmos([data[1][:16000], data[2][:16000]]), per_clip[3:]]).mean()
    assert float(m.compute()) == pytest.approx(float(want), abs=1e-6)
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(m.compute())


def test_same_answer_in_any_batch(data, per_clip):
    padded = torch.zeros(len(data), max(x.shape[0] for x in data))
    for i, x in enumerate(data):
        padded[i, : x.shape[0]] = x
        padded[i, x.shape[0] :] = 0.5  # loud garbage in the padding must never be scored
    got = F.distillmos(padded, lengths=[x.shape[0] for x in data])
    assert (got - per_clip).abs().max() <= 1e-5
    got_rev = F.distillmos(list(reversed(data)))
    assert (got_rev.flip(0) - per_clip).abs().max() <= 1e-5


def test_resampled_input_matches_explicit_resampling(data):
    x48 = torchmos.audio.resample(data[0], 16000, 48000)
    m = DistillMOS(fs=48000)
    m.update(x48)
    want = F.distillmos(torchmos.audio.resample(x48, 48000, 16000))
    assert float(m.compute()) == pytest.approx(float(want), abs=1e-6)


def test_per_utterance_keeps_scores_and_ids(data, per_clip):
    m = DistillMOS(per_utterance=True)
    m.update(data[:2], ids=["a", "b"])
    m.update(data[2:])
    out = m.compute()
    assert out["ids"] == ["a", "b", "2", "3"]
    assert (out["scores"] - per_clip).abs().max() <= 1e-5
    assert float(out["mean"]) == pytest.approx(float(per_clip.mean()), abs=1e-6)
    m.reset()
    m.update(data[:1], ids=["z"])
    assert m.compute()["ids"] == ["z"]


def test_bad_item_error_names_it():
    m = DistillMOS()
    bad = [torch.zeros(16000), torch.full((16000,), float("nan"))]
    with pytest.raises(AudioError, match=r"preds\[1\] \(clip-b\).*NaN"):
        with pytest.warns(SilentAudioWarning):
            m.update(bad, ids=["clip-a", "clip-b"])
    with pytest.raises(AudioError, match="shorter than"):
        m.update(torch.randn(100))


def test_silent_clip_warns_and_scores():
    m = DistillMOS()
    with pytest.warns(SilentAudioWarning, match="all zeros"):
        m.update(torch.zeros(16000))
    assert 1.0 <= float(m.compute()) <= 5.0


def test_network_follows_device_and_stays_eval():
    m = DistillMOS()
    m.train()
    assert not m.net.training
    m = m.to("cpu")
    assert next(m.net.parameters()).device == m.device
    if torch.cuda.is_available():  # pragma: no cover - exercised on the GPU machine
        m = m.to("cuda")
        assert next(m.net.parameters()).device.type == "cuda"
        m.update(torch.randn(16000, device="cuda") * 0.1)
        assert m.compute().device.type == "cuda"


def test_forward_and_collection(data, per_clip):
    coll = MetricCollection({"mos": DistillMOS()})
    step = coll(data[:2])  # forward: batch value, and accumulates
    assert float(step["mos"]) == pytest.approx(float(per_clip[:2].mean()), abs=1e-5)
    coll.update(data[2:])
    assert float(coll.compute()["mos"]) == pytest.approx(float(per_clip.mean()), abs=1e-5)


def test_plot(data):
    import matplotlib

    matplotlib.use("Agg")
    m = DistillMOS(per_utterance=True)
    m.update(data[:1])
    fig, ax = m.plot()  # per_utterance: the distribution of the scores, on the MOS axis
    assert ax.get_xlim()[0] <= 1.0 and ax.get_xlim()[1] >= 5.0
    fig2, _ = m.plot([torch.tensor(2.0), torch.tensor(3.0)])
    assert fig2 is not None


def test_functional_caches_the_model():
    a = F.get_model("distillmos")
    b = F.get_model("distillmos", device="cpu")
    assert a is b
    assert F.get_model("distillmos", precision="fp32") is F.get_model("distillmos", precision="fp32")


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, shards: list[list[torch.Tensor]], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = DistillMOS()
        mu = DistillMOS(per_utterance=True)
        for i, x in enumerate(shards[rank]):
            m.update(x)
            mu.update([x], ids=[f"r{rank}-{i}"])
        res = {"mean": m.compute(), "per": mu.compute()}
        if rank == 0:
            torch.save(res, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_equal_single_process(tmp_path):
    data = clips(4, seconds=0.5, seed=10)
    single = DistillMOS()
    for x in data:
        single.update(x)
    want = float(single.compute())
    shards = [data[0::2], data[1::2]]
    out = str(tmp_path / "ddp.pt")
    mp.start_processes(_ddp_worker, args=(2, free_port(), shards, out), nprocs=2, join=True,
                       start_method="spawn")
    res = torch.load(out, weights_only=False)
    assert float(res["mean"]) == pytest.approx(want, abs=1e-6)
    per = res["per"]
    assert per["ids"] == ["r0-0", "r0-1", "r1-0", "r1-1"]
    assert float(per["mean"]) == pytest.approx(want, abs=1e-6)
    assert per["scores"].shape == (4,)
