"""int4 schemes: ``int4wo-<g>`` (weights only) and ``int8da-int4w-<g>`` (per-token int8 activations), 4-bit
weights in groups of ``g`` along the input dimension."""
from dataclasses import dataclass
from typing import Optional

import torch

from ..passes.spec import ActivationSpec, AffineWeight, QuantSpec
from ..runtime.errors import fail
from .registry import check_algorithm, scheme, suffixed

INT4_GROUP_SIZES = (32, 64, 128, 256)


def check_group(group_size) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise fail("group_size", "one of 32, 64, 128, 256", group_size)


@scheme("int4wo", forms=("int4wo-<32|64|128|256>",), alias=r"int4wo-(\d+)",
        parse=lambda g: Int4WeightOnlyConfig(group_size=int(g)))
@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """``int4wo-<g>``: 4-bit weights in groups of ``group_size`` along the input dimension.

    ``zero_point_domain``: ``"float"`` (tinygemm style, the default), ``"int"`` or
    ``"none"`` (symmetric int4). ``zero_point_dtype`` and ``scale_dtype`` are yours to choose;
    by default the zero point is bfloat16 in the float domain and uint8 in the int domain.
    ``algorithm``: GPTQ, HQQ (float zero point) or AWQ.
    """

    group_size: int = 128
    zero_point_domain: str = "float"
    zero_point_dtype: Optional[torch.dtype] = None
    scale_dtype: torch.dtype = torch.bfloat16
    algorithm: Optional[object] = None

    def __post_init__(self):
        check_group(self.group_size)
        check_algorithm(self)  # spec() validates the domain and dtypes

    @property
    def alias(self) -> str:
        return suffixed(f"int4wo-{self.group_size}", self.algorithm)

    def spec(self) -> QuantSpec:
        if self.zero_point_domain == "none":
            w = AffineWeight("int4", self.group_size, "symmetric", "none", self.zero_point_dtype, self.scale_dtype)
        else:
            zp = self.zero_point_dtype or (torch.bfloat16 if self.zero_point_domain == "float" else None)
            w = AffineWeight("uint4", self.group_size, "asymmetric", self.zero_point_domain, zp, self.scale_dtype)
        return QuantSpec(self.alias, w, algorithm=self.algorithm)


@scheme("int8da-int4w", forms=("int8da-int4w-<32|64|128|256>",), alias=r"int8da-int4w-(\d+)",
        parse=lambda g: Int8DynamicActivationInt4WeightConfig(group_size=int(g)))
@dataclass(frozen=True)
class Int8DynamicActivationInt4WeightConfig:
    """``int8da-int4w-<g>``: per-token asymmetric int8 activations, symmetric int4 weights in groups (bf16 scales)."""

    group_size: int = 32

    def __post_init__(self):
        check_group(self.group_size)

    @property
    def alias(self) -> str:
        return f"int8da-int4w-{self.group_size}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int4", self.group_size, scale_dtype=torch.bfloat16),
                         ActivationSpec("int8", "asymmetric"))
