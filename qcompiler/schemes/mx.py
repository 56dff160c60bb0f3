"""``mxfp4`` and ``mxfp8``: OCP Microscaling weights, e2m1 (fp4) or e4m3 (fp8) elements with a shared power-of-two
(e8m0) scale per block of 32 along the input dimension: ``2^(floor(log2 amax) - emax)``, emax the element type's."""
from dataclasses import dataclass

from ..passes.spec import QuantSpec, TableWeight
from ..runtime.errors import fail
from .registry import scheme

ELEMENTS = {"fp4": "e2m1", "fp8": "e4m3"}
MX_BLOCK = 32


@scheme("mx", forms=("mxfp4", "mxfp8"), alias=r"mx(fp4|fp8)", parse=lambda element: MXWeightOnlyConfig(element))
@dataclass(frozen=True)
class MXWeightOnlyConfig:
    """``mxfp4`` / ``mxfp8``: ``element`` ``"fp4"`` (e2m1) or ``"fp8"`` (e4m3), a byte of e8m0 scale per 32 weights
    (4.25 and 8.25 bits a weight)."""

    element: str = "fp4"

    def __post_init__(self):
        if self.element not in ELEMENTS:
            raise fail("element", "'fp4' or 'fp8'", self.element)

    @property
    def alias(self) -> str:
        return f"mx{self.element}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, TableWeight(ELEMENTS[self.element], MX_BLOCK, "e8m0"))
