"""``fpx-<e>-<m>`` and ``fp6``: floating-point weights of 1 + e + m bits (no inf or NaN, as fp6 / fp4) with a scale
per output channel, as torchao's ``fpx_weight_only(ebits, mbits)``; ``fp6`` is ``fpx-3-2`` (e3m2, FP6-LLM's)."""
from dataclasses import dataclass

import torch

from ..passes.spec import QuantSpec, TableWeight
from ..runtime.errors import fail
from .registry import scheme


@scheme("fpx", forms=("fp6", "fpx-<e>-<m>"), alias=r"fpx-(\d)-(\d)|fp6",
        parse=lambda e, m: FpxWeightOnlyConfig(int(e or 3), int(m or 2)))
@dataclass(frozen=True)
class FpxWeightOnlyConfig:
    """``fpx-<ebits>-<mbits>``: each weight a (1 + ebits + mbits)-bit float code (exponent bias
    ``2^(ebits-1) - 1``, subnormals, no inf or NaN), rounded to nearest even, times a ``scale_dtype`` scale per
    output channel (``max|w| / the format's largest value``). ``fp6`` = ``fpx-3-2``."""

    ebits: int = 3
    mbits: int = 2
    scale_dtype: torch.dtype = torch.float16

    def __post_init__(self):
        if not (isinstance(self.ebits, int) and isinstance(self.mbits, int) and 1 <= self.ebits <= 5
                and 0 <= self.mbits <= 6 and 3 <= 1 + self.ebits + self.mbits <= 7):
            raise fail("ebits, mbits", "1-5 exponent bits and 0-6 mantissa bits, 3 to 7 bits in all",
                       (self.ebits, self.mbits))

    @property
    def alias(self) -> str:
        return "fp6" if (self.ebits, self.mbits) == (3, 2) else f"fpx-{self.ebits}-{self.mbits}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, TableWeight(f"e{self.ebits}m{self.mbits}", -1, "float", self.scale_dtype))
