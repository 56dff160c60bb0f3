"""``intx-<bits>-<group>[-float]``: affine weights of 1-7 bits in groups along the input dimension, as torchao's
``IntxWeightOnlyConfig`` (asymmetric, a zero point per group: an integer by default, a float one with ``-float``,
which HQQ optimizes). Stored at their bit width (``pack_int``); ``algorithm``: GPTQ, HQQ (float zero point), AWQ.

``int8da-intx-<bits>-<group>``: the same widths symmetric (a scale per group, no zero point) under per-token
asymmetric int8 activations, as torchao's ``Int8DynamicActivationIntxWeightConfig`` (its defaults)."""
from dataclasses import dataclass
from typing import Optional

import torch

from ..passes.spec import ActivationSpec, AffineWeight, QuantSpec
from ..runtime.errors import fail
from .registry import check_algorithm, scheme, suffixed

INTX_BITS = range(1, 8)
INTX_GROUP_SIZES = (32, 64, 128, 256)
ZERO_POINT_DOMAINS = ("int", "float")


def check_bits_and_group(bits, group_size) -> None:
    if not isinstance(bits, int) or bits not in INTX_BITS:
        raise fail("bits", "an integer from 1 to 7", bits)
    if group_size not in INTX_GROUP_SIZES:
        raise fail("group_size", "one of 32, 64, 128, 256", group_size)


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
        check_bits_and_group(self.bits, self.group_size)
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


@scheme("int8da-intx", forms=("int8da-intx-<1..7>-<32|64|128|256>",), alias=r"int8da-intx-(\d+)-(\d+)",
        parse=lambda b, g: Int8DynamicActivationIntxWeightConfig(int(b), int(g)))
@dataclass(frozen=True)
class Int8DynamicActivationIntxWeightConfig:
    """``int8da-intx-<bits>-<group>``: per-token asymmetric int8 activations, symmetric ``bits``-bit weights
    (``-2^(bits-1) .. 2^(bits-1) - 1``) with a scale per group of ``group_size`` along the input dimension.
    On AVX-512 VNNI each int8 row is one operand of the integer products (``qcompiler.table_gemm``): half the
    products of a weight-only layer's 16-bit rows."""

    bits: int = 4
    group_size: int = 32
    scale_dtype: torch.dtype = torch.bfloat16

    def __post_init__(self):
        check_bits_and_group(self.bits, self.group_size)  # spec() validates the dtype

    @property
    def alias(self) -> str:
        return f"int8da-intx-{self.bits}-{self.group_size}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight(f"int{self.bits}", self.group_size, scale_dtype=self.scale_dtype),
                         ActivationSpec("int8", "asymmetric"))
