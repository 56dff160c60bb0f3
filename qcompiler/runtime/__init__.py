"""What must exist when a quantized program runs: the ``qcompiler::`` torch.library ops.

Importing this package registers every op (``torch.ops.qcompiler.*``) with a
CPU and a fake implementation, a fake implementation for ``onednn.qlinear_prepack``
(``onednn.py``), and, where Triton is installed, the CUDA backend's Triton ops
(``triton_matmul.py``). The functions here are their typed Python
front doors. This package imports nothing else from qcompiler.
"""
import importlib.util

from .additive import dequantize_additive
from .affine import choose_qparams_affine, dequantize_affine, quantize_affine
from .codebook import dequantize_codebook, quantize_codebook
from .dtypes import FLOAT8_DTYPES, FLOAT_DTYPES, INT_TYPE_NAMES, IntType, int_type
from .float8 import choose_scale_float8, dequantize_float8, quantize_float8
from .kmeans import kmeans_codebook
# the C++ ops and oneDNN's prepack (faked), registered on import
from . import additive_gemm, codebook_gemm, int8_gemm, int8_int4, int8_tile_gemm, onednn, table_gemm  # noqa: F401
from .packing import pack_int, packed_size, unpack_int
from .tables import dequantize_table

__all__ = [
    "choose_qparams_affine", "quantize_affine", "dequantize_affine",
    "pack_int", "unpack_int", "packed_size",
    "kmeans_codebook", "quantize_codebook", "dequantize_codebook", "dequantize_additive",
    "choose_scale_float8", "quantize_float8", "dequantize_float8", "dequantize_table",
    "IntType", "int_type", "INT_TYPE_NAMES", "FLOAT_DTYPES", "FLOAT8_DTYPES",
]

if importlib.util.find_spec("triton") is not None:  # the qcompiler::triton_* ops: saved CUDA programs load
    from . import triton_attention, triton_matmul  # noqa: F401
