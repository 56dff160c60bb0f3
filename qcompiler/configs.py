"""User-facing quantization configs: frozen, validated at construction, each with a string alias.

A config says what a linear becomes; ``config.spec()`` builds the
:class:`~qcompiler.passes.spec.QuantSpec` that the passes read.
``config_from_string("int4wo-64")`` parses the aliases (the CLI uses them).
"""
import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

import torch

from .passes.algorithms import check_algorithm, from_name
from .passes.aqlm import AQLM
from .passes.spec import ActivationSpec, AdditiveWeight, AffineWeight, CodebookWeight, Float8Weight, QuantSpec
from .runtime.errors import fail

INT4_GROUP_SIZES = (32, 64, 128, 256)
OBSERVERS = ("minmax", "moving_average")


def _suffixed(alias: str, algorithm) -> str:
    return alias if algorithm is None else f"{alias}+{getattr(algorithm, 'name', algorithm)}"


def _check_group(group_size):
    if group_size not in INT4_GROUP_SIZES:
        raise fail("group_size", "one of 32, 64, 128, 256", group_size)


class _Algorithmic:
    """A config with a fixed alias (``family``) and an optional ``algorithm`` field."""

    def __post_init__(self):
        check_algorithm(self.algorithm, self.family, self.alias)

    @property
    def alias(self) -> str:
        return _suffixed(self.family, self.algorithm)


@dataclass(frozen=True)
class Int8WeightOnlyConfig(_Algorithmic):
    """``int8wo``: symmetric per-channel int8 weights; activations stay float. ``algorithm``: GPTQ."""

    algorithm: Optional[object] = None
    family = "int8wo"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"), algorithm=self.algorithm)


@dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(_Algorithmic):
    """``int8dq``: per-token dynamic int8 activations (symmetric), per-channel symmetric int8 weights.
    ``algorithm``: SmoothQuant."""

    algorithm: Optional[object] = None
    family = "int8dq"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"), ActivationSpec("int8", "symmetric"), self.algorithm)


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
        _check_group(self.group_size)
        check_algorithm(self.algorithm, "int4wo", self.alias, self.spec().weight)  # spec() validates domain, dtypes

    @property
    def alias(self) -> str:
        return _suffixed(f"int4wo-{self.group_size}", self.algorithm)

    def spec(self) -> QuantSpec:
        if self.zero_point_domain == "none":
            w = AffineWeight("int4", self.group_size, "symmetric", "none", self.zero_point_dtype, self.scale_dtype)
        else:
            zp = self.zero_point_dtype or (torch.bfloat16 if self.zero_point_domain == "float" else None)
            w = AffineWeight("uint4", self.group_size, "asymmetric", self.zero_point_domain, zp, self.scale_dtype)
        return QuantSpec(self.alias, w, algorithm=self.algorithm)


@dataclass(frozen=True)
class Int8DynamicActivationInt4WeightConfig:
    """``int8da-int4w-<g>``: per-token asymmetric int8 activations, symmetric int4 weights in groups (bf16 scales)."""

    group_size: int = 32

    def __post_init__(self):
        _check_group(self.group_size)

    @property
    def alias(self) -> str:
        return f"int8da-int4w-{self.group_size}"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int4", self.group_size, scale_dtype=torch.bfloat16),
                         ActivationSpec("int8", "asymmetric"))


@dataclass(frozen=True)
class CodebookWeightOnlyConfig:
    """``codebook-<bits>``: a k-means codebook of ``2**bits`` entries per tensor, or per ``block_rows`` rows.

    ``grid="int8"`` (the default) snaps the codebook onto an int8 grid per row (int8
    tables and a scale per row, ``N·(2**bits + 4)`` bytes more; weight SQNR on MiniLM
    within 0.1 dB of float entries). The CPU backend then runs the layer on its int8
    kernel, at int8 speed and int8 size in the ``.pt2``. ``grid=None`` keeps float
    entries: the CPU ``.pt2`` keeps b-bit indices but runs a generated gather kernel,
    19-37x slower at batch 1.
    """

    bits: int = 4
    block_rows: Optional[int] = None
    grid: Optional[str] = "int8"
    algorithm: Optional[object] = None

    def __post_init__(self):
        check_algorithm(self.algorithm, "codebook", self.alias)
        if self.grid not in (None, "int8"):
            raise fail("grid", "None or 'int8'", self.grid)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise fail("bits", "an integer from 1 to 8", self.bits)
        if self.block_rows is not None and (not isinstance(self.block_rows, int) or self.block_rows < 1):
            raise fail("block_rows", "None or a positive integer", self.block_rows)

    @property
    def alias(self) -> str:
        rows = f"-{self.block_rows}" if self.block_rows else ""
        name = f"codebook-{self.bits}{rows}" + ("" if self.grid else "-float")
        return _suffixed(name, self.algorithm)

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, CodebookWeight(self.bits, self.block_rows, self.grid), algorithm=self.algorithm)


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


@dataclass(frozen=True)
class Float8WeightOnlyConfig:
    """``fp8wo``: float8 e4m3fn weights with a scale per output channel."""

    alias = "fp8wo"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, Float8Weight())


@dataclass(frozen=True)
class Float8DynamicActivationFloat8WeightConfig:
    """``fp8dq``: per-token dynamic float8 activations and per-channel float8 weights (e4m3fn)."""

    alias = "fp8dq"

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, Float8Weight(), ActivationSpec(torch.float8_e4m3fn))


@dataclass(frozen=True)
class Int8StaticActivationInt8WeightConfig(_Algorithmic):
    """``int8static``: per-tensor int8 activation qparams from calibration, per-channel int8 weights.

    ``observer``: ``"minmax"`` (the range of everything seen) or ``"moving_average"``
    (an exponential moving average of each batch's range, factor 0.01 as in PT2E).
    Needs calibration: run the prepared model, or pass ``calibration_data``.
    """

    observer: str = "minmax"
    algorithm: Optional[object] = None
    family = "int8static"

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise fail("observer", "'minmax' or 'moving_average'", self.observer)
        super().__post_init__()

    def spec(self) -> QuantSpec:
        return QuantSpec(self.alias, AffineWeight("int8"),
                         ActivationSpec("int8", "asymmetric", static=True, observer=self.observer), self.algorithm)


CONFIG_TYPES = (Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int4WeightOnlyConfig,
                Int8DynamicActivationInt4WeightConfig, CodebookWeightOnlyConfig, AQLMWeightOnlyConfig,
                Float8WeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig, Int8StaticActivationInt8WeightConfig)

_FIXED = {"int8wo": Int8WeightOnlyConfig, "int8dq": Int8DynamicActivationInt8WeightConfig,
          "fp8wo": Float8WeightOnlyConfig, "fp8dq": Float8DynamicActivationFloat8WeightConfig,
          "int8static": Int8StaticActivationInt8WeightConfig}
_PARAMETRIC = [
    (re.compile(r"int4wo-(\d+)"), lambda g: Int4WeightOnlyConfig(group_size=int(g))),
    (re.compile(r"int8da-int4w-(\d+)"), lambda g: Int8DynamicActivationInt4WeightConfig(group_size=int(g))),
    (re.compile(r"codebook-(\d+)(?:-(\d+))?(-float)?"),
     lambda b, r, f: CodebookWeightOnlyConfig(int(b), int(r) if r else None, None if f else "int8")),
    (re.compile(r"aqlm-(\d+)x(\d+)-g(\d+)"), lambda m, b, g: AQLMWeightOnlyConfig(int(m), int(b), int(g))),
]
SCHEME_FORMS = tuple(_FIXED) + ("int4wo-<32|64|128|256>", "int8da-int4w-<32|64|128|256>",
                                "codebook-<1..8>[-<block_rows>][-float]", "aqlm-<M>x<B>-g<g>",
                                "any of these +gptq|+hqq|+awq|+smoothquant")


def config_from_string(name: str):
    """Parse a scheme alias such as ``"int8wo"``, ``"int4wo-64"`` or ``"codebook-3"`` into its config;
    a ``+gptq`` / ``+hqq`` / ``+awq`` / ``+smoothquant`` suffix adds that algorithm (its defaults)."""
    base, plus, algo = (name or "").partition("+")
    if plus:
        config, algorithm = config_from_string(base), from_name(algo)
        if "algorithm" not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"qcompiler: {type(algorithm).__name__} does not apply to {base}; it supports "
                             f"{', '.join(algorithm.schemes)}")
        return dataclasses.replace(config, algorithm=algorithm)
    if name in _FIXED:
        return _FIXED[name]()
    for pattern, build in _PARAMETRIC:
        m = pattern.fullmatch(name or "")
        if m:
            return build(*m.groups())
    raise fail("scheme", f"one of {', '.join(SCHEME_FORMS)}", name)
