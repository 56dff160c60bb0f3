"""``qcompiler::triton_cache_attention``: ``qcompiler::cache_attention`` for CUDA, in Triton (the same arguments and
result; ``runtime/cache_attention.py`` describes them).

One program per (sequence, kv head, block of 16 query rows) walks that sequence's filled positions in chunks of
``BS``, from its slot of the cache: q . k for the block's rows (the chunk's keys read once for all of them), the
rows' causal limits (``start + row // groups``) masked, an online softmax across chunks, then the chunk's values
added in. Keys and values are read as stored (float32, bfloat16, or int8 times their per-token scales), nothing past
a row's last position is used. Float32 arithmetic (``tl.dot`` in IEEE float32, not tf32).

Not yet run on a GPU (no session had one with it): tested in Triton's interpreter against the float64 reference and
compiled for sm_90 in the tests (``tests/compile_for_hopper.py``). For long caches with few heads the positions are
not split across programs yet (flash-decoding); the C++ kernel does that on the CPU.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

BLOCK_ROWS = 16  # query rows a program takes (tl.dot's minimum)
BLOCK_POSITIONS = 64  # cache positions a chunk


@triton.jit
def _attend_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, start_ptr, slot_ptr, out_ptr, H, R, S, D, groups, scale,
                   SCALED: tl.constexpr, SLOTS: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr,
                   BD: tl.constexpr):
    bh, block = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    row = tl.load(slot_ptr + b) if SLOTS else b
    first = tl.load(start_ptr + b)
    rows = block * BR + tl.arange(0, BR)
    dims = tl.arange(0, BD)
    row_ok, dim_ok = rows < R, dims < D
    q = tl.load(q_ptr + ((bh * R + rows[:, None]) * D + dims[None, :]), mask=row_ok[:, None] & dim_ok[None, :],
                other=0.0)
    last = first + rows // groups  # each row's last position
    limit = tl.minimum(first + (tl.minimum(block * BR + BR, R) - 1) // groups + 1, S)  # positions the block reads
    cache = (row * H + h) * S  # this sequence's (slot, head) in the cache
    best = tl.full((BR,), float("-inf"), tl.float32)
    total = tl.zeros((BR,), tl.float32)
    acc = tl.zeros((BR, BD), tl.float32)
    for p0 in range(0, limit, BS):
        pos = p0 + tl.arange(0, BS)
        pos_ok = pos < limit
        at = (cache + pos[:, None]) * D + dims[None, :]
        both_ok = pos_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + at, mask=both_ok, other=0).to(tl.float32)
        v = tl.load(v_ptr + at, mask=both_ok, other=0).to(tl.float32)
        if SCALED:  # int8: each position's scale
            k = k * tl.load(ks_ptr + cache + pos, mask=pos_ok, other=0.0)[:, None]
            v = v * tl.load(vs_ptr + cache + pos, mask=pos_ok, other=0.0)[:, None]
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        scores = tl.where((pos[None, :] <= last[:, None]) & pos_ok[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))
        keep = tl.exp(best - new_best)
        weights = tl.exp(scores - new_best[:, None])
        total = total * keep + tl.sum(weights, 1)
        acc = acc * keep[:, None] + tl.dot(weights, v, input_precision="ieee")
        best = new_best
    out = acc / total[:, None]
    tl.store(out_ptr + ((bh * R + rows[:, None]) * D + dims[None, :]), out, mask=row_ok[:, None] & dim_ok[None, :])


def launch(q, k, v, k_scale, v_scale, start, groups: int, scale: float, slot=None) -> tuple:
    """``(kernel, grid, args, kwargs, out)`` for the op's arguments (the tests compile and run it from here)."""
    q, k, v, start = q.contiguous(), k.contiguous(), v.contiguous(), start.contiguous()
    B, H, R, D = q.shape
    S = k.shape[2]
    out = torch.empty_like(q)
    scaled = k_scale is not None
    ks = k_scale.contiguous() if scaled else q
    vs = v_scale.contiguous() if scaled else q
    slots = slot.contiguous() if slot is not None else start
    args = (q, k, v, ks, vs, start, slots, out, H, R, S, D, groups, float(scale))
    kwargs = dict(SCALED=scaled, SLOTS=slot is not None, BR=BLOCK_ROWS, BS=BLOCK_POSITIONS,
                  BD=max(16, triton.next_power_of_2(D)))
    return _attend_kernel, (B * H, triton.cdiv(R, BLOCK_ROWS)), args, kwargs, out


@torch.library.triton_op("qcompiler::triton_cache_attention", mutates_args=())
def triton_cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor],
                           v_scale: Optional[torch.Tensor], start: torch.Tensor, groups: int, scale: float,
                           slot: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``qcompiler::cache_attention`` on CUDA (the module's docstring)."""
    kernel, grid, args, kwargs, out = launch(q, k, v, k_scale, v_scale, start, groups, scale, slot)
    wrap_triton(kernel)[grid](*args, **kwargs)
    return out


OP = torch.ops.qcompiler.triton_cache_attention.default
