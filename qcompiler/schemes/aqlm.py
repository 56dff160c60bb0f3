"""``aqlm-<M>x<B>-g<g>``: AQLM additive codebooks, learned against each layer's calibration Hessian."""
from dataclasses import dataclass

from ..passes.aqlm import AQLM
from ..passes.spec import AdditiveWeight, QuantSpec
from ..runtime.errors import fail
from .registry import scheme


@scheme("aqlm", forms=("aqlm-<M>x<B>-g<g>",), alias=r"aqlm-(\d+)x(\d+)-g(\d+)",
        parse=lambda m, b, g: AQLMWeightOnlyConfig(int(m), int(b), int(g)))
@dataclass(frozen=True)
class AQLMWeightOnlyConfig:
    """``aqlm-<M>x<B>-g<g>``: AQLM additive codebooks. Each group of ``group_size`` weights is the sum of one
    vector from each of ``codebooks`` codebooks of ``2**bits`` vectors, times its row's scale:
    ``codebooks·bits / group_size`` bits a weight in codes (``aqlm-1x16-g8``, ``aqlm-2x8-g8``: 2), plus the
    codebooks (float16) and a scale per row. Codes and codebooks are learned against each layer's calibration
    Hessian (beam search, least squares; ``passes/aqlm.py``): it needs calibration data."""

    codebooks: int = 1
    bits: int = 16
    group_size: int = 8
    beam: int = 4
    rounds: int = 4

    def __post_init__(self):
        if not isinstance(self.codebooks, int) or not 1 <= self.codebooks <= 8:
            raise fail("codebooks", "an integer from 1 to 8", self.codebooks)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise fail("bits", "an integer from 1 to 16 (codebooks of 2**bits vectors)", self.bits)
        if not isinstance(self.group_size, int) or not 1 <= self.group_size <= 32:
            raise fail("group_size", "an integer from 1 to 32", self.group_size)
        AQLM(self.beam, self.rounds)  # checks them

    @property
    def alias(self) -> str:
        return f"aqlm-{self.codebooks}x{self.bits}-g{self.group_size}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AdditiveWeight(self.codebooks, self.bits, self.group_size),
                         algorithm=AQLM(self.beam, self.rounds))
