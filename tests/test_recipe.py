"""Recipes: ordered rules by name glob, regex, module type or predicate; first match wins."""
import re

import pytest
import torch

import qcompiler as qc
from small_models import mixed_case


def schemes(prog):
    return {r.name: (r.scheme or f"skipped: {r.skipped}") for r in qc.report(prog).layers}


@pytest.fixture(scope="module")
def mixed_program():
    model, args, dyn = mixed_case()
    return model, qc.capture(model, args, dynamic_shapes=dyn)


def convert(program, recipe):
    return qc.convert(qc.prepare(program, recipe))


def test_first_match_wins_and_none_leaves_a_layer_alone(mixed_program):
    _, program = mixed_program
    recipe = qc.Recipe([
        ("head", None),
        ("blocks.*.fc1", qc.Int4WeightOnlyConfig(group_size=32)),
        (re.compile(r"blocks\.\d\.fc2"), qc.Int8DynamicActivationInt8WeightConfig()),
        ("blocks.*", qc.CodebookWeightOnlyConfig(2)),  # never reached for fc1/fc2
        (torch.nn.Linear, qc.Int8WeightOnlyConfig()),
    ])
    got = schemes(convert(program, recipe))
    assert got["blocks.0.fc1"] == got["blocks.1.fc1"] == "int4wo-32"
    assert got["blocks.0.fc2"] == got["blocks.1.fc2"] == "int8dq"
    assert got["shared"] == got["odd"] == "int8wo"
    assert got["head"] == "skipped: left alone by recipe rule 0"


def test_predicate_rules_see_the_layer(mixed_program):
    _, program = mixed_program
    recipe = qc.Recipe([(lambda site: site.in_features == 128, qc.Int8WeightOnlyConfig())])
    got = schemes(convert(program, recipe))
    assert got["blocks.0.fc2"] == "int8wo"
    assert got["blocks.0.fc1"] == "skipped: no recipe rule matched"


def test_recipe_from_json():
    recipe = qc.Recipe.from_json('[{"match": "head", "config": null}, {"match": "*", "config": "int4wo-64"}]')
    assert recipe.rules[0].config is None and recipe.rules[1].config == qc.Int4WeightOnlyConfig(64)
    with pytest.raises(ValueError, match="recipe must be a JSON list"):
        qc.Recipe.from_json('{"match": "x"}')
    with pytest.raises(ValueError, match="scheme must be one of"):
        qc.Recipe.from_json('[{"match": "x", "config": "int5"}]')


def test_bad_rule_is_a_value_error():
    with pytest.raises(ValueError, match="config must be a qcompiler config or None"):
        qc.Recipe([("x", "int8wo")])
    with pytest.raises(ValueError, match="config must be a qcompiler config"):
        qc.prepare(qc.capture(torch.nn.Linear(4, 4), (torch.randn(1, 4),)), "int8wo")


def test_needs_calibration_says_which_configs_and_recipes_need_data():
    assert not qc.needs_calibration(qc.Int8WeightOnlyConfig())
    assert qc.needs_calibration(qc.Int8StaticActivationInt8WeightConfig())
    assert qc.needs_calibration(qc.config_from_string("int4wo-64+gptq"))
    assert qc.needs_calibration(qc.Recipe([("fc1", qc.Int4WeightOnlyConfig(64)),
                                           ("fc2", qc.config_from_string("int4wo-64+awq"))]))
    assert not qc.needs_calibration(qc.Recipe([("fc1", qc.Int4WeightOnlyConfig(64)), ("fc2", None)]))
