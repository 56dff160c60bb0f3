"""Convert: fold observers into qparams, quantize weights, rewrite to the reference Q/DQ pattern."""
import torch
from torch.export import ExportedProgram

from .capture import reexport
from ..passes.calibration import solve
from ..passes.observe import observers
from ..passes.pattern import prune
from ..passes.embeddings import rewrite_embeddings
from ..passes.reference import rewrite_to_reference
from ..passes.smoothing import smooth_inputs
from .prepare import QCOMPILER_META, SOURCE
from ..runtime.errors import fail


def convert(prepared: torch.fx.GraphModule) -> ExportedProgram:
    """Turn a prepared (and, where needed, calibrated) module into a portable quantized ExportedProgram.

    The program's linears read ``qcompiler::dequantize_*`` of weights stored in quantized,
    packed form; it saves with ``torch.export.save`` and loads after ``import qcompiler``.
    Its per-layer report is ``qcompiler.report(program)``.

    ``prepared`` is used up: its linears are rewritten in place, and each float weight is deleted from it
    once its layers are quantized. Memory: a float weight is freed then if nothing else holds it, so
    ``del`` the model and the captured program before converting a model that fills the machine.
    """
    if not isinstance(prepared, torch.fx.GraphModule) or SOURCE not in prepared.meta:
        raise fail("prepared", "the module qcompiler.prepare returned", type(prepared).__name__)
    with torch.no_grad():
        solve(prepared, observers(prepared))  # what calibration did not solve in windows: GPTQ, AWQ, SmoothQuant
        smooth_inputs(prepared)  # SmoothQuant and AWQ rescale inputs and weights first
        rewrite_to_reference(prepared, prepared.meta["qcompiler_names"])
        if rewrite_embeddings(prepared, prepared.meta["qcompiler_names"]):
            prune(prepared)  # the float tables
    program = reexport(prepared, prepared.meta[SOURCE])
    for meta in (prepared.meta, program.graph_module.meta):  # export copies the module's meta; none of it is needed now
        for key in [k for k in meta if k.startswith(QCOMPILER_META)]:
            del meta[key]
    return program
