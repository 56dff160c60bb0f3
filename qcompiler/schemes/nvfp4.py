"""``nvfp4``: NVIDIA's FP4 weights: e2m1 elements, an e4m3 (float8) scale per block of 16 along the input dimension,
and a float32 scale per tensor that keeps the block scales within e4m3's range (4.5 bits a weight)."""
from dataclasses import dataclass

from ..passes.spec import QuantSpec, TableWeight
from .registry import scheme

NVFP4_BLOCK = 16


@scheme("nvfp4")
@dataclass(frozen=True)
class NVFP4WeightOnlyConfig:
    """``nvfp4``: e2m1 weights, ``amax / 6`` per 16 as float8 e4m3 over a float32 tensor scale
    ``amax / (6 · 448)``."""

    alias = "nvfp4"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, TableWeight("e2m1", NVFP4_BLOCK, "e4m3"))
