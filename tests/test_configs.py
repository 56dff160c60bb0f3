"""Configs: validated at construction, parsed from their aliases."""
import dataclasses

import pytest
import torch

import qcompiler as qc

ALIASES = ["int8wo", "int8dq", "int4wo-32", "int4wo-64", "int4wo-128", "int4wo-256", "int8da-int4w-32",
           "codebook-3", "codebook-4-16", "codebook-4-float", "codebook-2-8-float", "fp8wo", "fp8dq", "int8static",
           "nf4", "nf4-32", "int8da-intx-3-32", "int8da-intx-6-128"]


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


NON_DEFAULT = [
    qc.Int8WeightOnlyConfig(algorithm=qc.GPTQ(damp=0.05, act_order=True)),
    qc.Int8DynamicActivationInt8WeightConfig(algorithm=qc.SmoothQuant(alpha=0.7)),
    qc.Int8StaticActivationInt8WeightConfig(observer="moving_average"),
    qc.Int4WeightOnlyConfig(32, zero_point_domain="int", zero_point_dtype=torch.int32, scale_dtype=torch.float32),
    qc.Int4WeightOnlyConfig(256, algorithm=qc.HQQ(iters=3)),
    qc.Int8DynamicActivationInt4WeightConfig(group_size=128),
    qc.CodebookWeightOnlyConfig(3, block_rows=64, grid=None, algorithm=qc.GPTQ(refit=1)),
    qc.AQLMWeightOnlyConfig(2, 8, 16, beam=2, rounds=1),
    qc.Float8WeightOnlyConfig(),
    qc.Float8DynamicActivationFloat8WeightConfig(),
    qc.IntxWeightOnlyConfig(3, 32, "float", scale_dtype=torch.float32, algorithm=qc.HQQ()),
    qc.FpxWeightOnlyConfig(2, 3, scale_dtype=torch.bfloat16),
    qc.MXWeightOnlyConfig("fp8"),
    qc.NVFP4WeightOnlyConfig(),
    qc.NF4WeightOnlyConfig(128, torch.float16),
    qc.Int8DynamicActivationIntxWeightConfig(5, 64, torch.float32),
]


@pytest.mark.parametrize("config", NON_DEFAULT, ids=lambda c: c.alias)
def test_every_config_round_trips_through_json_with_every_field(config):
    import json

    data = json.loads(json.dumps(qc.config_to_dict(config)))
    assert data["scheme"] == type(config).family and data["version"] == 1
    assert qc.config_from_dict(data) == config
    recipe = qc.Recipe([("*", config)])
    assert qc.Recipe.from_json(recipe.to_json()) == recipe


def test_every_registered_scheme_is_covered_by_the_round_trip():
    from qcompiler.schemes import SCHEMES

    assert {type(c).family for c in NON_DEFAULT} == set(SCHEMES)


@pytest.mark.parametrize("data,message", [
    ({"scheme": "int5wo"}, r"config must be a dict with a \"scheme\" among int8wo, "),
    ({"scheme": "int4wo", "group": 64}, r"int4wo config field must be one of algorithm, group_size, .*; got 'group'"),
    ({"scheme": "int4wo", "version": 2}, r"config version must be 1"),
    ({"scheme": "int4wo", "scale_dtype": {"dtype": "float17"}}, r"dtype must be a torch dtype name"),
    ({"scheme": "int4wo", "group_size": 48}, r"group_size must be one of 32, 64, 128, 256; got 48"),
    ({"scheme": "int8wo", "algorithm": {"algorithm": "magic"}}, r"algorithm must be one of gptq, hqq, awq"),
])
def test_a_bad_config_dict_is_refused_by_name(data, message):
    with pytest.raises(ValueError, match=message):
        qc.config_from_dict(data)


def test_a_new_scheme_is_one_registered_config_that_aliases_help_and_json_then_know(monkeypatch):
    """What a new scheme file holds: a frozen config with an alias and a spec, registered with @scheme."""
    import dataclasses

    from qcompiler.passes.spec import AffineWeight, QuantSpec
    from qcompiler.schemes import SCHEMES, registry

    monkeypatch.setattr(registry, "SCHEMES", dict(SCHEMES))

    @qc.scheme("int8wo-grouped", forms=("int8wo-grouped-<g>",), alias=r"int8wo-grouped-(\d+)",
               parse=lambda g: Grouped(int(g)))
    @dataclasses.dataclass(frozen=True)
    class Grouped:
        group_size: int = 64
        algorithm: object = None

        @property
        def alias(self):
            return f"int8wo-grouped-{self.group_size}"

        def spec(self):
            return QuantSpec(self.alias, AffineWeight("int8", self.group_size), algorithm=self.algorithm)

    config = qc.config_from_string("int8wo-grouped-32")
    assert config == Grouped(32) and "int8wo-grouped-<g>" in qc.scheme_forms()
    assert qc.config_from_dict(qc.config_to_dict(config)) == config
    assert "int8wo-grouped" in registry.algorithm_families(qc.GPTQ())  # GPTQ serves affine weights: no change there
    lin = torch.nn.Linear(64, 8).eval()
    prog = qc.quantize(lin, (torch.randn(2, 64),), config)
    assert [r.scheme for r in qc.report(prog).quantized] == ["int8wo-grouped-32"]
    with pytest.raises(ValueError, match="scheme 'int8wo' is registered already, by qcompiler.schemes.int8"):
        qc.scheme("int8wo")(Grouped)
