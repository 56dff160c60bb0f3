"""Grouped-query attention as ``capture_lm`` traces it: a kv head's query heads become rows of one head.

transformers' SDPA attention repeats every kv head for its query heads (``repeat_kv``), a copy of the
whole cache per layer and token, or passes ``enable_gqa=True``, with which PyTorch's CPU flash attention
runs each query head on its own: at decode, a one-row product over the whole cache, per head.
:func:`grouped_query_attention` gives the model, while it is traced, an attention function of ours
(registered with transformers' ``AttentionInterface`` as ``qcompiler_grouped_sdpa``) that hands SDPA the
g query heads of a kv head as g rows of one head::

    query [b, heads, L, d]                      key, value [b, kv_heads, S, d]
       │  rows (l, j) of kv head h = query head h * g + j at position l
       ▼
    rows [b, kv_heads, L * g, d]   mask [b, 1, L, S] → [b, 1, L * g, S] (each row's own, made once)
       │
       ▼  SDPA without enable_gqa: g rows share each pass over the cache
    out [b, kv_heads, L * g, d] → [b, heads, L, d]

The sums are the same, term for term, so the result is exact. On the TinyLlama shape at 2,048 cache
positions, decode attention took 472 us per layer as 32 heads and 158 us as 4 heads of 8 rows; whole
files are measured by ``benchmarks/bench_kv_cache.py`` (docs, "The int8 KV cache at 2,048 positions").

Over a static cache (capture_lm's), the rows go to ``qcompiler.cache_attention`` instead of SDPA (on CUDA its Triton
twin, ``qcompiler.triton_cache_attention``): it reads each sequence's filled positions only (SDPA with a mask reads
all ``max_seq_len``), and an int8 cache as stored, with its scales (:func:`cache_step` tells it where the call's
tokens start, in which slot, and which cache is whose).

Nothing process-wide changes: the model's own ``attn_implementation`` is switched for the trace and
restored, and the masks one trace shares live in a context variable of that call.
"""
import contextlib
import contextvars
import dataclasses
import functools
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..runtime import cache_attention

ATTENTION = "qcompiler_grouped_sdpa"  # our name in transformers' AttentionInterface and AttentionMaskInterface

# id(mask), groups -> (mask, its rows): one trace's row masks, shared by its layers
_MASKS: contextvars.ContextVar[Optional[Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]]]] = (
    contextvars.ContextVar("qcompiler_gqa_masks", default=None))


@dataclasses.dataclass(frozen=True)
class Step:
    """One call of a captured LM: where each sequence's new tokens start in the cache ([B] int64), the cache row
    (slot) each one owns ([B] int64; None: row b, sequences in step), and the int8 caches the cache layers returned
    as stored, by id: (keys, key_scale, value_scale)."""
    start: torch.Tensor
    slot: Optional[torch.Tensor] = None
    int8: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


_ATTENDS: contextvars.ContextVar[bool] = contextvars.ContextVar("qcompiler_cache_attention", default=False)
_STEP: contextvars.ContextVar[Optional[Step]] = contextvars.ContextVar("qcompiler_cache_step", default=None)


@contextlib.contextmanager
def cache_step(start: torch.Tensor, slot: Optional[torch.Tensor] = None) -> Iterator[Optional[Step]]:
    """While a captured LM's call runs (inside :func:`grouped_query_attention`): its :class:`Step`, for the cache
    layers and the attention; None where our attention does not run (the layers then return float caches)."""
    step = Step(start, slot) if _ATTENDS.get() else None
    token = _STEP.set(step)
    try:
        yield step
    finally:
        _STEP.reset(token)


def current_step() -> Optional[Step]:
    return _STEP.get()


@contextlib.contextmanager
def grouped_query_attention(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs (a trace), ``model`` attends with :func:`grouped_rows_attention` where it used
    transformers' SDPA attention; its ``attn_implementation`` is restored after. Other implementations
    (eager, flash, flex) are left as they are."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before == "sdpa" and hasattr(model, "set_attn_implementation")
    if switch:
        _register()
        model.set_attn_implementation(ATTENTION)
    token, attends = _MASKS.set({}), _ATTENDS.set(switch)
    try:
        yield
    finally:
        _MASKS.reset(token)
        _ATTENDS.reset(attends)
        if switch:
            model.set_attn_implementation(before)


@functools.lru_cache(maxsize=None)
def _register() -> None:
    """Our attention and its mask (SDPA's) in transformers' registries, once per process."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, grouped_rows_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def grouped_rows_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    """transformers' attention signature: ``[b, L, heads, d]`` out. Grouped-query calls that SDPA can take
    as rows run as rows of the kv heads; any other (causal, dropout, a mask per head, softcap) goes to
    transformers' own SDPA attention unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    step = _STEP.get()
    if step is not None and _over_the_cache(query, key, dropout, is_causal, kwargs):
        return _cache_attention(query, key, value, step, scaling)
    if step is not None and step.slot is not None:
        raise NotImplementedError(
            "qcompiler: independent sequences (capture_lm's slots) need qcompiler.cache_attention, which takes causal "
            "attention (CPU, or CUDA with Triton) without a sliding window, soft cap or attention sinks; this model's "
            "attention "
            f"(on {query.device.type}, sliding_window={kwargs.get('sliding_window')}, softcap={kwargs.get('softcap')})"
            " is not that")
    if step is not None and id(key) in step.int8:  # the cache as stored, for an attention that takes floats
        key, value = _dequantized(key, value, step, query.dtype)
    groups = _groups(query, key, attention_mask, dropout, is_causal, kwargs)
    if groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, heads, length, d = query.shape
    kv_heads = key.shape[1]
    rows = query.transpose(1, 2).reshape(b, length, kv_heads, groups, d).permute(0, 2, 1, 3, 4)
    mask = None if attention_mask is None else _row_mask(attention_mask, query.dtype, groups)
    out = torch.nn.functional.scaled_dot_product_attention(
        rows.reshape(b, kv_heads, length * groups, d), key, value, attn_mask=mask, scale=scaling)
    out = out.reshape(b, kv_heads, length, groups, d).permute(0, 1, 3, 2, 4).reshape(b, heads, length, d)
    return out.transpose(1, 2).contiguous(), None


def _over_the_cache(query, key, dropout, is_causal, kwargs) -> bool:
    """Whether qcompiler.cache_attention (or its Triton twin on CUDA) takes this call: causal attention over the
    whole static cache (no sliding window, soft cap or dropout), query heads a multiple of the kv heads."""
    if _attention_op(query.device.type) is None or dropout or is_causal or query.dim() != 4 or key.dim() != 4:
        return False
    if any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "sliding_window", "s_aux")):
        return False
    return query.shape[1] % key.shape[1] == 0


def _cache_attention(query, key, value, step: Step, scaling):
    """``[b, L, heads, d]``: the query heads of each kv head as its rows, over each sequence's filled positions."""
    b, heads, length, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    rows = query.transpose(1, 2).reshape(b, length, kv_heads, groups, d).permute(0, 2, 1, 3, 4)
    k_scale = v_scale = None
    if id(key) in step.int8:
        _, k_scale, v_scale = step.int8[id(key)]
    out = _attention_op(query.device.type)(rows.reshape(b, kv_heads, length * groups, d).float(), key, value,
                                           k_scale, v_scale, step.start, groups,
                                           d ** -0.5 if scaling is None else float(scaling), step.slot)
    out = out.reshape(b, kv_heads, length, groups, d).permute(0, 2, 1, 3, 4).reshape(b, length, heads, d)
    return out.to(query.dtype).contiguous(), None


def _attention_op(device: str):
    """The cache attention op for ``device``: C++ on the CPU, Triton on CUDA (where Triton is installed)."""
    if device == "cpu":
        return cache_attention.OP
    if device == "cuda":
        try:
            from ..runtime import triton_attention
        except ImportError:
            return None
        return triton_attention.OP
    return None


def _dequantized(key, value, step: Step, dtype):
    _, k_scale, v_scale = step.int8[id(key)]
    return (key.float() * k_scale).to(dtype), (value.float() * v_scale).to(dtype)


def _groups(query, key, mask, dropout, is_causal, kwargs) -> Optional[int]:
    """Query heads per kv head, or None where this call goes to transformers' SDPA attention."""
    if is_causal or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return None
    if query.dim() != 4 or key.dim() != 4:
        return None
    heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]
    if heads == kv_heads or heads % kv_heads:
        return None
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or not (
            statically_known_true(mask.shape[2] == length) or statically_known_true(mask.shape[2] == 1))):
        return None  # a mask per head, or one whose rows are not the queries'
    return heads // kv_heads


def _row_mask(mask: torch.Tensor, dtype: torch.dtype, groups: int) -> torch.Tensor:
    """``mask`` [b, 1, L, S] for rows (l, j): each position's row g times, additive in ``dtype``; made once
    per mask within one :func:`grouped_query_attention` block."""
    if statically_known_true(mask.shape[2] == 1):
        return mask  # one row for every query: it broadcasts
    masks = _MASKS.get()
    key = (id(mask), groups)
    if masks is not None and key in masks and masks[key][0] is mask:
        return masks[key][1]
    additive = mask
    if mask.dtype == torch.bool:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    b, _, length, positions = mask.shape
    rows = additive[:, :, :, None, :].expand(b, 1, length, groups, positions).reshape(b, 1, length * groups, positions)
    if masks is not None:
        masks[key] = (mask, rows)
    return rows
