"""float8 per-tensor and per-row: relative error bound and exact grid points."""
import pytest
import torch

import qcompiler as qc

F8 = [(torch.float8_e4m3fn, 3), (torch.float8_e5m2, 2)]  # (dtype, mantissa bits)


@pytest.mark.parametrize("f8,mbits", F8)
@pytest.mark.parametrize("block", [(-1, -1), (1, -1)], ids=["per_tensor", "per_row"])
def test_round_trip_relative_error(f8, mbits, block):
    x = torch.randn(8, 32) * torch.logspace(-2, 2, 8).unsqueeze(1)
    scale = qc.choose_scale_float8(x, block, f8)
    assert scale.shape == ((1, 1) if block == (-1, -1) else (8, 1))
    q = qc.quantize_float8(x, block, scale, f8)
    assert q.dtype == f8
    xh = qc.dequantize_float8(q, block, scale)
    s = scale.expand(8, 32)
    smallest = torch.finfo(f8).smallest_normal * s  # below the normals, error is absolute
    assert ((xh - x).abs() <= x.abs() * 2.0 ** -(mbits + 1) + smallest).all()
    assert ((xh.abs().amax(1) if block == (1, -1) else xh.abs().amax()) > 0).all()


@pytest.mark.parametrize("f8,_", F8)
def test_grid_points_come_back_exactly(f8, _):
    q = torch.randn(4, 16).mul(20).to(f8)
    scale = torch.tensor([[0.5], [2.0], [0.125], [4.0]])
    x = qc.dequantize_float8(q, (1, -1), scale)
    assert torch.equal(qc.quantize_float8(x, (1, -1), scale, f8).view(torch.uint8), q.view(torch.uint8))


def test_saturates_instead_of_overflowing():
    x = torch.tensor([[1000.0, -1000.0, 1.0]])
    q = qc.quantize_float8(x, (-1, -1), torch.tensor([[1.0]]), torch.float8_e4m3fn)
    assert q.float().tolist() == [[448.0, -448.0, 1.0]]
