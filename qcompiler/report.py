"""The per-layer report every quantized program carries: read from the graph, printable, JSON.

Records live on the linear nodes (``node.meta["custom"]["qcompiler"]``), so the
report survives ``torch.export.save``/``load`` and every later stage.
"""
import json
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from .passes.reference import FLOAT_KEY, REPORT_KEY


@dataclass(frozen=True)
class LayerReport:
    """One stored weight (a layer, or several layers sharing one weight), or one skipped layer."""

    name: str
    scheme: Optional[str] = None
    kernel: Optional[str] = None
    bytes_before: int = 0
    bytes_after: int = 0
    sqnr_db: Optional[float] = None
    skipped: Optional[str] = None
    kernel_reason: Optional[str] = None  # why this kernel; for a ``decomposed`` layer, why no kernel took it
    target: Optional[str] = None  # what it was lowered for (``Target``'s text form), once lowered


@dataclass(frozen=True)
class Report:
    layers: tuple
    unquantized_dtype: Optional[str] = None  # where lowering ran the unquantized compute ops in another dtype
    unquantized_ops: int = 0  # how many

    @property
    def quantized(self) -> tuple:
        return tuple(r for r in self.layers if r.skipped is None)

    @property
    def skipped(self) -> tuple:
        return tuple(r for r in self.layers if r.skipped is not None)

    def to_dict(self) -> list:
        return [asdict(r) for r in self.layers]

    @classmethod
    def from_dict(cls, rows: list) -> "Report":
        return cls(tuple(LayerReport(**r) for r in rows))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        """A table for people: one row a layer, then totals."""
        rows = [("layer", "scheme", "kernel", "bytes before", "bytes after", "SQNR dB")]
        for r in self.quantized:
            rows.append((r.name, r.scheme, r.kernel, f"{r.bytes_before:,}", f"{r.bytes_after:,}", f"{r.sqnr_db:.1f}"))
        before, after = sum(r.bytes_before for r in self.quantized), sum(r.bytes_after for r in self.quantized)
        rows.append(("total", "", "", f"{before:,}", f"{after:,}", ""))
        widths = [max(len(str(row[i])) for row in rows) for i in range(6)]
        lines = ["  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines += self._reasons()
        lines += [f"skipped {r.name}: {r.skipped}" for r in self.skipped]
        if self.unquantized_dtype:
            lines.append(f"unquantized matmuls, linears, convolutions and attention ({self.unquantized_ops}) run in "
                         f"{self.unquantized_dtype}")
        return "\n".join(lines)

    def _reasons(self) -> list:
        """One line per distinct (kernel, reason): why the layers got their kernels."""
        layers: dict = {}
        for r in self.quantized:
            if r.kernel_reason:
                layers.setdefault((r.kernel, r.kernel_reason), []).append(r.name)
        return [f"{kernel} ({len(names)} layer{'s' * (len(names) > 1)}): {why}" for (kernel, why), names in layers.items()]

    @property
    def targets(self) -> tuple:
        """The targets the layers were lowered for (one, for a lowered program; none before lowering)."""
        return tuple(dict.fromkeys(r.target for r in self.layers if r.target))

    __str__ = table


def report(program: Union[torch.export.ExportedProgram, torch.fx.GraphModule]) -> Report:
    """The per-layer report of a quantized (or lowered) program."""
    graph = program.graph
    by_weight: dict = {}
    skipped, floats = [], []
    for node in graph.nodes:
        if FLOAT_KEY in (node.meta.get("custom") or {}):
            floats.append(node.meta["custom"][FLOAT_KEY])
        raw = (node.meta.get("custom") or {}).get(REPORT_KEY)
        if raw is None:
            continue
        rec = json.loads(raw)
        if "skipped" in rec:
            skipped.append(LayerReport(rec["layer"], skipped=rec["skipped"]))
            continue
        _, names = by_weight.setdefault((rec["weight"], rec["scheme"]), (rec, []))
        names.append(rec["layer"])
    rows = [LayerReport(", ".join(dict.fromkeys(names)), r["scheme"], r["kernel"], r["bytes_before"],
                        r["bytes_after"], r["sqnr_db"], None, r.get("kernel_reason"), r.get("target"))
            for r, names in by_weight.values()]
    return Report(tuple(rows) + tuple(skipped), floats[0] if floats else None, len(floats))
