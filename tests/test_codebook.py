"""Codebooks: nearest-entry quantization, k-means determinism and quality, and its speed bound."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qcompiler as qc


def brute_force_distance(x, codebook, block_rows):
    nb = codebook.shape[0]
    v = x.reshape(nb, -1, 1).float()
    return (v - codebook.float().unsqueeze(1)).abs().min(-1).values.reshape(x.shape)


@given(seed=st.integers(0, 2**31 - 1), rows=st.sampled_from([2, 4, 6]), cols=st.integers(1, 9),
       k=st.integers(1, 20), per_block=st.booleans())
def test_every_value_maps_to_its_nearest_entry(seed, rows, cols, k, per_block):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    block_rows = 2 if per_block else None
    nb = rows // 2 if per_block else 1
    codebook = torch.randn(nb, k, generator=g)  # unsorted, arbitrary
    if k > 2:
        x[0, 0] = (codebook[0, 0] + codebook[0, 1]) / 2  # a tie
    idx = qc.quantize_codebook(x, codebook, block_rows)
    assert idx.dtype == torch.uint8 and idx.shape == x.shape and int(idx.max()) < k
    xh = qc.dequantize_codebook(idx, codebook, block_rows)
    assert torch.equal((xh - x).abs(), brute_force_distance(x, codebook, block_rows))


def test_dequantize_codebook_looks_up_each_block():
    codebook = torch.tensor([[0.0, 1.0], [10.0, 20.0]])
    idx = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.uint8)
    out = qc.dequantize_codebook(idx, codebook, block_rows=2, output_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0], [20.0, 20.0], [10.0, 10.0]]


@pytest.mark.parametrize("init", ["quantile", "random"])
def test_kmeans_is_deterministic_for_a_seed(init):
    w = torch.randn(64, 48)
    a = qc.kmeans_codebook(w, 3, block_rows=16, seed=7, init=init)
    b = qc.kmeans_codebook(w, 3, block_rows=16, seed=7, init=init)
    assert a.shape == (4, 8) and torch.equal(a, b)
    assert torch.equal(a, a.sort(-1).values)


def test_random_init_depends_on_the_seed():
    w = torch.randn(4096)
    a = qc.kmeans_codebook(w, 4, init="random", seed=1, iters=1)
    b = qc.kmeans_codebook(w, 4, init="random", seed=2, iters=1)
    assert not torch.equal(a, b)


def sse(x, codebook, block_rows=None):
    idx = qc.quantize_codebook(x, codebook, block_rows)
    return (qc.dequantize_codebook(idx, codebook, block_rows) - x).pow(2).sum()


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kmeans_converges_to_a_lloyd_fixed_point_that_beats_a_uniform_grid(bits):
    x = torch.randn(256, 64)
    cb = qc.kmeans_codebook(x, bits)
    idx = qc.quantize_codebook(x, cb).flatten().long()
    for j in range(1 << bits):  # each entry is the mean of the values it serves
        members = x.flatten()[idx == j]
        torch.testing.assert_close(cb[0, j], members.mean(), atol=1e-5, rtol=1e-5)
    uniform = torch.linspace(x.min().item(), x.max().item(), 1 << bits).unsqueeze(0)
    assert sse(x, cb) < 0.9 * sse(x, uniform)


def test_kmeans_on_gaussian_data_finds_the_lloyd_max_levels():
    torch.manual_seed(0)
    cb = qc.kmeans_codebook(torch.randn(1 << 20), 2)
    # Lloyd-Max quantizer for N(0, 1), 4 levels: +-0.4528, +-1.510
    torch.testing.assert_close(cb[0], torch.tensor([-1.510, -0.4528, 0.4528, 1.510]), atol=0.01, rtol=0)


def test_weighted_kmeans_follows_the_weights():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0])
    heavy_left = qc.kmeans_codebook(x, 1, weight=torch.tensor([1.0, 1.0, 0.0, 0.0]) + 1e-9)
    assert heavy_left[0, 0].item() == pytest.approx(0.5)


def test_per_block_codebooks_fit_their_blocks():
    x = torch.cat([torch.randn(8, 16), 100 + torch.randn(8, 16)])
    per_tensor, per_block = qc.kmeans_codebook(x, 2), qc.kmeans_codebook(x, 2, block_rows=8)
    assert per_block.shape == (2, 4)
    # per block: 4 levels per cluster (MSE 0.1175 for N(0,1)); per tensor: 2 (MSE 0.363)
    assert sse(x, per_block, 8) < sse(x, per_tensor) / 2


def test_codebook_indices_store_packed():
    x = torch.randn(16, 30)
    cb = qc.kmeans_codebook(x, 3)
    idx = qc.quantize_codebook(x, cb)
    packed = qc.pack_int(idx, 3)
    assert packed.shape == (16, 12)  # 30 * 3 bits = 90 bits -> 12 bytes
    assert torch.equal(qc.unpack_int(packed, 3, 30), idx)
