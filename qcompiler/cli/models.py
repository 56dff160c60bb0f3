"""What the command line quantizes: the bundled MiniLM or a user's ``package.module:factory``.

A factory takes no arguments and returns ``(model, example_inputs)``, where
``example_inputs`` is a tuple of positional inputs or a dict of keyword inputs.
"""
import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch

BUNDLED = "minilm"
CALIBRATION_BATCH = 2  # sentences per calibration batch of the bundled model


class CliError(ValueError):
    """A mistake in what the user asked for: shown as one line, exit status 1."""


@dataclass(frozen=True)
class Source:
    """A model ready to capture, and (for the bundled model) its tokenizer's encoder."""

    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict
    dynamic_shapes: Any = None
    bundled: Any = None  # qcompiler.zoo.BundledModel for MiniLM


def resolve_model(spec: str, dynamic: Optional[str] = None, device: str = "cpu") -> Source:
    """``minilm`` or ``package.module:factory``, on ``device``, with ``dynamic`` dims (``batch,seq``:
    dim 0 of every input is ``batch``, dim 1 ``seq``; ``none`` for static shapes)."""
    if spec == BUNDLED:
        source = _minilm()
    else:
        source = _factory(spec)
    if dynamic is not None:
        source = replace(source, dynamic_shapes=_dims(source, dynamic))
    return _to(source, device) if device != "cpu" else source


def _minilm() -> Source:
    from ..zoo import minilm
    try:
        bundled = minilm()
    except ImportError as e:
        raise CliError(str(e).removeprefix("qcompiler: ")) from e
    return Source(BUNDLED, bundled.model, (), bundled.example_kwargs, bundled.dynamic_shapes, bundled)


def _factory(spec: str) -> Source:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"MODEL must be '{BUNDLED}' or 'package.module:factory'; got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise CliError(f"cannot import {module_name!r} (from MODEL {spec!r}): {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CliError(f"module {module_name!r} has no callable {attr!r} (from MODEL {spec!r})")
    try:
        made = factory()
    except Exception as e:
        raise CliError(f"{spec}() failed: {type(e).__name__}: {e}") from e
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)
            and isinstance(made[1], (tuple, dict))):
        raise CliError(f"{spec}() must return (model, example_inputs) with example_inputs a tuple or a dict; "
                       f"got {type(made).__name__}")
    model, example = made
    args, kwargs = (example, {}) if isinstance(example, tuple) else ((), example)
    return Source(spec, model.eval(), args, kwargs)


def _dims(source: Source, dynamic: str) -> Any:
    """Dynamic shapes for ``torch.export``: named dims by position, shared by every input."""
    names = [] if dynamic.strip().lower() == "none" else [d.strip() for d in dynamic.split(",") if d.strip()]
    dims = [torch.export.Dim(n) for n in names]

    def spec(t):
        return {i: d for i, d in enumerate(dims) if isinstance(t, torch.Tensor) and i < t.dim()} or None
    if source.kwargs:
        return {k: spec(v) for k, v in source.kwargs.items()}
    return tuple(spec(a) for a in source.args)


def _to(source: Source, device: str) -> Source:
    def move(v):
        return v.to(device) if isinstance(v, torch.Tensor) else v
    return replace(source, model=source.model.to(device), args=tuple(move(a) for a in source.args),
                   kwargs={k: move(v) for k, v in source.kwargs.items()})


def calibration(source: Source, calib: Optional[str], device: str = "cpu") -> Optional[list]:
    """Calibration batches: ``N`` (the bundled model's calibration sentences, N batches; for a
    factory, N batches like the example), a ``.txt`` file of sentences (bundled model) or a
    ``torch.save``d list of input tuples or keyword dicts; None without ``--calib``."""
    if calib is None:
        return _sentences(source, None, device) if source.bundled is not None else None
    if calib.isdigit():
        n = int(calib)
        if n < 1:
            raise CliError(f"--calib must be a positive count or a file; got {calib!r}")
        return _sentences(source, n, device) if source.bundled is not None else _like_example(source, n)
    path = Path(calib)
    if not path.is_file():
        raise CliError(f"--calib {calib!r}: no such file (give a count or a file)")
    if path.suffix == ".txt":
        if source.bundled is None:
            raise CliError("--calib FILE.txt (sentences) needs the bundled model; "
                           "for a factory give a torch.save'd list")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return _batches(source, lines, device)
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        raise CliError(f"--calib {calib!r}: cannot read it with torch.load: {e}") from e
    if not isinstance(data, (list, tuple)) or not data:
        raise CliError(f"--calib {calib!r} must hold a non-empty list of input tuples or keyword dicts")
    return list(data)


def _sentences(source: Source, n: Optional[int], device: str) -> list:
    from ..zoo import CALIBRATION_CORPUS
    pool = list(CALIBRATION_CORPUS)
    count = n * CALIBRATION_BATCH if n else len(pool)
    return _batches(source, [pool[i % len(pool)] for i in range(count)], device)


def _batches(source: Source, sentences: list, device: str) -> list:
    enc = source.bundled.encode
    batches = [enc(sentences[i:i + CALIBRATION_BATCH]) for i in range(0, len(sentences), CALIBRATION_BATCH)]
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def _like_example(source: Source, n: int) -> list:
    from .inputs import sample_like
    gen = torch.Generator().manual_seed(0)

    def like(t):
        return sample_like(t.dtype, t.shape, torch.unique(t).tolist() if not t.dtype.is_floating_point else None,
                           gen).to(t.device) if isinstance(t, torch.Tensor) else t
    return [(tuple(like(a) for a in source.args), {k: like(v) for k, v in source.kwargs.items()}) for _ in range(n)]
