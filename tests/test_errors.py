"""Bad arguments raise ValueError naming the argument and what is allowed, through the wrappers and the raw ops."""
import pytest
import torch

import qcompiler as qc

X = torch.randn(4, 8)
S, Z = qc.choose_qparams_affine(X, (1, 4), "uint4")
ops = torch.ops.qcompiler

BAD = {
    "block size does not divide": (lambda: qc.choose_qparams_affine(X, (1, 3), "int8"),
                                   r"block_size must be entries that divide shape \(4, 8\)"),
    "block size wrong rank": (lambda: qc.quantize_affine(X, (4,), S, Z, "uint4"),
                              r"block_size must be a sequence of 2 entries"),
    "block size zero": (lambda: qc.choose_qparams_affine(X, (0, 8), "int8"),
                        r"block_size must be positive integers or -1"),
    "unsupported dtype name": (lambda: qc.choose_qparams_affine(X, (1, 8), "int9"),
                               r"dtype must be one of int1, .*uint8"),
    "unsupported torch dtype": (lambda: qc.quantize_affine(X, (1, 4), S, Z, torch.int32), r"dtype must be one of"),
    "non-float input": (lambda: qc.choose_qparams_affine(X.int(), (1, 8), "int8"),
                        r"x must be a float32, bfloat16 or float16 tensor; got torch.int32"),
    "non-float quantize input": (lambda: qc.quantize_affine(X.double(), (1, 4), S, Z, "uint4"),
                                 r"x must be a float32, bfloat16 or float16 tensor"),
    "bad mapping": (lambda: qc.choose_qparams_affine(X, (1, 8), "int8", mapping="affine"),
                    r"mapping must be 'symmetric' or 'asymmetric'"),
    "bad domain": (lambda: qc.choose_qparams_affine(X, (1, 8), "int8", zero_point_domain="fp"),
                   r"zero_point_domain must be 'int', 'float' or 'none'"),
    "asymmetric without zero point": (lambda: qc.choose_qparams_affine(X, (1, 8), "int8", "asymmetric", "none"),
                                      r"zero_point_domain must be 'int' or 'float' for the asymmetric mapping"),
    "zero point too narrow": (lambda: qc.choose_qparams_affine(X, (1, 8), "int8", zero_point_dtype=torch.uint8),
                              r"zero_point_dtype must be a dtype that holds every int8 value"),
    "integer zero point in float domain": (
        lambda: qc.choose_qparams_affine(X, (1, 8), "uint4", zero_point_domain="float", zero_point_dtype=torch.int32),
        r"zero_point_dtype must be torch.bfloat16, torch.float16 or torch.float32 in the float domain"),
    "scale of the wrong shape": (lambda: qc.quantize_affine(X, (1, 4), S[:, :1], Z, "uint4"),
                                 r"scale must be a tensor of the block-grid shape \(4, 2\)"),
    "missing zero point": (lambda: qc.quantize_affine(X, (1, 4), S, None, "uint4"),
                           r"zero_point must be a tensor when zero_point_domain is 'int'"),
    "wrong storage dtype": (lambda: qc.dequantize_affine(torch.zeros(4, 8, dtype=torch.int8), (1, 4), S, Z, "uint4"),
                            r"q must be a torch.uint8 tensor holding unpacked uint4 values"),
    "bad output dtype": (
        lambda: qc.dequantize_affine(torch.zeros(4, 8, dtype=torch.uint8), (1, 4), S, Z, "uint4",
                                     output_dtype=torch.int32),
        r"output_dtype must be torch.float32, torch.bfloat16 or torch.float16"),
    "pack bits too large": (lambda: qc.pack_int(torch.zeros(4, dtype=torch.uint8), 9),
                            r"bits must be an integer from 1 to 8"),
    "pack bits zero": (lambda: qc.pack_int(torch.zeros(4, dtype=torch.uint8), 0),
                       r"bits must be an integer from 1 to 8"),
    "pack float input": (lambda: qc.pack_int(X, 4), r"x must be an int8 or uint8 tensor"),
    "kmeans bits out of range": (lambda: qc.kmeans_codebook(X, 9), r"bits must be an integer from 1 to 8"),
    "kmeans non-float": (lambda: qc.kmeans_codebook(X.long(), 2), r"x must be a float32, bfloat16 or float16 tensor"),
    "kmeans block rows": (lambda: qc.kmeans_codebook(X, 2, block_rows=3),
                          r"block_rows must be None or a positive integer dividing the 4 rows"),
    "kmeans init": (lambda: qc.kmeans_codebook(X, 2, init="kmeans++"), r"init must be 'quantile' or 'random'"),
    "codebook shape": (lambda: qc.quantize_codebook(X, torch.randn(2, 4)), r"codebook must be a \(1, k\) tensor"),
    "codebook too large": (lambda: qc.quantize_codebook(X, torch.randn(1, 300)),
                           r"codebook must be a \(1, k\) tensor with 1 <= k <= 256"),
    "codebook idx dtype": (lambda: qc.dequantize_codebook(torch.zeros(4, 8, dtype=torch.int32), torch.randn(1, 4)),
                           r"idx must be a uint8 tensor"),
    "float8 dtype": (lambda: qc.choose_scale_float8(X, (1, -1), torch.float16),
                     r"float8_dtype must be torch.float8_e4m3fn or torch.float8_e5m2"),
    "float8 block": (lambda: qc.choose_scale_float8(X, (1, 5)), r"block_size must be entries that divide"),
    "float8 non-float": (lambda: qc.quantize_float8(X.int(), (1, -1), torch.ones(4, 1)),
                         r"x must be a float32, bfloat16 or float16 tensor"),
    "raw op checks too": (lambda: ops.quantize_affine(X, [1, 3], S, Z, "uint4", "int"),
                          r"block_size must be entries that divide"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_argument_raises_value_error_naming_it(case):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_errors_also_raise_while_tracing():
    class M(torch.nn.Module):
        def forward(self, x):
            return ops.choose_qparams_affine(x, [1, 3], "int8", "symmetric", "int", None, torch.float32, 1e-7)

    with pytest.raises(ValueError, match="block_size must be entries that divide"):
        torch.export.export(M(), (X,), strict=False)
