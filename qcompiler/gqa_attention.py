"""Grouped-query attention as ``capture_lm`` traces it: a kv head's query heads become rows of one head.

transformers' SDPA attention repeats every kv head for its query heads (``repeat_kv``), a copy of the
whole cache per layer and token, unless told to pass ``enable_gqa=True``. PyTorch's CPU flash attention
then runs each query head on its own: at decode, a one-row product over the whole cache, per head.
:func:`grouped_query_attention` sets transformers' switch and, while the program is traced, gives
SDPA the g query heads of a kv head as g rows of one head::

    query [b, heads, L, d]                      key, value [b, kv_heads, S, d]
       │  rows (l, j) of kv head h = query head h * g + j at position l
       ▼
    rows [b, kv_heads, L * g, d]   mask [b, 1, L, S] → [b, 1, L * g, S] (each row's own, made once)
       │
       ▼  SDPA without enable_gqa: g rows share each pass over the cache
    out [b, kv_heads, L * g, d] → [b, heads, L, d]

The sums are the same, term for term, so the result is exact. On the TinyLlama shape at 2,048 cache
positions, decode attention took 472 us per layer as 32 heads and 158 us as 4 heads of 8 rows; whole
files are measured by ``benchmarks/bench_kv_cache.py`` (README, "The int8 KV cache at 2,048 positions").
"""
import contextlib
import os
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers' sdpa_attention_forward at each call


class GroupedRows:
    """``scaled_dot_product_attention`` with grouped-query calls run as rows of the kv heads.

    Any other call (no ``enable_gqa``, causal, dropout, a mask per head) goes to ``sdpa`` unchanged.
    A boolean mask becomes the additive one SDPA would make of it, repeated for the rows; it is
    made once per mask, so all the layers of a trace share it."""

    def __init__(self, sdpa: Callable):
        self.sdpa = sdpa
        self.masks: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        groups = self._groups(query, key, attn_mask, dropout_p, is_causal, enable_gqa)
        if groups is None:
            return self.sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
        b, heads, length, d = query.shape
        kv_heads = key.shape[1]
        rows = query.transpose(1, 2).reshape(b, length, kv_heads, groups, d).permute(0, 2, 1, 3, 4)
        mask = None if attn_mask is None else self._row_mask(attn_mask, query.dtype, groups)
        out = self.sdpa(rows.reshape(b, kv_heads, length * groups, d), key, value, attn_mask=mask, scale=scale)
        return out.reshape(b, kv_heads, length, groups, d).permute(0, 1, 3, 2, 4).reshape(b, heads, length, d)

    @staticmethod
    def _groups(query, key, mask, dropout_p, is_causal, enable_gqa):
        """Query heads per kv head, or None where this call runs as it is."""
        if not enable_gqa or is_causal or dropout_p or query.dim() != 4 or key.dim() != 4:
            return None
        heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]
        if heads == kv_heads or heads % kv_heads:
            return None
        if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or not (
                statically_known_true(mask.shape[2] == length) or statically_known_true(mask.shape[2] == 1))):
            return None  # a mask per head, or one whose rows are not the queries'
        return heads // kv_heads

    def _row_mask(self, mask: torch.Tensor, dtype: torch.dtype, groups: int) -> torch.Tensor:
        """``mask`` [b, 1, L, S] for rows (l, j): each position's row g times, additive in ``dtype``."""
        if statically_known_true(mask.shape[2] == 1):
            return mask  # one row for every query: it broadcasts
        key = (id(mask), groups)
        if key not in self.masks or self.masks[key][0] is not mask:
            additive = mask
            if mask.dtype == torch.bool:
                additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
            b, _, length, positions = mask.shape
            rows = additive[:, :, :, None, :].expand(b, 1, length, groups, positions)
            self.masks[key] = (mask, rows.reshape(b, 1, length * groups, positions))
        return self.masks[key][1]


@contextlib.contextmanager
def grouped_query_attention() -> Iterator[None]:
    """While the block runs (a trace), transformers passes the cache's kv heads to SDPA as they are
    (its own ``TRANSFORMERS_SDPA_FORCE_GQA`` switch), and ``torch.nn.functional.scaled_dot_product_attention``
    is :class:`GroupedRows`. Both are restored after."""
    saved_switch, saved_sdpa = os.environ.get(GQA_SWITCH), torch.nn.functional.scaled_dot_product_attention
    os.environ[GQA_SWITCH] = "1"
    torch.nn.functional.scaled_dot_product_attention = GroupedRows(saved_sdpa)
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = saved_sdpa
        if saved_switch is None:
            del os.environ[GQA_SWITCH]
        else:
            os.environ[GQA_SWITCH] = saved_switch
