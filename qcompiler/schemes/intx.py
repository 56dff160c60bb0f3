"""``intx-<bits>-<group>[-float]``: affine weights of 1-7 bits in groups along the input dimension, as torchao's
``IntxWeightOnlyConfig`` (asymmetric, a zero point per group: an integer by default, a float one with ``-float``,
which HQQ optimizes). Stored at their bit width (``pack_int``); ``algorithm``: GPTQ, HQQ (float zero point), AWQ."""
from dataclasses import dataclass
from typing import Optional

import torch

from ..passes.spec import AffineWeight, QuantSpec
from ..runtime.errors import fail
from .registry import check_algorithm, scheme, suffixed

INTX_BITS = range(1, 8)
INTX_GROUP_SIZES = (32, 64, 128, 256)
ZERO_POINT_DOMAINS = ("int", "float")


@scheme("intx", forms=("intx-<1..7>-<32|64|128|256>[-float]",), alias=r"intx-(\d+)-(\d+)(-float)?",
        parse=lambda b, g, f: IntxWeightOnlyConfig(int(b), int(g), "float" if f else "int"))
@dataclass(frozen=True)
class IntxWeightOnlyConfig:
    """``intx-<bits>-<group>``: ``bits``-bit unsigned weights with a scale and a zero point per group of
    ``group_size`` along the input dimension. ``zero_point_domain="int"`` (the default: ``(q - z)·s`` with an
    integer ``z``, torchao's) or ``"float"`` (``(q - mid)·s + z``, what HQQ fits). ``scale_dtype`` and
    ``zero_point_dtype`` as in ``Int4WeightOnlyConfig``."""

    bits: int = 4
    group_size: int = 64
    zero_point_domain: str = "int"
    scale_dtype: torch.dtype = torch.bfloat16
    zero_point_dtype: Optional[torch.dtype] = None
    algorithm: Optional[object] = None

    def __post_init__(self):
        if not isinstance(self.bits, int) or self.bits not in INTX_BITS:
            raise fail("bits", "an integer from 1 to 7", self.bits)
        if self.group_size not in INTX_GROUP_SIZES:
            raise fail("group_size", "one of 32, 64, 128, 256", self.group_size)
        if self.zero_point_domain not in ZERO_POINT_DOMAINS:
            raise fail("zero_point_domain", "'int' or 'float'", self.zero_point_domain)
        check_algorithm(self)  # spec() validates the dtypes

    @property
    def alias(self) -> str:
        domain = "-float" if self.zero_point_domain == "float" else ""
        return suffixed(f"intx-{self.bits}-{self.group_size}{domain}", self.algorithm)

    def spec(self) -> QuantSpec:
        zp = self.zero_point_dtype or (torch.bfloat16 if self.zero_point_domain == "float" else None)
        weight = AffineWeight(f"uint{self.bits}", self.group_size, "asymmetric", self.zero_point_domain, zp,
                              self.scale_dtype)
        return QuantSpec(self.alias, weight, algorithm=self.algorithm)
