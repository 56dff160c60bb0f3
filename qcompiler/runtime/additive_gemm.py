"""``qcompiler::additive_gemm``: float activations times AQLM additive codebooks, decoded inside the matmul.

An AQLM weight (``runtime/additive.py``) is ``w[n, j·g:(j+1)·g] = scale[n] · Σ_c codebooks[c, codes[n, j, c]]``.
This op reads the codes as stored (8 or 16 bits a code, 2 bits a weight for ``aqlm-1x16-g8`` and
``aqlm-2x8-g8``) and the float16 codebooks, in C++ (``csrc/additive_gemm.cpp``, built and loaded by
``native.py``):

    y[m, n] = scale[n] · Σ_j Σ_c x[m, j·g:(j+1)·g] · codebooks[c, codes[j, c, n]]

With codebooks of at most 256 vectors and under 8 rows, it tabulates each row's dot with every codebook
vector once and sums table entries (vgatherdps), the way AQLM's own CPU kernels do; with 16-bit codes
it widens each codeword once (F16C) for every row; from 8 rows it decodes panels of 64 weight rows to
float32 and calls ``at::mm``. Float32 throughout: no rounding of the activations.
The codes go to the kernel in panels of 32 rows, ``[ceil(N / 32), G, C, 32]`` (:func:`layout`): a panel's
codes for one group and codebook lie together (what the lookup reads 32 rows at a time), and a row's codes
stay within its panel (what the decoding reads).
"""
import torch

from .errors import fail

SCHEMA = "(Tensor a, Tensor codes, Tensor codebooks, Tensor scale) -> Tensor"
PANEL = 32  # rows per panel of codes
FEW_ROWS = 8  # under this many rows: the lookup or fused path; from it, decode + at::mm (csrc kFewRows)

torch.library.define("qcompiler::additive_gemm", SCHEMA)
OP = torch.ops.qcompiler.additive_gemm.default


@torch.library.register_fake("qcompiler::additive_gemm")
def _(a, codes, codebooks, scale):
    return a.new_empty((a.shape[0], scale.shape[0]), dtype=torch.float32)


def unfit(codes: torch.Tensor, codebooks: torch.Tensor):
    """Why stored codes [N, G, C] and codebooks [C, E, g] do not fit the kernel (None when they do)."""
    entries = codebooks.shape[1]
    if codes.dtype == torch.uint8 and entries <= 256 or codes.dtype == torch.int16 and entries <= 65536:
        return None
    return f"{codes.dtype} codes for codebooks of {entries} vectors; the kernel takes uint8 (<= 256) or int16"


def layout(codes: torch.Tensor) -> torch.Tensor:
    """Stored codes [N, G, C] -> the kernel's panels [ceil(N / 32), G, C, 32] (the last one padded with code 0)."""
    if codes.ndim != 3 or codes.dtype not in (torch.uint8, torch.int16):
        raise fail("codes", "uint8 or int16 [N, G, C] codes", f"{codes.dtype} {list(codes.shape)}")
    n, groups, books = codes.shape
    padded = torch.nn.functional.pad(codes, (0, 0, 0, 0, 0, -n % PANEL))
    return padded.reshape(-1, PANEL, groups, books).permute(0, 2, 3, 1).contiguous()
