"""ATen's packed int4 CPU layouts: ours match ATen's on this machine and invert exactly."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, strategies as st

from qcompiler.runtime import int4_layout as L


@given(st.integers(1, 20), st.integers(1, 8), st.sampled_from(L.LAYOUTS), st.integers(0, 2**31))
def test_unpack_inverts_pack(n16, k2, layout, seed):
    u = torch.randint(0, 16, (16 * n16, 2 * k2), dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(L.unpack(L.pack(u, layout), layout), u)


@pytest.mark.parametrize("n, k", [(16, 2), (48, 6), (96, 64), (144, 8), (4096, 32)])
def test_pack_is_atens_layout_on_this_machine(n, k):
    layout = L.native_layout()
    assert layout is not None, "ATen's int4 layout on this machine is none of the known ones"
    u = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
    assert torch.equal(L.pack(u, L.BY_NAME[layout]), packed)
    assert torch.equal(L.repack(packed, layout), packed)


def test_another_isa_has_another_layout_and_repack_moves_between_them():
    script = ("import torch; from qcompiler.runtime import int4_layout as L\n"
              "u = torch.randint(0, 16, (80, 16), dtype=torch.int32)\n"
              "p = L.pack(u, L.BY_NAME['avx2'])\n"
              "assert torch.equal(L.repack(p, 'avx2'), torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1))\n"
              "print(L.native_layout())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd(), "ATEN_CPU_CAPABILITY": "default"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "pairs32"


def test_a_program_names_its_int4_weights(monkeypatch):
    import qcompiler as qc
    from qcompiler.runtime import native
    monkeypatch.setattr(native, "cannot_build", lambda: "switched off: this test reads ATen's int4 weights")
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16))
    recipe = qc.Recipe([("0", qc.Int4WeightOnlyConfig(group_size=32)), ("1", qc.Int8WeightOnlyConfig())])
    low = qc.lower(qc.quantize(model, (torch.randn(2, 64),), recipe), "cpu")
    weights = L.int4_weights(low)
    assert list(weights) == ["0_int4pack"] and weights["0_int4pack"].shape == (32, 32)
