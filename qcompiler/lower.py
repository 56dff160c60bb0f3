"""Lower: a quantized program to a backend's fused kernels (API front door)."""
import torch
from torch.export import ExportedProgram

from .capture import reexport
from .lowering import lower_graph
from .runtime.decompositions import DECOMPOSITIONS
from .runtime.dtypes import fail


def off_device(program: ExportedProgram, device_type: str) -> list:
    """Names of the program's parameters, buffers and constants that are not on ``device_type``."""
    tensors = {**program.state_dict, **program.constants}
    return [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.device.type != device_type]


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
    if backend == "cuda" and (elsewhere := off_device(program, "cuda")):
        raise ValueError(f"qcompiler: backend 'cuda' needs the model captured on the GPU; {len(elsewhere)} weights are "
                         f"not (first: {elsewhere[0]}). Call model.to('cuda') and pass CUDA example inputs to capture")
    gm = program.module()
    lower_graph(gm, backend)
    lowered = reexport(gm, program)
    return lowered if backend == "reference" else lowered.run_decompositions(DECOMPOSITIONS)
