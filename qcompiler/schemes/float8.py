"""float8 schemes: ``fp8wo`` (weights only) and ``fp8dq`` (per-token dynamic float8 activations), e4m3fn weights
with a scale per output channel."""
from dataclasses import dataclass

import torch

from ..passes.spec import ActivationSpec, Float8Weight, QuantSpec
from .registry import scheme


@scheme("fp8wo")
@dataclass(frozen=True)
class Float8WeightOnlyConfig:
    """``fp8wo``: float8 e4m3fn weights with a scale per output channel."""

    alias = "fp8wo"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, Float8Weight())


@scheme("fp8dq")
@dataclass(frozen=True)
class Float8DynamicActivationFloat8WeightConfig:
    """``fp8dq``: per-token dynamic float8 activations and per-channel float8 weights (e4m3fn)."""

    alias = "fp8dq"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, Float8Weight(), ActivationSpec(torch.float8_e4m3fn))
