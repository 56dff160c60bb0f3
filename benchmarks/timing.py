"""Interleaved timing: every case once per round, rounds repeated, so slow drifts of the host hit all cases alike.

    times = interleaved({"a": fn_a, "b": fn_b}, rounds=5)   # {"a": [s, s, ...], ...}: one median per round
    ratio = median_ratio(times["base"], times["a"])           # same-round ratios, then their median

A case whose call raises is dropped from later rounds and reported in ``errors`` (one line each).
"""
import statistics
import sys
from typing import Callable, Dict, List, Optional

from qcompiler.runtime.numerics import median_call_s


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def interleaved(cases: Dict[str, Callable[[], object]], rounds: int, min_calls: int = 5, min_time: float = 0.3,
                errors: Optional[Dict[str, str]] = None) -> Dict[str, List[float]]:
    """Seconds per call of every case, one median per round; rounds alternate the order of the cases."""
    errors = {} if errors is None else errors
    times: Dict[str, List[float]] = {key: [] for key in cases}
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for key in order:
            if key in errors:
                continue
            try:
                times[key].append(median_call_s(cases[key], min_calls, min_time))
            except Exception as e:  # a peer that breaks at run time: record it, time the rest
                errors[key] = one_line(e)
                print(f"  {key}: failed while timing: {errors[key]}", file=sys.stderr, flush=True)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {key: t for key, t in times.items() if key not in errors}


def median_ratio(numerator: List[float], denominator: List[float]) -> Optional[float]:
    """Median over rounds of numerator[r] / denominator[r] (only same-round ratios are compared)."""
    pairs = [a / b for a, b in zip(numerator, denominator) if b > 0]
    return statistics.median(pairs) if pairs else None


CACHE_BYTES = 64 << 20  # weights rotated until they exceed this, so a GEMV reads them from memory


def copies(nbytes: int) -> int:
    """How many copies of a weight of ``nbytes`` exceed the caches (1 to 8)."""
    return max(1, min(8, -(-CACHE_BYTES // max(nbytes, 1))))


def rotating(fns, x):
    """A call that runs the next of ``fns`` on ``x`` each time (each a copy of one layer)."""
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]](x)
    return call
