"""The per-layer report every quantized program carries: read from the graph, printable, JSON.

Records live on the linear nodes (``passes/record.py``: one typed record, written by convert,
updated by lowering), so the report survives ``torch.export.save``/``load`` and every later stage.
"""
import json
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

from ..passes import record
from ..passes.record import LayerRecord

LayerReport = LayerRecord  # the report's rows are the records themselves (the public name)


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
        return [r.to_dict() for r in self.layers]

    @classmethod
    def from_dict(cls, rows: list) -> "Report":
        return cls(tuple(LayerRecord.from_dict(r) for r in rows))

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
        lines += [f"{r.name}: {r.algorithm_note}" for r in self.quantized if r.algorithm_note]
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
        return [f"{kernel} ({len(names)} layer{'s' * (len(names) > 1)}): {why}"
                for (kernel, why), names in layers.items()]

    @property
    def targets(self) -> tuple:
        """The targets the layers were lowered for (one, for a lowered program; none before lowering)."""
        return tuple(dict.fromkeys(r.target for r in self.layers if r.target))

    __str__ = table


def report(program: Union[torch.export.ExportedProgram, torch.fx.GraphModule]) -> Report:
    """The per-layer report of a quantized (or lowered) program: one row per stored weight (the names of the
    layers sharing it joined), then the skipped layers."""
    by_weight: dict = {}
    skipped, floats = [], []
    for node in program.graph.nodes:
        if record.UNQUANTIZED_KEY in (node.meta.get("custom") or {}):
            floats.append(node.meta["custom"][record.UNQUANTIZED_KEY])
        rec = record.read(node)
        if rec is None:
            continue
        if not rec.quantized:
            skipped.append(rec)
            continue
        by_weight.setdefault((rec.weight, rec.scheme), []).append(rec)
    rows = [replace(recs[0], name=", ".join(dict.fromkeys(r.name for r in recs))) for recs in by_weight.values()]
    return Report(tuple(rows) + tuple(skipped), floats[0] if floats else None, len(floats))
