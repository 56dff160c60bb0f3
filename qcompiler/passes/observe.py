"""Observers: record the range of a linear's input during calibration (prepare inserts them)."""
import torch
from torch.fx import GraphModule, Node

OBSERVER_PREFIX = "qcompiler_observer_"


class RangeObserver(torch.nn.Module):
    """Tracks min and max of what passes through; ``moving_average`` smooths per-batch ranges (factor 0.01)."""

    def __init__(self, kind: str = "minmax", averaging: float = 0.01):
        super().__init__()
        self.kind, self.averaging = kind, averaging
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if self.kind == "moving_average" and self.batches > 0:
            lo = self.lo + self.averaging * (lo - self.lo)
            hi = self.hi + self.averaging * (hi - self.hi)
        else:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.batches += 1
        return x

    @property
    def calibrated(self) -> bool:
        return int(self.batches) > 0


def insert_observers(gm: GraphModule) -> int:
    """Observe the input of every linear whose spec has a static activation; one observer per input value."""
    made: dict = {}
    for node in list(gm.graph.nodes):
        spec = node.meta.get("qspec")
        if spec is None or spec.activation is None or not spec.activation.static:
            continue
        x = node.args[0]
        if x not in made:
            name = f"{OBSERVER_PREFIX}{len(made)}"
            gm.add_submodule(name, RangeObserver(spec.activation.observer))
            with gm.graph.inserting_after(x):
                made[x] = gm.graph.call_module(name, (x,))
            made[x].meta.update({k: v for k, v in x.meta.items() if k in ("val", "nn_module_stack")})
        node.replace_input_with(x, made[x])
    gm.recompile()
    return len(made)


def observer_of(gm: GraphModule, node: Node):
    """The observer module feeding ``node``'s input, or None."""
    x = node.args[0]
    if isinstance(x, Node) and x.op == "call_module" and str(x.target).startswith(OBSERVER_PREFIX):
        return x, gm.get_submodule(x.target)
    return None, None


def remove_observers(gm: GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(OBSERVER_PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.recompile()
