"""GPTQ: quantize a weight column by column, spreading each column's error over the columns not yet
quantized through the inverse Hessian of the layer's inputs (Frantar et al., 2022).

The loop is the reference one (Cholesky of the damped inverse Hessian, lazy batch updates
of ``block_size`` columns). What a column rounds to comes from a *column quantizer* built
from the weight spec, so the result is stored exactly as round-to-nearest stores it:

- affine (int8 per channel, int4 groups): each group's qparams are chosen by the spec's own
  ``choose_qparams_affine`` when the loop reaches the group, from the weights as updated so
  far (with ``act_order``, from the original weights, so groups stay contiguous);
- codebook: k-means tables with each weight counted by its input's Hessian diagonal (per row on the
  int8 grid, which stores a table per row anyway) start; each weight takes its row table's nearest
  entry with error feedback, ``descend`` sweeps of coordinate descent then move each weight to the
  entry that lowers the layer's error most with the others fixed, then the tables are refitted to those
  assignments by least squares under the damped Hessian (``codebook_refit``), and again, for
  ``refit`` rounds; the pair with the least error is kept.

Every fourth calibration row's Hessian is held back (``observe.py``): fitted on the others, a
layer's result is checked on those rows against round to nearest, and damped more or dropped
where it loses (:func:`guarded_gptq`), so GPTQ never overfits a rank-deficient Hessian unseen.
"""
from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import torch

from ..runtime import int_type
from ..runtime.errors import fail
from ..runtime.numerics import layer_error
from .algorithm import Algorithm, Solved, register
from .codebook_refit import CodebookTables
from .spec import AffineWeight, CodebookWeight

ops = torch.ops.qcompiler
EPS = torch.finfo(torch.float32).eps
FALLBACK_DAMP = 0.5  # where the configured damp loses to round to nearest on held-back rows
DEFAULT_DAMP = {AffineWeight: 0.1, CodebookWeight: 0.3}  # GPTQ(damp=None), by weight spec


@register
@dataclass(frozen=True)
class GPTQ(Algorithm):
    """GPTQ (Frantar et al., 2022): quantize a weight column by column and spread each column's
    error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
    inputs (``H = XᵀX`` over the calibration data).

    ``damp``: fraction of the mean diagonal added to ``H``; ``None`` (the default) takes 0.1 for affine
    weights and 0.3 for codebooks (:data:`DEFAULT_DAMP`), not the paper's 0.01: with a few thousand
    calibration rows a wide layer's ``H`` is rank-deficient. On MiniLM (48 calibration sentences) 0.1 beat
    0.01 and 0.3 on int4; codebooks, whose tables and descent lean on ``H`` harder, did best at 0.3.
    ``block_size``: columns updated together; ``act_order``: quantize columns in order of decreasing ``H``
    diagonal (groups keep their qparams from the original weights then, so the stored layout is unchanged).
    ``refit``: codebooks only, rounds of refitting the tables to GPTQ's assignments (``codebook_refit``).
    ``descend``: codebooks only, sweeps of coordinate descent over the assignments after error feedback
    (:meth:`CodebookColumns.descend`): error feedback only looks ahead, the sweeps also revisit the
    columns behind.
    ``guard``: check each layer on held-back calibration rows and never keep a result worse than round
    to nearest there (:func:`guarded_gptq`; the layer's report says where it damped more or fell back).
    """

    damp: Optional[float] = None
    block_size: int = 128
    act_order: bool = False
    refit: int = 3
    descend: int = 2
    guard: bool = True
    name: ClassVar[str] = "gptq"
    needs: ClassVar[tuple] = ("hessian", "held_out")

    def unsupported(self, spec) -> Optional[str]:
        if spec.activation is None and isinstance(spec.weight, (AffineWeight, CodebookWeight)):
            return None
        return "GPTQ quantizes affine or codebook weights of weight-only schemes"

    def __post_init__(self):
        if self.damp is not None and not (isinstance(self.damp, (int, float)) and 0 <= self.damp < 1):
            raise fail("damp", "None or a fraction in [0, 1)", self.damp)
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise fail("block_size", "a positive integer", self.block_size)
        for field in ("refit", "descend"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise fail(field, "a number of rounds >= 0", value)

    def damp_for(self, spec) -> float:
        """The damping this weight gets: ``damp``, or the default for its kind of weight."""
        return DEFAULT_DAMP[type(spec)] if self.damp is None else self.damp

    def quantize_weight(self, spec, w: torch.Tensor, stats) -> Solved:
        held = getattr(stats, "hessian_held", None)
        if not self.guard or held is None or not bool(held.diagonal().any()):
            return Solved(gptq_quantize(spec, w, stats.hessian, self))
        return guarded_gptq(spec, w, stats.hessian, held, stats.hessian_rows, self)


class AffineColumns:
    """Columns of an affine weight: qparams per group (or per row), integer codes per column."""

    def __init__(self, spec: AffineWeight, w: torch.Tensor, static: bool):
        self.spec, (n, self.k) = spec, w.shape
        self.group = spec.group_size or self.k
        self.q = torch.zeros(n, self.k, dtype=torch.int32)
        self.params: dict = {}
        if static or spec.group_size is None:  # all qparams from the original weights
            for g in range(self.k // self.group):
                self.params[g] = self._choose(w[:, g * self.group:(g + 1) * self.group])

    def _choose(self, block: torch.Tensor):
        s, z = ops.choose_qparams_affine(block, [1, -1], self.spec.dtype, self.spec.mapping,
                                         self.spec.zero_point_domain, self.spec.zero_point_dtype,
                                         self.spec.scale_dtype, EPS)
        return s, (None if self.spec.zero_point_domain == "none" else z)

    def column(self, j: int, col: torch.Tensor, ahead) -> torch.Tensor:
        """Round column ``j`` (original index); ``ahead(n)`` gives the current weights of columns j..j+n."""
        g = j // self.group
        if g not in self.params:
            self.params[g] = self._choose(ahead(self.group))
        s, z = self.params[g]
        q = ops.quantize_affine(col[:, None], [1, 1], s, z, self.spec.dtype, self.spec.zero_point_domain)
        self.q[:, j] = q[:, 0].to(torch.int32)
        return ops.dequantize_affine(q, [1, 1], s, z, self.spec.dtype, self.spec.zero_point_domain,
                                     torch.float32)[:, 0]

    def stored(self) -> dict:
        groups = [self.params[g] for g in range(self.k // self.group)]
        it = int_type(self.spec.dtype)
        q = self.q.to(it.storage)
        out = {"q": q if it.bits == 8 else ops.pack_int(q, it.bits), "scale": torch.cat([s for s, _ in groups], 1)}
        return out if groups[0][1] is None else {**out, "zero_point": torch.cat([z for _, z in groups], 1)}


class CodebookColumns:
    """Columns of a codebook weight: each weight takes its row's nearest entry ([N, E] entries per row)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self.idx = torch.zeros(rows.shape[0], 0, dtype=torch.uint8)

    def start(self, k: int) -> "CodebookColumns":
        self.idx = torch.zeros(self.rows.shape[0], k, dtype=torch.uint8)
        return self

    def column(self, j: int, col: torch.Tensor, ahead) -> torch.Tensor:
        nearest = (self.rows - col[:, None]).abs().argmin(1)
        self.idx[:, j] = nearest.to(torch.uint8)
        return self.rows.gather(1, nearest[:, None])[:, 0]

    def descend(self, w: torch.Tensor, h: torch.Tensor, sweeps: int, block: int) -> None:
        """Coordinate descent on the assignments under ``h``: with ``R = W - Ŵ``, weight ``k`` of every row
        moves to the entry nearest ``w_k - r_k + (R h)_k / h_kk``, which minimises ``tr(R h Rᵀ)`` over that
        weight with the others fixed, so no step raises the error. ``R h`` is kept current inside a block of
        columns and brought up to date for the rest with one matmul per block."""
        idx = self.idx.long()
        r = w - self.rows.gather(1, idx)
        hr, diag, k = r @ h, h.diagonal(), w.shape[1]
        for _ in range(sweeps):
            for s in range(0, k, block):
                e = min(s + block, k)
                before = r[:, s:e].clone()
                for j in range(s, e):
                    nearest = (self.rows - (w[:, j] - r[:, j] + hr[:, j] / diag[j])[:, None]).abs().argmin(1)
                    rj = w[:, j] - self.rows.gather(1, nearest[:, None])[:, 0]
                    hr[:, s:e] += (rj - r[:, j])[:, None] * h[j, s:e][None, :]
                    r[:, j], idx[:, j] = rj, nearest
                delta = r[:, s:e] - before
                hr[:, :s] += delta @ h[s:e, :s]
                hr[:, e:] += delta @ h[s:e, e:]
        self.idx = idx.to(torch.uint8)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian (GPTQ's ``Hinv``)."""
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0])
    for extra in (0.0, 1e-6, 1e-4, 1e-2):  # a near-singular H (few calibration rows) gets more damping
        try:
            lower = torch.linalg.cholesky(h + extra * h.diagonal().mean() * torch.eye(h.shape[0]))
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("qcompiler: GPTQ could not factor the layer's Hessian even with extra damping; "
                     "calibrate with more (or more varied) inputs")


def _damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0])


def _error_feedback(cols, w: torch.Tensor, hinv: torch.Tensor, order: torch.Tensor, block: int) -> None:
    """GPTQ's loop: round column by column (``cols.column``), each error spread over the columns after it."""
    w = w[:, order].clone()
    k = w.shape[1]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            def ahead(n, i=i):  # the current weights of the next n columns (this block's updated ones first)
                return torch.cat([w1[:, i:i + n], w[:, i2:i2 + max(0, n - (i2 - i1 - i))]], 1)
            q = cols.column(int(order[i1 + i]), w1[:, i], ahead)
            e = (w1[:, i] - q) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]


def gptq_quantize(spec, w: torch.Tensor, hessian: torch.Tensor, algo: GPTQ) -> dict:
    """GPTQ for ``w`` [N, K] under ``spec`` with the input Hessian ``XᵀX`` [K, K]; the stored tensors."""
    w = w.detach().float().clone()
    h = hessian.float().clone()
    dead = h.diagonal() == 0  # inputs never non-zero: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    order = torch.argsort(h.diagonal(), descending=True) if algo.act_order else torch.arange(w.shape[1])
    hinv = _inverse_hessian_factor(h[order][:, order], algo.damp_for(spec))
    if isinstance(spec, CodebookWeight):
        return _codebook_rounds(spec, w, h, hinv, order, algo)
    cols = AffineColumns(spec, w, algo.act_order)
    _error_feedback(cols, w, hinv, order, algo.block_size)
    return cols.stored()


def _codebook_rounds(spec, w, h, hinv, order, algo: GPTQ) -> dict:
    """Assign with error feedback and coordinate descent, refit the tables to the assignments, again:
    ``algo.refit`` rounds; the (assignments, tables) pair with the least error under the damped Hessian is stored."""
    hd = _damped(h, algo.damp_for(spec))
    tables = CodebookTables.fitted(spec, w, h)
    best: Optional[tuple] = None
    for round_ in range(algo.refit + 1):
        cols = CodebookColumns(tables.per_row(w.shape[0])).start(w.shape[1])
        _error_feedback(cols, w, hinv, order, algo.block_size)
        cols.descend(w, hd, algo.descend, algo.block_size)
        candidates = [tables] if round_ == algo.refit else [tables, tables.refitted(w, cols.idx, hd)]
        for t in candidates:
            error = t.error(w, cols.idx, hd)
            if best is None or error < best[0]:
                best = (error, cols.idx, t)
        tables = candidates[-1]
    assert best is not None
    return best[2].stored(best[1])


def held_out_error(spec, w: torch.Tensor, tensors: dict, held: torch.Tensor) -> float:
    """``tr((W - Ŵ) H_held (W - Ŵ)ᵀ)``: the output error on the held-back calibration rows."""
    return layer_error(w.float() - spec.dequantize(tensors, w.shape[1], torch.float32), held)


def guarded_gptq(spec, w: torch.Tensor, hessian: torch.Tensor, held: torch.Tensor, rows: int, algo: GPTQ) -> Solved:
    """GPTQ that never does worse than round to nearest on calibration rows it did not fit.

    Fitted on the rows not held back, GPTQ's error on the held-back rows is compared with round to
    nearest's. Where it is worse (an ``H`` of fewer rows than inputs lets error feedback overfit), it is
    fitted again with damp :data:`FALLBACK_DAMP`, and where that is worse too, the layer keeps round to
    nearest. The setting that won is fitted again on all rows. The note says what happened.
    """
    rtn = spec.quantize(w)
    rtn_error = max(held_out_error(spec, w, rtn, held), 1e-30)
    fit, tried = hessian - held, []
    configured = algo.damp_for(spec)
    for damp in dict.fromkeys((configured, max(configured, FALLBACK_DAMP))):
        ratio = held_out_error(spec, w, gptq_quantize(spec, w, fit, replace(algo, damp=damp)), held) / rtn_error
        tried.append(f"{ratio:.2f}x with damp {damp}")
        if ratio <= 1:
            final = gptq_quantize(spec, w, hessian, replace(algo, damp=damp))
            return Solved(final, None if damp == configured else
                          f"GPTQ damped more ({damp}): its error on held-back calibration rows was {tried[0]} "
                          f"round to nearest's ({rows} rows for {w.shape[1]} inputs)")
    return Solved(rtn, f"round to nearest kept: GPTQ's error on held-back calibration rows was {', '.join(tried)} "
                       f"round to nearest's ({rows} rows for {w.shape[1]} inputs)")
