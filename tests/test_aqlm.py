"""AQLM: additive codebooks, their reference op, the learning against the Hessian, the config and its alias."""
import pytest
import torch

import qcompiler as qc
from qcompiler.passes.aqlm import AQLM, aqlm_quantize, beam_search, codes_error, coupled_search
from qcompiler.passes.spec import AdditiveWeight
from qcompiler.runtime.additive import code_dtype, codes_as_long, fit_additive


def test_dequantize_additive_sums_one_vector_per_codebook_times_the_row_scale():
    books = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])  # 2 codebooks of 2 vectors of 2
    codes = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)  # one row, two groups
    w = qc.dequantize_additive(codes, books, torch.tensor([[2.0]]))
    assert w.tolist() == [[2 * 31.0, 2 * 42.0, 2 * 13.0, 2 * 24.0]]


def test_16_bit_codes_are_stored_as_int16_and_read_back_whole():
    books = torch.zeros(1, 1 << 16, 1)
    books[0, 40000, 0], books[0, 7, 0] = 5.0, 3.0
    codes = torch.tensor([[[40000], [7]]], dtype=torch.int32).to(code_dtype(16))
    assert codes.dtype == torch.int16
    assert qc.dequantize_additive(codes, books, torch.ones(1, 1)).tolist() == [[5.0, 3.0]]


def test_the_config_its_alias_and_its_errors():
    config = qc.config_from_string("aqlm-2x8-g8")
    assert config == qc.AQLMWeightOnlyConfig(2, 8, 8) and config.alias == "aqlm-2x8-g8"
    assert qc.AQLMWeightOnlyConfig().alias == "aqlm-1x16-g8" and qc.needs_calibration(config)
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 16"):
        qc.AQLMWeightOnlyConfig(1, 17)
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        qc.AQLMWeightOnlyConfig(beam=0)


def _layer(seed=0, n=64, k=128, rows=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.linspace(0.2, 3, k)  # inputs of unequal weight
    return torch.randn(n, k, generator=g), x.t() @ x


def _error(spec, w, stored, h):
    delta = w - spec.dequantize(stored, w.shape[1], torch.float32)
    return float(((delta @ h) * delta).sum())


@pytest.mark.parametrize("codebooks,bits", [(1, 8), (2, 6)])
def test_learning_against_the_hessian_beats_residual_kmeans(codebooks, bits):
    w, h = _layer()
    spec = AdditiveWeight(codebooks, bits, 8)
    learned = aqlm_quantize(spec, w, h, AQLM(beam=4, rounds=3))
    assert _error(spec, w, learned, h) < 0.8 * _error(spec, w, fit_additive(w, codebooks, bits, 8), h)
    assert learned["codes"].shape == (64, 16, codebooks) and learned["codebooks"].dtype == torch.float16


def test_beam_search_with_one_codebook_finds_each_groups_best_vector():
    torch.manual_seed(0)
    v, books = torch.randn(3, 4, 2), torch.randn(1, 16, 2)
    blocks = torch.eye(2).expand(4, 2, 2) + 0.3
    codes = beam_search(v, blocks, books, torch.zeros(3, 4, 1, dtype=torch.long), beam=2)
    diff = v[:, :, None, :] - books[0]  # [3, 4, 16, 2]
    err = torch.einsum("ngeh,ghk,ngek->nge", diff, blocks, diff)
    assert torch.equal(codes[..., 0], err.argmin(-1))


def test_the_search_under_the_whole_hessian_beats_the_search_under_its_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.1 * torch.randn(512, 64, generator=g)
    w, h = torch.randn(16, 64, generator=g), x.t() @ x  # inputs correlated across groups
    start = AdditiveWeight(1, 6, 8).quantize(w)
    scale, books, codes = start["scale"], start["codebooks"].float(), codes_as_long(start["codes"])
    v, blocks = (w / scale).reshape(16, 8, 8), h.reshape(8, 8, 8, 8).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    coupled = codes_error(w, scale, coupled_search(v, h, blocks, books, codes, beam=2), books, h)
    alone = codes_error(w, scale, beam_search(v, blocks, books, codes, beam=2), books, h)
    # one codebook: each group's pick is the best given the others, so the error can only fall from the start
    assert coupled < 0.5 * alone and coupled < codes_error(w, scale, codes, books, h)


def test_a_model_quantizes_lowers_and_runs_with_aqlm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()
    data = [(torch.randn(16, 64),) for _ in range(4)]
    prog = qc.quantize(model, (data[0][0],), qc.AQLMWeightOnlyConfig(2, 6, 8, rounds=2), calibration_data=data)
    assert [r.scheme for r in qc.report(prog).quantized] == ["aqlm-2x6-g8"] * 2
    low = qc.lower(prog, "cpu")
    assert [r.kernel.split(" (")[0] for r in qc.report(low).quantized] == ["qcompiler.additive_gemm"] * 2
    x = torch.randn(16, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs calibration"):
        qc.quantize(model, (data[0][0],), qc.AQLMWeightOnlyConfig(2, 6, 8))
