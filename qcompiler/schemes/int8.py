"""int8 schemes: ``int8wo`` (weights only), ``int8dq`` (per-token dynamic int8 activations), ``int8static``
(per-tensor activation qparams from calibration); per-channel symmetric int8 weights in all three."""
from dataclasses import dataclass
from typing import Optional

from ..passes.spec import ActivationSpec, AffineWeight, QuantSpec
from ..runtime.errors import fail
from .registry import FamilyAlias, scheme

OBSERVERS = ("minmax", "moving_average")


@scheme("int8wo")
@dataclass(frozen=True)
class Int8WeightOnlyConfig(FamilyAlias):
    """``int8wo``: symmetric per-channel int8 weights; activations stay float. ``algorithm``: GPTQ."""

    algorithm: Optional[object] = None

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"), algorithm=self.algorithm)


@scheme("int8dq")
@dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(FamilyAlias):
    """``int8dq``: per-token dynamic int8 activations (symmetric), per-channel symmetric int8 weights.
    ``algorithm``: SmoothQuant."""

    algorithm: Optional[object] = None

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"), ActivationSpec("int8", "symmetric"), self.algorithm)


@scheme("int8static")
@dataclass(frozen=True)
class Int8StaticActivationInt8WeightConfig(FamilyAlias):
    """``int8static``: per-tensor int8 activation qparams from calibration, per-channel int8 weights.

    ``observer``: ``"minmax"`` (the range of everything seen) or ``"moving_average"``
    (an exponential moving average of each batch's range, factor 0.01 as in PT2E).
    Needs calibration: run the prepared model, or pass ``calibration_data``.
    """

    observer: str = "minmax"
    algorithm: Optional[object] = None

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise fail("observer", "'minmax' or 'moving_average'", self.observer)
        super().__post_init__()

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"),
                         ActivationSpec("int8", "asymmetric", static=True, observer=self.observer), self.algorithm)
