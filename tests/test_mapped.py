"""qc.load maps a CPU package's weights from the file (no copy at load) where it can, and copies them where not."""
import zipfile

import pytest
import torch

import qcompiler as qc
from qcompiler.runtime import mapped

SOURCE = """
    constants_info_[0].name = "constant_0_w";
    constants_info_[0].dtype = cached_torch_dtype_bfloat16;
    constants_info_[0].offset = 0;
    constants_info_[0].data_size = 128;
    constants_info_[0].from_folded = false;
    constants_info_[0].shape = {4, 16};
    constants_info_[0].stride = {16, 1};
    constants_info_[0].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[1].name = "constant_folded";
    constants_info_[1].dtype = cached_torch_dtype_float32;
    constants_info_[1].offset = 0;
    constants_info_[1].data_size = 64;
    constants_info_[1].from_folded = true;
    constants_info_[1].shape = {16};
    constants_info_[1].stride = {1};
    constants_info_[1].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[2].name = "constant_1_scale";
    constants_info_[2].dtype = cached_torch_dtype_float32;
    constants_info_[2].offset = 2;
    constants_info_[2].data_size = 64;
    constants_info_[2].from_folded = false;
    constants_info_[2].shape = {};
    constants_info_[2].stride = {};
    constants_info_[2].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[3].name = "_frozen_param0";
    constants_info_[3].dtype = cached_torch_dtype_int8;
    constants_info_[3].offset = 0;
    constants_info_[3].data_size = 4096;
    constants_info_[3].from_folded = false;
    constants_info_[3].shape = {64, 64};
    constants_info_[3].stride = {64, 1};
    constants_info_[3].layout = static_cast<int32_t>(cached_torch_layout__mkldnn);
    constants_info_[3].opaque_metadata = {1L, 0L, 255L};
"""


def test_the_generated_code_says_where_each_weight_lies_in_the_blob():
    assert mapped.constants(SOURCE) == [
        mapped.Constant("constant_0_w", torch.bfloat16, (4, 16), (16, 1), 0, 0, 128),
        mapped.Constant("constant_1_scale", torch.float32, (), (), 2, 128, 64),  # folded: computed, not read
        mapped.Constant("_frozen_param0", torch.int8, (64, 64), (64, 1), 0, 192, 4096, bytes([1, 0, 255]))]


@pytest.mark.parametrize("change,said", [
    (("cached_torch_layout_strided);\n    constants_info_[1]",
      "cached_torch_layout_sparse_coo);\n    constants_info_[1]"),
     "layout static_cast<int32_t>(cached_torch_layout_sparse_coo)"),
    (("    constants_info_[3].opaque_metadata = {1L, 0L, 255L};\n", ""), "in a form not known here"),
    (("cached_torch_dtype_bfloat16", "cached_torch_dtype_qint8x"), "dtype cached_torch_dtype_qint8x"),
    (("constants_info_[2].shape = {};\n", ""), "in a form not known here"),
])
def test_weights_it_cannot_map_are_named(change, said):
    with pytest.raises(mapped.Unmappable, match=said.replace("(", r"\(").replace(")", r"\)")):
        mapped.constants(SOURCE.replace(*change))


def test_a_package_loads_with_its_weights_viewing_the_file(every_kernel):
    path, io = every_kernel
    run = qc.load(path)
    model = run._run
    assert isinstance(model, mapped.MappedModel)
    mapping = model._mapping.untyped_storage()
    first, end = mapping.data_ptr(), mapping.data_ptr() + mapping.nbytes()
    assert model._weights and all(first <= w.data_ptr() < end for w in model._weights.values())
    copied = qc.load(path, map_weights=False)
    assert not isinstance(copied._run, mapped.MappedModel)
    io = torch.load(io)
    for x, y in zip(io["xs"], io["ys"]):
        assert torch.equal(run(x), y) and torch.equal(copied(x), y)


def test_a_file_whose_weights_cannot_be_mapped_loads_copied(every_kernel, monkeypatch, caplog):
    path, io = every_kernel
    monkeypatch.setattr(mapped, "ALIGNMENT", 1 << 30)  # as if the blob were not aligned
    with caplog.at_level("DEBUG", logger="qcompiler"):
        run = qc.load(path)
    assert not isinstance(run._run, mapped.MappedModel) and "not at a multiple of 1073741824" in caplog.text
    io = torch.load(io)
    assert torch.equal(run(io["xs"][0]), io["ys"][0])


def test_onednn_prepacked_weights_are_made_over_the_mapping_too(tmp_path):
    """Float linears after freezing hold oneDNN's prepacked weights (opaque tensors) on machines with oneDNN."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)).eval()
    program = qc.lower(torch.export.export(model, (torch.randn(4, 256),),
                                           dynamic_shapes=({0: torch.export.Dim("rows", max=64)},)), "cpu")
    path = qc.package(program, tmp_path / "float.pt2")
    run, copied = qc.load(path), qc.load(path, map_weights=False)
    assert isinstance(run._run, mapped.MappedModel)
    for rows in (1, 7, 64):
        x = torch.randn(rows, 256)
        assert torch.equal(run(x), copied(x))
    with zipfile.ZipFile(path) as z:
        source = z.read(next(n for n in z.namelist() if n.endswith(".wrapper.cpp"))).decode()
    if not any(c.opaque for c in mapped.constants(source)):
        pytest.skip("this machine's freezing made no oneDNN-prepacked weight (no opaque weight to map)")
