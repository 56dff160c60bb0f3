"""Observers: record what a linear's input looks like during calibration (prepare inserts them).

Every observer tracks the input's range (for static activations). For the algorithms it
can also track per-channel statistics along the last dimension (``channels``: min, max
and mean magnitude; SmoothQuant, AWQ) and the Hessian ``XᵀX`` of the rows (``hessian``:
``K×K`` float32, the memory GPTQ and AWQ pay per distinct linear input). With ``held_out``
(GPTQ) it also keeps the Hessian of every fourth row apart (``hessian_held``, another ``K×K``),
so an algorithm can check its result on rows it did not fit.
"""
from typing import Optional

import torch
from torch.fx import GraphModule, Node

OBSERVER_PREFIX = "qcompiler_observer_"
HOLD_EVERY = 4  # with ``held_out``, every fourth row's Hessian is kept apart as well


class RangeObserver(torch.nn.Module):
    """Tracks min and max of what passes through; ``moving_average`` smooths per-batch ranges (factor 0.01).

    With ``features`` (the last dimension's size), also per-channel statistics (``channels``)
    and the Hessian of the rows (``hessian``).
    """

    # the buffers __init__ registers (channel_* with channels=True only); Module.__getattr__ types them Tensor | Module
    lo: torch.Tensor
    hi: torch.Tensor
    batches: torch.Tensor
    rows: torch.Tensor
    channel_lo: torch.Tensor
    channel_hi: torch.Tensor
    channel_abs_sum: torch.Tensor

    def __init__(self, kind: str = "minmax", averaging: float = 0.01, features: int = 0, channels: bool = False,
                 hessian: bool = False, held_out: bool = False):
        super().__init__()
        self.kind, self.averaging = kind, averaging
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0))
        self.register_buffer("rows", torch.tensor(0))
        if channels:
            self.register_buffer("channel_lo", torch.full((features,), float("inf")))
            self.register_buffer("channel_hi", torch.full((features,), float("-inf")))
            self.register_buffer("channel_abs_sum", torch.zeros(features, dtype=torch.float64))
        # The Hessian is no buffer (never exported). ``collect`` switches it on and off (calibration in
        # windows); ``frozen`` stops every other statistic (a later pass over the same data). What is
        # solved from a freed Hessian lives in ``calibration.solved``: observers hold statistics only.
        self.features, self.wants_hessian, self.wants_held = features, hessian, hessian and held_out
        self.hessian: Optional[torch.Tensor] = None
        self.hessian_held: Optional[torch.Tensor] = None  # of the rows whose place in the data is 3 mod HOLD_EVERY
        self.hessian_rows = 0  # rows in ``hessian`` (held ones included)
        self.collect, self.frozen = hessian, False

    @property
    def hessian_bytes(self) -> int:
        return self.features * self.features * 4 * (1 + self.wants_held) if self.wants_hessian else 0

    @torch.no_grad()
    def _statistics(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if self.collect:
            self._add_to_hessians(rows)
        if self.frozen:
            return
        if hasattr(self, "channel_lo"):
            self.channel_lo.copy_(torch.minimum(self.channel_lo, rows.amin(0)))
            self.channel_hi.copy_(torch.maximum(self.channel_hi, rows.amax(0)))
            self.channel_abs_sum += rows.abs().sum(0, dtype=torch.float64)
        self.rows += rows.shape[0]

    def _add_to_hessians(self, rows: torch.Tensor) -> None:
        if self.hessian is None:
            self.hessian, self.hessian_rows = torch.zeros(self.features, self.features, device=rows.device), 0
            self.hessian_held = (torch.zeros(self.features, self.features, device=rows.device) if self.wants_held
                                 else None)
        self.hessian.addmm_(rows.t(), rows)
        if self.hessian_held is not None:
            place = torch.arange(self.hessian_rows, self.hessian_rows + rows.shape[0], device=rows.device)
            held = rows[place % HOLD_EVERY == HOLD_EVERY - 1]
            self.hessian_held.addmm_(held.t(), held)
        self.hessian_rows += rows.shape[0]

    @property
    def channel_abs_mean(self) -> torch.Tensor:
        return (self.channel_abs_sum / max(int(self.rows), 1)).float()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._statistics(x)
        if self.frozen:
            return x
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


def needs(spec) -> set:
    """What calibration must observe for a QuantSpec: ``range`` (static activations), ``channels``,
    ``hessian``, ``held_out`` (its algorithm's); empty if it needs no data."""
    needs = set(getattr(spec.algorithm, "needs", ()))
    if spec.activation is not None and spec.activation.static:
        needs.add("range")
    return needs


def insert_observers(gm: GraphModule) -> int:
    """Observe the input of every linear whose spec has a static activation or an algorithm that needs
    calibration; one observer per input value, tracking what all its linears need."""
    wanted: dict = {}
    for node in gm.graph.nodes:
        spec = node.meta.get("qspec")
        wants = needs(spec) if spec is not None else set()
        if wants:
            x = node.args[0]
            kind = spec.activation.observer if "range" in wants else None
            seen, old_kind = wanted.get(x, (set(), None))
            wanted[x] = (seen | wants, old_kind or kind)
    made: dict = {}
    for x, (wants, kind) in wanted.items():
        name = f"{OBSERVER_PREFIX}{len(made)}"
        features = x.meta["val"].shape[-1] if "val" in x.meta else 0
        gm.add_submodule(name, RangeObserver(kind or "minmax", features=features, channels="channels" in wants,
                                             hessian="hessian" in wants, held_out="held_out" in wants))
        with gm.graph.inserting_after(x):
            made[x] = gm.graph.call_module(name, (x,))
        made[x].meta.update({k: v for k, v in x.meta.items() if k in ("val", "nn_module_stack")})
    for node in list(gm.graph.nodes):
        spec = node.meta.get("qspec")
        if spec is not None and node.args[0] in made:
            node.replace_input_with(node.args[0], made[node.args[0]])
    gm.recompile()
    return len(made)


def observers(gm: GraphModule) -> list:
    """``(node, observer)`` pairs in graph order."""
    return [(n, gm.get_submodule(n.target)) for n in gm.graph.nodes
            if n.op == "call_module" and str(n.target).startswith(OBSERVER_PREFIX)]


def observer_of(gm: GraphModule, node: Node):
    """The observer module feeding ``node``'s input, or None."""
    x = node.args[0]
    if (isinstance(x, Node) and x.op == "call_module" and isinstance(x.target, str)
            and x.target.startswith(OBSERVER_PREFIX)):
        return x, gm.get_submodule(x.target)
    return None, None


def remove_observers(gm: GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(OBSERVER_PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.recompile()
