"""The weight formats users compare us on (issue #32): intx now; each against a float64 reference."""
import pytest
import torch

import qcompiler as qc


def _intx_reference(w: torch.Tensor, bits: int, group: int):
    """torchao's asymmetric integer-zero-point formula in float64 (the scale rounded to bfloat16 as stored):
    ``s = (max(hi, 0) - min(lo, 0)) / (2^b - 1)``, ``z = clamp(-round(lo / s))``, ``q = clamp(round(w / s) + z)``."""
    g = w.double().reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).eps).bfloat16().double()
    z = (-torch.round(lo / s)).clamp(0, qmax)
    q = (torch.round(g / s) + z).clamp(0, qmax)
    return q.reshape(w.shape), ((q - z) * s).reshape(w.shape)


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("group", [32, 128])
def test_intx_is_the_affine_formula_at_its_bit_width(bits, group):
    """intx-<b>-<g> against the formula in float64, stored at b bits: the same levels but where float32 and float64
    round a tie apart (at most 1 in 1,000)."""
    torch.manual_seed(bits)
    w = torch.randn(16, 256) * torch.logspace(-2, 1, 16)[:, None]
    spec = qc.config_from_string(f"intx-{bits}-{group}").spec().weight
    t = spec.quantize(w)
    assert t["q"].dtype == torch.uint8 and t["q"].shape == (16, 256 * bits // 8)  # packed at the bit width
    q_ref, w_ref = _intx_reference(w, bits, group)
    q = qc.unpack_int(t["q"], bits, 256, signed=False).double()
    assert float((q != q_ref).double().mean()) <= 1e-3
    w_hat = spec.dequantize(t, 256, torch.float32).double()
    same = q == q_ref
    torch.testing.assert_close(w_hat[same], w_ref[same], rtol=1e-6, atol=1e-7)


def test_intx_aliases_configs_and_algorithms():
    assert qc.config_from_string("intx-3-64") == qc.IntxWeightOnlyConfig(3, 64)
    assert qc.config_from_string("intx-2-32-float+hqq") == qc.IntxWeightOnlyConfig(2, 32, "float", algorithm=qc.HQQ())
    assert qc.config_from_string("intx-5-128+gptq").algorithm == qc.GPTQ()
    with pytest.raises(ValueError, match="HQQ optimizes a float zero point"):
        qc.config_from_string("intx-3-64+hqq")
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 7; got 8"):
        qc.IntxWeightOnlyConfig(8)
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, 256; got 48"):
        qc.IntxWeightOnlyConfig(3, 48)


def test_intx_lowers_and_runs_as_its_reference_program():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()
    x = torch.randn(5, 128)
    for alias in ("intx-3-64", "intx-4-32"):
        prog = qc.quantize(m, (x,), qc.config_from_string(alias))
        low = qc.lower(prog, "cpu")
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)
        assert all(r.scheme == alias for r in qc.report(low).quantized)
