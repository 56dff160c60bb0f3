"""Affine quantization: round-trip bounds and exact grid points for every scheme and granularity."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.runtime import int_type
from qcompiler.runtime.blocks import qparam_shape, resolve_block_size
from strategies import SCHEMES, tensors_and_blocks


def expand(p, x_shape, block):
    """A block-grid qparam repeated to the full tensor shape."""
    for dim, b in enumerate(block):
        p = p.repeat_interleave(b, dim)
    return p


def grid_ends(scale, zp, t, domain):
    """The dequantized values of qmin and qmax for each block."""
    s = scale.float()
    if domain == "int":
        return (t.qmin - zp.float()) * s, (t.qmax - zp.float()) * s
    z = zp.float() if domain == "float" else 0.0
    return (t.qmin - t.mid) * s + z, (t.qmax - t.mid) * s + z


@given(data=tensors_and_blocks(), scheme=st.sampled_from(SCHEMES),
       scale_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_round_trip_error_is_at_most_half_a_step(data, scheme, scale_dtype):
    x, block_size, _ = data
    dtype, mapping, domain, zp_dtype = scheme
    t = int_type(dtype)
    scale, zp = qc.choose_qparams_affine(x, block_size, dtype, mapping, domain, zp_dtype, scale_dtype)
    block = resolve_block_size(x.shape, block_size)
    assert scale.shape == qparam_shape(x.shape, block) and scale.dtype == scale_dtype
    assert (scale > 0).all()
    q = qc.quantize_affine(x, block_size, scale, zp, dtype, domain)
    assert q.dtype == t.storage and q.shape == x.shape
    assert int(q.min()) >= t.qmin and int(q.max()) <= t.qmax
    xh = qc.dequantize_affine(q, block_size, scale, zp, dtype, domain, torch.float32)
    lo, hi = (expand(e, x.shape, block) for e in grid_ends(scale, zp, t, domain))
    s = expand(scale.float(), x.shape, block)
    # inside the representable range the error is at most s/2; outside, x lands on the nearest end
    target = torch.minimum(torch.maximum(x, lo), hi)
    err = (xh - target).abs()
    tol = s * 0.5 * (1 + 1e-5) + 1e-6 * target.abs()
    assert (err <= tol).all(), f"max excess {(err - tol).max().item()}"


# exact zero points; a 1-bit symmetric grid {-s, 0} cannot cover positive values, so it is left out
EXACT_SCHEMES = [s for s in SCHEMES if s[3] in (None, torch.float32, torch.int32, torch.int16)
                 and not (int_type(s[0]).bits == 1 and s[1] == "symmetric")]


@given(data=tensors_and_blocks(), scheme=st.sampled_from(EXACT_SCHEMES))
def test_float32_qparams_cover_the_data(data, scheme):
    """With exact qparams every value is within s/2 of the grid (x itself fixes the range)."""
    x, block_size, _ = data
    dtype, mapping, domain, zp_dtype = scheme
    scale, zp = qc.choose_qparams_affine(x, block_size, dtype, mapping, domain, zp_dtype)
    xh = qc.dequantize_affine(qc.quantize_affine(x, block_size, scale, zp, dtype, domain),
                              block_size, scale, zp, dtype, domain)
    s = expand(scale, x.shape, resolve_block_size(x.shape, block_size))
    bound = s * (1.0 if mapping == "symmetric" else 0.5)  # symmetric puts +max|x| half a step past qmax
    assert ((xh - x).abs() <= bound * (1 + 1e-5) + 1e-6 * x.abs()).all()


@given(scheme=st.sampled_from(SCHEMES), seed=st.integers(0, 2**31 - 1),
       rows=st.integers(1, 5), groups=st.integers(1, 3))
def test_values_on_the_grid_come_back_exactly(scheme, seed, rows, groups):
    dtype, mapping, domain, zp_dtype = scheme
    t = int_type(dtype)
    g = torch.Generator().manual_seed(seed)
    block = [1, 4]
    shape = (rows, 4 * groups)
    scale = torch.rand(rows, groups, generator=g) * 0.1 + 1e-3
    if domain == "int":
        zp = torch.randint(t.qmin, t.qmax + 1, (rows, groups), generator=g).to(zp_dtype or t.storage)
    elif domain == "float":
        zp = ((torch.rand(rows, groups, generator=g) - 0.5) * 20 * scale).to(zp_dtype or torch.float32)
    else:
        zp = None
    q = torch.randint(t.qmin, t.qmax + 1, shape, generator=g).to(t.storage)
    x = qc.dequantize_affine(q, block, scale, zp, dtype, domain)
    q2 = qc.quantize_affine(x, block, scale, zp, dtype, domain)
    assert torch.equal(q2, q)
    assert torch.equal(qc.dequantize_affine(q2, block, scale, zp, dtype, domain), x)


def test_known_values_int8_symmetric_per_channel():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [4.0, 2.0, -1.0, 1.0]])
    scale, zp = qc.choose_qparams_affine(w, (1, -1), "int8", "symmetric", "int")
    torch.testing.assert_close(scale, torch.tensor([[1.0 / 127.5], [4.0 / 127.5]]))
    assert torch.equal(zp, torch.zeros(2, 1, dtype=torch.int8))
    q = qc.quantize_affine(w, (1, -1), scale, zp, "int8")
    assert q.tolist() == [[127, -64, 32, 0], [127, 64, -32, 32]]  # 127.5 clamps; 63.75, -31.875 round


def test_known_values_uint4_float_zero_point():
    x = torch.tensor([[0.0, 1.45, 3.0, 0.25]])
    scale, zp = qc.choose_qparams_affine(x, (1, 4), "uint4", "asymmetric", "float")
    torch.testing.assert_close(scale, torch.tensor([[0.2]]))
    torch.testing.assert_close(zp, torch.tensor([[1.6]]))  # min + (mid - qmin) * s = 0 + 8 * 0.2
    # 1.45 and 0.25 are -0.75 and -6.75 steps from mid
    assert qc.quantize_affine(x, (1, 4), scale, zp, "uint4", "float").tolist() == [[0, 7, 15, 1]]


def test_asymmetric_int_domain_keeps_zero_exact():
    x = torch.tensor([[0.3, 0.9, 0.0, 2.7]])
    scale, zp = qc.choose_qparams_affine(x, (1, -1), "uint4", "asymmetric", "int")
    xh = qc.dequantize_affine(qc.quantize_affine(x, (1, -1), scale, zp, "uint4"), (1, -1), scale, zp, "uint4")
    assert xh[0, 2].item() == 0.0


@pytest.mark.parametrize("output_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_output_dtype(output_dtype):
    x = torch.randn(4, 64)
    scale, zp = qc.choose_qparams_affine(x, (1, 32), "uint4", zero_point_domain="float",
                                         zero_point_dtype=torch.bfloat16, scale_dtype=torch.bfloat16)
    q = qc.quantize_affine(x, (1, 32), scale, zp, "uint4", "float")
    xh = qc.dequantize_affine(q, (1, 32), scale, zp, "uint4", "float", output_dtype)
    ref = qc.dequantize_affine(q, (1, 32), scale, zp, "uint4", "float", torch.float32)
    assert xh.dtype == output_dtype
    torch.testing.assert_close(xh, ref.to(output_dtype))


def test_torch_dtypes_name_the_same_types():
    x = torch.randn(3, 8)
    for torch_dtype, name in [(torch.int8, "int8"), (torch.uint4, "uint4"), (torch.int4, "int4"),
                              (torch.uint8, "uint8")]:
        a = qc.choose_qparams_affine(x, (1, -1), torch_dtype)
        b = qc.choose_qparams_affine(x, (1, -1), name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
