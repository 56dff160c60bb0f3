"""Codebook tables that GPTQ refits to its assignments: least squares under the layer's input Hessian.

GPTQ's error feedback moves the weights away from where the k-means tables were fitted; tables
kept fixed then cost more than they save (MiniLM codebook-4: 0.9485 mean cosine with GPTQ against
0.9557 rounding to nearest). Given each weight's entry, the table minimizing the layer's output
error ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` solves, per table, the ``E x E`` system

    (Σ_rows Oᵀ H O) c = Σ_rows Oᵀ H w          (O: a row's one-hot assignments, K x E)

    before:  w ──nearest entry of the fixed table──> idx          after:  idx ──least squares──> table
             (tables from k-means on W)                                     (snapped onto the int8 grid again)

``Oᵀ H O`` costs ``K²·E`` a row; past :data:`EXACT_LIMIT` (LLM-sized layers) the diagonal of
``H`` stands in for it (each entry the ``H``-weighted mean of its weights). Entries no weight
uses keep their value.
"""
from dataclasses import dataclass

import torch

from ..runtime.numerics import layer_error
from .spec import CodebookWeight

ops = torch.ops.qcompiler
EXACT_LIMIT = 1 << 36  # K²·N·E multiply-adds (a second or so); beyond, the Hessian's diagonal stands in for it
ROWS_PER_CHUNK_ELEMENTS = 1 << 25  # rows per chunk of the exact product: chunk·K·E floats at most
EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class CodebookTables:
    """A codebook weight's tables as stored: int8 tables and scales per row (``grid="int8"``), or float tables
    per block of rows."""

    spec: CodebookWeight
    tables: dict  # {"codebook": ..., "codebook_scale": ...} as CodebookWeight.quantize stores them

    @classmethod
    def fitted(cls, spec: CodebookWeight, w: torch.Tensor, h: torch.Tensor) -> "CodebookTables":
        """Tables fitted by k-means with each weight counted by its input's Hessian diagonal: per row where the
        int8 grid stores a table per row anyway, per block of rows for float tables."""
        weight = h.diagonal().clamp_min(EPS).expand_as(w).contiguous()
        cb = ops.kmeans_codebook(w, spec.bits, 1 if spec.grid else spec.block_rows, 300, 0, "quantile", weight)
        if not spec.grid:
            return cls(spec, {"codebook": cb})
        return cls(spec, _on_grid(cb, ops.quantize_codebook(w, cb, 1)))

    def per_row(self, rows: int) -> torch.Tensor:
        """Each row's entries as float32 [rows, E]."""
        entries = self.spec._entries(self.tables).float()
        return entries if entries.shape[0] == rows else entries.repeat_interleave(rows // entries.shape[0], 0)

    def stored(self, idx: torch.Tensor) -> dict:
        q = idx if self.spec.bits == 8 else ops.pack_int(idx, self.spec.bits)
        return {"q": q, **self.tables}

    def error(self, w: torch.Tensor, idx: torch.Tensor, h: torch.Tensor) -> float:
        """``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` for the weights ``idx`` picks from these tables."""
        return layer_error(w - self.per_row(w.shape[0]).gather(1, idx.long()), h)

    def refitted(self, w: torch.Tensor, idx: torch.Tensor, h: torch.Tensor) -> "CodebookTables":
        """The tables that minimize :meth:`error` for these assignments, stored as the spec stores them."""
        n = w.shape[0]
        old = (self.per_row(n) if self.spec.grid else self.spec._entries(self.tables)).double()  # [tables, E]
        tables, entries = old.shape
        gram, rhs = _normal_equations(w, idx.long(), h, entries)
        gram = gram.reshape(tables, n // tables, entries, entries).sum(1)
        rhs = rhs.reshape(tables, n // tables, entries).sum(1)
        ridge = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)[:, None]  # unused entries stay
        system = gram + ridge[:, :, None] * torch.eye(entries, dtype=torch.float64)
        c = torch.linalg.solve(system, rhs + ridge * old).float()
        return CodebookTables(self.spec, _on_grid(c, idx) if self.spec.grid else {"codebook": c})


def _on_grid(c: torch.Tensor, idx: torch.Tensor) -> dict:
    """Each row's entries ``c`` [N, E] on the int8 grid, its scale fitted to the entries it uses (as rounding does)."""
    used = torch.zeros_like(c, dtype=torch.bool).scatter_(1, idx.long(), True)
    s = (c.abs() * used).amax(1, keepdim=True).clamp_min(EPS) / 127
    return {"codebook": torch.round(c / s).clamp(-127, 127).to(torch.int8), "codebook_scale": s}


def _normal_equations(w: torch.Tensor, idx: torch.Tensor, h: torch.Tensor, entries: int) -> tuple:
    """Per row, ``Oᵀ H O`` [N, E, E] and ``Oᵀ H w`` [N, E] in float64 (exact, or on H's diagonal when large)."""
    n, k = w.shape
    if k * k * n * entries > EXACT_LIMIT:
        d = h.diagonal().double()
        weight = torch.zeros(n, entries, dtype=torch.float64).scatter_add_(1, idx, d.expand(n, k).contiguous())
        rhs = torch.zeros(n, entries, dtype=torch.float64).scatter_add_(1, idx, w.double() * d)
        return torch.diag_embed(weight), rhs
    rhs = torch.zeros(n, entries, dtype=torch.float64).scatter_add_(1, idx, (w @ h).double())
    gram = torch.empty(n, entries, entries, dtype=torch.float64)
    step = max(1, ROWS_PER_CHUNK_ELEMENTS // (k * entries))
    for r0 in range(0, n, step):
        onehot = torch.nn.functional.one_hot(idx[r0:r0 + step], entries).float()  # [c, K, E]
        gram[r0:r0 + step] = (onehot.transpose(1, 2) @ (h @ onehot)).double()
    return gram, rhs
