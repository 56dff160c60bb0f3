"""Convert's rewrite: each annotated linear becomes the reference quantize/dequantize pattern.

    linear(x, w, b)  ->  linear(fake_quantize(x)?, dequantize_*(w_q, qparams...), b)

``w_q`` and its qparams are stored as buffers in their quantized form (sub-byte
values packed). A weight used by several linears is quantized once and stored
once. Each rewritten (or skipped) linear carries its report record (``record.py``).
"""
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule

from .observe import observer_of, remove_observers
from .pattern import Match, attr_target, find, prune, replace_all
from .progress import progress
from .record import LayerRecord, write
from .calibration import solved, weight_key
from .weights import quantize_weight

aten = torch.ops.aten


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    noise = (w.float() - w_hat.float()).pow(2).sum()
    signal = w.float().pow(2).sum()
    return float("inf") if noise == 0 else round(float(10 * torch.log10(signal / noise)), 2)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class _Weights:
    """Quantized weights by (weight tensor, spec): each stored once, however many linears read it."""

    stored: dict = field(default_factory=dict)

    def get(self, m: Match, spec, name: str):
        target, stored_w = attr_target(m["w"]), m.value("w")
        assert stored_w is not None  # rewrite_to_reference matches only linears whose weight is stored
        w, key = stored_w.detach(), (id(stored_w), spec.weight, spec.algorithm)  # tied weights are one object
        if key not in self.stored:
            tensors = quantize_weight(spec, w, observer_of(m.graph_module, m.anchor)[1], name, solved(m.graph_module),
                                      weight_key(m.anchor, spec))
            w_hat = spec.weight.dequantize(tensors, w.shape[1], torch.float32)
            names = {k: m.store(f"{name}.{k}", v) for k, v in tensors.items()}
            record = LayerRecord(name, spec.scheme, "reference", nbytes(w), sum(nbytes(v) for v in tensors.values()),
                                 sqnr_db(w, w_hat), weight=target)
            self.stored[key] = (names, record, w)
            return names, record, w
        names, record, w = self.stored[key]
        return names, record.updated(name=name), w


def _linear(x, w, b=None):
    return aten.linear.default(x, w, b)


def _static_qparams(m: Match, spec, ndim: int, name: str) -> dict:
    _, obs = observer_of(m.graph_module, m.anchor)
    if obs is None or not obs.calibrated:
        raise ValueError(f"qcompiler: layer {name!r} uses {spec.scheme}, which needs calibration, but its observer "
                         "saw no data: call the prepared program on representative inputs, or pass calibration_data")
    qp = spec.activation.qparams_from_range(obs.lo, obs.hi)
    return {k: m.constant(f"{name}.input_{k}", v.reshape([1] * ndim)) for k, v in qp.items()}


def rewrite_to_reference(gm: GraphModule, names: dict) -> int:
    """Rewrite every linear with a ``qspec``; record skipped ones. ``names`` maps nodes to layer names."""
    weights = _Weights()

    def replacement(m: Match, x, w, b=None):
        spec, name = m.anchor.meta["qspec"], names[m.anchor]
        stored, record, weight = weights.get(m, spec, name)
        w_hat = spec.weight.dequantize({k: m.attr(v) for k, v in stored.items()}, weight.shape[1], weight.dtype)
        if spec.activation is not None:
            ndim = x.node.meta["val"].ndim
            qparams = _static_qparams(m, spec, ndim, name) if spec.activation.static else None
            x = spec.activation.fake_quantize(x, ndim, qparams)
        out = aten.linear.default(x, w_hat, b)
        write(out.node, record)
        return out

    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == aten.linear.default and "qskip" in node.meta:
            write(node, LayerRecord(names[node], skipped=node.meta["qskip"]))
    matches = find(gm, _linear, where=lambda m: "qspec" in m.anchor.meta and attr_target(m["w"]) is not None)
    done = replace_all(gm, progress(matches, "quantizing layers"), replacement)
    remove_observers(gm)
    prune(gm)
    return len(done)
