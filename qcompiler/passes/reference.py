"""Convert's rewrite: each annotated linear becomes the reference quantize/dequantize pattern.

    linear(x, w, b)  ->  linear(fake_quantize(x)?, dequantize_*(w_q, qparams...), b)

``w_q`` and its qparams are stored as buffers in their quantized form (sub-byte
values packed). A weight used by several linears is quantized once and stored
once. Each rewritten (or skipped) linear carries its report record (``record.py``).
"""
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch.fx import GraphModule

from .observe import observer_of, remove_observers
from .pattern import Match, attr_target, delete_attr, find, prune, replace_all, stored
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
    """Quantized weights by (weight tensor, spec): each stored once, however many linears read it. Holds the
    float weight only by id, so it is freed once no linear reads it (see :func:`_releasing`)."""

    stored: dict = field(default_factory=dict)

    def get(self, m: Match, spec, name: str) -> tuple:
        """``(stored names, record, (in_features, float dtype))`` of the linear ``m``'s weight."""
        target, stored_w = attr_target(m["w"]), m.value("w")
        assert stored_w is not None  # rewrite_to_reference matches only linears whose weight is stored
        w, key = stored_w.detach(), (id(stored_w), spec.weight, spec.algorithm)  # tied weights are one object
        if key not in self.stored:
            result = quantize_weight(spec, w, observer_of(m.graph_module, m.anchor)[1], name, solved(m.graph_module),
                                     weight_key(m.anchor, spec))
            tensors = result.tensors
            w_hat = spec.weight.dequantize(tensors, w.shape[1], torch.float32)
            names = {k: m.store(f"{name}.{k}", v) for k, v in tensors.items()}
            record = LayerRecord(name, spec.scheme, "reference", nbytes(w), sum(nbytes(v) for v in tensors.values()),
                                 sqnr_db(w, w_hat), weight=target, algorithm_note=result.note)
            self.stored[key] = (names, record, (w.shape[1], w.dtype))
            return self.stored[key]
        names, record, weight = self.stored[key]
        return names, record.updated(name=name), weight

    def forget(self, weight: torch.Tensor) -> None:
        """Drop the entries of a weight about to be freed (its id may be reused)."""
        for key in [k for k in self.stored if k[0] == id(weight)]:
            del self.stored[key]


def _releasing(gm: GraphModule, matches: Iterable[Match], weights: _Weights) -> Iterator[Match]:
    """Yield each match; once it is replaced, delete its float weight from ``gm`` if nothing reads it any more,
    so a model's float weights are freed layer by layer as they are quantized (where nothing else holds them).

        linear(x, get_attr w)  --replace-->  linear(x, dequantize(get_attr w_q, ...))
                                             get_attr w (no users)  --here-->  deleted, gm.w deleted
    """
    for m in matches:
        yield m
        node = m.inputs["w"]
        target = attr_target(node)
        if target is None or node.users:
            continue
        weights.forget(stored(gm, target))
        gm.graph.erase_node(node)
        if not any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
            delete_attr(gm, target)


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
        stored, record, (in_features, dtype) = weights.get(m, spec, name)
        w_hat = spec.weight.dequantize({k: m.attr(v) for k, v in stored.items()}, in_features, dtype)
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
    done = replace_all(gm, _releasing(gm, progress(matches, "quantizing layers"), weights), replacement)
    remove_observers(gm)
    prune(gm)
    return len(done)
