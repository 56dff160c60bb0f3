"""Tables for people and JSON for machines: how every command prints its result."""
import json
import sys
from typing import Sequence


def table(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
    """``columns`` are ``(key, header)`` or ``(key, header, format)`` (e.g. ``"{:.2f}x"``); numbers are
    right-aligned, text left-aligned."""
    columns = [c if len(c) == 3 else (*c, None) for c in columns]
    cells = [[header for _, header, _ in columns]]
    cells += [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    numeric = [all(_is_number(row.get(key)) for row in rows) and rows for key, _, _ in columns]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(line, widths, numeric)).rstrip()
             for line in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or v is None


def _cell(v, fmt=None) -> str:
    if v is None:
        return "-"
    if fmt is not None:
        return fmt.format(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or ``text`` for people, on stdout."""
    sys.stdout.write((json.dumps(result, indent=1) if as_json else text) + "\n")
    sys.stdout.flush()
