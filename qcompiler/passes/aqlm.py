"""AQLM (Egiazarian et al., 2024): additive codebooks learned against the layer's input Hessian.

From the residual k-means start (``runtime/additive.fit_additive``), ``rounds`` times:

- codes, by beam search, group after group (every row at once): codebook by codebook, each of the
  ``beam`` code tuples kept tries each of the codebook's ``2**bits`` vectors in its place, and the
  ``beam`` best tuples stay. A row's error is ``(v - v̂)ᵀ H (v - v̂)`` under the whole (damped) Hessian:
  with the other groups fixed, group ``j``'s part of it is ``(t_j - v̂_j)ᵀ H_jj (t_j - v̂_j)`` for the
  target ``t_j = v_j + H_jj⁻¹ H_j,¬j (v - v̂)_¬j``, so the search scores candidates with the ``g x g``
  block ``H_jj`` against a target that carries the other groups' error (kept up to date as codes change);
- codebooks, by least squares: each vector refitted to the groups that use it (a codebook at a
  time, the others fixed), rows weighted by their scale squared, under the blocks ``H_jj`` (the
  coupling between groups left out: exact per group, and cheap).

The layer's error ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` decides which round's state is kept (never worse than the start).

    before:  w ──residual k-means──> codes, codebooks       after:  codes ⇄ codebooks, under H
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..runtime.additive import code_dtype, codes_as_long
from ..runtime.errors import fail
from ..runtime.numerics import layer_error
from .algorithm import Algorithm
from .spec import AdditiveWeight

CHUNK_ELEMENTS = 1 << 24  # candidate scores computed this many at a time


@dataclass(frozen=True)
class AQLM(Algorithm):
    """AQLM's learning of codes and codebooks (see the module): ``beam`` code tuples kept per group,
    ``rounds`` of codes then codebooks, ``damp`` the fraction of the Hessian's mean diagonal added to it.
    Part of the ``aqlm`` scheme (``AQLMWeightOnlyConfig``), not a ``+suffix`` for others: unregistered."""

    beam: int = 4
    rounds: int = 4
    damp: float = 0.6  # measured on MiniLM: 0.01 overfits the few calibration rows (docs/measured.md, "AQLM")
    name: ClassVar[str] = "aqlm"
    needs: ClassVar[tuple] = ("hessian",)

    def unsupported(self, spec) -> Optional[str]:
        return None if isinstance(spec.weight, AdditiveWeight) else "AQLM learns additive codebooks (the aqlm scheme)"

    def __post_init__(self):
        for field, value in (("beam", self.beam), ("rounds", self.rounds)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise fail(field, "a positive integer", value)
        if not 0 <= self.damp < 1:
            raise fail("damp", "a fraction in [0, 1)", self.damp)

    def quantize_weight(self, spec, w: torch.Tensor, stats) -> dict:
        return aqlm_quantize(spec, w, stats.hessian, self)


def _groups_of(codes: torch.Tensor, books: torch.Tensor, skip: int = -1) -> torch.Tensor:
    """``Σ_m books[m][codes[..., m]]`` over the codebooks other than ``skip``: [..., g]."""
    total = books.new_zeros(*codes.shape[:-1], books.shape[-1])
    for m in range(books.shape[0]):
        if m != skip:
            total += books[m][codes[..., m]]
    return total


def codes_error(w, scale, codes, books, h) -> float:
    """The layer error of the weights these codes, codebooks and scales make."""
    return layer_error(w - (_groups_of(codes, books) * scale[:, :, None]).reshape(w.shape), h)


def beam_search(v: torch.Tensor, blocks: torch.Tensor, books: torch.Tensor, codes: torch.Tensor,
                beam: int) -> torch.Tensor:
    """Codes [n, G, M] for the groups ``v`` [n, G, g] under the blocks [G, g, g], from the current ``codes``."""
    n, groups, _ = v.shape
    entries = books.shape[1]
    quad = torch.einsum("meg,jgh,meh->mje", books, blocks, books)  # c_eᵀ H_j c_e: [M, G, E]
    out = torch.empty_like(codes)
    rows = max(1, CHUNK_ELEMENTS // (groups * entries * beam))
    for r0 in range(0, n, rows):
        tuples = codes[r0:r0 + rows, :, None, :]  # [c, G, B, M]: the beam, one tuple to start
        for m in range(books.shape[0]):
            target = v[r0:r0 + rows, :, None, :] - _groups_of(tuples, books, skip=m)  # [c, G, B, g]
            h_target = torch.einsum("jgh,cjbh->cjbg", blocks, target)
            own = (target * h_target).sum(-1, keepdim=True)  # each tuple's targetᵀ H target: tuples differ
            score = (own + quad[m][None, :, None, :] - 2 * h_target @ books[m].t()).flatten(2)  # [c, G, B·E]
            keep = min(beam, score.shape[-1])
            best = score.topk(keep, dim=-1, largest=False).indices
            parent, entry = best // entries, best % entries
            tuples = tuples.gather(2, parent[..., None].expand(*parent.shape, tuples.shape[-1])).clone()
            tuples[..., m] = entry
        out[r0:r0 + rows] = tuples[:, :, 0]  # the last codebook's ranking is the tuples' whole error
    return out


def coupled_search(v: torch.Tensor, h: torch.Tensor, blocks: torch.Tensor, books: torch.Tensor,
                   codes: torch.Tensor, beam: int) -> torch.Tensor:
    """Codes [n, G, M] for ``v`` [n, G, g] under the whole Hessian ``h`` [K, K], one group after another: each
    group's beam search aims at its target given the others' current error (see the module)."""
    n, groups, g = v.shape
    codes = codes.clone()
    r = (v - _groups_of(codes, books)).reshape(n, -1)  # each row's error, in units of its scale
    hr = r @ h
    inverse = torch.linalg.inv(blocks.double()).float()
    for j in range(groups):
        part = slice(j * g, (j + 1) * g)
        coupled = hr[:, part] - r[:, part] @ blocks[j]  # H_j,¬j r_¬j
        target = v[:, j] + coupled @ inverse[j]
        new = beam_search(target[:, None], blocks[j:j + 1], books, codes[:, j:j + 1], beam)
        codes[:, j] = new[:, 0]
        new_r = v[:, j] - _groups_of(new, books)[:, 0]
        hr += (new_r - r[:, part]) @ h[part]
        r[:, part] = new_r
    return codes


def refit_codebooks(v, blocks, scale, codes, books) -> torch.Tensor:
    """Each codebook's vectors by least squares given the codes and the other codebooks."""
    n, groups, g = v.shape
    weight = scale.reshape(n, 1, 1, 1).pow(2) * blocks[None]  # s_n² H_j: [n, G, g, g]
    books = books.clone()
    for m in range(books.shape[0]):
        target = v - _groups_of(codes, books, skip=m)
        idx = codes[..., m].reshape(-1)
        lhs = books.new_zeros(books.shape[1], g, g, dtype=torch.float64).index_add_(
            0, idx, weight.reshape(-1, g, g).double())
        rhs = books.new_zeros(books.shape[1], g, dtype=torch.float64).index_add_(
            0, idx, (weight @ target[..., None]).reshape(-1, g).double())
        ridge = 1e-6 * lhs.diagonal(dim1=1, dim2=2).mean().clamp_min(1e-30)
        old = books[m].double()
        eye = torch.eye(g, dtype=torch.float64, device=books.device)
        solved = torch.linalg.solve(lhs + ridge * eye, rhs + ridge * old)
        books[m] = solved.float().half().float()  # stored in float16
    return books


def aqlm_quantize(spec, w: torch.Tensor, hessian: torch.Tensor, algo: AQLM) -> dict:
    """AQLM for ``w`` [N, K] under the additive spec with the input Hessian ``XᵀX``; the stored tensors."""
    w = w.detach().float()
    n, k = w.shape
    g = spec.group_size
    h = hessian.float().to(w.device)
    h = h + algo.damp * h.diagonal().mean().clamp_min(1e-12) * torch.eye(k, device=w.device)
    blocks = h.reshape(k // g, g, k // g, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()  # [G, g, g]
    start = spec.quantize(w)
    scale = start["scale"].float()
    v = (w / scale).reshape(n, k // g, g)
    codes, books = codes_as_long(start["codes"]), start["codebooks"].float()
    best = (codes_error(w, scale, codes, books, h), codes, books)
    for _ in range(algo.rounds):
        codes = coupled_search(v, h, blocks, books, codes, algo.beam)
        books = refit_codebooks(v, blocks, scale, codes, books)
        error = codes_error(w, scale, codes, books, h)
        if error < best[0]:
            best = (error, codes, books)
    _, codes, books = best
    return {"codes": codes.to(torch.int32).to(code_dtype(spec.bits)), "codebooks": books.half(), "scale": scale}
