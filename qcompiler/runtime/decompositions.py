"""Each qcompiler op's implementation, in torch ops, as a decomposition table.

``program.run_decompositions(DECOMPOSITIONS)`` traces every ``qcompiler::`` node of a
program into ATen ops (with symbolic shapes), so the program needs no qcompiler at
run time and Inductor can fuse the unpacking, lookups and dequantization into the
kernels it generates. The implementations are the ops' own, so the numbers are identical.
"""
from . import additive, affine, codebook, float8, packing, tables

_OPS = (affine._choose_qparams_op, affine._quantize_op, affine._dequantize_op, packing._unpack_op,
        codebook._quantize_codebook_op, codebook._dequantize_codebook_op, additive._dequantize_additive_op,
        float8._choose_scale_op, float8._quantize_op, float8._dequantize_op, tables._dequantize_table_op)

DECOMPOSITIONS = {op._opoverload: op._init_fn for op in _OPS}
