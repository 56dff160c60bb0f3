"""``qcompiler::cache_attention``: new tokens attend over the filled prefix of a static KV cache, and only over it.

A captured LM's cache holds ``max_seq_len`` positions; SDPA over it with a mask reads them all, so decode costs
what the capacity costs, not what the context does. This op reads each sequence's positions ``0 .. start + l``
for its token ``l`` and nothing past them, the cache as stored (float32, bfloat16, or int8 with a float32 scale per
token and head, read in int8):

    q       [B, H, R, D] float32   rows r = l·groups + j: token l's j-th query head of kv head h (grouped-query
                                   attention as rows of the kv head, as ``llm/gqa_attention.py`` lays them)
    k, v    [C, H, S, D]           float32, bfloat16 or int8: C cache rows (slots)
    k_scale, v_scale               [C, H, S, 1] float32 with an int8 cache, else None
    start   [B] int64              each sequence's first new position (its tokens are at start .. start + R/groups - 1)
    slot    [B] int64 or None      the cache row each sequence reads (None: row b, C = B)
    out     [B, H, R, D] float32   softmax(scale · q·kᵀ) · v over the positions each row may see

In C++ (``csrc/cache_attention.cpp``): per (sequence, kv head, block of 32 rows) the positions in chunks of 256,
one read of each K and V row for all the block's rows, an online softmax across chunks; where those items are
fewer than the threads (decode), each one's positions are split across threads too and the splits merged after
(flash-decoding). Float32 arithmetic, the same sums as SDPA's up to their order; with an int8 cache on AVX-512
VNNI (head dim a multiple of 64, at most 128) q . k runs in integers: each query row rounded to 16 bits (as the
int8 kernels' activations), the keys as stored, exact int32 dots (16 positions a vpdpbusd).
"""
import math
from typing import Optional

import torch

SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor? k_scale, Tensor? v_scale, Tensor start, int groups, float scale, "
          "Tensor? slot=None) -> Tensor")

torch.library.define("qcompiler::cache_attention", SCHEMA)
OP = torch.ops.qcompiler.cache_attention.default


@torch.library.register_fake("qcompiler::cache_attention")
def _(q, k, v, k_scale, v_scale, start, groups, scale, slot=None):
    return torch.empty_like(q, dtype=torch.float32)


def visible(start: torch.Tensor, rows: int, groups: int, positions: int) -> torch.Tensor:
    """``[B, 1, rows, positions]`` bool: whether row r of sequence b may see position p (``p <= start[b] + r //
    groups``)."""
    last = start.view(-1, 1, 1, 1) + torch.arange(rows, device=start.device).view(1, 1, -1, 1) // groups
    return torch.arange(positions, device=start.device).view(1, 1, 1, -1) <= last


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor],
              v_scale: Optional[torch.Tensor], start: torch.Tensor, groups: int, scale: float,
              slot: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The op's value in float64: the cache dequantized, a masked softmax over every position."""
    kd, vd = k.double(), v.double()
    if k_scale is not None:
        kd, vd = kd * k_scale.double(), vd * v_scale.double()
    if slot is not None:
        kd, vd = kd[slot], vd[slot]
    scores = (q.double() @ kd.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible(start, q.shape[2], groups, k.shape[2]), -math.inf)
    return scores.softmax(-1) @ vd
