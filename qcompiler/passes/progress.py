"""A small progress line on stderr for long work (calibration, quantizing layers, packaging)."""
import sys
import time
from typing import Iterable, Iterator, Optional


def progress(items: Iterable, label: str, total: Optional[int] = None, stream=None) -> Iterator:
    """Yield from ``items`` while showing ``label: i/total`` (redrawn on a terminal, every 10% in logs)."""
    stream = stream or sys.stderr
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    tty, start, shown = stream.isatty(), time.perf_counter(), -1
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        step = i * 10 // total if total else i // 50
        if tty or step != shown:
            shown = step
            of = f"/{total}" if total else ""
            line = f"{label}: {i}{of} ({time.perf_counter() - start:.1f} s)"
            stream.write("\r" + line if tty else line + "\n")
            stream.flush()
    if tty and i:
        stream.write("\n")
