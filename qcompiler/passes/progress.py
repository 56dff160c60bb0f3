"""Progress of long work (calibration, quantizing layers) as log records of ``qcompiler.progress``.

The library only logs: the CLI shows these records on stderr; a program that wants them
configures logging (``logging.basicConfig(level=logging.INFO)``).
"""
import logging
import time
from collections.abc import Sized
from typing import Iterable, Iterator, Optional

log = logging.getLogger("qcompiler.progress")


def progress(items: Iterable, label: str, total: Optional[int] = None) -> Iterator:
    """Yield from ``items``, logging ``label: i/total (s)`` at every tenth of the total (every 50 items without one)."""
    total = total if total is not None else (len(items) if isinstance(items, Sized) else None)
    start, shown = time.perf_counter(), -1
    for i, item in enumerate(items, 1):
        yield item
        step = i * 10 // total if total else i // 50
        if step != shown and log.isEnabledFor(logging.INFO):
            shown = step
            log.info("%s: %d%s (%.1f s)", label, i, f"/{total}" if total else "", time.perf_counter() - start)
