"""Per-input-channel smoothing: SmoothQuant and AWQ rewrite ``x @ Wᵀ`` as ``(x/s) @ (W·s)ᵀ``.

For each observed linear input whose linears use one of the two algorithms, a scale ``s``
per input channel is chosen (SmoothQuant from channel ranges, AWQ by a search against the
input Hessian), every such linear's weight becomes ``W·s`` (a new buffer; the original,
maybe tied, is left alone), and ``1/s`` is applied to the input:

- folded into the op that produces it, where only these linears read it: a ``layer_norm``'s
  weight and bias, or a linear's output rows (and bias);
- otherwise a ``mul`` by ``1/s`` is inserted before them (post-norm transformers such as
  BERT read the norm's output in the residual too, so it cannot be folded there).

The input's observed range is rescaled the same way (exact from the per-channel ranges),
so static activations calibrate on what the linear will see.
"""
import torch
from torch.fx import GraphModule, Node

from .calibration import scales_key, solved
from .observe import observers
from .pattern import arg_node, attr_target, inherit_meta, store_tensor, stored_arg

aten = torch.ops.aten
ops = torch.ops.qcompiler
MIN_SCALE = 1e-5


def smooth_inputs(gm: GraphModule) -> int:
    """Apply SmoothQuant / AWQ to every observed input whose linears ask for it; how many inputs."""
    done = 0
    for obs_node, obs in observers(gm):
        linears = [u for u in obs_node.users
                   if getattr(getattr(u.meta.get("qspec"), "algorithm", None), "rescales", False)]
        if not linears:
            continue
        kinds = {type(u.meta["qspec"].algorithm) for u in linears}
        if len(linears) != len(obs_node.users) or len(kinds) > 1 or not all(_stored_args(u, (1,)) for u in linears):
            raise ValueError(f"qcompiler: {', '.join(sorted(str(u) for u in obs_node.users))} read one input; "
                             f"{' and '.join(sorted(k.__name__ for k in kinds))} rescales it for all of them, "
                             "so give them all the same algorithm (one recipe rule), with weights stored in the model")
        if int(obs.rows) == 0:
            raise ValueError(f"qcompiler: {type(algo_of(linears[0])).__name__} needs calibration, but no input of "
                             f"{linears[0]} was observed: pass calibration_data "
                             "(or call the prepared program on inputs)")
        s = solved(gm)[scales_key(obs_node)]  # solved in calibration's windows or at the start of convert
        _apply(gm, obs_node, linears, s)
        _rescale_range(obs, 1 / s)
        done += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return done


def algo_of(node: Node):
    return node.meta["qspec"].algorithm


def _apply(gm: GraphModule, obs_node: Node, linears: list, s: torch.Tensor) -> None:
    for u in linears:
        _replace_arg(gm, u, 1, stored_arg(gm, u, 1).detach().float() * s)
    x = arg_node(obs_node, 0)
    if not _fold(gm, x, obs_node, 1 / s):
        name = store_tensor(gm, f"{obs_node.target}_inverse_scale", (1 / s).to(x.meta["val"].dtype))
        with gm.graph.inserting_before(obs_node):
            scale = gm.graph.get_attr(name)
            mul = gm.graph.call_function(aten.mul.Tensor, (x, scale))
        inherit_meta(gm, [scale, mul], x)
        obs_node.replace_input_with(x, mul)


def _fold(gm: GraphModule, x: Node, obs_node: Node, inv: torch.Tensor) -> bool:
    """Scale the output channels of ``x``'s producer by ``inv`` where only the observer reads it."""
    if len(x.users) != 1 or x.op != "call_function":
        return False
    if x.target == aten.layer_norm.default and len(x.args) >= 4 and _stored_args(x, (2, 3)):
        _replace_arg(gm, x, 2, stored_arg(gm, x, 2) * inv)
        _replace_arg(gm, x, 3, stored_arg(gm, x, 3) * inv)
        return True
    if x.target == aten.linear.default and _stored_args(x, (1,)) and (len(x.args) < 3 or _stored_args(x, (2,))):
        _replace_arg(gm, x, 1, stored_arg(gm, x, 1) * inv[:, None])
        if len(x.args) >= 3 and x.args[2] is not None:
            _replace_arg(gm, x, 2, stored_arg(gm, x, 2) * inv)
        return True
    return False


def _stored_args(node: Node, positions) -> bool:
    return all(attr_target(node.args[i]) is not None for i in positions)


def _replace_arg(gm: GraphModule, node: Node, i: int, value: torch.Tensor) -> None:
    old = arg_node(node, i)
    name = store_tensor(gm, f"{old.target}_smoothed", value.detach().to(stored_arg(gm, node, i).dtype))
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(name)
    inherit_meta(gm, [attr], old)
    node.update_arg(i, attr)


def _rescale_range(obs, inv: torch.Tensor) -> None:
    """The input's range once divided by ``s`` per channel (``inv = 1/s`` > 0), from the channel ranges."""
    lo, hi = obs.channel_lo * inv, obs.channel_hi * inv
    obs.lo.copy_(lo.min())
    obs.hi.copy_(hi.max())

