"""Additive codebooks (AQLM): each group of ``g`` weights is the sum of one vector from each of ``M`` codebooks.

``w[n, j·g:(j+1)·g] = scale[n] · Σ_m codebooks[m, codes[n, j, m]]`` with ``M`` codebooks of
``2**bits`` vectors of ``g`` values (Egiazarian et al., 2024). Codes are uint8 for ``bits <= 8``,
else int16 holding the code's 16 bits (read back as ``code & 0xFFFF``). ``aqlm-1x16-g8`` (one
codebook of 65,536 vectors of 8) and ``aqlm-2x8-g8`` (two of 256) both store 2 bits a weight in
codes, plus the codebooks (1 MB and 8 KB in float16 per layer) and a scale per row.

:func:`fit_additive` is the data-free start (residual k-means, each codebook fitted to what the
ones before it left); ``passes/aqlm.py`` learns codes and codebooks against a layer's Hessian.
"""
import torch

from .errors import fail

CHUNK_ELEMENTS = 1 << 24  # distances computed this many at a time


def code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int16


def codes_as_long(codes: torch.Tensor) -> torch.Tensor:
    """Stored codes (uint8, or int16 holding 16 bits) as int64 indices."""
    return codes.long() & 0xFFFF if codes.dtype == torch.int16 else codes.long()


def _check(codes, codebooks, scale):
    if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or codes.dtype not in (torch.uint8, torch.int16):
        raise fail("codes", "a uint8 or int16 [N, K / group_size, codebooks] tensor",
                   f"{getattr(codes, 'dtype', type(codes).__name__)} {list(getattr(codes, 'shape', []))}")
    if not isinstance(codebooks, torch.Tensor) or codebooks.ndim != 3 or codebooks.shape[0] != codes.shape[2]:
        raise fail("codebooks", f"a [{codes.shape[2]}, 2**bits, group_size] float tensor",
                   list(getattr(codebooks, "shape", [])))
    if not isinstance(scale, torch.Tensor) or scale.numel() != codes.shape[0]:
        raise fail("scale", f"one value per row ({codes.shape[0]})", list(getattr(scale, "shape", [])))


@torch.library.custom_op("qcompiler::dequantize_additive", mutates_args=())
def _dequantize_additive_op(codes: torch.Tensor, codebooks: torch.Tensor, scale: torch.Tensor,
                            output_dtype: torch.dtype) -> torch.Tensor:
    _check(codes, codebooks, scale)
    idx = codes_as_long(codes)
    groups = sum(codebooks[m].float()[idx[..., m]] for m in range(codebooks.shape[0]))  # [N, K / g, g]
    return (groups * scale.float().reshape(-1, 1, 1)).reshape(codes.shape[0], -1).to(output_dtype)


@_dequantize_additive_op.register_fake
def _(codes, codebooks, scale, output_dtype):
    _check(codes, codebooks, scale)
    return codes.new_empty((codes.shape[0], codes.shape[1] * codebooks.shape[2]), dtype=output_dtype)


def dequantize_additive(codes: torch.Tensor, codebooks: torch.Tensor, scale: torch.Tensor,
                        output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] the codes, codebooks and row scales stand for."""
    return _dequantize_additive_op(codes, codebooks, scale, output_dtype)


def nearest(v: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid [k, g] (Euclidean) for each vector of ``v`` [n, g], in chunks."""
    out = torch.empty(v.shape[0], dtype=torch.long, device=v.device)
    c2 = centroids.pow(2).sum(1)
    step = max(1, CHUNK_ELEMENTS // max(centroids.shape[0], 1))
    for i in range(0, v.shape[0], step):
        out[i:i + step] = (c2 - 2 * v[i:i + step] @ centroids.t()).argmin(1)
    return out


def kmeans_vectors(v: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """``k`` centroids [k, g] for the vectors ``v`` [n, g] by Lloyd's algorithm from k distinct vectors (with
    fewer vectors than ``k``, every vector is a centroid and the rest repeat them)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randperm(v.shape[0], generator=g)[:k]
    if start.numel() < k:
        start = torch.cat([start, torch.randint(0, v.shape[0], (k - start.numel(),), generator=g)])
    c = v[start].clone()
    if v.shape[0] <= k:
        return c
    for _ in range(iters):
        idx = nearest(v, c)
        count = v.new_zeros(k).index_add_(0, idx, v.new_ones(v.shape[0]))
        total = torch.zeros_like(c).index_add_(0, idx, v)
        new = torch.where(count[:, None] > 0, total / count.clamp_min(1)[:, None], c)
        if torch.equal(new, c):
            break
        c = new
    return c


def row_scale(w: torch.Tensor) -> torch.Tensor:
    """Each row's RMS (at least 1e-12): the scale that puts every row's groups on one codebook."""
    return w.float().pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)


def fit_additive(w: torch.Tensor, codebooks: int, bits: int, group_size: int) -> dict:
    """Residual k-means: codes, codebooks (float16) and row scales for ``w`` [N, K], without data."""
    n, k = w.shape
    if k % group_size:
        raise fail("group_size", f"a divisor of the {k} inputs", group_size)
    scale = row_scale(w)
    residual = (w.float() / scale).reshape(-1, group_size)
    books, codes = [], []
    for m in range(codebooks):
        c = kmeans_vectors(residual, 1 << bits, seed=m).half()
        idx = nearest(residual, c.float())
        residual = residual - c.float()[idx]
        books.append(c)
        codes.append(idx)
    stacked = torch.stack(codes, -1).reshape(n, k // group_size, codebooks)
    return {"codes": stacked.to(torch.int32).to(code_dtype(bits)), "codebooks": torch.stack(books),
            "scale": scale}
