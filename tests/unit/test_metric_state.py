"""Metric state is never wrong: ids under forward, rejected batches, compute groups,
merge_state, DDP process groups, and the precision of the accumulators.

Every score is checked against the stateless twin (``torchmos.functional.distillmos``)
computed independently, clip by clip.
"""

from __future__ import annotations

import importlib.resources
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import Metric, MetricCollection

import torchmos.functional as F
from tests.helpers import free_port
from torchmos import DistillMOS
from torchmos.metrics import base


def _clip(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16000, generator=g) * 0.1


@pytest.fixture(scope="module")
def xs() -> list[torch.Tensor]:
    return [_clip(100 + i) for i in range(6)]


@pytest.fixture(scope="module")
def want(xs) -> torch.Tensor:
    """Each clip's score, scored alone by the functional twin."""
    return torch.cat([F.distillmos(x) for x in xs])


def _assert_pairs(out: dict, ids: list[str], scores: torch.Tensor) -> None:
    assert out["ids"] == ids
    assert out["scores"].shape == scores.shape
    assert (out["scores"] - scores).abs().max() <= 1e-5
    assert float(out["mean"]) == pytest.approx(float(scores.double().mean()), abs=1e-6)


# ----------------------------------------------------------------------------- forward


def test_forward_pairs_every_id_with_its_own_score(xs, want):
    m = DistillMOS(per_utterance=True)
    for b in range(3):
        ids = [f"c{2 * b}", f"c{2 * b + 1}"]
        step = m(xs[2 * b : 2 * b + 2], ids=ids)  # the batch's own value
        _assert_pairs(step, ids, want[2 * b : 2 * b + 2])
    _assert_pairs(m.compute(), [f"c{i}" for i in range(6)], want)


def test_forward_default_ids_stay_unique_and_readable(xs, want):
    m = DistillMOS(per_utterance=True)
    assert m(xs[0])["ids"] == ["0"]
    assert m(xs[1:3])["ids"] == ["0", "1"]  # a batch alone: its own positions
    m.update(xs[3], ids=["named"])
    _assert_pairs(m.compute(), ["0", "1", "2", "named"], want[:4])


# ----------------------------------------------------------------------------- rejected batches


@pytest.mark.parametrize("per_utterance", [True, False], ids=["per-utterance", "mean-only"])
def test_rejected_update_changes_no_state(xs, want, per_utterance):
    m = DistillMOS(per_utterance=per_utterance)
    m.update(xs[:2], ids=["c0", "c1"])
    before = m.compute()
    with pytest.raises(ValueError, match="3 ids for a batch of 2 clips"):
        m.update(xs[2:4], ids=["c2", "c3", "extra"])
    with pytest.raises(ValueError, match="1 ids for a batch of 2 clips"):
        m(torch.stack(xs[2:4]), ids=["c2"])  # forward too
    with pytest.raises(TypeError, match="single string"):
        m.update(xs[2], ids="c2")  # a string is not a list of ids
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        m.update(xs[2:4], ids=["c2", 3])
    with pytest.raises(ValueError, match="NaN"):  # bad audio: rejected before any state moves
        m([xs[2], torch.full((16000,), float("nan"))], ids=["c2", "c3"])
    assert m.update_count == 1
    after = m.compute()
    if per_utterance:
        _assert_pairs(after, ["c0", "c1"], want[:2])
        assert torch.equal(after["scores"], before["scores"])
    else:
        assert torch.equal(after, before)
    m.update(xs[2:4], ids=["c2", "c3"])
    if per_utterance:
        _assert_pairs(m.compute(), ["c0", "c1", "c2", "c3"], want[:4])
    else:
        assert float(m.compute()) == pytest.approx(float(want[:4].double().mean()), abs=1e-6)


# ----------------------------------------------------------------------------- torchmetrics machinery


def _shifted_checkpoint(path: str) -> str:
    """The official DistillMOS weights with one output bias moved: another checkpoint."""
    official = importlib.resources.files("distillmos") / "weights/distill_mos_v7.pt"
    ckpt = torch.load(str(official), weights_only=True)
    ckpt["model"]["transformer_pool_attn.pool.linear3.bias"] += 0.5
    torch.save(ckpt, path)
    return path


def test_collection_of_per_utterance_metrics_keeps_every_metrics_ids(xs, want, tmp_path):
    shifted = _shifted_checkpoint(str(tmp_path / "shifted.pt"))
    want_shifted = torch.cat([F.distillmos(x, checkpoint=shifted) for x in xs[:4]])
    assert (want_shifted - want[:4]).abs().min() > 1e-3  # really another model
    coll = MetricCollection({
        "a": DistillMOS(per_utterance=True),
        "b": DistillMOS(per_utterance=True),
        "s": DistillMOS(checkpoint=shifted, per_utterance=True),
    })
    coll.update(xs[:2], ids=["c0", "c1"])
    groups = sorted(sorted(g) for g in coll.compute_groups.values())
    assert groups == [["a", "b"], ["s"]]  # a and b share one state from now on
    coll.update(xs[2:3], ids=["c2"])
    step = coll(xs[3:4], ids=["c3"])  # forward on grouped metrics
    _assert_pairs({k[2:]: v for k, v in step.items() if k.startswith("a_")}, ["c3"], want[3:4])
    out = coll.compute()
    ids = ["c0", "c1", "c2", "c3"]
    for name, expected in (("a", want[:4]), ("b", want[:4]), ("s", want_shifted)):
        got = {k[len(name) + 1 :]: v for k, v in out.items() if k.startswith(name + "_")}
        _assert_pairs(got, ids, expected)


@pytest.mark.skipif(not hasattr(Metric, "merge_state"),
                    reason="this torchmetrics has no Metric.merge_state (torchmetrics 1.4 lacks it)")
def test_ids_survive_merge_state_and_clone(xs, want):
    a = DistillMOS(per_utterance=True)
    b = DistillMOS(per_utterance=True)
    a.update(xs[:2], ids=["c0", "c1"])
    b.update(xs[2])
    b.update(xs[3:4], ids=["c3"])
    a.merge_state(b)  # torchmetrics puts the incoming state first
    merged = want[[2, 3, 0, 1]]
    _assert_pairs(a.compute(), ["0", "c3", "c0", "c1"], merged)
    _assert_pairs(a.clone().compute(), ["0", "c3", "c0", "c1"], merged)


def test_ids_are_torchmetrics_state_reset_clone(xs, want):
    a = DistillMOS(per_utterance=True)
    a.update(xs[:2], ids=["c0", "c1"])
    _assert_pairs(a.clone().compute(), ["c0", "c1"], want[:2])
    a.persistent(True)
    assert not any(k.startswith(("_net", "net")) for k in a.state_dict())
    a.reset()
    a.update(xs[4], ids=["c4"])
    out = a.compute()
    _assert_pairs(out, ["c4"], want[4:5])
    assert out["scores"].shape == (1,)


# ----------------------------------------------------------------------------- precision


class _Echo(DistillMOS):
    """A DistillMOS whose 'scores' are the numbers it is given: isolates accumulation."""

    def _scores(self, preds, lengths, ids):
        return torch.as_tensor(preds, dtype=torch.float32).reshape(-1)


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16], ids=["fp16", "bf16"])
def test_set_dtype_keeps_the_mean_exact(dtype):
    m = _Echo()
    m.set_dtype(dtype)
    for _ in range(1000):
        m.update(torch.tensor([3.1]))
    assert int(m.total) == 1000
    assert m.sum_score.dtype == torch.float64
    assert float(m.compute()) == pytest.approx(3.1, abs=1e-6)


def test_set_dtype_half_matches_functional(xs, want):
    m = DistillMOS(per_utterance=True)
    m.set_dtype(torch.half)
    m.update(xs[:2], ids=["c0", "c1"])
    m.update(xs[2], ids=["c2"])
    _assert_pairs(m.compute(), ["c0", "c1", "c2"], want[:3])


def test_accumulators_fall_back_to_float32_only_without_float64():
    assert base._accumulator_dtype(torch.device("cpu")) == torch.float64
    assert base._accumulator_dtype(torch.device("cuda", 0)) == torch.float64
    assert base._accumulator_dtype(torch.device("mps")) == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_follows_the_device_with_its_own_dtypes(xs):  # pragma: no cover - GPU machine
    m = DistillMOS(per_utterance=True).to("cuda")
    m.set_dtype(torch.half)
    gpu = [x.cuda() for x in xs[:3]]
    m.update(gpu[:2], ids=["c0", "c1"])
    m(gpu[2])
    assert (m.sum_score.device.type, m.sum_score.dtype) == ("cuda", torch.float64)
    assert all(t.device.type == "cuda" for t in [*m.scores, *m.id_bytes, *m.id_meta])
    _assert_pairs(m.compute(), ["c0", "c1", "2"], torch.cat([F.distillmos(x) for x in gpu]))
    m = m.cpu()
    assert (m.sum_score.device.type, m.sum_score.dtype) == ("cpu", torch.float64)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, shards: list[list[torch.Tensor]], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        own = [dist.new_group([r]) for r in range(world)][rank]  # every rank creates every group
        grouped = DistillMOS(per_utterance=True, process_group=own)  # syncs within its own group
        world_ids = DistillMOS(per_utterance=True)  # default ids, gathered over the world
        lonely = DistillMOS(per_utterance=True)  # only rank 0 sees data
        for i, x in enumerate(shards[rank]):
            grouped.update([x], ids=[f"g{rank}-{i}"])
            world_ids(x)  # forward, no ids
        if rank == 0:
            lonely.update(shards[0], ids=["l0", "l1"])
        res = {"grouped": grouped.compute(), "world": world_ids.compute(), "lonely": lonely.compute()}
        torch.save(res, f"{out}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_ids_follow_the_process_group_and_default_ids_are_unique(tmp_path, xs, want):
    shards = [xs[0:2], xs[2:4]]
    out = str(tmp_path / "ddp.pt")
    mp.start_processes(_ddp_worker, args=(2, free_port(), shards, out), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        res = torch.load(f"{out}.{rank}", weights_only=False)
        _assert_pairs(res["grouped"], [f"g{rank}-0", f"g{rank}-1"], want[2 * rank : 2 * rank + 2])
        _assert_pairs(res["world"], ["r0-0", "r0-1", "r1-0", "r1-1"], want[:4])
        _assert_pairs(res["lonely"], ["l0", "l1"], want[:2])
