"""Target types of quantization and the argument checks every primitive shares.

An integer target type is named by a string: ``"int1"`` .. ``"int8"`` (signed,
two's complement) or ``"uint1"`` .. ``"uint8"``. The torch dtypes
``torch.int8``, ``torch.uint8``, ``torch.int1`` .. ``torch.int7`` and
``torch.uint1`` .. ``torch.uint7`` name the same types. Unpacked values are held
in ``int8`` (signed types) or ``uint8`` (unsigned types).
"""
from dataclasses import dataclass

import torch

from .errors import fail

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
INT_TYPE_NAMES = tuple(f"int{b}" for b in range(1, 9)) + tuple(f"uint{b}" for b in range(1, 9))


@dataclass(frozen=True)
class IntType:
    """A b-bit integer type: its range and the dtype that holds it unpacked."""

    bits: int
    signed: bool

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def mid(self) -> int:
        """The implicit zero point of symmetric quantization: 0 for signed types."""
        return (self.qmin + self.qmax + 1) // 2

    @property
    def storage(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8


def int_type(dtype: "str | torch.dtype") -> IntType:
    """Parse a target integer type given as a name or a torch dtype."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if not isinstance(name, str) or name not in INT_TYPE_NAMES:
        raise fail("dtype", f"one of {', '.join(INT_TYPE_NAMES)} (or the matching torch dtype)", dtype)
    signed = not name.startswith("u")
    return IntType(bits=int(name.removeprefix("u").removeprefix("int")), signed=signed)


def dtype_name(dtype: "str | torch.dtype") -> str:
    """Canonical name of an integer target type, as the ops take it."""
    return int_type(dtype).name


def check_float(x: torch.Tensor, arg: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise fail(arg, "a float32, bfloat16 or float16 tensor", got)


def check_float_dtype(dtype: object, arg: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise fail(arg, "torch.float32, torch.bfloat16 or torch.float16", dtype)


def check_bits(bits: object, lo: int = 1, hi: int = 8) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
        raise fail("bits", f"an integer from {lo} to {hi}", bits)


def check_storage(q: torch.Tensor, t: IntType, arg: str = "q") -> None:
    if not isinstance(q, torch.Tensor) or q.dtype != t.storage:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise fail(arg, f"a {t.storage} tensor holding unpacked {t.name} values", got)
