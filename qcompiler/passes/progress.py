"""Progress of long work (calibration, quantizing layers) as log records of ``qcompiler.progress``.

The library only logs: the CLI shows these records on stderr; a program that wants them
configures logging (``logging.basicConfig(level=logging.INFO)``).
"""
import contextlib
import contextvars
import logging
import time
from collections.abc import Sized
from typing import Iterable, Iterator, Optional

_HELD_BACK = contextvars.ContextVar("qcompiler_progress_held_back", default=False)


class HeldBack(logging.Filter):
    """Drops records below WARNING while :func:`held_back` runs in this thread or task; else passes all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _HELD_BACK.get()


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """While the block runs (in this thread or task only), the INFO records of the loggers that carry
    :class:`HeldBack` (progress, packaging) are dropped; warnings still show. No logger's level changes."""
    token = _HELD_BACK.set(True)
    try:
        yield
    finally:
        _HELD_BACK.reset(token)


log = logging.getLogger("qcompiler.progress")
log.addFilter(HeldBack())


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
