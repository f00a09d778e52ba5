"""VQScore's cosine codebook (SPECS §3): unit codes, the nearest by cosine, maintained in
training by k-means initialisation, EMA updates and optional dead-code replacement.

>>> book = CosineCodebook(size=8, dim=4, kmeans_init=False)
>>> zq, codes, commit = book(torch.randn(5, 4))
>>> zq.shape, codes.shape, bool(zq.norm(dim=1).sub(1).abs().max() < 1e-5)
(torch.Size([5, 4]), torch.Size([5]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineCodebook"]


def _sample_rows(x: Tensor, n: int) -> Tensor:
    """``n`` rows of ``x`` drawn without replacement when possible (global torch RNG, CPU)."""
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0])[:n]
    else:
        idx = torch.randint(0, x.shape[0], (n,))
    return x[idx.to(x.device)]


class CosineCodebook(nn.Module):
    """Cosine-similarity codebook with EMA updates, k-means init and dead-code replacement.

    Buffers (names and shapes as in the authors' checkpoint, one head):
    ``initted`` (1,), ``cluster_size`` (1, K), ``embed_avg`` (1, K, D), ``embed`` (1, K, D).

    * Inputs are L2-normalised per frame; the nearest code is the one with the largest dot
      product; codes are unit vectors.
    * ``update=True`` (training): the first batch initialises the codebook by spherical
      k-means (``kmeans_iters`` iterations on the batch's frames); every batch then moves
      ``cluster_size`` and ``embed_avg`` by an EMA of decay ``decay`` (counts and sums of the
      frames assigned to each code) and sets ``embed = l2norm(embed_avg / smoothed counts)``
      (Laplace smoothing, eps 1e-5). Codes whose EMA count falls below
      ``dead_code_threshold`` are replaced by random frames of the batch (0 disables it;
      the authors' released model was trained with it off).
    * The commitment loss is the MSE between the normalised input and its (detached) code.
    """

    def __init__(self, size: int = 2048, dim: int = 32, decay: float = 0.8, kmeans_init: bool = True,
                 kmeans_iters: int = 10, dead_code_threshold: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.size, self.dim = int(size), int(dim)
        self.decay = float(decay)
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_threshold = float(dead_code_threshold)
        self.eps = float(eps)
        if kmeans_init:
            embed = torch.zeros(1, self.size, self.dim)
        else:  # a random unit codebook, ready to use (as the reference without k-means)
            embed = torch.empty(1, self.size, self.dim)
            nn.init.kaiming_uniform_(embed)
            embed = F.normalize(embed, dim=-1)
        self.register_buffer("initted", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(1, self.size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("embed", embed)

    @property
    def is_initialised(self) -> bool:
        return bool(self.initted.item() != 0)

    def nearest(self, xn: Tensor, chunk: int = 8192) -> Tensor:
        """Index of the nearest code of each row of ``xn`` (N, D), rows L2-normalised."""
        codes = self.embed[0]
        if xn.shape[0] <= chunk:
            return (xn @ codes.t()).argmax(dim=-1)
        return torch.cat([(c @ codes.t()).argmax(dim=-1) for c in xn.split(chunk)])

    def forward(self, x: Tensor, update: bool = False,
                straight_through: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise frames ``x`` (N, D).

        Returns ``(zq, codes, commit_loss)``: ``zq`` (N, D) the unit codes (with a
        straight-through gradient to the normalised input when ``straight_through``,
        by default in training mode), ``codes`` (N,), and the commitment loss (scalar).
        """
        xn = F.normalize(x.float(), p=2, dim=-1)
        if update and not self.is_initialised:
            self._kmeans_init(xn.detach())
        codes = self.nearest(xn)
        q = self.embed[0].index_select(0, codes)
        commit = F.mse_loss(q, xn)  # codes are buffers: the gradient goes to the encoder only
        if update:
            self._ema_update(xn.detach(), codes)
            self._expire_codes(xn.detach())
        if straight_through is None:
            straight_through = self.training
        zq = xn + (q - xn).detach() if straight_through else q
        return zq, codes, commit

    # -- training-time codebook maintenance -------------------------------------------

    @torch.no_grad()
    def _kmeans_init(self, xn: Tensor) -> None:
        means = _sample_rows(xn, self.size)
        counts = torch.zeros(self.size, device=xn.device)
        for _ in range(self.kmeans_iters):
            assign = (xn @ means.t()).argmax(dim=-1)
            counts = torch.bincount(assign, minlength=self.size).to(xn.dtype)
            sums = torch.zeros_like(means).index_add_(0, assign, xn)
            new = F.normalize(sums / counts.clamp(min=1).unsqueeze(-1), dim=-1)
            means = torch.where((counts == 0).unsqueeze(-1), means, new)
        self.embed[0].copy_(means)
        self.embed_avg[0].copy_(means * counts.unsqueeze(-1))
        self.cluster_size[0].copy_(counts)
        self.initted.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, xn: Tensor, codes: Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.size).to(xn.dtype)
        sums = torch.zeros(self.size, self.dim, device=xn.device, dtype=xn.dtype).index_add_(0, codes, xn)
        self.cluster_size[0].lerp_(counts, 1.0 - self.decay)
        self.embed_avg[0].lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum(dim=-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.embed.copy_(F.normalize(self.embed_avg / smoothed.unsqueeze(-1), dim=-1))

    @torch.no_grad()
    def _expire_codes(self, xn: Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        dead = self.cluster_size[0] < self.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return
        fresh = _sample_rows(xn, n)
        self.embed[0][dead] = fresh
        self.embed_avg[0][dead] = fresh * self.dead_code_threshold
        self.cluster_size[0][dead] = self.dead_code_threshold

    @torch.no_grad()
    def usage_perplexity(self) -> float:
        """exp(entropy) of the EMA code counts: how many codes are effectively in use."""
        p = self.cluster_size[0].double()
        if float(p.sum()) <= 0:
            return 0.0
        p = p / p.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))
