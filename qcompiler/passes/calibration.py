"""Calibration in Hessian windows: GPTQ and AWQ with a bounded memory for their Hessians.

Each distinct linear input that GPTQ or AWQ reads needs a ``K×K`` float32 Hessian. When
they all fit in ``budget`` bytes, one pass over the data collects them all and ``convert``
uses them. Otherwise the observed inputs are cut, in graph order, into windows that fit.
The first pass over the data collects every other statistic and the first window's
Hessians; each later pass collects only its window's. At the end of each pass that
window's layers are solved (GPTQ's stored tensors, AWQ's scales) and its Hessians freed.
Memory then stays at the model, its quantized weights and one window of Hessians.
"""
from torch.fx import GraphModule

from .algorithms import AWQ, GPTQ
from .gptq import gptq_quantize
from .observe import observers
from .pattern import stored
from .smoothing import awq_for


def windows(gm: GraphModule, budget: int) -> list:
    """The observers that collect Hessians, cut in graph order into lists whose Hessians fit ``budget``."""
    out, current, size = [], [], 0
    for node, obs in observers(gm):
        if not obs.wants_hessian:
            continue
        if current and size + obs.hessian_bytes > budget:
            out.append(current)
            current, size = [], 0
        current.append((node, obs))
        size += obs.hessian_bytes
    return out + ([current] if current else [])


def weight_key(node, spec) -> tuple:
    """How a solved weight is found again at convert: its stored name, spec and algorithm."""
    return (node.args[1].target, spec.weight, spec.algorithm)


def solve(gm: GraphModule, window: list) -> None:
    """Compute what GPTQ and AWQ need from this window's Hessians, then free them."""
    for node, obs in window:
        users = [u for u in node.users if "qspec" in u.meta and u.args[1].op == "get_attr"]
        for u in users:
            spec = u.meta["qspec"]
            if isinstance(spec.algorithm, GPTQ) and int(obs.rows) > 0:
                key = weight_key(u, spec)
                if key not in obs.solved:
                    obs.solved[key] = gptq_quantize(spec.weight, stored(gm, u.args[1].target).detach(), obs.hessian,
                                                    spec.algorithm)
        awq = [u for u in users if isinstance(u.meta["qspec"].algorithm, AWQ)]
        if awq and len(awq) == len(users) and int(obs.rows) > 0:
            obs.solved["awq"] = awq_for(gm, obs, awq)
        obs.hessian, obs.collect = None, False
