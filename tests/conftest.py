import os
import tempfile

import pytest

from hypothesis import HealthCheck, settings

# pytest-xdist: each worker compiles into its own Inductor cache, so that qc.package removing the build folder of
# a package it made never removes a folder another worker is compiling the same graph in.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                         f"qcompiler-tests-inductor-{os.environ['PYTEST_XDIST_WORKER']}")

# The heaviest files first (they package models, build the native kernels or the C++ runner): with `--dist loadfile`
# two workers then take the long files early and finish together, instead of one starting a long file last.
HEAVY_FIRST = ("test_lower.py", "test_cpp_runner.py", "test_cli.py", "test_lm.py", "test_examples.py",
               "test_table_gemm.py", "test_int8_tile_gemm.py", "test_package.py", "test_autoquant.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


# CI runs derandomized so a red build reproduces; locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Without a GPU, Triton kernels run in Triton's CPU interpreter (read when a kernel is defined).
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass


def _every_kernel_program():
    """128-wide linears, one per scheme whose kernel a .pt2 carries inside: int8dq (ATen, or int8_gemm without
    VNNI), int4wo and int8da-int4w (qcompiler.int8_int4_gemm), codebook-4 (codebook_gemm), AQLM (additive_gemm),
    nvfp4, mxfp8 and fp6 (table_gemm where the machine has AVX2 or more, decomposed below: 4-, 8- and 6-bit codes),
    then two int8static layers with a ReLU between (on AMX: int8_tile_gemm_requant, then int8_tile_gemm; the ReLU
    keeps every path's bits the same)."""
    import qcompiler as qc
    torch.manual_seed(0)
    d = 128
    schemes = ("int8dq", "int4wo-32", "int8da-int4w-32", "codebook-4", "aqlm-2x8-g8", "nvfp4", "mxfp8", "fp6",
               "int8static", None, "int8static")
    model = torch.nn.Sequential(*[torch.nn.Linear(d, d) if s else torch.nn.ReLU() for s in schemes]).eval()
    recipe = qc.Recipe([(str(i), qc.config_from_string(s)) for i, s in enumerate(schemes) if s])
    return qc.quantize(model, (torch.randn(4, d),), recipe, dynamic_shapes=({0: torch.export.Dim("rows", max=256)},),
                       calibration_data=[(torch.randn(32, d),)])


@pytest.fixture(scope="session")
def every_kernel(tmp_path_factory):
    """A packaged .pt2 whose layers call every kernel a file can carry (packaged once a run, whichever workers ask),
    with inputs of several row counts and the lowered program's outputs for them, and the table layers' packed codes
    by constant name (saved beside it as io.pt)."""
    from made_once import made_once

    def make(folder):
        import qcompiler as qc
        lowered = qc.lower(_every_kernel_program(), "cpu")
        qc.package(lowered, folder / "every_kernel.pt2")
        torch.manual_seed(1)
        xs = [torch.randn(m, 128) for m in (1, 5, 64, 200)]
        codes = {name: t for name, t in lowered.state_dict.items() if name.endswith("_table_gemm")}
        torch.save({"xs": xs, "ys": [lowered.module()(x) for x in xs], "table_codes": codes}, folder / "io.pt")

    folder = made_once(tmp_path_factory, "every_kernel", make)
    return folder / "every_kernel.pt2", folder / "io.pt"


@pytest.fixture(scope="session")
def deploy_llm_example(tmp_path_factory):
    """examples/deploy_llm.py run once a run (a tiny llama, int4wo-64, max_seq_len 256, packaged: ~20 s): the file it
    writes and what it printed."""
    pytest.importorskip("transformers")
    from example_scripts import run_example
    from made_once import made_once

    def make(folder):
        (folder / "stdout.txt").write_text(run_example("deploy_llm.py", "--out", "lm.pt2", cwd=folder))

    folder = made_once(tmp_path_factory, "deploy_llm", make)
    return folder / "lm.pt2", (folder / "stdout.txt").read_text()


def tiny_slots_llama():
    """A tiny llama (random weights, 2 layers, grouped-query) for the independent-sequence tests."""
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def slots_lm(tmp_path_factory):
    """The tiny llama captured with 3 slots (max_seq_len 64), int4wo-32, packaged once a run (~20 s): its path."""
    pytest.importorskip("transformers")
    from made_once import made_once

    def make(folder):
        import qcompiler as qc
        lm = qc.capture_lm(tiny_slots_llama(), 64, slots=3)
        qc.package(qc.lower(qc.convert(qc.prepare(lm, qc.config_from_string("int4wo-32"))), "cpu"),
                   folder / "slots_lm.pt2")

    return made_once(tmp_path_factory, "slots_lm", make) / "slots_lm.pt2"
