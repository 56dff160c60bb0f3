"""torch's own deprecation warnings from calls qcompiler makes, held back for the length of those calls.

The library logs and never passes torch's internal warnings on to its users (the test suite turns these into
errors, ``pyproject.toml``, so one that escapes fails it). ``warnings.catch_warnings`` scopes the filter to the block.
"""
import contextlib
import warnings

# (category, message pattern) of the warnings torch 2.13 raises from its own code on qcompiler's calls
KNOWN = (
    # run_decompositions deep-copies the module call graph, whose LeafSpec objects warn about their own isinstance use
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\)"),
    # Inductor's first import (packaging) imports torch.utils.mkldnn, which defines torch.jit.script_methods
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
)


@contextlib.contextmanager
def held():
    """Within the block, :data:`KNOWN` warnings are dropped; every other warning goes on as before."""
    with warnings.catch_warnings():
        for category, message in KNOWN:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
