"""qcompiler::cache_attention, the C++ attention over a KV cache's filled prefix: its values against a float64
reference and SDPA for every cache dtype, what it reads (nothing past each sequence's positions), every ISA path,
its errors."""
import math

import pytest
import torch
from kernel_paths import run_capped

from qcompiler.runtime import cache_attention, native
from qcompiler.runtime.numerics import EPS, int16_rows, per_token_int8


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


# B, kv heads, new tokens L, groups (query heads per kv head), D, cache positions S, each sequence's start
CASES = [(1, 2, 1, 4, 64, 48, [17]),                 # decode, grouped-query
         (3, 1, 1, 1, 40, 700, [0, 333, 699]),       # decode of three sequences, one at the cache's end
         (2, 2, 5, 2, 72, 300, [0, 260]),            # prefill of 5 tokens: each row its own causal limit
         (1, 4, 1, 8, 64, 2048, [2047]),             # decode over a full cache: the positions split across threads
         (1, 1, 40, 1, 16, 64, [3]),                 # 40 rows: two row blocks
         (1, 2, 3, 3, 96, 300, [250]),               # 9 rows (8 + 1 sharing each V row), D of three 32s
         (1, 1, 7, 1, 128, 300, [200])]              # 7 rows (4 + 3 sharing each K row), D = 128
STORES = ["float32", "bfloat16", "int8"]
# against the reference on the same stored cache; an int8 cache on AVX-512 VNNI takes q and V's weights in 16 bits
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-5, "int8": 2e-4}


def _case(b, h, new, groups, d, s, starts, store, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, new * groups, d, generator=g)
    k, v = (torch.randn(b, h, s, d, generator=g) for _ in range(2))
    k_scale = v_scale = None
    if store == "int8":
        (k, k_scale, _), (v, v_scale, _) = (per_token_int8(t, "symmetric", EPS) for t in (k, v))
        k, v = k.to(torch.int8), v.to(torch.int8)
    elif store == "bfloat16":
        k, v = k.bfloat16(), v.bfloat16()
    return q, k, v, k_scale, v_scale, torch.tensor(starts), groups, d ** -0.5


def _error(out, ref) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-h{}-l{}-g{}-d{}-s{}".format(*c[:6]))
def test_matches_the_reference_over_each_sequences_positions(case, store):
    args = _case(*case, store)
    out = cache_attention.OP(*args)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert _error(out, cache_attention.reference(*args)) < TOLERANCE[store]


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "b{}-h{}-l{}-g{}".format(*c[:4]))
def test_a_float_cache_gives_sdpa_with_the_causal_mask(case):
    q, k, v, _, _, start, groups, scale = _case(*case, "float32")
    b, h, rows, d = q.shape
    mask = cache_attention.visible(start, rows, groups, k.shape[2])
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    torch.testing.assert_close(cache_attention.OP(q, k, v, None, None, start, groups, scale), sdpa,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("store", STORES)
def test_nothing_past_the_filled_positions_is_read(store):
    """NaN in every position past a sequence's last: SDPA with a mask still multiplies them (by zero weights: NaN);
    this op never reads them."""
    case = (2, 2, 3, 4, 64, 600, [100, 401])
    q, k, v, ks, vs, start, groups, scale = _case(*case, store)
    clean = cache_attention.OP(q, k, v, ks, vs, start, groups, scale)
    k, v = k.clone(), v.clone()
    for b, first in enumerate(start.tolist()):
        past = first + case[2]
        if store == "int8":
            ks, vs = ks.clone(), vs.clone()
            ks[b, :, past:], vs[b, :, past:] = float("nan"), float("nan")
        else:
            k[b, :, past:], v[b, :, past:] = float("nan"), float("nan")
    assert torch.equal(cache_attention.OP(q, k, v, ks, vs, start, groups, scale), clean)


def _vnni_int8(q, k, v, ks, vs, start, groups, scale, chunk=256):
    """The AVX-512 VNNI path's arithmetic on an int8 cache (head dim a multiple of 64, up to 128), in float64: q
    rounded to 16 bits per row (exact integer q . k from there), and per chunk of 256 positions each row's weights of
    the V rows (its exponentials over the running maximum, times v's scales) rounded to 16 bits over their largest
    (exact integer V sums from there)."""
    _, row_scale = int16_rows(q)
    rows = torch.round(q.double() * (1 / row_scale).double())  # as the kernel rounds: times the float32 inverse, fused
    s = (rows * row_scale.double() @ (k.double() * ks.double()).transpose(-1, -2)) * scale
    s = s.masked_fill(~cache_attention.visible(start, q.shape[2], groups, k.shape[2]), -math.inf)
    out = torch.zeros(q.shape, dtype=torch.float64)
    top = torch.full(q.shape[:3] + (1,), -math.inf, dtype=torch.float64)
    total = torch.zeros_like(top)
    for c0 in range(0, s.shape[-1], chunk):
        new = torch.maximum(top, s[..., c0:c0 + chunk].amax(-1, keepdim=True))
        e, rescale = torch.exp(s[..., c0:c0 + chunk] - new), torch.exp(top - new)
        w = e * vs[..., c0:c0 + chunk, 0].double().unsqueeze(2)
        step = (w.amax(-1, keepdim=True) / 32767).clamp_min(1e-30)
        out = out * rescale + (torch.round(w / step) * step) @ v[..., c0:c0 + chunk, :].double()
        total, top = total * rescale + e.sum(-1, keepdim=True), new
    return out / total


def test_an_int8_cache_runs_in_16_bit_integers_on_avx512_vnni():
    """Which path ran, seen in the numbers: on AVX-512 VNNI (head dim a multiple of 64, up to 128) q . k runs on the
    int8 keys with q rounded to 16 bits, and the V sums on the int8 values with the weights rounded to 16 bits
    (_vnni_int8: within a few units of the weights' last bit, where the kernel's float32 exponentials round the other
    way); elsewhere keys and values are widened to float32 (float64's values within float32's rounding)."""
    import qcompiler as qc
    args = _case(2, 2, 3, 4, 64, 600, [100, 401], "int8")
    out = cache_attention.OP(*args)
    modelled, exact = _error(out, _vnni_int8(*args)), _error(out, cache_attention.reference(*args))
    if {"avx512", "vnni"} <= qc.Target.host().capabilities:
        assert modelled < 2.5e-5 < exact
    else:
        assert exact < 1e-6 < modelled


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import cache_attention, native
from test_cache_attention import CASES, STORES, TOLERANCE, _case, _error
native.load()
print(max(_error(cache_attention.OP(*_case(*c, s)), cache_attention.reference(*_case(*c, s))) / TOLERANCE[s]
          for c in CASES for s in STORES))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_avx2_and_plain_cpp_paths_match_the_reference(capability):
    (error,) = run_capped(SCRIPT, capability)
    assert float(error) < 1


@pytest.mark.parametrize("store", STORES)
def test_each_sequence_reads_its_slot_of_the_cache(store):
    """With ``slot``, sequence b reads cache row slot[b] of C rows (a server's sequences in their own slots): the same
    as the op over those rows gathered, and the reference."""
    q, k, v, ks, vs, _, groups, scale = _case(4, 2, 2, 4, 64, 300, [0, 0, 0, 0], store)
    q, start, slot = q[:2], torch.tensor([250, 7]), torch.tensor([3, 1])
    out = cache_attention.OP(q, k, v, ks, vs, start, groups, scale, slot)
    gathered = [t[slot] if t is not None else None for t in (k, v, ks, vs)]
    assert torch.equal(out, cache_attention.OP(q, *gathered, start, groups, scale))
    assert _error(out, cache_attention.reference(q, k, v, ks, vs, start, groups, scale, slot)) < TOLERANCE[store]


@pytest.mark.parametrize("change,message", [
    (lambda a: {**a, "q": a["q"].double()}, "q must be float32 \\[B, H, R, D\\]"),
    (lambda a: {**a, "groups": 3}, "groups = 3 must be >= 1 and divide q's rows \\(8\\)"),
    (lambda a: {**a, "k": a["k"].half(), "v": a["v"].half()}, "k and v must be float32, bfloat16 or int8"),
    (lambda a: {**a, "v": a["v"][:, :, :10]}, "k and v must be \\[B, H, S, D\\] = \\[1, 2, S, 64\\] of one dtype"),
    (lambda a: {**a, "k_scale": torch.ones(1, 2, 48, 1)}, "k_scale and v_scale go with an int8 cache"),
    (lambda a: {**a, "start": torch.tensor([17, 3])}, "start must be int64 \\[B\\]"),
    (lambda a: {**a, "start": torch.tensor([47])}, "sequence 0 starts at 47 with 2 new positions; the cache holds 48"),
    (lambda a: {**a, "slot": torch.tensor([1])}, "sequence 0 reads slot 1; the cache has 1"),
    (lambda a: {**a, "slot": torch.tensor([0, 0])}, "slot must be int64 \\[B\\]"),
], ids=["q-dtype", "groups", "cache-dtype", "cache-shape", "scales-without-int8", "start-shape", "past-the-end",
        "slot-out-of-range", "slot-shape"])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    q, k, v, ks, vs, start, groups, scale = _case(1, 2, 2, 4, 64, 48, [17], "float32")
    args = dict(q=q, k=k, v=v, k_scale=ks, v_scale=vs, start=start, groups=groups, scale=scale)
    with pytest.raises(RuntimeError, match=message):
        cache_attention.OP(**change(args))
