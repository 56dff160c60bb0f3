"""QuantSpec: what a linear is to become, stored on ``node.meta["qspec"]`` by annotate.

Each weight spec knows its round-to-nearest quantization (a dict of tensors to
store) and its dequantization, written once in ``torch.ops.qcompiler`` ops so the
same code computes eagerly (to measure the error) and emits the reference graph
(called on ``torch.fx.Proxy`` values). Algorithms that pick better values
(GPTQ, HQQ, ...) produce the same dict of tensors.
"""
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import torch

from qcompiler.runtime import int_type, tables
from qcompiler.runtime.additive import fit_additive
from qcompiler.runtime.affine import resolve_zero_point_dtype

ops = torch.ops.qcompiler


# ------------------------------------------------------------------ the graphs specs emit
# Each representation's dequantization (and each activation quantization) is written once, here, as a function of
# its stored tensors and its settings. A spec calls it with its own settings (convert emits exactly that), and
# lowering traces it with parameters in their place into the reference pattern its rules match
# (lowering/reference_patterns.py), so a rule matches what the spec emits by construction.

def affine_bytes(w_q, block, scale, zero_point, dtype, domain, out_dtype):
    """Affine weights stored a value a byte (int8, uint8)."""
    return ops.dequantize_affine.default(w_q, block, scale, zero_point, dtype, domain, out_dtype)


def affine_packed(w_q, bits, n, signed, block, scale, zero_point, dtype, domain, out_dtype):
    """Sub-byte affine weights, packed (``pack_int``) along the input dimension of size ``n``."""
    return affine_bytes(ops.unpack_int.default(w_q, bits, n, signed), block, scale, zero_point, dtype, domain,
                        out_dtype)


def grid_tables(cb_q, cb_scale):
    """Int8 codebook tables (one per row) with a scale per row, as float32 entries."""
    return ops.dequantize_affine.default(cb_q, [1, -1], cb_scale, None, "int8", "none", torch.float32)


def grid_codebook_bytes(w_q, cb_q, cb_scale, block_rows, out_dtype):
    """8-bit codebook indices into int8 tables (one per row) with a scale per row."""
    return ops.dequantize_codebook.default(w_q, grid_tables(cb_q, cb_scale), block_rows, out_dtype)


def grid_codebook_packed(w_q, bits, n, cb_q, cb_scale, block_rows, out_dtype):
    """b-bit codebook indices, packed, into int8 tables with a scale per row."""
    return grid_codebook_bytes(ops.unpack_int.default(w_q, bits, n, False), cb_q, cb_scale, block_rows, out_dtype)


def float_codebook_bytes(w_q, codebook, block_rows, out_dtype):
    """8-bit codebook indices into float tables."""
    return ops.dequantize_codebook.default(w_q, codebook, block_rows, out_dtype)


def float_codebook_packed(w_q, bits, n, codebook, block_rows, out_dtype):
    """b-bit codebook indices, packed, into float tables."""
    return float_codebook_bytes(ops.unpack_int.default(w_q, bits, n, False), codebook, block_rows, out_dtype)


def additive(codes, codebooks, scale, out_dtype):
    """AQLM: each group the sum of one vector per codebook, times its row's scale."""
    return ops.dequantize_additive.default(codes, codebooks, scale, out_dtype)


def table_bytes(w_q, table, block_size, scale, scale_format, tensor_scale, out_dtype):
    """8-bit codes into a fixed table, times each block's scale (fp8 grids: MXFP8)."""
    return ops.dequantize_table.default(w_q, table, block_size, scale, scale_format, tensor_scale, out_dtype)


def table_packed(w_q, bits, n, table, block_size, scale, scale_format, tensor_scale, out_dtype):
    """b-bit codes, packed, into a fixed table, times each block's scale (fp4, fp6, fpx, MXFP4, NVFP4)."""
    return table_bytes(ops.unpack_int.default(w_q, bits, n, False), table, block_size, scale, scale_format,
                       tensor_scale, out_dtype)


def dynamic_int8(x, block, eps, out_x, mapping: str):
    """Per-token dynamic int8 activations (quantized and dequantized: the reference form)."""
    domain = "none" if mapping == "symmetric" else "int"
    sz = ops.choose_qparams_affine.default(x, block, "int8", mapping, domain, None, torch.float32, eps)
    s, z = sz[0], (None if domain == "none" else sz[1])
    xq = ops.quantize_affine.default(x, block, s, z, "int8", domain)
    return ops.dequantize_affine.default(xq, block, s, z, "int8", domain, out_x)


def static_int8(x, block, scale, zero_point, out_x, domain: str = "int"):
    """Static int8 activations with calibrated qparams."""
    xq = ops.quantize_affine.default(x, block, scale, zero_point, "int8", domain)
    return ops.dequantize_affine.default(xq, block, scale, zero_point, "int8", domain, out_x)


@dataclass(frozen=True)
class AffineWeight:
    """Integer weights, one scale (and zero point) per row or per group of the input dimension."""

    dtype: str
    group_size: Optional[int] = None  # None: per output channel
    mapping: str = "symmetric"
    zero_point_domain: str = "none"
    zero_point_dtype: Optional[torch.dtype] = None
    scale_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        resolve_zero_point_dtype(int_type(self.dtype), self.mapping, self.zero_point_domain,
                                 self.zero_point_dtype, self.scale_dtype)

    @property
    def block(self) -> list:
        return [1, self.group_size or -1]

    def unfit(self, shape) -> Optional[str]:
        if self.group_size and shape[1] % self.group_size:
            return f"input size {shape[1]} is not a multiple of group size {self.group_size}"
        return None

    def quantize(self, w: torch.Tensor) -> dict:
        t = int_type(self.dtype)
        s, z = ops.choose_qparams_affine(w, self.block, t.name, self.mapping, self.zero_point_domain,
                                         self.zero_point_dtype, self.scale_dtype, torch.finfo(torch.float32).eps)
        z = None if self.zero_point_domain == "none" else z
        q = ops.quantize_affine(w, self.block, s, z, t.name, self.zero_point_domain)
        out = {"q": q if t.bits == 8 else ops.pack_int(q, t.bits), "scale": s}
        return out if z is None else {**out, "zero_point": z}

    def dequantize(self, t: Mapping, in_features: int, out_dtype: torch.dtype):
        it = int_type(self.dtype)
        qparams = (self.block, t["scale"], t.get("zero_point"), it.name, self.zero_point_domain, out_dtype)
        if it.bits == 8:
            return affine_bytes(t["q"], *qparams)
        return affine_packed(t["q"], it.bits, in_features, it.signed, *qparams)


@dataclass(frozen=True)
class CodebookWeight:
    """A k-means codebook per tensor or per block of rows; each weight stores a b-bit index.

    ``grid="int8"`` then snaps the codebook onto an int8 grid *per row*: row ``n`` stores
    the table ``q[n]`` (int8 in [-127, 127], ``2**bits`` entries) and a scale ``s[n]`` fitted to the
    entries that row uses, and each index is re-chosen against its row's snapped table.
    Weights are then int8 values times a per-row scale, which the CPU backend runs on its
    int8 kernel; the tables cost ``N·(2**bits + 4)`` bytes. A per-row scale keeps a
    codebook's outlier entry (one cluster of large weights) from coarsening every row.
    ``grid=None`` keeps float32 entries.
    """

    bits: int = 4
    block_rows: Optional[int] = None
    grid: Optional[str] = "int8"

    def unfit(self, shape) -> Optional[str]:
        if self.block_rows and shape[0] % self.block_rows:
            return f"output size {shape[0]} is not a multiple of block_rows {self.block_rows}"
        return None

    def quantize(self, w: torch.Tensor) -> dict:
        cb = ops.kmeans_codebook(w, self.bits, self.block_rows, 300, 0, "quantile", None)
        idx = ops.quantize_codebook(w, cb, self.block_rows)
        if self.grid == "int8":
            stored = self._row_tables(w, cb, idx)
            idx = ops.quantize_codebook(w, self._entries(stored), 1)
        else:
            stored = {"codebook": cb}
        return {"q": idx if self.bits == 8 else ops.pack_int(idx, self.bits), **stored}

    def _row_tables(self, w: torch.Tensor, cb: torch.Tensor, idx: torch.Tensor) -> dict:
        """Each row's codebook as int8 entries and a scale that fits the entries the row uses."""
        used = ops.dequantize_codebook(idx, cb, self.block_rows, torch.float32)
        s, _ = ops.choose_qparams_affine(used, [1, -1], "int8", "symmetric", "none", None, torch.float32,
                                         torch.finfo(torch.float32).eps)
        rows = cb.repeat_interleave(w.shape[0] // cb.shape[0], dim=0)  # (N, 2**bits)
        q = ops.quantize_affine(rows, [1, -1], s, None, "int8", "none").clamp(min=-127)  # the CPU kernel negates them
        return {"codebook": q, "codebook_scale": s}

    def _entries(self, t: Mapping):
        if self.grid is None:
            return t["codebook"]
        return grid_tables(t["codebook"], t["codebook_scale"])

    def dequantize(self, t: Mapping, in_features: int, out_dtype: torch.dtype):
        q, cb = t["q"], t["codebook"]
        if self.grid == "int8":  # each row its own table: block_rows 1
            if self.bits == 8:
                return grid_codebook_bytes(q, cb, t["codebook_scale"], 1, out_dtype)
            return grid_codebook_packed(q, self.bits, in_features, cb, t["codebook_scale"], 1, out_dtype)
        if self.bits == 8:
            return float_codebook_bytes(q, cb, self.block_rows, out_dtype)
        return float_codebook_packed(q, self.bits, in_features, cb, self.block_rows, out_dtype)


@dataclass(frozen=True)
class AdditiveWeight:
    """AQLM: each group of ``group_size`` weights is the sum of one vector from each of ``codebooks`` codebooks
    of ``2**bits`` vectors, times the row's scale (``runtime/additive.py``). Rounding without data fits the
    codebooks by residual k-means; the ``AQLM`` algorithm learns them against the layer's Hessian."""

    codebooks: int = 1
    bits: int = 16
    group_size: int = 8

    def unfit(self, shape) -> Optional[str]:
        if shape[1] % self.group_size:
            return f"input size {shape[1]} is not a multiple of group size {self.group_size}"
        return None

    def quantize(self, w: torch.Tensor) -> dict:
        return fit_additive(w.detach(), self.codebooks, self.bits, self.group_size)

    def dequantize(self, t: Mapping, in_features: int, out_dtype: torch.dtype):
        return additive(t["codes"], t["codebooks"], t["scale"], out_dtype)


@dataclass(frozen=True)
class Float8Weight:
    """float8 weights with one scale per output channel."""

    float8_dtype: torch.dtype = torch.float8_e4m3fn

    def unfit(self, shape) -> Optional[str]:
        return None

    def quantize(self, w: torch.Tensor) -> dict:
        s = ops.choose_scale_float8(w, [1, -1], self.float8_dtype, torch.float32)
        return {"q": ops.quantize_float8(w, [1, -1], s, self.float8_dtype), "scale": s}

    def dequantize(self, t: Mapping, in_features: int, out_dtype: torch.dtype):
        return ops.dequantize_float8(t["q"], [1, -1], t["scale"], out_dtype)


@dataclass(frozen=True)
class TableWeight:
    """Each weight a code into a fixed ``grid`` of values (``runtime/tables.py``: ``e2m1``, ``e3m2``, ``e4m3``, ...)
    times its block's scale: blocks of ``block_size`` along the input dimension (``-1``: one per row), the scale
    stored as ``scale_format`` says (``e8m0``: a power of two in a byte; ``e4m3``: float8 within a float32 scale per
    tensor; ``float``: ``scale_dtype``). Codes are stored at the grid's bit width."""

    grid: str
    block_size: int = -1
    scale_format: str = "float"
    scale_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        tables.grid_bits(self.grid)  # checks the name
        if self.scale_format not in tables.SCALE_FORMATS:
            raise ValueError(f"qcompiler: scale_format must be one of {', '.join(tables.SCALE_FORMATS)}; "
                             f"got {self.scale_format!r}")

    @property
    def bits(self) -> int:
        return tables.grid_bits(self.grid)

    def unfit(self, shape) -> Optional[str]:
        if self.block_size != -1 and shape[1] % self.block_size:
            return f"input size {shape[1]} is not a multiple of block size {self.block_size}"
        return None

    def quantize(self, w: torch.Tensor) -> dict:
        w = w.detach().float()
        tensor_scale = None
        if self.scale_format == "e4m3":  # the block scales' range, per tensor: amax maps to e4m3's largest
            top = w.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
            tensor_scale = (top / (tables.grid_max(self.grid) * tables.E4M3_MAX)).reshape(1)
        scale = tables.choose_table_scale(w, self.grid, self.block_size, self.scale_format, tensor_scale)
        if self.scale_format == "float":
            scale = scale.to(self.scale_dtype)
        idx = tables.quantize_table(w, self.grid, self.block_size, scale, self.scale_format, tensor_scale)
        q = idx.view(torch.int8) if self.bits == 8 else ops.pack_int(idx, self.bits)  # 8-bit: see dequantize_table
        out = {"q": q, "table": tables.grid_values(self.grid), "scale": scale}
        return out if tensor_scale is None else {**out, "tensor_scale": tensor_scale}

    def dequantize(self, t: Mapping, in_features: int, out_dtype: torch.dtype):
        qparams = (t["table"], self.block_size, t["scale"], self.scale_format, t.get("tensor_scale"), out_dtype)
        if self.bits == 8:
            return table_bytes(t["q"], *qparams)
        return table_packed(t["q"], self.bits, in_features, *qparams)


WeightSpec = Union[AffineWeight, CodebookWeight, AdditiveWeight, Float8Weight, TableWeight]


@dataclass(frozen=True)
class ActivationSpec:
    """Quantization of a linear's input: dynamic per token, or static per tensor from calibration."""

    dtype: Union[str, torch.dtype] = "int8"  # "int8" or a float8 dtype
    mapping: str = "symmetric"
    static: bool = False
    observer: str = "minmax"

    @property
    def is_float8(self) -> bool:
        return isinstance(self.dtype, torch.dtype)

    @property
    def domain(self) -> str:
        return "none" if self.mapping == "symmetric" else "int"

    def block(self, ndim: int) -> list:
        return [-1] * ndim if self.static else [1] * (ndim - 1) + [-1]

    def qparams_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> dict:
        """Static per-tensor qparams for observed values in [lo, hi]."""
        span = torch.stack([lo.float(), hi.float()]).reshape(1, 2)
        s, z = ops.choose_qparams_affine(span, [-1, -1], "int8", self.mapping, self.domain, None, torch.float32,
                                         torch.finfo(torch.float32).eps)
        return {"scale": s} if self.domain == "none" else {"scale": s, "zero_point": z}

    def fake_quantize(self, x, ndim: int, qparams: Optional[Mapping] = None):
        """Quantize and dequantize ``x`` (the reference form of activation quantization)."""
        block, eps = self.block(ndim), torch.finfo(torch.float32).eps
        if self.is_float8:
            s = ops.choose_scale_float8(x, block, self.dtype, torch.float32)
            return ops.dequantize_float8(ops.quantize_float8(x, block, s, self.dtype), block, s, x.dtype)
        if qparams is None:
            return dynamic_int8(x, block, eps, x.dtype, self.mapping)
        return static_int8(x, block, qparams["scale"], qparams.get("zero_point"), x.dtype, self.domain)


@dataclass(frozen=True)
class QuantSpec:
    """The contract on ``node.meta["qspec"]``: a weight spec, an optional activation spec, an algorithm."""

    scheme: str
    weight: WeightSpec
    activation: Optional[ActivationSpec] = None
    algorithm: Optional[object] = None  # None: round to nearest; else a passes.algorithms config (GPTQ(), ...)
