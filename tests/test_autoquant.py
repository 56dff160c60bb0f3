"""Autoquant: the plan round-trips as JSON, a foreign plan is refused, a floor nothing meets leaves a layer
float with the reason, the choice is a function of the measurements, and one small model is measured for real."""
import json
import logging
import math
import os
import platform
import subprocess
import sys

import pytest
import torch

import qcompiler as qc
from qcompiler.tuning.choose import choose
from qcompiler.tuning.autoquant import _cache_regime
from qcompiler.tuning.measure import DEFAULT_CACHE_BYTES, last_level_cache_bytes
from qcompiler.plan import FLOAT, Candidate, LayerPlan, Plan

SHAPES = {"decode": 1, "prefill": 64}


def cand(scheme, decode, prefill, sqnr=math.inf, excluded=None):
    return Candidate(scheme, f"kernel of {scheme}", {"decode": decode, "prefill": prefill}, sqnr + 5, sqnr, excluded)


def layers():
    return [LayerPlan("a", 256, 128, (cand(FLOAT, 10, 100), cand("int8dq", 4, 40, 38.0),
                                      cand("int4wo-64", 2, 60, 19.0))),
            LayerPlan("b", 128, 256, (cand(FLOAT, 10, 100), cand("int8dq", 5, 50, 31.0),
                                      cand("int4wo-64", 3, 45, 21.0), cand("codebook-4", 0, 0, 50.0, "not fused")))]


def plan(accuracy=20.0, target=None):
    target = target or qc.Target("cpu", frozenset({"avx2"}))
    return Plan(target, SHAPES, str(qc.LayerFloor(accuracy)), tuple(choose(layers(), accuracy)), 1.5)


def test_a_floor_takes_each_layers_fastest_candidate_that_meets_it():
    a, b = choose(layers(), 20.0)
    assert (a.choice, b.choice) == ("int8dq", "int4wo-64")  # a: int4wo-64 (62 us) is under 20 dB
    assert "under the floor: int4wo-64 19.0 dB" in a.reason and "codebook" not in b.reason  # excluded: never chosen


def test_a_floor_that_excludes_every_candidate_leaves_the_layer_float_with_the_reason():
    a, b = choose(layers(), 60.0)
    assert a.choice == b.choice == FLOAT
    assert a.reason == "left float: every candidate is under 60 dB (best int8dq at 38.0 dB)"


def test_the_choice_is_a_function_of_the_measurements_and_ties_go_to_the_first_listed():
    assert choose(layers(), 20.0) == choose(layers(), 20.0)
    tied = [LayerPlan("t", 8, 8, (cand(FLOAT, 9, 9), cand("int8wo", 1, 1, 40.0), cand("int8dq", 1, 1, 40.0)))]
    assert choose(tied, 20.0)[0].choice == "int8wo"
    assert choose(tied, qc.ModelBudget(20.0))[0].choice == "int8wo"


def test_weights_make_the_shape_that_runs_most_decide_and_a_plan_is_rechosen_with_new_ones():
    assert [c.choice for c in choose(layers(), 20.0)] == ["int8dq", "int4wo-64"]  # 44 and 48 us summed
    # 64 decode steps per prefill: a's int4wo-64 is under 20 dB, b's int4wo-64 decodes faster than its int8dq
    assert [c.choice for c in choose(layers(), 15.0, {"decode": 64})] == ["int4wo-64", "int4wo-64"]
    assert [c.choice for c in choose(layers(), 15.0, {"decode": 0.01})] == ["int8dq", "int4wo-64"]
    recipe = qc.autoquant(None, plan=plan(15.0), target="cpu:avx2", accuracy=15.0, weights={"decode": 64})
    assert recipe.plan.weights == {"decode": 64} and recipe.plan.layers[0].choice == "int4wo-64"
    assert qc.Recipe.from_json(recipe.to_json()) == recipe and "weighted {'decode': 64}" in recipe.plan.table()
    again = qc.autoquant(None, plan=recipe, target="cpu:avx2", accuracy=15.0)  # the plan's weights kept
    assert again.plan.weights == {"decode": 64} and again.plan.layers[0].choice == "int4wo-64"
    with pytest.raises(ValueError, match=r"weights must be a positive number per shape label, labels among "
                                         r"\['decode', 'prefill'\]"):
        qc.autoquant(None, plan=plan(), target="cpu:avx2", weights={"generate": 64})


def test_a_model_budget_is_spent_where_it_buys_the_most_time():
    # room for one layer at 30 dB of noise: a saves 100 us for it, b saves 10 us
    two = [LayerPlan("a", 8, 8, (cand(FLOAT, 100, 100), cand("int8dq", 0, 0, 30.0))),
           LayerPlan("b", 8, 8, (cand(FLOAT, 10, 10), cand("int8dq", 5, 5, 30.0)))]
    a, b = choose(two, qc.ModelBudget(-10 * math.log10(1.5e-3 / 2)))
    assert (a.choice, b.choice) == ("int8dq", FLOAT) and "whole-model budget" in a.reason
    assert [c.choice for c in choose(two, qc.ModelBudget(0.0))] == ["int8dq", "int8dq"]


def test_the_plan_round_trips_through_json_and_prints_a_table():
    recipe = qc.autoquant(None, plan=plan(), target="cpu:avx2")
    again = qc.Recipe.from_json(recipe.to_json())
    assert again == recipe and again.plan.layers[0].candidates[0].output_sqnr_db == math.inf
    assert [r.config.alias if r.config else None for r in again.rules] == ["int8dq", "int4wo-64"]
    assert json.loads(recipe.to_json())["plan"]["target"] == {"backend": "cpu", "capabilities": ["avx2"]}
    assert recipe.plan.predicted_us() == {"decode": 7.0, "prefill": 85.0}
    assert "int4wo-64" in recipe.plan.table() and "predicted total" in recipe.plan.table()


def test_a_plan_measured_on_another_target_is_refused():
    with pytest.raises(ValueError, match=r"measured on target cuda; it cannot be reused for cpu:avx2"):
        qc.autoquant(None, plan=plan(target=qc.Target("cuda")), target="cpu:avx2")


def test_bad_arguments_are_refused_by_name():
    model, x = torch.nn.Linear(8, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match="candidates must be schemes without an algorithm"):
        qc.autoquant(model, (x,), candidates=["int4wo-64+gptq"])
    with pytest.raises(ValueError, match="shapes must be"):
        qc.autoquant(model, (x,), shapes={"decode": 0})
    with pytest.raises(ValueError, match="target must be one this machine runs"):
        qc.autoquant(model, (x,), target="cuda")
    with pytest.raises(ValueError, match="accuracy must be"):
        qc.autoquant(model, (x,), accuracy="high")
    with pytest.raises(ValueError, match="rule 0's match, to be written as JSON, must be a name glob"):
        qc.Recipe([(lambda site: True, None)]).to_json()


def test_the_cache_flushed_before_each_timed_call_is_the_largest_one_sysfs_lists(tmp_path):
    for index, size in (("index0", "48K"), ("index2", "2048K"), ("index3", "32M")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert last_level_cache_bytes(tmp_path) == 32 << 20
    assert last_level_cache_bytes(tmp_path / "absent") == DEFAULT_CACHE_BYTES


def test_a_model_whose_weights_fit_in_the_cache_is_timed_warm_and_a_larger_one_cold():
    site = type("Site", (), {"out_features": 1024, "in_features": 1024})  # 1 MB at a byte a weight
    small, large = _cache_regime([site] * 2), _cache_regime([site] * (2 * last_level_cache_bytes() >> 20))
    assert small[0] is False and small[1].startswith("warm cache: the linears' weights (2 MB")
    assert large[0] is True and large[1].startswith("cold cache:")


STEADY = """
import resource, sys, torch
from qcompiler.tuning.measure import set_steady_allocator
if sys.argv[1] == "steady":
    set_steady_allocator()
for _ in range(3):  # two 24 MB buffers a round, as a layer's int32 accumulator and its output
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        a = torch.empty(6 << 20, dtype=torch.int32).fill_(1)
        b = torch.empty(6 << 20, dtype=torch.int32).fill_(1)
        del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the steadied allocator is glibc's")
def test_the_timer_steadies_the_allocator_so_large_outputs_are_not_page_faulted_on_every_call():
    def faults(mode):  # glibc's defaults fixed (its thresholds not adapting): 24 MB buffers are mapped afresh
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
        return int(subprocess.run([sys.executable, "-c", STEADY, mode], capture_output=True, text=True, check=True,
                                  env=env).stdout)
    assert faults("plain") > 6144  # about 6144 faults a buffer
    assert faults("steady") < 6144  # reused from the heap


def test_the_allocator_is_left_alone_unless_asked(monkeypatch):
    from qcompiler.tuning import measure

    calls = []
    monkeypatch.setattr(measure, "set_steady_allocator", lambda: calls.append(1))
    measure.Timer(qc.Target.host(), {"x": 1}, cold=False)
    assert calls == []
    measure.Timer(qc.Target.host(), {"x": 1}, cold=False, steady_allocator=True)
    assert calls == [1]


def test_held_back_drops_progress_info_in_its_own_thread_only_and_changes_no_level(caplog):
    import threading

    from qcompiler.passes.progress import held_back

    loggers = [logging.getLogger(n) for n in ("qcompiler.progress", "qcompiler.stages.package")]
    levels = [x.level for x in loggers]
    caplog.set_level(logging.INFO)
    with held_back():
        for x in loggers:
            x.info("held")
            x.warning("shown")
        other = threading.Thread(target=lambda: loggers[0].info("other thread"))
        other.start()
        other.join()
        assert [x.level for x in loggers] == levels
    loggers[0].info("after")
    assert [r.getMessage() for r in caplog.records] == ["shown", "shown", "other thread", "after"]


def test_a_small_model_is_measured_on_this_machine_and_its_recipe_quantizes_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128)).eval()
    batches = [(torch.randn(4, 128),) for _ in range(3)]
    recipe = qc.autoquant(model, batches[0], candidates=["int8dq"], shapes={"decode": 1, "prefill": 16},
                          accuracy=25.0, calibration_data=batches)
    first, second = recipe.plan.layers
    assert [c.scheme for c in first.candidates] == [FLOAT, "int8dq"]
    for c in first.candidates:
        assert set(c.us) == {"decode", "prefill"} and all(v >= 0 for v in c.us.values()) and c.excluded is None
    assert first.candidate("int8dq").us == second.candidate("int8dq").us  # one shape: timed once
    assert recipe.plan.timing.startswith("warm cache")  # 32 KB of weights
    assert 30 < first.candidate("int8dq").output_sqnr_db < math.inf
    assert first.choice in (FLOAT, "int8dq") and first.reason
    program = qc.quantize(model, batches[0], recipe)
    chosen = {r.name: r.scheme for r in qc.report(program).quantized}
    assert chosen == {layer.name: layer.choice for layer in recipe.plan.layers if layer.choice != FLOAT}
    cut = qc.autoquant(model, batches[0], candidates=["int8dq"], budget_s=0, calibration_data=batches * 50)
    assert cut.plan.shapes == {"example": 4}  # the example's rows, not the calibration data's (600)
    assert cut.plan.layers[0].candidate("int8dq").excluded == "not timed: budget_s (0 s) spent"
    assert cut.plan.layers[0].choice == FLOAT
