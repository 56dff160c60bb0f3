"""Exact 1-D k-means (Lloyd's algorithm) for codebooks, vectorized over blocks.

Scalar k-means has structure a general k-means ignores: with the values of a
block sorted once, every cluster of a Lloyd step is a contiguous run between the
midpoints of neighbouring centroids. One ``searchsorted`` of the k-1 midpoints
finds the runs, and prefix sums give each run's total, so a step costs
O(k log n) instead of O(n k). The sort (O(n log n)) dominates: a 4096x4096
weight takes a few seconds on two cores. All blocks run together as one batch.
"""
from typing import Optional

import torch

from .codebook_layout import codebook_blocks, rows_of
from .dtypes import check_bits, check_float
from .errors import fail

INITS = ("quantile", "random")


def _init_centroids(v: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    n = v.shape[-1]
    if init == "quantile":
        pos = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).long().clamp(max=n - 1)
        return v[:, pos]
    g = torch.Generator().manual_seed(seed)
    pos = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(v.shape[0])]) if n >= k \
        else torch.randint(0, n, (v.shape[0], k), generator=g)
    return v.gather(1, pos.to(v.device)).sort(-1).values


def _lloyd(v: torch.Tensor, w_cum: torch.Tensor, wx_cum: torch.Tensor, c: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd steps on sorted rows ``v`` with prefix sums of weights and weighted values."""
    n = v.shape[-1]
    ends = v.new_full((v.shape[0], 1), n, dtype=torch.long)
    starts = torch.zeros_like(ends)
    for _ in range(iters):
        mids = (c[:, 1:] + c[:, :-1]) / 2
        cut = torch.searchsorted(v, mids)
        bounds = torch.cat([starts, cut, ends], dim=1)
        w = w_cum.gather(1, bounds[:, 1:]) - w_cum.gather(1, bounds[:, :-1])
        wx = wx_cum.gather(1, bounds[:, 1:]) - wx_cum.gather(1, bounds[:, :-1])
        new = torch.where(w > 0, wx / w.clamp(min=1e-300), c.double()).to(v.dtype).sort(-1).values
        if torch.equal(new, c):
            break
        c = new
    return c


def _check_kmeans(x, bits, block_rows, iters, init, weight):
    check_float(x)
    check_bits(bits)
    if x.ndim < 1 or x.numel() == 0:
        raise fail("x", "a non-empty tensor", tuple(x.shape))
    if not isinstance(iters, int) or iters < 1:
        raise fail("iters", "a positive integer", iters)
    if init not in INITS:
        raise fail("init", "'quantile' or 'random'", init)
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != x.shape):
        raise fail("weight", f"None or a tensor of the shape of x {tuple(x.shape)}", getattr(weight, "shape", weight))
    return codebook_blocks(x.shape, block_rows)


@torch.library.custom_op("qcompiler::kmeans_codebook", mutates_args=())
def _kmeans_op(x: torch.Tensor, bits: int, block_rows: Optional[int], iters: int, seed: int,
               init: str, weight: Optional[torch.Tensor]) -> torch.Tensor:
    nblocks = _check_kmeans(x, bits, block_rows, iters, init, weight)
    k = 1 << bits
    rows = rows_of(x, nblocks).float()
    v, order = rows.sort(-1)
    if weight is None:
        w = torch.ones_like(v, dtype=torch.float64)
    else:
        w = rows_of(weight, nblocks).double().clamp(min=0).gather(1, order)
    zero = v.new_zeros(v.shape[0], 1, dtype=torch.float64)
    w_cum = torch.cat([zero, w.cumsum(1)], 1)
    wx_cum = torch.cat([zero, (w * v.double()).cumsum(1)], 1)
    c = _init_centroids(v, k, init, seed)
    return _lloyd(v, w_cum, wx_cum, c, iters).to(x.dtype)


@_kmeans_op.register_fake
def _(x, bits, block_rows, iters, seed, init, weight):
    nblocks = _check_kmeans(x, bits, block_rows, iters, init, weight)
    return x.new_empty(nblocks, 1 << bits)


def kmeans_codebook(x: torch.Tensor, bits: int, block_rows: Optional[int] = None, *, iters: int = 300,
                    seed: int = 0, init: str = "quantile", weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Find a ``2**bits``-entry codebook for ``x`` by 1-D k-means (Lloyd's algorithm, exact).

    Args:
        x: float tensor; dimension 0 holds the rows (a linear weight's output channels).
        bits: index width, 1..8; the codebook has ``2**bits`` entries.
        block_rows: ``None`` for one codebook for the whole tensor, or r for one
            codebook per block of r rows (r must divide ``x.shape[0]``).
        iters: most Lloyd steps; it stops earlier once the centroids stop moving.
        seed: seeds the ``"random"`` initialisation; results are deterministic for a seed.
        init: ``"quantile"`` (centroids start at evenly spaced quantiles; no randomness)
            or ``"random"`` (centroids start at distinct values drawn with ``seed``).
        weight: optional non-negative importance of each element (weighted k-means).

    Returns:
        ``(n_blocks, 2**bits)`` codebooks in ``x.dtype``, each sorted ascending.
    """
    return _kmeans_op(x, bits, block_rows, iters, seed, init, weight)
