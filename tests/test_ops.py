"""Every qcompiler:: op: fake impl agrees with the real one (opcheck), and the op survives torch.export."""
import subprocess
import sys

import pytest
import torch

import qcompiler as qc  # noqa: F401  (registers the ops)

ops = torch.ops.qcompiler
X = torch.randn(4, 64)
S_GROUP, Z_GROUP = qc.choose_qparams_affine(X, (1, 32), "uint4", zero_point_domain="float",
                                            zero_point_dtype=torch.bfloat16)
S_ROW, Z_ROW = qc.choose_qparams_affine(X, (1, -1), "int8", "symmetric")
Q4 = qc.quantize_affine(X, (1, 32), S_GROUP, Z_GROUP, "uint4", "float")
CB = qc.kmeans_codebook(X, 3, block_rows=2)
IDX = qc.quantize_codebook(X, CB, 2)
F8S = qc.choose_scale_float8(X, (1, -1))

CASES = {
    "choose_qparams_affine": (ops.choose_qparams_affine,
                              (X, [1, 32], "uint4", "asymmetric", "float", torch.bfloat16, torch.bfloat16, 1e-6)),
    "choose_qparams_none": (ops.choose_qparams_affine,
                            (X, [1, -1], "int4", "symmetric", "none", None, torch.float32, 1e-6)),
    "quantize_affine": (ops.quantize_affine, (X, [1, 32], S_GROUP, Z_GROUP, "uint4", "float")),
    "quantize_affine_none": (ops.quantize_affine, (X, [1, -1], S_ROW, None, "int8", "none")),
    "dequantize_affine": (ops.dequantize_affine, (Q4, [1, 32], S_GROUP, Z_GROUP, "uint4", "float", torch.bfloat16)),
    "pack_int": (ops.pack_int, (Q4, 4)),
    "pack_int_3": (ops.pack_int, (IDX, 3)),
    "unpack_int": (ops.unpack_int, (qc.pack_int(IDX, 3), 3, 64, False)),
    "kmeans_codebook": (ops.kmeans_codebook, (X, 3, 2, 50, 0, "quantile", None)),
    "quantize_codebook": (ops.quantize_codebook, (X, CB, 2)),
    "dequantize_codebook": (ops.dequantize_codebook, (IDX, CB, 2, torch.float16)),
    "choose_scale_float8": (ops.choose_scale_float8, (X, [1, -1], torch.float8_e5m2, torch.float32)),
    "quantize_float8": (ops.quantize_float8, (X, [1, -1], F8S, torch.float8_e4m3fn)),
    "dequantize_float8": (ops.dequantize_float8, (qc.quantize_float8(X, (1, -1), F8S), [1, -1], F8S, torch.float32)),
}


@pytest.mark.parametrize("name", CASES)
def test_fake_impl_matches_real(name):
    op, args = CASES[name]
    # schema, fake tensors (shapes, dtypes), dynamic shapes via aot_dispatch. opcheck's schema
    # check multiplies the inputs, which CPU float8 does not support: that input skips only it.
    float8_input = any(isinstance(a, torch.Tensor) and a.dtype in qc.runtime.FLOAT8_DTYPES for a in args)
    utils = ("test_faketensor", "test_aot_dispatch_dynamic", "test_autograd_registration")
    torch.library.opcheck(op, args, test_utils=utils if float8_input else torch.library._OPCHECK_DEFAULT_UTILS)


@pytest.mark.parametrize("name", CASES)
def test_fake_mode_gives_real_shapes_and_dtypes(name):
    op, args = CASES[name]
    real = op(*args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    real, fake = (r if isinstance(r, tuple) else (r,) for r in (real, fake))
    assert [(tuple(t.shape), t.dtype) for t in real] == [(tuple(t.shape), t.dtype) for t in fake]


class WeightOnlyInt4(torch.nn.Module):
    """Stored packed int4 weights dequantized per call, as a reference quantized linear reads them."""

    def __init__(self, w):
        super().__init__()
        s, z = qc.choose_qparams_affine(w, (1, 32), "uint4", zero_point_domain="float")
        self.register_buffer("packed", qc.pack_int(qc.quantize_affine(w, (1, 32), s, z, "uint4", "float"), 4))
        self.register_buffer("scale", s)
        self.register_buffer("zero", z)
        self.k = w.shape[1]

    def forward(self, x):
        q = ops.unpack_int(self.packed, 4, self.k, False)
        w = ops.dequantize_affine(q, [1, 32], self.scale, self.zero, "uint4", "float", x.dtype)
        return torch.nn.functional.linear(x, w)


class DynamicActivations(torch.nn.Module):
    """Per-token int8, per-tensor float8 and codebook round trips computed inside the graph."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cb", CB)

    def forward(self, x):
        s, z = ops.choose_qparams_affine(x, [1, -1], "int8", "asymmetric", "int", None, torch.float32, 1e-7)
        a = ops.dequantize_affine(ops.quantize_affine(x, [1, -1], s, z, "int8", "int"),
                                  [1, -1], s, z, "int8", "int", x.dtype)
        f = ops.choose_scale_float8(x, [-1, -1], torch.float8_e4m3fn, torch.float32)
        b = ops.dequantize_float8(ops.quantize_float8(x, [-1, -1], f, torch.float8_e4m3fn), [-1, -1], f, x.dtype)
        return a + b


@pytest.mark.parametrize("module", [WeightOnlyInt4(torch.randn(16, 64)), DynamicActivations()],
                         ids=["int4wo", "dynamic"])
def test_ops_survive_export_with_a_dynamic_batch(module):
    x = torch.randn(5, 64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(module, (x,), dynamic_shapes=({0: batch},), strict=False)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("qcompiler.") for t in targets), targets
    for rows in (5, 1, 9):
        xr = torch.randn(rows, 64)
        torch.testing.assert_close(ep.module()(xr), module(xr), rtol=0, atol=0)


def test_codebook_ops_export():
    class M(torch.nn.Module):
        def forward(self, x, cb):
            return ops.dequantize_codebook(ops.quantize_codebook(x, cb, 2), cb, 2, torch.float32)

    ep = torch.export.export(M(), (X, CB), strict=False)
    torch.testing.assert_close(ep.module()(X, CB), M()(X, CB), rtol=0, atol=0)


def test_importing_qcompiler_registers_the_triton_ops_so_saved_cuda_programs_load():
    code = "import torch, qcompiler; print(all(hasattr(torch.ops.qcompiler, op) for op in ('triton_wo_matmul', " \
           "'triton_dq_matmul', 'triton_additive_matmul', 'triton_cache_attention')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
