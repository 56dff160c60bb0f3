"""``nf4`` and ``nf4-<block>``: NormalFloat4 (QLoRA's; bitsandbytes' and torchao's NF4): each weight one of 16 values
at the quantiles of a normal distribution in [-1, 1], times its block's absmax (bfloat16, a block of 64 by default).
The grid is declared here by its values; the fixed-table kernel runs it (no kernel entry of its own)."""
from dataclasses import dataclass

import torch

from ..passes.spec import QuantSpec, TableWeight
from ..runtime.errors import fail
from ..runtime.tables import register_grid
from .registry import scheme

# QLoRA's NF4 values (Dettmers et al. 2023, appendix E), by code
NF4_VALUES = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
register_grid("nf4", NF4_VALUES)
NF4_BLOCK_SIZES = (32, 64, 128, 256)


@scheme("nf4", forms=("nf4", "nf4-<32|64|128|256>"), alias=r"nf4(?:-(\d+))?",
        parse=lambda b: NF4WeightOnlyConfig(int(b) if b else 64))
@dataclass(frozen=True)
class NF4WeightOnlyConfig:
    """``nf4-<block_size>``: 4-bit NormalFloat codes, a ``scale_dtype`` absmax per ``block_size`` weights along the
    input dimension (4.25 bits a weight at 64 in bfloat16)."""

    block_size: int = 64
    scale_dtype: torch.dtype = torch.bfloat16

    def __post_init__(self):
        if self.block_size not in NF4_BLOCK_SIZES:
            raise fail("block_size", "one of 32, 64, 128, 256", self.block_size)

    @property
    def alias(self) -> str:
        return "nf4" if self.block_size == 64 else f"nf4-{self.block_size}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, TableWeight("nf4", self.block_size, "float", self.scale_dtype))
