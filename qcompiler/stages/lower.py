"""Lower: a quantized program to a target's fused kernels (API front door)."""
import logging
import warnings
from typing import Optional, Union

import torch
from torch.export import ExportedProgram

from .capture import reexport
from ..lowering import lower_graph
from ..lowering.unquantized import run_unquantized_in
from ..runtime.decompositions import DECOMPOSITIONS
from ..runtime.errors import fail
from ..runtime import torch_warnings
from ..runtime.target import Target

logger = logging.getLogger(__name__)


def off_device(program: ExportedProgram, device_type: str) -> list:
    """Names of the program's parameters, buffers and constants that are not on ``device_type``."""
    tensors = {**program.state_dict, **program.constants}
    return [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.device.type != device_type]


def lower(program: ExportedProgram, target: Union[str, Target, None] = None, *,
          unquantized_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> ExportedProgram:
    """Replace each quantized linear's reference pattern with the fastest kernel ``target`` has for it.

    ``target``: a backend name for this machine (``"cpu"``: integer GEMMs where the CPU has
    VNNI, ATen's packed kernels elsewhere; ``"cuda"``: Triton kernels that decode weights in
    their tiles, needs a CUDA device; ``"reference"``: no change), or a :class:`Target`
    naming another machine (``Target.parse("cpu:avx2")``). Weights are prepacked into the
    kernel's layout now. For linears no rule fuses, the ``qcompiler::`` ops are decomposed
    into ATen ops (kernel ``decomposed``: Inductor compiles them when packaged), so a lowered
    program needs no qcompiler to run. ``qcompiler.report(lowered)`` lists each layer's
    kernel, why it was chosen, and the target.

    ``unquantized_dtype=torch.bfloat16`` also runs the float32 matmuls, linears, convolutions
    and attention that are not quantized layers in bfloat16 (off by default; needs a target
    with native bfloat16). What it costs and gains: docs/stages.md, "Unquantized parts in bfloat16".

    ``backend=`` is the old spelling of ``target`` (a backend name): still taken, with a
    ``DeprecationWarning``, until the next release.
    """
    target = _target_or_backend(target, backend)
    if not isinstance(program, ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (from qcompiler.convert)", type(program).__name__)
    target = target if isinstance(target, Target) else Target.parse(target)
    target.check_unquantized_dtype(unquantized_dtype)
    backend = target.backend
    if backend == "cuda" and not torch.cuda.is_available():
        raise ValueError("qcompiler: backend 'cuda' needs a CUDA device (exporting its Triton kernels runs them); "
                         "none is available here")
    if backend == "cuda" and (elsewhere := off_device(program, "cuda")):
        raise ValueError(f"qcompiler: backend 'cuda' needs the model captured on the GPU; {len(elsewhere)} weights are "
                         f"not (first: {elsewhere[0]}). Call model.to('cuda') and pass CUDA example inputs to capture")
    gm = program.module()
    lower_graph(gm, target)
    if unquantized_dtype is not None:
        logger.info("running %d unquantized ops in %s", run_unquantized_in(gm, unquantized_dtype), unquantized_dtype)
    lowered = reexport(gm, program)
    return lowered if backend == "reference" else _decomposed(lowered)


def _target_or_backend(target: Union[str, Target, None], backend: Optional[str]) -> Union[str, Target]:
    """``target`` (default ``"cpu"``), or the deprecated ``backend=`` given in its place."""
    if backend is None:
        return "cpu" if target is None else target
    if target is not None:
        raise ValueError(f"qcompiler: lower() takes target={target!r} or the deprecated backend={backend!r}, not both")
    warnings.warn("qcompiler.lower(program, backend=...) is deprecated and will be removed in the next release; "
                  f"pass the target instead: qcompiler.lower(program, {backend!r})", DeprecationWarning, stacklevel=3)
    return backend


def _decomposed(program: ExportedProgram) -> ExportedProgram:
    """``program.run_decompositions(DECOMPOSITIONS)``, without torch's own deprecation warning: torch 2.13 deep-copies
    the module call graph there, whose ``LeafSpec`` objects warn about their own ``isinstance`` use."""
    with torch_warnings.held():
        return program.run_decompositions(DECOMPOSITIONS)
