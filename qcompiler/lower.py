"""Lower: a quantized program to a backend's fused kernels (API front door)."""
import torch
from torch.export import ExportedProgram

from .capture import reexport
from .lowering import lower_graph
from .runtime.decompositions import DECOMPOSITIONS
from .runtime.dtypes import fail


def lower(program: ExportedProgram, backend: str = "cpu") -> ExportedProgram:
    """Replace each quantized linear's reference pattern with ``backend``'s fused kernel.

    Backends: ``"cpu"`` (ATen's packed CPU kernels), ``"cuda"`` (Triton kernels that
    decode weights in their tiles; needs a CUDA device) and ``"reference"`` (no change).
    Weights are prepacked into the kernel's layout now. For linears no rule fuses, the
    ``qcompiler::`` ops are decomposed into ATen ops (kernel ``decomposed``: Inductor
    compiles them when packaged), so a lowered program needs no qcompiler to run.
    ``qcompiler.report(lowered)`` lists the kernel of each layer.
    """
    if not isinstance(program, ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (from qcompiler.convert)", type(program).__name__)
    if backend == "cuda" and not torch.cuda.is_available():
        raise ValueError("qcompiler: backend 'cuda' needs a CUDA device (exporting its Triton kernels runs them); "
                         "none is available here")
    gm = program.module()
    lower_graph(gm, backend)
    lowered = reexport(gm, program)
    return lowered if backend == "reference" else lowered.run_decompositions(DECOMPOSITIONS)
