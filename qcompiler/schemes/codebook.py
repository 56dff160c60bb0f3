"""``codebook-<bits>[-<block_rows>][-float]``: k-means codebooks, each weight a b-bit index."""
from dataclasses import dataclass
from typing import Optional

from ..passes.spec import CodebookWeight, QuantSpec
from ..runtime.errors import fail
from .registry import check_algorithm, scheme, suffixed


@scheme("codebook", forms=("codebook-<1..8>[-<block_rows>][-float]",), alias=r"codebook-(\d+)(?:-(\d+))?(-float)?",
        parse=lambda b, r, f: CodebookWeightOnlyConfig(int(b), int(r) if r else None, None if f else "int8"))
@dataclass(frozen=True)
class CodebookWeightOnlyConfig:
    """``codebook-<bits>``: a k-means codebook of ``2**bits`` entries per tensor, or per ``block_rows`` rows.

    ``grid="int8"`` (the default) snaps the codebook onto an int8 grid per row (int8
    tables and a scale per row, ``N·(2**bits + 4)`` bytes more; weight SQNR on MiniLM
    within 0.1 dB of float entries). The CPU backend then runs the layer on its int8
    kernel, at int8 speed and int8 size in the ``.pt2``. ``grid=None`` keeps float
    entries: the CPU ``.pt2`` keeps b-bit indices but runs a generated gather kernel,
    19-37x slower at batch 1.
    """

    bits: int = 4
    block_rows: Optional[int] = None
    grid: Optional[str] = "int8"
    algorithm: Optional[object] = None

    def __post_init__(self):
        if self.grid not in (None, "int8"):
            raise fail("grid", "None or 'int8'", self.grid)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise fail("bits", "an integer from 1 to 8", self.bits)
        if self.block_rows is not None and (not isinstance(self.block_rows, int) or self.block_rows < 1):
            raise fail("block_rows", "None or a positive integer", self.block_rows)
        check_algorithm(self)

    @property
    def alias(self) -> str:
        rows = f"-{self.block_rows}" if self.block_rows else ""
        name = f"codebook-{self.bits}{rows}" + ("" if self.grid else "-float")
        return suffixed(name, self.algorithm)

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, CodebookWeight(self.bits, self.block_rows, self.grid), algorithm=self.algorithm)
