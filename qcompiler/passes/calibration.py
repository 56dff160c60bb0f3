"""Calibration in Hessian windows: GPTQ and AWQ with a bounded memory for their Hessians.

Each distinct linear input that GPTQ or AWQ reads needs a ``K×K`` float32 Hessian. When
they all fit in ``budget`` bytes, one pass over the data collects them all and ``convert``
uses them. Otherwise the observed inputs are cut, in graph order, into windows that fit.
The first pass over the data collects every other statistic and the first window's
Hessians; each later pass collects only its window's. At the end of each pass that
window's layers are solved (:func:`solve`: GPTQ's stored tensors, AWQ's scales) and its
Hessians freed. Memory then stays at the model, its quantized weights and one window of Hessians.

What ``solve`` computes lives in one store on the prepared module (:func:`solved`), keyed
by the weight (:func:`weight_key`) or, for input scales, by the observed input
(:func:`scales_key`); convert reads it there before solving anything itself.
"""
from torch.fx import GraphModule, Node

from .algorithm import Solved, as_solved
from .observe import observers
from .pattern import arg_node, stored_arg

SOLVED = "qcompiler_solved"  # gm.meta key of the store


def windows(gm: GraphModule, budget: int) -> list:
    """The observers that collect Hessians, cut in graph order into lists whose Hessians fit ``budget``."""
    out: list[list] = []
    current: list = []
    size = 0
    for node, obs in observers(gm):
        if not obs.wants_hessian:
            continue
        if current and size + obs.hessian_bytes > budget:
            out.append(current)
            current, size = [], 0
        current.append((node, obs))
        size += obs.hessian_bytes
    return out + ([current] if current else [])


def solved(gm: GraphModule) -> dict:
    """The store of what data-driven algorithms computed for ``gm`` (one per prepared module)."""
    return gm.meta.setdefault(SOLVED, {})


def weight_key(node: Node, spec) -> tuple:
    """How a solved weight is found again at convert: its stored name, spec and algorithm."""
    return (arg_node(node, 1).target, spec.weight, spec.algorithm)


def scales_key(obs_node: Node) -> tuple:
    """How an observed input's solved scales (AWQ, SmoothQuant) are found again."""
    return ("input_scales", obs_node.name)


def _data_driven(spec) -> bool:
    return spec.algorithm is not None and bool(spec.algorithm.needs)


def solve(gm: GraphModule, window) -> None:
    """Run the data-driven algorithms of the linears reading each observed input of ``window`` (pairs of node and
    observer) into :func:`solved`, unless already there, then free the inputs' Hessians. Calibrate calls it per
    Hessian window; convert once, for the rest. Inputs that saw no data are left for the stages to refuse."""
    store = solved(gm)
    for node, obs in window:
        users = [u for u in node.users if "qspec" in u.meta and u.args[1].op == "get_attr"]
        if int(obs.rows) > 0:
            _solve_input(gm, store, node, obs, users)
            for u in users:
                spec = u.meta["qspec"]
                if _data_driven(spec) and not spec.algorithm.rescales and weight_key(u, spec) not in store:
                    store[weight_key(u, spec)] = _solved_on_cpu(spec, stored_arg(gm, u, 1).detach(), obs)
        obs.hessian, obs.hessian_held, obs.collect = None, None, False


def _solved_on_cpu(spec, w, obs) -> Solved:
    """The algorithm's result for ``w``, solved on the CPU (the solvers' home: a model captured on a GPU has its
    Hessians gathered there and brought over) and stored on ``w``'s device."""
    if w.device.type != "cpu" and obs.hessian is not None:
        obs.hessian = obs.hessian.cpu()
        obs.hessian_held = obs.hessian_held.cpu() if obs.hessian_held is not None else None
    result = as_solved(spec.algorithm.quantize_weight(spec.weight, w.cpu(), obs))
    return Solved({name: t.to(w.device) for name, t in result.tensors.items()}, result.note)


def _solve_input(gm: GraphModule, store: dict, node: Node, obs, users: list) -> None:
    """The input scales of a rescaling algorithm (AWQ, SmoothQuant) that every linear reading ``node`` uses (the
    first one's settings, as ``smoothing`` applies them; mixed readers are left for it to refuse, naming them)."""
    algo = users[0].meta["qspec"].algorithm if users else None
    if scales_key(node) in store or algo is None or not algo.rescales or len(users) != len(node.users):
        return
    if any(type(u.meta["qspec"].algorithm) is not type(algo) for u in users):
        return
    weights = [stored_arg(gm, u, 1).detach().float() for u in users]
    store[scales_key(node)] = algo.input_scales(obs, weights, [u.meta["qspec"].weight for u in users])
