"""The numerics written once (runtime/numerics.py) against the primitives and float64."""
import pytest
import torch

import qcompiler as qc
from qcompiler.runtime import numerics

EPS = numerics.EPS


@pytest.mark.parametrize("mapping", ["symmetric", "asymmetric"])
def test_per_token_int8_is_the_affine_primitives_per_row(mapping):
    x = torch.randn(33, 70) * torch.logspace(-3, 2, 33)[:, None]
    x[3] = 0.0  # a row of zeros: the scale's floor
    q, s, z = numerics.per_token_int8(x, mapping, EPS)
    domain = "none" if mapping == "symmetric" else "int"
    s_ref, z_ref = qc.choose_qparams_affine(x, (1, 70), "int8", mapping, zero_point_domain=domain,
                                            scale_dtype=torch.float32, eps=EPS)
    z_ref = None if domain == "none" else z_ref
    q_ref = qc.quantize_affine(x, (1, 70), s_ref, z_ref, "int8", domain)
    assert torch.equal(s.reshape(-1), s_ref.reshape(-1))
    assert torch.equal(q, q_ref.float())
    if z_ref is not None:
        assert torch.equal(z.reshape(-1), z_ref.reshape(-1).float())


def test_int16_rows_and_halves_are_one_exact_encoding():
    x = torch.randn(17, 300, dtype=torch.float64).float() * 10
    x[5] = 0.0
    q, s = numerics.int16_rows(x)
    assert q.abs().max() <= numerics.INT16_LIMIT and torch.equal(q, q.round())
    err = (q.double() * s.double() - x.double()).abs()
    bound = s.double() / 2 + x.double().abs() * 2.0 ** -22  # half a step (max|x| / 65278), and float32's x / s
    assert bool((err <= bound).all())
    hi, lo = numerics.int16_halves(q)
    assert bool(((hi >= -128) & (hi <= 127) & (lo >= -128) & (lo <= 127)).all())
    assert torch.equal(256 * hi + lo, q)


def test_the_layer_error_is_the_trace():
    d, x = torch.randn(6, 9, dtype=torch.float64), torch.randn(40, 9, dtype=torch.float64)
    h = x.t() @ x
    assert numerics.layer_error(d, h) == pytest.approx(float(torch.trace(d @ h @ d.t())), rel=1e-12)
    assert numerics.layer_error(d, h) == pytest.approx(float(((x @ d.t()) ** 2).sum()), rel=1e-12)


def test_the_timer_runs_before_untimed_and_counts_its_calls():
    calls = []
    seconds = numerics.median_call_s(lambda: calls.append("call"), 4, before=lambda: calls.append("before"))
    assert seconds >= 0 and calls == ["call"] + ["before", "call"] * 4
