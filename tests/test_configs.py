"""Configs: validated at construction, parsed from their aliases."""
import dataclasses

import pytest
import torch

import qcompiler as qc

ALIASES = ["int8wo", "int8dq", "int4wo-32", "int4wo-64", "int4wo-128", "int4wo-256", "int8da-int4w-32",
           "codebook-3", "codebook-4-16", "codebook-4-float", "codebook-2-8-float", "fp8wo", "fp8dq", "int8static"]


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_round_trip(alias):
    config = qc.config_from_string(alias)
    assert config.alias == alias
    assert config.spec().scheme == alias


@pytest.mark.parametrize("call,message", [
    (lambda: qc.Int4WeightOnlyConfig(group_size=48), r"group_size must be one of 32, 64, 128, 256; got 48"),
    (lambda: qc.Int4WeightOnlyConfig(zero_point_domain="fp"), r"zero_point_domain must be 'int', 'float' or 'none'"),
    (lambda: qc.Int4WeightOnlyConfig(zero_point_domain="float", zero_point_dtype=torch.int32),
     r"zero_point_dtype must be"),
    (lambda: qc.Int4WeightOnlyConfig(zero_point_domain="none", zero_point_dtype=torch.bfloat16),
     r"zero_point_dtype must be None"),
    (lambda: qc.Int8DynamicActivationInt4WeightConfig(group_size=16), r"group_size must be one of"),
    (lambda: qc.CodebookWeightOnlyConfig(bits=9), r"bits must be an integer from 1 to 8"),
    (lambda: qc.CodebookWeightOnlyConfig(block_rows=0), r"block_rows must be None or a positive integer"),
    (lambda: qc.CodebookWeightOnlyConfig(grid="int4"), r"grid must be None or 'int8'; got 'int4'"),
    (lambda: qc.Int8StaticActivationInt8WeightConfig(observer="histogram"),
     r"observer must be 'minmax' or 'moving_average'"),
    (lambda: qc.config_from_string("int3wo"), r"scheme must be one of int8wo, .*codebook-<1..8>"),
    (lambda: qc.config_from_string("int4wo-48"), r"group_size must be one of"),
])
def test_bad_config_is_a_value_error_naming_the_field(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("domain,zp", [("int", torch.uint8), ("int", torch.int32), ("int", torch.bfloat16),
                                       ("float", torch.bfloat16), ("float", torch.float32), ("none", None)])
def test_int4_zero_point_dtype_and_domain_are_the_users_choice(domain, zp):
    spec = qc.Int4WeightOnlyConfig(64, zero_point_domain=domain, zero_point_dtype=zp).spec()
    assert spec.weight.zero_point_domain == domain
    w = torch.randn(8, 128)
    tensors = spec.weight.quantize(w)
    assert ("zero_point" in tensors) == (domain != "none")
    if zp is not None:
        assert tensors["zero_point"].dtype == zp


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        qc.Int4WeightOnlyConfig().group_size = 64


@pytest.mark.parametrize("block_rows", [None, 4])
def test_int8_grid_codebooks_are_int8_tables_with_a_scale_per_row(block_rows):
    spec = qc.CodebookWeightOnlyConfig(3, block_rows=block_rows).spec().weight
    w = torch.randn(8, 32)
    w[0, 0] = 40.0  # an outlier gets a codebook entry of its own; only its row's scale coarsens
    t = spec.quantize(w)
    assert t["codebook"].dtype == torch.int8 and t["codebook"].shape == (8, 8)
    assert t["codebook_scale"].shape == (8, 1)
    w_hat = spec.dequantize(t, 32, torch.float32)
    on_grid = w_hat / t["codebook_scale"]
    torch.testing.assert_close(on_grid, on_grid.round(), rtol=0, atol=1e-4)
    float_grid = qc.CodebookWeightOnlyConfig(3, block_rows=block_rows, grid=None).spec().weight
    w_float = float_grid.dequantize(float_grid.quantize(w), 32, torch.float32)
    # snapping costs little: rows without the outlier keep within 10% of the float codebook's error
    assert (w_hat - w)[1:].pow(2).mean() <= 1.1 * (w_float - w)[1:].pow(2).mean()
