"""The command line's commands: each takes parsed arguments and returns ``(result, text)``:
a JSON-able dict for ``--json`` and a table for people."""
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import (
    LayerFloor,
    Recipe,
    Report,
    Target,
    capture,
    check_writable,
    config_from_string,
    lower,
    median_call_s,
    needs_calibration,
    open_artifact,
    package,
    quantize,
    autoquant,
    report,
    save,
    verify,
)
from .inputs import dynamic_dims, make_inputs
from .models import CliError, Source, calibration, resolve_model
from .tables import table

DEMO_SCHEMES = ("int8wo", "int8dq", "int4wo-64", "codebook-4")
INSPECT_METADATA = ("qcompiler", "torch", "target", "needs", "inductor_options", "cpu_int4")  # what inspect shows


def _config(scheme: Optional[str], recipe: Optional[str]):
    if recipe is None:
        return config_from_string(scheme)
    path = Path(recipe)
    if not path.is_file():
        raise CliError(f"--recipe {recipe!r}: no such file")
    return Recipe.from_json(path.read_text())


def calibration_for(source: Source, config, calib: Optional[str] = None, device: str = "cpu") -> Optional[list]:
    """The calibration data ``--calib`` names, or the model's default where ``config`` needs some; else None."""
    return calibration(source, calib, device) if calib or needs_calibration(config) else None


def build(source: Source, config, backend: str, out: Path, calib: Optional[list], target: Optional[str] = None,
          unquantized_dtype: Optional[torch.dtype] = None) -> dict:
    """Quantize ``source``, lower for ``backend`` (or the machine ``target`` names) and write ``out``: a .pt2
    package, or the portable program (``torch.export.save``) for ``reference``. Returns what was written."""
    program = quantize(source.model, source.args, config, example_kwargs=source.kwargs,
                       dynamic_shapes=source.dynamic_shapes, calibration_data=calib)
    if backend == "reference":
        print(f"saving the reference program to {out} ...", file=sys.stderr, flush=True)
        written, rep = save(program, out), report(program)
    else:
        lowered = lower(program, target or backend, unquantized_dtype=unquantized_dtype)
        written, rep = package(lowered, out), report(lowered)
    return {"output": str(written), "bytes": written.stat().st_size, "backend": backend, "layers": rep.to_dict()}


def quantize_cmd(a) -> tuple:
    out = check_writable(a.output)  # before any long work
    if a.backend == "cuda" and not torch.cuda.is_available():
        raise CliError("--backend cuda needs a CUDA device; none is available here")
    if a.target and not a.target.startswith(f"{a.backend}:"):
        raise CliError(f"--target must name a {a.backend} machine, e.g. {a.backend}:avx2; got {a.target!r}")
    target = Target.parse(a.target or a.backend)  # a bad capability fails before any work
    unquantized = getattr(torch, a.unquantized_dtype) if a.unquantized_dtype else None
    try:
        target.check_unquantized_dtype(unquantized)
    except ValueError as e:
        raise CliError(f"--unquantized-dtype: {e}".replace("qcompiler: ", "")) from None
    device = "cuda" if a.backend == "cuda" else "cpu"
    config = None if a.scheme == "auto" else _config(a.scheme, a.recipe)  # a bad scheme fails before the model loads
    source = resolve_model(a.model, a.dynamic, device)
    if config is None:
        config = _auto(a, source, target)
    result = build(source, config, a.backend, out, calibration_for(source, config, a.calib, device),
                   str(target) if a.target else None, unquantized)
    layers = Report.from_dict(result["layers"]).table()
    return result, f"{layers}\nwrote {result['output']} ({result['bytes']:,} bytes)"


def _auto(a, source: Source, target: Target) -> Recipe:
    """``--scheme auto``: the recipe autoquant measures (or re-chooses from ``--plan``), the plan written."""
    if a.backend != "cpu":
        raise CliError("--scheme auto times kernels on this machine's CPU: it needs --backend cpu")
    plan_path = Path(a.plan) if a.plan else None
    earlier = _plan_file(plan_path) if plan_path is not None and plan_path.exists() else None
    candidates = [c for c in a.candidates.split(",") if c] if a.candidates else None
    recipe = autoquant(source.model, source.args, example_kwargs=source.kwargs, dynamic_shapes=source.dynamic_shapes,
                       candidates=candidates, target=target, shapes=_labelled(a.shapes, "--shapes", "ROWS"),
                       weights=_labelled(a.weights, "--weights", "N"),
                       accuracy=LayerFloor(a.min_sqnr), calibration_data=calibration(source, a.calib),
                       budget_s=a.budget_s, plan=earlier, steady_allocator=True)
    if plan_path is not None:
        plan_path.write_text(recipe.to_json())
    print(recipe.plan.table(), file=sys.stderr, flush=True)
    return recipe


def _plan_file(path: Path) -> Recipe:
    try:
        recipe = Recipe.from_json(path.read_text())
    except ValueError as e:
        raise CliError(f"{path}: not an autoquant plan ({str(e).splitlines()[0]})") from None
    if recipe.plan is None:
        raise CliError(f"{path}: a recipe without a plan; --plan takes the file an earlier --scheme auto wrote")
    return recipe


def _labelled(text: Optional[str], flag: str, what: str) -> Optional[dict]:
    """``decode=1,prefill=128`` -> ``{"decode": 1, "prefill": 128}`` (whole numbers)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        label, eq, number = part.partition("=")
        if not eq or not label or not number.isdigit():
            raise CliError(f"{flag} must be LABEL={what},... (e.g. decode=1,prefill=128); got {text!r}")
        out[label] = int(number)
    return out


def verify_cmd(a) -> tuple:
    """Check every member of a .pt2 against the digests recorded when it was packaged (nothing is loaded)."""
    checked = verify(a.file)
    result = {"file": str(Path(a.file).resolve()), "ok": True, "members": checked.members, "bytes": checked.bytes}
    return result, f"{result['file']}: ok ({checked.members} members, {checked.bytes:,} bytes match their SHA-256)"


def inspect_cmd(a) -> tuple:
    if a.file.endswith(".json"):
        if not Path(a.file).is_file():
            raise CliError(f"{a.file}: no such file")
        plan = _plan_file(Path(a.file)).plan
        return plan.to_dict(), plan.table()
    art = open_artifact(a.file, load=False)
    result = {"file": str(art.path), "kind": art.kind, "bytes": art.size, "layers": art.report.to_dict(),
              "inputs": art.inputs, **{k: art.metadata[k] for k in INSPECT_METADATA if k in art.metadata}}
    kinds = {"package": "AOTInductor package", "program": "saved program (torch.export.save)"}
    lines = [f"{art.path}: {kinds[art.kind]}, {art.size:,} bytes"]
    lines += [f"  {k}: {result[k]}" for k in ("qcompiler", "torch") if k in result]
    if "target" in result:
        needs = ", ".join(result["needs"]) or "nothing"
        lines.append(f"  target: {Target.from_json(result['target'])} (needs: {needs})")
    if "cpu_int4" in result:
        i4 = result["cpu_int4"]
        portable = ", portable" if i4["portable"] else ""
        lines.append(f"  int4 layout: {i4['layout']} ({len(i4['weights'])} weights{portable})")
    lines += _describe(art.inputs)
    lines += ["", art.report.table() if art.report.quantized else "no quantized layers"]
    return result, "\n".join(lines)


def _describe(inputs: Optional[dict]) -> list:
    if inputs is None:
        return ["  inputs: not described (not written by qcompiler, or not flat tensors)"]
    lines = []
    for e in inputs["inputs"]:
        lines.append(f"  input {e['name']}{' (keyword)' if e['keyword'] else ''}: {e['dtype']} "
                     f"[{', '.join(map(str, e['shape']))}]")
    for name, d in inputs["dims"].items():
        top = d["max"] if d["max"] is not None else "inf"
        lines.append(f"  dim {name}: {d['min']}..{top} (example {d['example']})")
    return lines


def median_ms(run: Callable, args: tuple, kwargs: dict, seconds: float) -> float:
    """Median milliseconds of ``run(*args, **kwargs)`` over about ``seconds`` (at least 3 calls, one warm-up)."""
    with torch.no_grad():
        return median_call_s(lambda: run(*args, **kwargs), 3, seconds) * 1e3


def parse_shape(text: str, dims: list) -> dict:
    """``"1x128"`` -> sizes of the dynamic dims, in the order the inputs use them."""
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise CliError(f"--shape must be sizes joined by 'x' (e.g. 1x128); got {text!r}") from None
    if len(values) != len(dims):
        raise CliError(f"--shape {text!r} gives {len(values)} sizes; the file has {len(dims)} dynamic dims "
                       f"({', '.join(dims) or 'none'})")
    return dict(zip(dims, values))


def bench_cmd(a) -> tuple:
    paths = [a.file] + ([a.baseline] if a.baseline else [])
    files = [open_artifact(f, allow_imports=a.allow_import or ()) for f in paths]
    desc = files[0].inputs
    if desc is None:
        raise CliError(f"{files[0].path} does not describe its inputs (package it with qcompiler to bench it)")
    if a.baseline and _signature(files[1].inputs) != _signature(desc):
        raise CliError(f"--baseline {a.baseline} takes other inputs than {a.file}")
    dims = dynamic_dims(desc)
    if a.shape and not dims:
        raise CliError(f"{a.file} has static shapes; --shape does not apply")
    shapes = a.shape or (["x".join(str(desc["dims"][d]["example"]) for d in dims)] if dims else [""])
    rows = []
    for shape in shapes:
        args, kwargs = make_inputs(desc, parse_shape(shape, dims) if dims else {})
        row = {"shape": shape or "static", "ms": median_ms(files[0].run, args, kwargs, a.seconds)}
        if a.baseline:
            row["baseline_ms"] = median_ms(files[1].run, args, kwargs, a.seconds)
            row["speedup"] = row["baseline_ms"] / row["ms"]
        rows.append(row)
    columns = [("shape", "shape (" + "x".join(dims) + ")" if dims else "shape"), ("ms", "ms", "{:.2f}")]
    columns += [("baseline_ms", "baseline ms", "{:.2f}"), ("speedup", "speedup", "{:.2f}x")] if a.baseline else []
    result = {"file": str(files[0].path), "baseline": str(files[1].path) if a.baseline else None, "rows": rows}
    return result, table(rows, columns)


def _signature(desc: Optional[dict]):
    return None if desc is None else [(e["name"], e["dtype"], len(e["shape"])) for e in desc["inputs"]]


def cosine(bundled, run: Callable, reference: torch.Tensor, sentences) -> dict:
    """Embedding cosine of ``run`` against the float reference embeddings: mean and worst."""
    cos = (bundled.embed(run, sentences) * reference).sum(-1)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}


def eval_cmd(a) -> tuple:
    from ..zoo import SENTENCES
    source = resolve_model("minilm")
    reference = source.bundled.embed(source.model, SENTENCES)
    rows = []
    for f in a.files or ():
        art = open_artifact(f, allow_imports=a.allow_import or ())
        rows.append({"what": Path(f).name, **cosine(source.bundled, art.run, reference, SENTENCES)})
    for scheme in a.scheme or (() if a.files else DEMO_SCHEMES):
        config = config_from_string(scheme)
        program = quantize(source.model, (), config, example_kwargs=source.kwargs, dynamic_shapes=source.dynamic_shapes,
                           calibration_data=calibration_for(source, config))
        rows.append({"what": scheme, **cosine(source.bundled, program.module(), reference, SENTENCES)})
    result = {"model": "all-MiniLM-L6-v2", "sentences": len(SENTENCES), "rows": rows}
    return result, table(rows, [("what", "scheme or file"), ("cosine_mean", "mean cosine"),
                                ("cosine_min", "worst cosine")])


def demo_cmd(a) -> tuple:
    """MiniLM: fp32 and each scheme lowered for the CPU and packaged; size, latency, cosine."""
    from ..zoo import SENTENCES
    folder = Path(a.output).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    source = resolve_model("minilm")
    reference = source.bundled.embed(source.model, SENTENCES)
    batch, seq = parse_shape(a.shape, ["batch", "seq"]).values()
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, seq)),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    rows = []
    for i, scheme in enumerate(("fp32",) + tuple(a.schemes)):
        print(f"[{i + 1}/{len(a.schemes) + 1}] {scheme}", file=sys.stderr, flush=True)
        out = folder / f"minilm_{scheme}.pt2"
        if scheme == "fp32":
            package(capture(source.model, (), example_kwargs=source.kwargs, dynamic_shapes=source.dynamic_shapes), out)
        else:
            config = config_from_string(scheme)
            build(source, config, "cpu", out, calibration_for(source, config))
        art = open_artifact(out)
        row = {"scheme": scheme, "mb": out.stat().st_size / 1e6, "ms": median_ms(art.run, (), inputs, a.seconds),
               **cosine(source.bundled, art.run, reference, SENTENCES), "file": out.name,
               "kernels": sorted({r.kernel for r in art.report.quantized})}
        row["vs_fp32"] = rows[0]["ms"] / row["ms"] if rows else 1.0
        row["size_vs_fp32"] = row["mb"] / rows[0]["mb"] if rows else 1.0
        rows.append(row)
    result = {"model": "all-MiniLM-L6-v2", "shape": a.shape, "folder": str(folder), "rows": rows}
    text = table(rows, [("scheme", "scheme"), ("mb", "MB", "{:.1f}"), ("size_vs_fp32", "size vs fp32", "{:.2f}x"),
                        ("ms", f"ms ({a.shape})", "{:.1f}"), ("vs_fp32", "speed vs fp32", "{:.2f}x"),
                        ("cosine_mean", "cosine", "{:.4f}"), ("cosine_min", "worst cosine", "{:.4f}"),
                        ("kernels", "kernels")])
    return result, text + f"\n\nthe .pt2 files are in {folder}"
