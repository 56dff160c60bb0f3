"""What a program is compiled for: a backend and the machine capabilities that decide its kernels.

CPU capabilities (x86):

| name | what it decides |
| --- | --- |
| ``avx2`` | ATen's AVX2 kernels; packed int4 weights in the ``avx2`` layout |
| ``avx512`` | ATen's AVX-512 kernels; packed int4 weights in the ``avx512`` layout |
| ``vnni`` | AVX-512 VNNI 8-bit dot products (``vpdpbusd``): integer GEMMs (``torch._int_mm``) beat float ones |
| ``avx512_bf16`` | native bfloat16 dot products |
| ``amx`` | AMX tiles (int8 and bfloat16) |

``Target.host()`` reads this machine: the vector ISA ATen dispatches to (which
``ATEN_CPU_CAPABILITY`` can lower) and, where that is AVX-512, the extensions the CPU reports (as the C++
kernels decide their path at run time). A user names
another machine with ``Target.parse("cpu:avx2")`` or ``Target("cpu", {"avx512", "vnni"})``.
A target is written into each package's metadata; :func:`missing` tells ``load``
what a machine lacks of it.
"""
import functools
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .errors import fail

CPU_CAPABILITIES = ("avx2", "avx512", "vnni", "avx512_bf16", "amx")
BACKENDS = ("cpu", "cuda", "reference")


@dataclass(frozen=True)
class Target:
    """A backend and its capabilities (for ``cpu``, a subset of ``CPU_CAPABILITIES``)."""

    backend: str = "cpu"
    capabilities: frozenset = field(default_factory=frozenset)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise fail("backend", f"one of {', '.join(BACKENDS)}", self.backend)
        caps = frozenset(self.capabilities)
        unknown = sorted(caps - set(CPU_CAPABILITIES)) if self.backend == "cpu" else sorted(caps)
        if unknown:
            allowed = ", ".join(CPU_CAPABILITIES) if self.backend == "cpu" else "none"
            raise fail(f"capabilities of a {self.backend!r} target", f"among {allowed}", unknown[0])
        if "avx512" in caps and "avx2" not in caps:
            caps = caps | {"avx2"}  # every AVX-512 machine runs AVX2 code
        object.__setattr__(self, "capabilities", caps)

    @classmethod
    def host(cls, backend: str = "cpu") -> "Target":
        """This machine as a target for ``backend``."""
        return cls(backend, host_cpu_capabilities() if backend == "cpu" else frozenset())

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``"cpu"`` (this machine), ``"cpu:avx2"``, ``"cpu:avx512+vnni+avx512_bf16"``, ``"cpu:none"`` (plain
        x86-64), ``"cuda"``, ``"reference"``."""
        backend, colon, caps = str(text).partition(":")
        if not colon:
            return cls.host(backend) if backend in BACKENDS else cls(backend)
        return cls(backend, frozenset(c for c in caps.split("+") if c and c != "none"))

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def aten_isa(self) -> str:
        """The vector ISA ATen's CPU kernels dispatch to on this target: ``avx512``, ``avx2`` or ``default``."""
        return "avx512" if self.has("avx512") else "avx2" if self.has("avx2") else "default"

    def check_unquantized_dtype(self, dtype) -> None:
        """Raise where ``lower(..., unquantized_dtype=dtype)`` cannot compile for this target."""
        if dtype is None:
            return
        if dtype != torch.bfloat16:
            raise fail("unquantized_dtype", "None or torch.bfloat16", dtype)
        if self.backend == "reference":
            raise ValueError("qcompiler: unquantized_dtype needs a backend that compiles (cpu or cuda); 'reference' "
                             "changes nothing")
        if self.backend == "cpu" and not (self.has("avx512_bf16") or self.has("amx")):
            raise ValueError(f"qcompiler: unquantized_dtype=torch.bfloat16 needs a target with native bfloat16 "
                             f"(avx512_bf16 or amx); {self} has neither")

    def to_json(self) -> dict:
        return {"backend": self.backend, "capabilities": sorted(self.capabilities)}

    @classmethod
    def from_json(cls, data: dict) -> "Target":
        return cls(data["backend"], frozenset(data.get("capabilities", ())))

    def __str__(self) -> str:
        caps = [c for c in CPU_CAPABILITIES if c in self.capabilities]
        if self.backend != "cpu":
            return self.backend
        return f"{self.backend}:{'+'.join(caps) or 'none'}"


@functools.lru_cache(maxsize=None)
def host_cpu_capabilities() -> frozenset:
    """This machine's CPU capabilities: ATen's dispatch ISA, and the extensions the CPU has.

    ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) lowers the ISA, as ATen itself does; a
    ``default`` (plain C++) ATen counts as a machine with none of the extensions either.
    """
    isa = torch.backends.cpu.get_cpu_capability().lower()
    caps = {"avx512": {"avx2", "avx512"}, "avx2": {"avx2"}}.get(isa, set())
    if isa == "avx512":
        cpu = {name for name, on in torch.cpu.get_capabilities().items() if on is True}
        caps |= {name for name, flags in AVX512_EXTENSIONS.items() if flags <= cpu}
    return frozenset(caps)


# The extensions a target names, by the CPU flags (torch.cpu.get_capabilities()) they need. Each counts only where
# ATen runs AVX-512 (ATEN_CPU_CAPABILITY=avx2 drops them all), as qcompiler's C++ kernels decide at run time
# (kernel_common.h: path_here; AMX routes only from its VNNI path): "vnni" is AVX-512 VNNI. AVX-VNNI, its 256-bit
# form on AVX2-only CPUs, is not counted: no kernel of ours uses it, so such a machine lowers as an AVX2 one.
AVX512_EXTENSIONS = {"vnni": frozenset({"avx512_vnni"}), "avx512_bf16": frozenset({"avx512_bf16"}),
                     "amx": frozenset({"amx_int8", "amx_tile"})}


_MARCH = {"avx512": ("x86-64-v4", 512), "avx2": ("x86-64-v3", 256), "default": ("x86-64", 0)}


def compile_options(target: Target) -> dict:
    """Inductor options that make AOTInductor's C++ code run on ``target``: none for this machine
    (``-march=native``), else the ISA level of the target's vector width."""
    if target.backend != "cpu" or target == Target.host():
        return {}
    march, simdlen = _MARCH[target.aten_isa]
    return {"cpp.march": march, "cpp.simdlen": simdlen}


def code_needs(target: Target) -> frozenset:
    """The capabilities the compiled code itself assumes: all of this machine's for ``-march=native``,
    else the target's vector ISA."""
    if target.backend != "cpu":
        return frozenset()
    if target == Target.host():
        return target.capabilities
    return frozenset({target.aten_isa}) - {"default"}


def missing(target: Target, capabilities: Iterable[str]) -> list:
    """Which of ``capabilities`` this machine lacks, for ``target``'s backend, in table order."""
    here = Target.host(target.backend).capabilities
    return [c for c in CPU_CAPABILITIES if c in set(capabilities) and c not in here]
