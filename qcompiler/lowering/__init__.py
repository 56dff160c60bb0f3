"""Lowering: a backend's rule table turns reference Q/DQ patterns into fused kernels.

``lower_graph`` applies the table of ``lowering/<backend>.py``. What no rule matches
keeps its reference pattern, and the API's ``lower`` then decomposes the remaining
``qcompiler::`` ops into ATen (``runtime.decompositions``) so that Inductor compiles them
and the program needs no qcompiler at run time; the report names those layers'
kernel ``decomposed``. The CUDA table is imported on first use. Its Triton ops live in
``runtime/triton_matmul.py`` and are registered by ``import qcompiler``, so a saved
CUDA-lowered program loads with ``torch.export.load`` after that import alone.
"""
import logging
from typing import Union

import torch

from ..runtime.target import Target
from . import cpu
from .requantize import fuse_requantize
from .rules import DECOMPOSED, LoweringRule, apply_rules, mark_unfused


log = logging.getLogger(__name__)


def _cuda_rules(target: Target) -> tuple:
    from . import cuda  # imports Triton and registers its ops (about 1.7 s): only when lowering for CUDA
    return cuda.RULES


BACKENDS = {"cpu": lambda target: cpu.rules(target.aten_isa), "cuda": _cuda_rules,
            "reference": lambda target: ()}  # name -> the rule table for a target


def lower_graph(gm: torch.fx.GraphModule, target: Union[str, Target]) -> dict:
    """Apply the rules of ``target``'s backend (a name: this machine) to a graph module in place;
    return how many linears each rule lowered."""
    target = target if isinstance(target, Target) else Target.parse(target)
    gm.graph.eliminate_dead_code()  # e.g. an unused zero point of a symmetric choose_qparams
    gm.recompile()
    with torch.no_grad():
        counts = apply_rules(gm, BACKENDS[target.backend](target), target)
        gm.graph.eliminate_dead_code()  # what the rules replaced, so that each value's readers are the live ones
        if target.backend == "cpu" and (fused := fuse_requantize(gm)):
            log.info("%d int8 layers write the next layer's int8 input in their kernel (int8_tile_gemm_requant)", fused)
        return counts


__all__ = ["BACKENDS", "DECOMPOSED", "LoweringRule", "lower_graph", "mark_unfused"]
