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
from typing import Iterator, Optional, Sequence

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
               kv_cache_dtype: Optional[torch.dtype] = None, slots: Optional[int] = None) -> ExportedProgram:
    """``model`` (a transformers decoder-only causal LM) captured with a static KV cache of
    ``batch_size`` x ``max_seq_len`` tokens, in the model's dtype or, with ``kv_cache_dtype=torch.int8``,
    in int8 with a float32 scale per token and head (``key_scale_<i>``, ``value_scale_<i>``), or, with
    ``torch.bfloat16``, in bfloat16 (half a float32 model's cache). Attention reads each sequence's filled positions
    only, the cache as stored (``qcompiler.cache_attention`` on the CPU, its Triton twin on CUDA).

    The program takes ``input_ids`` [batch_size, seq] and ``cache_position`` [seq] (the positions
    of those tokens: ``arange(seq)`` for a prompt, ``[n]`` for the n-th token) and returns logits
    [batch_size, seq, vocab]; ``seq`` is dynamic up to ``max_seq_len``. See :func:`qcompiler.generate`.

    ``slots=n`` (instead of ``batch_size``): n independent sequences, each in a slot of the cache. The program
    takes ``input_ids`` [B, seq] (B <= n rows, any of them), ``start`` [B] (each row's position of its first
    token: 0 for a prompt) and ``slot`` [B] (each row's cache slot), so sequences of different lengths decode in
    one call and a prompt is prefilled in its slot while the others wait; a slot is reused by starting at 0.
    ``qcompiler.cache_attention`` (Triton on CUDA) reads each row's slot; see :class:`qcompiler.Batcher`."""
    config = _check(model, max_seq_len, batch_size, slots)
    if kv_cache_dtype not in (None, torch.int8, torch.bfloat16):
        raise fail("kv_cache_dtype", "None (the model's dtype), torch.int8 or torch.bfloat16", kv_cache_dtype)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_seq_len > positions:
        log.warning("max_seq_len=%d exceeds the model's max_position_embeddings=%d", max_seq_len, positions)
    length = min(EXAMPLE_LENGTH, max_seq_len)
    rows = slots or batch_size
    seq = Dim("seq", min=1, max=max_seq_len)
    with _static_generation(model, rows, max_seq_len):
        module = (_slots_as_state() if slots else _cache_as_state())(model.eval(), rows, max_seq_len, kv_cache_dtype)
    if slots:
        example, dynamic = _slots_example(slots, length, _device(model), seq)
    else:
        ids = torch.zeros(batch_size, length, dtype=torch.long, device=_device(model))
        example = {"input_ids": ids, "cache_position": torch.arange(length, device=ids.device)}
        dynamic = {"input_ids": {1: seq}, "cache_position": {0: seq}}
    with grouped_query_attention(model):
        return capture(module, (), example_kwargs=example, dynamic_shapes=dynamic)


def _slots_example(slots: int, length: int, device, seq) -> tuple:
    """The example call and dynamic shapes of a program with ``slots``: two rows (any number up to ``slots``)."""
    rows = min(2, slots)
    example = {"input_ids": torch.zeros(rows, length, dtype=torch.long, device=device),
               "start": torch.zeros(rows, dtype=torch.long, device=device),
               "slot": torch.arange(rows, device=device)}
    batch = Dim("batch", min=1, max=slots) if slots > 1 else None
    return example, {"input_ids": {0: batch, 1: seq} if batch else {1: seq}, "start": {0: batch} if batch else None,
                     "slot": {0: batch} if batch else None}


def _check(model, max_seq_len, batch_size, slots):
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None or not hasattr(model, "generation_config"):
        raise fail("model", "a transformers decoder-only causal LM (e.g. LlamaForCausalLM)", type(model).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise fail("model", "a decoder-only causal LM, not an encoder-decoder", type(model).__name__)
    for name, value, low in (("max_seq_len", max_seq_len, 2), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise fail(name, f"an int >= {low}", value)
    if slots is not None:
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise fail("slots", "None or an int >= 1", slots)
        if batch_size != 1:
            raise fail("batch_size", "1 (its default) with slots: the slots are the program's rows", batch_size)
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


def _state_module(shared: bool) -> type:
    """transformers' static-cache module whose cache layers read and write its registered buffers; ``shared``:
    its sequences share a position (a cumulative length per layer), else each has a slot and a position."""
    module, _ = _transformers()

    class State(module):
        def __init__(self, model, rows: int, max_seq_len: int, kv_cache_dtype: Optional[torch.dtype]):
            super().__init__(model, rows, max_seq_len)
            state = INT8_STATE if kv_cache_dtype == torch.int8 else STATE
            self.state = state if shared else {k: v for k, v in state.items() if k != "cumulative_length"}
            stored_as = {torch.int8: _int8_layer, torch.bfloat16: _bf16_layer,
                         None: None if shared else _model_dtype_layer}[kv_cache_dtype]
            for i, layer in enumerate(self.static_cache.layers):
                if stored_as is not None:
                    layer.__class__ = stored_as()
                    layer.quantize_storage()
                for attribute, prefix in self.state.items():
                    self.register_buffer(f"{prefix}{i}", getattr(layer, attribute), persistent=False)

        def bind(self) -> None:
            for i, layer in enumerate(self.static_cache.layers):
                for attribute, prefix in self.state.items():
                    setattr(layer, attribute, self.get_buffer(f"{prefix}{i}"))
    return State


@functools.lru_cache(maxsize=None)
def _cache_as_state() -> type:
    """Sequences in step: ``forward(input_ids [B, L], cache_position [L])``."""
    class CacheAsState(_state_module(shared=True)):
        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            self.bind()
            with cache_step(cache_position[:1].expand(input_ids.shape[0])):  # every sequence starts there
                return super().forward(input_ids=input_ids, cache_position=cache_position)
    return CacheAsState


@functools.lru_cache(maxsize=None)
def _slots_as_state() -> type:
    """Independent sequences: ``forward(input_ids [B, L], start [B], slot [B])``, row b at positions start[b] ..
    start[b] + L - 1 of cache slot slot[b]."""
    class SlotsAsState(_state_module(shared=False)):
        def forward(self, input_ids: torch.Tensor, start: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
            self.bind()
            positions = start[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)
            with cache_step(start, slot) as step:
                if step is None:
                    raise NotImplementedError("qcompiler: capture_lm's slots need the model to attend with SDPA "
                                              "(attn_implementation='sdpa'), which qcompiler's attention replaces")
                out = self.model(input_ids=input_ids, position_ids=positions, cache=self.static_cache, use_cache=True,
                                 attention_mask=None)
            return out.logits
    return SlotsAsState


def _write(layer, pairs) -> None:
    """Each (store, new) pair's new positions written into the layer's cache: at each row's start in its slot
    (independent sequences), else after the layer's cumulative length (sequences in step)."""
    step, (b, _, length, _) = current_step(), pairs[0][1].shape
    if step is not None and step.slot is not None:
        positions = step.start[:, None] + torch.arange(length, device=step.start.device)
        rows = step.slot[:, None].expand(b, length)
        for store, new in pairs:
            store[rows, :, positions] = new.transpose(1, 2).to(store.dtype)
        return
    positions = torch.arange(length, device=layer.device) + layer.cumulative_length
    layer.cumulative_length.add_(length)
    for store, new in pairs:
        store.index_copy_(2, positions, new.to(store.dtype))


@functools.lru_cache(maxsize=None)
def _model_dtype_layer() -> type:
    """A static cache layer in the model's dtype for independent sequences: it writes each row in its slot and
    returns the cache as stored (``qcompiler.cache_attention`` reads each row's slot)."""
    _, static_layer = _transformers()

    class SlotStaticLayer(static_layer):
        def quantize_storage(self) -> None:
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            _write(self, ((self.keys, key_states), (self.values, value_states)))
            return self.keys, self.values
    return SlotStaticLayer


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
            (kq, ks, _), (vq, vs, _) = (per_token_int8(new, "symmetric", EPS) for new in (key_states, value_states))
            _write(self, ((self.keys, kq), (self.key_scale, ks), (self.values, vq), (self.value_scale, vs)))
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
            _write(self, ((self.keys, key_states), (self.values, value_states)))
            if current_step() is not None:  # qcompiler.cache_attention reads bfloat16 as stored
                return self.keys, self.values
            return self.keys.to(key_states.dtype), self.values.to(value_states.dtype)
    return Bf16StaticLayer


def lm_shape(named_buffers, inputs: Sequence[str] = ()) -> Optional[dict]:
    """``{"batch_size", "max_seq_len", "layers", "kv_cache_dtype", "sequences"}`` of a program captured by
    :func:`capture_lm`, read off its KV cache buffers (``named_buffers``: name -> tensor pairs) and its input names;
    None for other programs. ``sequences``: "independent" where it takes a ``slot`` per row (captured with ``slots``;
    ``batch_size`` is then the number of slots), else "shared" (rows in step: ``cache_position``)."""
    keys = {n: t for n, t in named_buffers if n.startswith(STATE["keys"])}
    first = keys.get(f"{STATE['keys']}0")
    if first is None or first.dim() != 4:
        return None
    return {"batch_size": int(first.shape[0]), "max_seq_len": int(first.shape[2]), "layers": len(keys),
            "kv_cache_dtype": str(first.dtype).removeprefix("torch."),
            "sequences": "independent" if "slot" in inputs else "shared"}
