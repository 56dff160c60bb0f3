"""``qcompiler::int8_tile_gemm``: int8 activations times int8 weights, exact int32 sums, on AMX tiles for many rows.

The same product as ``qcompiler::int8_gemm`` (and the same schema, so a lowering rule can call either) for int8
activations, in C++ (``csrc/int8_tile_gemm.cpp``, built and loaded by ``native.py``):

    y[m, n] = a_scale[m] · w_scale[n] · Σ_k (a[m, k] - a_zero) · w[n, k]

for ``a`` int8 [M, K] (K <= MAX_K), an optional ``a_scale`` [M] (None: 1) and an optional ``a_zero``: one float32
holding an integer in [-128, 127] (a static int8 zero point). The sums are exact int32 on every path, scaled
the same way (``float(sum) · a_scale · w_scale``): every path gives the same bits.

The weight is packed once (:func:`pack`) in one layout that every path reads: AMX through oneDNN's brgemm
(ATen's ``cpublas::brgemm``, s8 x s8 on tiles) where the CPU has AMX-INT8 and the call has at least
``AMX_MIN_ROWS`` rows; an AVX512-VNNI GEMV that streams the weight at memory speed for
fewer rows, or without AMX; AVX2 (``vpmaddwd``, exact) and plain C++ elsewhere. ``native.tile_gemm_path(rows)``
names the one a call takes.

Float32 rows (no ``a_scale``, no ``a_zero``: weight-only layers) give ``y = x @ (w·w_scale)ᵀ``, as
``qcompiler::int8_gemm`` does: each row in 16 bits, ``x = s·(256·hi + lo)`` with ``s = max|x| / 32639``, as two
int8 rows on the paths above (about 2^-16 of the row's largest value); from ``FLOAT_TILE_ROWS`` rows where
AMX-BF16 runs (``native.float_rows_path(rows)`` says ``amx_bf16``), the weight decoded to bfloat16 per block
(exact: int8 values) and multiplied on bfloat16 tiles with the rows rounded to bfloat16 (2^-9 relative),
``w_scale`` applied after: there the 16-bit form's split and doubled output cost more than decoding.
"""
import torch
import torch.nn.functional as F

from .errors import fail
from .numerics import per_token_int8
from .int8_gemm import SCHEMA, fake
from .int8_gemm import reference as reference  # the same value: Σ_k (a - a_zero)·a_scale · w·w_scale, in float64

BLOCK, QUAD = 64, 4  # output columns per packed block, k per VNNI group
MAX_K = 65536  # |a - a_zero| <= 255, |w| <= 128: 255·128·65536 < 2^31, the int32 sums are exact
AMX_MIN_ROWS = 4  # calls with this many rows take AMX where it runs (csrc/int8_tile_gemm.cpp: kAmxMinRows)
FLOAT_TILE_ROWS = 256  # float rows take bfloat16 tiles from this many where AMX-BF16 runs (kFloatTileRows)

torch.library.define("qcompiler::int8_tile_gemm", SCHEMA)
torch.library.register_fake("qcompiler::int8_tile_gemm")(fake)
OP = torch.ops.qcompiler.int8_tile_gemm.default

# int8dq's whole product in one call: float rows quantized per row inside the kernel, as int8dq's reference does it
# (``s = max(max|x| / 127.5, eps)``, ``q = clamp(round(x / s), -128, 127)``, the same floats), then the int8 product
# above with ``a_scale = s``. ``eps``: one float32.
DQ_SCHEMA = "(Tensor x, Tensor eps, Tensor w, Tensor w_scale) -> Tensor"
torch.library.define("qcompiler::int8_tile_gemm_dq", DQ_SCHEMA)
DQ_OP = torch.ops.qcompiler.int8_tile_gemm_dq.default


@torch.library.register_fake("qcompiler::int8_tile_gemm_dq")
def _(x, eps, w, w_scale):
    return x.new_empty((x.shape[0], w_scale.shape[0]), dtype=torch.float32)


# An int8static layer and what follows it up to the next int8static layer's input, in one call: the float output
# ``y = int8_tile_gemm(a, None, a_zero, w, w_scale)·a_scale + bias``, its activation (ACTIVATIONS), then the next
# layer's static quantization ``clamp(round(y / out_scale) + out_zero, -128, 127)``, written as int8 [M, N]: the
# float32 output never reaches memory. ``a_scale``, ``a_zero``, ``out_scale``, ``out_zero``: one float32 each.
# The same floats as the reference's ops, except GELU: erf as torch's vectorized erf computes it, with the kernel's
# own exp (within an ulp of torch's), so an output on a rounding boundary may land one step away.
REQUANT_SCHEMA = ("(Tensor a, Tensor a_scale, Tensor a_zero, Tensor w, Tensor w_scale, Tensor? bias, int activation, "
                  "Tensor out_scale, Tensor out_zero) -> Tensor")
ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2}  # the schema's ``activation`` codes
MIN_OUT_SCALE = 2.0 ** -100  # the least out_scale it takes (csrc: kMinOutScale)
torch.library.define("qcompiler::int8_tile_gemm_requant", REQUANT_SCHEMA)
REQUANT_OP = torch.ops.qcompiler.int8_tile_gemm_requant.default


@torch.library.register_fake("qcompiler::int8_tile_gemm_requant")
def _(a, a_scale, a_zero, w, w_scale, bias, activation, out_scale, out_zero):
    return a.new_empty((a.shape[0], w_scale.shape[0]), dtype=torch.int8)


def requantized(a, a_scale, a_zero, w, w_scale, bias, activation: str, out_scale, out_zero) -> torch.Tensor:
    """What ``int8_tile_gemm_requant`` computes, in ``int8_tile_gemm`` and torch ops (the graph it replaces)."""
    y = OP(a, None, a_zero, w, w_scale) * a_scale
    y = y if bias is None else y + bias
    y = {"none": y, "relu": torch.relu(y), "gelu": torch.nn.functional.gelu(y)}[activation]
    return torch.clamp(torch.round(y / out_scale) + out_zero, -128, 127).to(torch.int8)


def quantize_rows(x: torch.Tensor, eps: float) -> tuple:
    """``(q, s)``: the int8 rows and per-row scales ``int8_tile_gemm_dq`` computes, in torch ops (for tests)."""
    q, s, _ = per_token_int8(x, "symmetric", eps)
    return q.to(torch.int8), s.reshape(-1)


def pack(w: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> int8 [ceil(N/64), ceil(K/4) + 1, 64, 4] in the kernel's layout.

    N is padded to a multiple of 64 and K to a multiple of 4 with zeros. Block ``b`` (one contiguous run) holds
    columns ``64b .. 64b + 63``: ``packed[b, q, l, i] = w[64b + l, 4q + i]`` for the quads ``q < ceil(K/4)``
    (the VNNI layout brgemm reads with ``ld_b = 64``, and 64 bytes the operand of one ``vpdpbusd``), and the
    last quad ``packed[b, -1]`` holds the columns' sums ``Σ_k w[n, k]`` as int32 (``packed[b, -1].view(int32)``,
    little-endian), which take the zero points off.
    """
    n, k = w.shape
    if w.dtype != torch.int8 or not 0 < k <= MAX_K:
        raise fail("weight", f"an int8 [N, K] weight with 0 < K <= {MAX_K}", f"{w.dtype} [{n}, {k}]")
    blocks, quads = -(-n // BLOCK), -(-k // QUAD)
    padded = F.pad(w, (0, quads * QUAD - k, 0, blocks * BLOCK - n))
    body = padded.reshape(blocks, BLOCK, quads, QUAD).transpose(1, 2)
    sums = padded.sum(1, dtype=torch.int32).view(torch.int8).reshape(blocks, 1, BLOCK, QUAD)
    return torch.cat([body, sums], dim=1)
