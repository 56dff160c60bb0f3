"""Granularity as a block size, torchao style.

``block_size`` has one entry per dimension of the tensor; each entry divides its
dimension, or is ``-1`` for the whole dimension. One scale (and zero point) serves
each block: ``(1, K)`` or ``(1, -1)`` is per row (per channel of a linear weight),
``(1, g)`` per group of g along the input dimension, ``(-1, -1)`` per tensor.
Quantization parameters have shape ``[d // b for d, b in zip(shape, block)]``:
the grid of blocks, same rank as the tensor.
"""
from typing import Sequence

import torch

from .errors import fail


def resolve_block_size(shape: Sequence, block_size: Sequence[int]) -> tuple:
    """Replace -1 by the dimension and check every entry divides its dimension."""
    block_size = tuple(block_size)
    if len(block_size) != len(shape):
        raise fail("block_size", f"a sequence of {len(shape)} entries, one per dimension of shape {tuple(shape)}",
                   block_size)
    out = []
    for i, (d, b) in enumerate(zip(shape, block_size)):
        if b == -1:
            out.append(d)
            continue
        if not isinstance(b, int) or b < 1:
            raise fail("block_size", "positive integers or -1 (the whole dimension)", block_size)
        if b != 1 and d % b != 0:
            raise fail("block_size", f"entries that divide shape {tuple(shape)} (dimension {i} is {d})", block_size)
        out.append(b)
    return tuple(out)


def qparam_shape(shape: Sequence, block: Sequence[int]) -> tuple:
    """Shape of the scale / zero point for a resolved block size: the block grid."""
    return tuple(d // b for d, b in zip(shape, block))


def blocked(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """View ``x`` as ``(n0, b0, n1, b1, ...)``: each block's elements on the odd dims."""
    return x.reshape([s for d, b in zip(x.shape, block) for s in (d // b, b)])


def spread(p: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """View a qparam of the block-grid shape as ``(n0, 1, n1, 1, ...)`` to broadcast over ``blocked``."""
    return p.reshape([s for n in p.shape for s in (n, 1)])


def block_dims(ndim: int) -> tuple:
    """The dims of ``blocked(x)`` that run inside a block (reduce over these)."""
    return tuple(range(1, 2 * ndim, 2))


def check_qparam(p: torch.Tensor, shape: tuple, arg: str) -> None:
    if not isinstance(p, torch.Tensor) or tuple(p.shape) != tuple(shape):
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise fail(arg, f"a tensor of the block-grid shape {tuple(shape)}", got)
