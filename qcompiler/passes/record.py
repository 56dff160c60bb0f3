"""The per-layer record: one typed definition, written by convert, updated by lowering, read by the report.

Every quantized or skipped linear carries its :class:`LayerRecord` on its node, as JSON in
``node.meta["custom"]["qcompiler"]`` (custom metadata survives ``torch.export.save``/``load``
and every later stage)::

    convert   write(node, LayerRecord(name, scheme=..., kernel="reference", bytes..., sqnr_db=...))
    lower     write(out, read(anchor).updated(kernel=..., kernel_reason=..., target=..., bytes_after=...))
    report    read(node) for every node -> qcompiler.report(program)

Unquantized compute ops that lowering runs in another float dtype carry that dtype's name
under ``UNQUANTIZED_KEY`` instead.
"""
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from torch.fx import Node

KEY = "qcompiler"
UNQUANTIZED_KEY = "qcompiler_unquantized_dtype"


@dataclass(frozen=True)
class LayerRecord:
    """One quantized layer, or one skipped layer (``skipped`` says why). In a report, layers sharing one stored
    weight are one row, their names joined."""

    name: str
    scheme: Optional[str] = None
    kernel: Optional[str] = None
    bytes_before: int = 0
    bytes_after: int = 0
    sqnr_db: Optional[float] = None
    skipped: Optional[str] = None
    kernel_reason: Optional[str] = None  # why this kernel; for a ``decomposed`` layer, why no kernel took it
    target: Optional[str] = None  # what it was lowered for (``Target``'s text form), once lowered
    weight: Optional[str] = None  # the stored weight it reads (its graph attribute)
    algorithm_note: Optional[str] = None  # where its algorithm departed from its settings, and why

    def updated(self, **changes) -> "LayerRecord":
        """This record with ``changes`` (None values left out)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRecord":
        """From :meth:`to_dict`'s form, or the older one (``layer`` for ``name``, a ``shared`` flag)."""
        data = {("name" if k == "layer" else k): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    @classmethod
    def from_json(cls, text: str) -> "LayerRecord":
        return cls.from_dict(json.loads(text))

    @property
    def quantized(self) -> bool:
        return self.skipped is None


def read(node: Node) -> Optional[LayerRecord]:
    """The record ``node`` carries, or None."""
    raw = (node.meta.get("custom") or {}).get(KEY)
    return None if raw is None else LayerRecord.from_json(raw)


def write(node: Node, record: LayerRecord) -> None:
    node.meta["custom"] = {**(node.meta.get("custom") or {}), KEY: record.to_json()}
