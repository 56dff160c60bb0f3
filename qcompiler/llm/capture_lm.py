"""Capture a decoder LLM with its KV cache as state: one program for prefill and decode.

```
input_ids [batch, seq]   cache_position [seq]        (seq: 1 .. max_seq_len, dynamic)
        │                      │
        ▼                      ▼
  decoder layers ── read/write ──► key_cache_i, value_cache_i [batch, kv_heads, max_seq_len, head_dim]
        │                          cumulative_length_i        (buffers the program mutates: its state)
        ▼
  logits [batch, seq, vocab]
```

The program is transformers' static-cache export module
(``transformers.integrations.executorch.TorchExportableModuleWithStaticCache``) with one
fix: its cache layers keep references to the tensors made at construction, which
``torch.export`` (non-strict) then lifts as *constants* that the program mutates; such a
program cannot be decomposed, and AOTInductor would treat the cache as read-only. Here
each call first rebinds the cache layers to the module's registered buffers, so export
records them as mutated buffers and the cache is the program's state, kept by the ``.pt2``
between calls.

A call whose ``cache_position`` starts at 0 starts a new sequence: positions past the
prompt are masked, so nothing of the previous one is read. Every stage accepts the
program like any other captured one.
"""
import contextlib
import functools
import logging
from typing import Iterator, Optional

import torch
from torch.export import Dim, ExportedProgram

from ..stages.capture import capture
from .gqa_attention import cache_step, current_step, grouped_query_attention
from ..runtime.errors import fail
from ..runtime.numerics import EPS, per_token_int8

log = logging.getLogger(__name__)

LM_METADATA_KEY = "qcompiler.lm"  # a packaged LM's lm_shape in its AOTInductor metadata (read without qcompiler)
EXAMPLE_LENGTH = 8  # tokens in the example prompt the program is captured with


def capture_lm(model: torch.nn.Module, max_seq_len: int = 2048, *, batch_size: int = 1,
               kv_cache_dtype: Optional[torch.dtype] = None) -> ExportedProgram:
    """``model`` (a transformers decoder-only causal LM) captured with a static KV cache of
    ``batch_size`` x ``max_seq_len`` tokens, in the model's dtype or, with ``kv_cache_dtype=torch.int8``,
    in int8 with a float32 scale per token and head (``key_scale_<i>``, ``value_scale_<i>``), or, with
    ``torch.bfloat16``, in bfloat16 (half a float32 model's cache). On the CPU, attention reads each sequence's
    filled positions only, the cache as stored (``qcompiler.cache_attention``; SDPA elsewhere).

    The program takes ``input_ids`` [batch_size, seq] and ``cache_position`` [seq] (the positions
    of those tokens: ``arange(seq)`` for a prompt, ``[n]`` for the n-th token) and returns logits
    [batch_size, seq, vocab]; ``seq`` is dynamic up to ``max_seq_len``. See :func:`qcompiler.generate`."""
    config = _check(model, max_seq_len, batch_size)
    if kv_cache_dtype not in (None, torch.int8, torch.bfloat16):
        raise fail("kv_cache_dtype", "None (the model's dtype), torch.int8 or torch.bfloat16", kv_cache_dtype)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_seq_len > positions:
        log.warning("max_seq_len=%d exceeds the model's max_position_embeddings=%d", max_seq_len, positions)
    length = min(EXAMPLE_LENGTH, max_seq_len)
    ids = torch.zeros(batch_size, length, dtype=torch.long, device=_device(model))
    seq = Dim("seq", min=1, max=max_seq_len)
    with _static_generation(model, batch_size, max_seq_len):
        module = _cache_as_state()(model.eval(), batch_size, max_seq_len, kv_cache_dtype)
    example = {"input_ids": ids, "cache_position": torch.arange(length, device=ids.device)}
    with grouped_query_attention(model):
        return capture(module, (), example_kwargs=example,
                       dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}})


def _check(model, max_seq_len, batch_size):
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None or not hasattr(model, "generation_config"):
        raise fail("model", "a transformers decoder-only causal LM (e.g. LlamaForCausalLM)", type(model).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise fail("model", "a decoder-only causal LM, not an encoder-decoder", type(model).__name__)
    for name, value, low in (("max_seq_len", max_seq_len, 2), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise fail(name, f"an int >= {low}", value)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _static_generation(model, batch_size: int, max_seq_len: int) -> Iterator[None]:
    """The model's generation config set for a static cache while the export module is built, then restored."""
    gen = model.generation_config
    saved = {k: getattr(gen, k, None) for k in ("use_cache", "cache_implementation", "cache_config")}
    gen.use_cache, gen.cache_implementation = True, "static"
    gen.cache_config = {"batch_size": batch_size, "max_cache_len": max_seq_len}
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(gen, k, v)


# a cache layer's state: attribute -> the program's buffer name prefix (buffer: <prefix><layer>)
STATE = {"keys": "key_cache_", "values": "value_cache_", "cumulative_length": "cumulative_length_"}
INT8_STATE = {**STATE, "key_scale": "key_scale_", "value_scale": "value_scale_"}


def _transformers():
    try:
        from transformers.cache_utils import StaticLayer
        from transformers.integrations.executorch import TorchExportableModuleWithStaticCache
    except ImportError as e:
        raise ImportError("qcompiler: capture_lm needs transformers (pip install 'transformers>=5.0')") from e
    return TorchExportableModuleWithStaticCache, StaticLayer


@functools.lru_cache(maxsize=None)
def _cache_as_state() -> type:
    """transformers' static-cache module whose cache layers read and write its registered buffers."""
    module, _ = _transformers()

    class CacheAsState(module):
        def __init__(self, model, batch_size: int, max_seq_len: int, kv_cache_dtype: Optional[torch.dtype]):
            super().__init__(model, batch_size, max_seq_len)
            self.state = INT8_STATE if kv_cache_dtype == torch.int8 else STATE
            stored_as = {torch.int8: _int8_layer, torch.bfloat16: _bf16_layer}.get(kv_cache_dtype)  # type: ignore
            for i, layer in enumerate(self.static_cache.layers):
                if stored_as is not None:
                    layer.__class__ = stored_as()
                    layer.quantize_storage()
                for attribute, prefix in self.state.items():
                    self.register_buffer(f"{prefix}{i}", getattr(layer, attribute), persistent=False)

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            for i, layer in enumerate(self.static_cache.layers):
                for attribute, prefix in self.state.items():
                    setattr(layer, attribute, self.get_buffer(f"{prefix}{i}"))
            with cache_step(cache_position[:1].expand(input_ids.shape[0])):  # every sequence starts there
                return super().forward(input_ids=input_ids, cache_position=cache_position)
    return CacheAsState


@functools.lru_cache(maxsize=None)
def _int8_layer() -> type:
    """A static cache layer holding int8 keys and values with one float32 scale per token and head
    (symmetric over the head dim, ``numerics.per_token_int8``); it returns them as stored where our attention reads
    them (``qcompiler.cache_attention``, which takes the scales from the call's step), else dequantized to the
    model's dtype."""
    _, static_layer = _transformers()

    class Int8StaticLayer(static_layer):
        def quantize_storage(self) -> None:
            shape = self.keys.shape[:3] + (1,)
            self.keys, self.values = (torch.zeros_like(t, dtype=torch.int8) for t in (self.keys, self.values))
            self.key_scale, self.value_scale = (torch.ones(shape, device=self.device) for _ in range(2))

        def update(self, key_states, value_states, *args, **kwargs):
            positions = torch.arange(key_states.shape[-2], device=self.device) + self.cumulative_length
            self.cumulative_length.add_(key_states.shape[-2])
            for store, scale, new in ((self.keys, self.key_scale, key_states),
                                      (self.values, self.value_scale, value_states)):
                q, step, _ = per_token_int8(new, "symmetric", EPS)
                store.index_copy_(2, positions, q.to(torch.int8))
                scale.index_copy_(2, positions, step)
            call = current_step()
            if call is None:  # the model's dtype
                return tuple((store.float() * scale).to(new.dtype)
                             for store, scale, new in ((self.keys, self.key_scale, key_states),
                                                       (self.values, self.value_scale, value_states)))
            call.int8[id(self.keys)] = (self.keys, self.key_scale, self.value_scale)
            return self.keys, self.values
    return Int8StaticLayer


@functools.lru_cache(maxsize=None)
def _bf16_layer() -> type:
    """A static cache layer holding bfloat16 keys and values; it returns them as stored where our attention reads
    them (``qcompiler.cache_attention``), else in the model's dtype (for a float32 model, a widening that lowering
    with ``unquantized_dtype=torch.bfloat16`` takes off again before attention)."""
    _, static_layer = _transformers()

    class Bf16StaticLayer(static_layer):
        def quantize_storage(self) -> None:
            self.keys, self.values = (torch.zeros_like(t, dtype=torch.bfloat16) for t in (self.keys, self.values))

        def update(self, key_states, value_states, *args, **kwargs):
            positions = torch.arange(key_states.shape[-2], device=self.device) + self.cumulative_length
            self.cumulative_length.add_(key_states.shape[-2])
            for store, new in ((self.keys, key_states), (self.values, value_states)):
                store.index_copy_(2, positions, new.to(torch.bfloat16))
            if current_step() is not None:  # qcompiler.cache_attention reads bfloat16 as stored
                return self.keys, self.values
            return self.keys.to(key_states.dtype), self.values.to(value_states.dtype)
    return Bf16StaticLayer


def lm_shape(named_buffers) -> Optional[dict]:
    """``{"batch_size", "max_seq_len", "layers"}`` of a program captured by :func:`capture_lm`, read off its
    KV cache buffers (``named_buffers``: name -> tensor pairs); None for other programs."""
    keys = {n: t for n, t in named_buffers if n.startswith(STATE["keys"])}
    first = keys.get(f"{STATE['keys']}0")
    if first is None or first.dim() != 4:
        return None
    return {"batch_size": int(first.shape[0]), "max_seq_len": int(first.shape[2]), "layers": len(keys),
            "kv_cache_dtype": str(first.dtype).removeprefix("torch.")}
