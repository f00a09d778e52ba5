"""ScoreqLoss against a brute-force loop over triplets; gradients; permutation invariance."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchmos.losses import L2MOSLoss, ScoreqLoss, batch_all_triplets


def brute_force(z: torch.Tensor, y: torch.Tensor, margin, lo: float = 1.0, hi: float = 5.0,
                reduction: str = "mean_positive") -> float:
    z, y = z.double(), y.double()
    total, count, valid = 0.0, 0, 0
    for i, j, k in itertools.permutations(range(len(y)), 3):
        gij, gik = abs(float(y[i] - y[j])), abs(float(y[i] - y[k]))
        if not gij < gik:
            continue
        m = (gik - gij) / (hi - lo) if margin == "adaptive" else margin
        val = float(torch.linalg.norm(z[i] - z[j]) - torch.linalg.norm(z[i] - z[k])) + m
        valid += 1
        if val > 0:
            total += val
            count += 1
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / valid if valid else 0.0
    return total / count if count else 0.0


def batch(b: int = 9, d: int = 12, seed: int = 0, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    y = 1 + 4 * torch.rand(b, generator=g)
    if ties:
        y[1] = y[0]  # equal MOS: neither is a positive against the other
        y = torch.round(y * 2) / 2  # half-point ratings create many equal gaps
    return z, y


@pytest.mark.parametrize("margin", ["adaptive", 0.1, 0.5, 0.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_brute_force(margin, seed):
    z, y = batch(seed=seed, ties=seed != 2)
    got = float(ScoreqLoss(margin=margin)(z.double(), y.double()))
    assert got == pytest.approx(brute_force(z, y, margin), abs=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_other_reductions_equal_brute_force(reduction):
    z, y = batch(seed=5)
    got = float(ScoreqLoss(margin="adaptive", reduction=reduction)(z.double(), y.double()))
    assert got == pytest.approx(brute_force(z, y, "adaptive", reduction=reduction), abs=1e-6)
    with pytest.raises(ValueError, match="reduction must be"):
        ScoreqLoss(reduction="max")


def test_other_scale_range():
    z, y = batch(seed=3)
    y = (y - 1) * 25  # a 0-100 scale
    got = float(ScoreqLoss(margin="adaptive", mos_range=(0.0, 100.0))(z.double(), y.double()))
    assert got == pytest.approx(brute_force(z, y, "adaptive", 0.0, 100.0), abs=1e-6)


def test_triplet_rule():
    valid, gap = batch_all_triplets(torch.tensor([1.0, 1.0, 3.0, 4.5]))
    for i, j, k in itertools.product(range(4), repeat=3):
        y = [1.0, 1.0, 3.0, 4.5]
        want = len({i, j, k}) == 3 and abs(y[i] - y[j]) < abs(y[i] - y[k])
        assert bool(valid[i, j, k]) == want
        if want:
            assert float(gap[i, j, k]) > 0


def test_zero_when_no_positive_triplet():
    z = torch.nn.functional.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    loss = ScoreqLoss()(z, torch.full((5,), 3.0))  # all MOS equal: no valid triplet
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # well separated embeddings ordered like the MOS: every hinge inactive
    y = torch.tensor([1.0, 2.0, 3.0])
    z2 = torch.tensor([[0.0], [10.0], [20.0]])
    assert float(ScoreqLoss(margin=0.1)(z2, y)) == 0.0


def test_gradients_finite_even_with_identical_embeddings():
    z, y = batch(b=16, seed=4)
    z = z.clone()
    z[3] = z[2]  # zero distance: the sqrt must not produce NaN gradients
    z.requires_grad_()
    loss = ScoreqLoss()(z, y)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_permutation_invariant():
    z, y = batch(b=20, seed=5)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    loss = ScoreqLoss()
    assert float(loss(z[perm], y[perm])) == pytest.approx(float(loss(z, y)), abs=1e-6)


def test_batch_128_learns_mos_ordered_embeddings():
    """Optimising free embeddings with the loss orders distances like MOS gaps."""
    torch.manual_seed(0)
    y = 1 + 4 * torch.rand(128)
    w = torch.randn(128, 32, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    loss_fn = ScoreqLoss()
    valid, _ = batch_all_triplets(y)

    def ordered() -> float:  # fraction of valid triplets with d_ij < d_ik
        z = torch.nn.functional.normalize(w.detach(), dim=1)
        d = torch.cdist(z, z)
        return float((d[:, :, None] < d[:, None, :])[valid].float().mean())

    before = ordered()
    for _ in range(60):
        loss = loss_fn(torch.nn.functional.normalize(w, dim=1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.6 and ordered() > 0.9, (before, ordered())


def test_bad_arguments():
    with pytest.raises(ValueError, match="adaptive"):
        ScoreqLoss(margin="const")
    with pytest.raises(ValueError, match=">= 0"):
        ScoreqLoss(margin=-0.1)
    with pytest.raises(ValueError, match="high > low"):
        ScoreqLoss(mos_range=(5.0, 1.0))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        ScoreqLoss()(torch.randn(4, 3), torch.randn(5))


def test_l2_baseline():
    pred, y = torch.tensor([[3.0], [4.0]]), torch.tensor([3.0, 5.0])
    assert float(L2MOSLoss()(pred, y)) == 0.5
    assert float(L2MOSLoss("sum")(pred, y)) == 1.0
    assert L2MOSLoss("none")(pred, y).tolist() == [0.0, 1.0]
