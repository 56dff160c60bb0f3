"""qcompiler's CPU packages against the CPU peers, side by side in one run on this machine.

    .venv/bin/python benchmarks/bench_cpu_peers.py [--only minilm|mlp] [--schemes int8wo int8dq ...]
        [--systems 'qc-*' pt2e-static ...] [--rounds 5] [--out benchmarks/results/cpu_peers.json]
    .venv/bin/python benchmarks/bench_cpu_peers.py --smoke      # tiny shapes, a few systems, one round

Two workloads, each timed in interleaved rounds (every system once per round, several calls each, the
median; medians across rounds; ratios taken within a round, then their median):

- all-MiniLM-L6-v2 (``qcompiler.zoo.minilm()``) at 1x128 and 8x128 tokens: median ms, speed relative to
  the fp32 .pt2 with freezing (higher is faster), mean embedding cosine to fp32 eager over
  ``qcompiler.zoo.SENTENCES`` (mean pooling, as ``BundledModel.embed``), file size, and the kernels.
- a decode-shaped MLP 4096 -> 11008 -> SiLU -> 4096 (fp32 weights, no bias) at M = 1 and M = 32: µs per
  call, effective GB/s of the file's bytes (its weights) per call, and that as a fraction of the machine's
  read bandwidth (``torch.sum`` over 1 GiB of float32, timed in the same rounds). A .pt2 also holds ~1.5 MB
  of compiled code: nothing beside 45-360 MB of weights, but most of the file at ``--smoke``'s tiny dims.

Systems (``--systems`` takes these keys, shell-style patterns allowed; the fp32 .pt2 always runs, as the
reference): ``fp32``/``bf16`` AOTInductor .pt2 with freezing and, for MiniLM, ``fp32-nofreeze``/
``bf16-nofreeze``; ``qc-<scheme>`` for every ``--schemes`` entry (qc.quantize -> qc.lower(..., "cpu") ->
qc.package -> qc.load); ``pt2e-static``/``pt2e-dynamic`` (PT2E X86InductorQuantizer, AOTI with freezing);
``torchao-int8dq``/``torchao-int8wo``/``torchao-intx-3-64``/``torchao-intx-4-64``/``torchao-nvfp4``/
``torchao-int8da-intx-3-32`` (quantize_ on a
copy, export, AOTI with freezing); ``ort-fp32``,
``ort-int8dyn`` (quantize_dynamic) and ``ort-nbits4`` (MatMulNBits, 4-bit, block 32). See ``peers_cpu.py``.
On a machine with native bfloat16, ``qc-<scheme>-bf16rest`` also runs the unquantized parts in bfloat16
(``qc.lower(..., unquantized_dtype=torch.bfloat16)``); by default only for int8dq.
Every peer is optional: one that is not installed or fails is recorded as ``{"system", "error"}``.

``--target cpu:avx2`` compiles every .pt2 for that target (qcompiler lowers for it; Inductor's
``cpp.march``); run it with the libraries capped to emulate such a machine's instruction sets on this one
(``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``). The results say
so: an emulation keeps this machine's caches and memory, and is no measurement of another machine.

Threads: torch.get_num_threads() for torch, the same intra-op threads for ONNX Runtime (spinning off).
Writes the JSON (with ``machine()``: CPU, its ISA flags, threads) and a markdown table beside it (.md).
The full run packages ~26 programs with AOTInductor (10-30 s each) and times for a few minutes.
"""
import argparse
import copy
import fnmatch
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler.runtime.target import compile_options
import peers_cpu as peers
from bench_minilm_e2e import calibration_batches, token_inputs
from machine import machine
from qcompiler.zoo import SENTENCES, minilm
from timing import interleaved, median_ratio, one_line

SCHEMES = ["int8wo", "int8dq", "int8static", "int4wo-64", "int8da-int4w-32", "codebook-4"]
REFERENCE = "fp32"  # the fp32 .pt2 with freezing: every ratio is against it
BANDWIDTH = "read-bandwidth"  # the torch.sum case timed beside the MLP
# every system, but the unquantized-in-bf16 variant for int8dq only (name others with --systems)
DEFAULT_SYSTEMS = ["*"]
DEFAULT_BF16REST = "qc-int8dq-bf16rest"
SMOKE_SYSTEMS = [REFERENCE, "qc-*", "pt2e-static", "torchao-int8dq", "ort-int8dyn"]
SMOKE_SCHEMES = ["int8wo"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- workloads

@dataclass
class Workload:
    """A model with everything a system needs to be built, checked and timed on it."""

    name: str
    model: torch.nn.Module  # fp32, eval
    args: tuple  # example inputs for export
    kwargs: dict
    dynamic_shapes: object
    calibration: list  # items for qc.quantize's calibration_data and PT2E's observers
    inputs: Dict[str, object]  # timing inputs by case name (a dict is keywords, a tuple positional)
    onnx_module: Callable[[], torch.nn.Module]  # what to export to ONNX (takes inputs positionally)
    onnx_names: tuple  # (input names, output names, dynamic axes)
    bert_fusions: bool  # apply onnxruntime.transformers' BERT fusions to the fp32 ONNX
    quality: Callable[[Callable], float]  # cosine of a system's output to fp32 eager
    in_dtype: Callable[[torch.dtype], torch.nn.Module]  # a copy of the model computing in that dtype
    systems: List[str]
    cache: dict = field(default_factory=dict)


def first_tensor(out) -> torch.Tensor:
    """The main output: a tensor itself, ``last_hidden_state`` of a model output, else the first element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "keys"):
        return out["last_hidden_state"]
    return out[0]


def minilm_workload(shapes: Dict[str, tuple], systems: List[str]) -> Workload:
    bundled = minilm()
    reference = bundled.embed(bundled.model, SENTENCES)

    def quality(run):
        embedded = bundled.embed(lambda **kw: (first_tensor(run(**kw)).float(),), SENTENCES)
        return round((embedded * reference).sum(-1).mean().item(), 5)

    def onnx_module():  # ORT fuses the graph of eager attention best (sdpa exports as a long chain)
        model = copy.deepcopy(bundled.model)
        model.set_attn_implementation("eager")
        return peers.Positional(model, ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"])

    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "last_hidden_state": {0: "batch", 1: "seq"}, "pooler_output": {0: "batch"}}
    return Workload("minilm", bundled.model, (), bundled.example_kwargs, bundled.dynamic_shapes,
                    calibration_batches(bundled), {name: token_inputs(s) for name, s in shapes.items()},
                    onnx_module, (["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"], axes),
                    True, quality, lambda dtype: copy.deepcopy(bundled.model).to(dtype), systems)


class MLP(torch.nn.Module):
    """A decoder's MLP without the gate: down(silu(up(x))), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = torch.nn.Linear(dim, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.up(x)))


class InDtype(torch.nn.Module):
    """``module`` computing in ``dtype`` behind float32 input and output (so every system takes the same x)."""

    def __init__(self, module, dtype):
        super().__init__()
        self.module, self.dtype = module.to(dtype), dtype

    def forward(self, x):
        return self.module(x.to(self.dtype)).float()


def mlp_workload(dim: int, hidden: int, ms: List[int], systems: List[str]) -> Workload:
    torch.manual_seed(0)
    model = MLP(dim, hidden).eval()
    inputs = {f"m{m}": (torch.randn(m, dim),) for m in ms}
    probe = torch.randn(max(ms), dim)
    with torch.no_grad():
        reference = model(probe).flatten()

    def quality(run):
        return round(F.cosine_similarity(first_tensor(run(probe)).float().flatten(), reference, dim=0).item(), 5)

    return Workload("mlp", model, (torch.randn(2, dim),), {}, ({0: torch.export.Dim("m", max=4096)},),
                    [torch.randn(8, dim)], inputs, lambda: model, (["x"], ["y"], {"x": {0: "m"}, "y": {0: "m"}}),
                    False, quality, lambda dtype: InDtype(copy.deepcopy(model), dtype), systems)


# ---------------------------------------------------------------- systems

@dataclass
class Built:
    run: Callable
    path: Path
    info: dict  # kernels, AOTI calls or ONNX ops


def export(w: Workload, model=None) -> torch.export.ExportedProgram:
    return torch.export.export(model if model is not None else w.model, w.args, w.kwargs,
                               dynamic_shapes=w.dynamic_shapes)


def packaged(program, path: Path, freezing: bool = True, pt2e: bool = False,
             target: Optional[qc.Target] = None) -> Built:
    options = compile_options(target) if target is not None else {}
    path = peers.aoti_package(program, path, freezing=freezing, pt2e=pt2e, options=options)
    return Built(peers.aoti_load(path), path, {"aoti_calls": peers.aoti_calls(path)})


def dense(dtype, freezing: bool, target: Optional[qc.Target] = None):
    def build(w: Workload, path: Path) -> Built:
        model = w.model if dtype == torch.float32 else w.in_dtype(dtype)
        return packaged(export(w, model), path, freezing, target=target)
    return build


def qcompiler_scheme(scheme: str, unquantized_dtype: Optional[torch.dtype] = None, target: Optional[qc.Target] = None):
    def build(w: Workload, path: Path) -> Built:
        program = qc.lower(qc.quantize(w.model, w.args, qc.config_from_string(scheme), example_kwargs=w.kwargs,
                                       dynamic_shapes=w.dynamic_shapes, calibration_data=w.calibration),
                           target or "cpu", unquantized_dtype=unquantized_dtype)
        run = qc.load(qc.package(program, path))
        return Built(run, path, {"kernels": sorted({r.kernel for r in run.report.quantized}),
                                 "aoti_calls": peers.aoti_calls(path)})
    return build


def pt2e(is_dynamic: bool, target: Optional[qc.Target] = None):
    def build(w: Workload, path: Path) -> Built:
        program = peers.pt2e_program(w.model, w.args, w.kwargs, w.dynamic_shapes, w.calibration, is_dynamic)
        return packaged(program, path, pt2e=True, target=target)
    return build


def torchao(scheme: str, target: Optional[qc.Target] = None):
    def build(w: Workload, path: Path) -> Built:
        return packaged(peers.torchao_program(w.model, scheme, w.args, w.kwargs, w.dynamic_shapes), path, target=target)
    return build


def onnx_fp32(w: Workload, folder: Path) -> Path:
    """The workload's fp32 ONNX (exported once, shared by the ORT systems)."""
    if "onnx" not in w.cache:
        names, outputs, axes = w.onnx_names
        example = tuple(w.kwargs[n] for n in names) if w.kwargs else w.args
        path = peers.onnx_export(w.onnx_module(), example, folder / f"{w.name}_export.onnx", names, outputs, axes)
        w.cache["onnx"] = peers.onnx_bert_fusions(path, folder / f"{w.name}_fp32.onnx") if w.bert_fusions else path
    return w.cache["onnx"]


def ort(quantize: Optional[Callable[[Path, Path], Path]]):
    def build(w: Workload, path: Path) -> Built:
        src = onnx_fp32(w, path.parent)
        model = quantize(src, path.with_suffix(".onnx")) if quantize else src
        return Built(peers.OrtModel(model, torch.get_num_threads(), w.onnx_names[0]), model,
                     {"onnx_ops": peers.onnx_ops(model)})
    return build


def registry(schemes: List[str], target: Optional[qc.Target] = None) -> Dict[str, tuple]:
    """Every system: key -> (label, builder). Ordered so peers that change process-wide state build last.
    ``target``: compile every .pt2 for it (qcompiler lowers for it too); None: this machine."""
    t = target
    systems = {
        "fp32": ("fp32 .pt2 (freezing)", dense(torch.float32, True, t)),
        "fp32-nofreeze": ("fp32 .pt2 (no freezing)", dense(torch.float32, False, t)),
        "bf16": ("bf16 .pt2 (freezing)", dense(torch.bfloat16, True, t)),
        "bf16-nofreeze": ("bf16 .pt2 (no freezing)", dense(torch.bfloat16, False, t)),
    }
    systems.update({f"qc-{s}": (f"qcompiler {s} .pt2", qcompiler_scheme(s, None, t)) for s in schemes})
    if (t or qc.Target.host()).has("avx512_bf16") or (t or qc.Target.host()).has("amx"):  # where lower() takes it
        systems.update({f"qc-{s}-bf16rest": (f"qcompiler {s} .pt2, unquantized parts in bf16",
                                             qcompiler_scheme(s, torch.bfloat16, t)) for s in schemes})
    systems.update({
        "torchao-int8dq": ("torchao int8dq .pt2 (freezing)", torchao("int8dq", t)),
        "torchao-int8wo": ("torchao int8wo .pt2 (freezing)", torchao("int8wo", t)),
        "torchao-intx-3-64": ("torchao IntxWeightOnlyConfig int3 g64 .pt2 (freezing)", torchao("intx-3-64", t)),
        "torchao-intx-4-64": ("torchao IntxWeightOnlyConfig int4 g64 .pt2 (freezing)", torchao("intx-4-64", t)),
        "torchao-nvfp4": ("torchao NVFP4WeightOnlyConfig .pt2 (freezing)", torchao("nvfp4", t)),
        "torchao-int8da-intx-3-32": ("torchao Int8DynamicActivationIntxWeightConfig int3 g32 .pt2 (freezing)",
                                     torchao("int8da-intx-3-32", t)),
        "pt2e-static": ("PT2E x86 int8 static .pt2 (freezing)", pt2e(False, t)),
        "pt2e-dynamic": ("PT2E x86 int8 dynamic .pt2 (freezing)", pt2e(True, t)),
        "ort-fp32": ("ONNX Runtime fp32", ort(None)),
        "ort-int8dyn": ("ONNX Runtime dynamic int8 (QInt8 per channel)", ort(peers.ort_dynamic_int8)),
        "ort-nbits4": ("ONNX Runtime MatMulNBits 4-bit b32 (int8 compute)",
                       ort(lambda src, dst: peers.ort_matmul_nbits(src, dst, bits=4, block_size=32))),
    })
    return systems


MINILM_ONLY = {"fp32-nofreeze", "bf16-nofreeze"}


def selected(keys: List[str], patterns: List[str]) -> List[str]:
    """``keys`` matching any of the shell-style ``patterns``, in registry order, the reference first."""
    if patterns == DEFAULT_SYSTEMS:
        keys = [k for k in keys if not k.endswith("-bf16rest") or k == DEFAULT_BF16REST]
    return [k for k in keys if k == REFERENCE or any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def build_all(w: Workload, systems: Dict[str, tuple], folder: Path) -> tuple:
    """Build every system of ``w``: ({key: Built}, [error rows])."""
    built, errors = {}, []
    for key in w.systems:
        label, build = systems[key]
        log(f"{w.name}: building {key} ({label})")
        start = time.perf_counter()
        try:
            built[key] = build(w, folder / f"{w.name}_{key}.pt2")
            log(f"{w.name}: {key} built in {time.perf_counter() - start:.0f} s, {peers.file_mb(built[key].path)} MB")
        except Exception as e:  # any peer may be missing or fail: record it and go on
            errors.append({"system": key, "label": label, "error": one_line(e)})
            log(f"{w.name}: {key} FAILED: {errors[-1]['error']}")
    return built, errors


# ---------------------------------------------------------------- measuring

def measure(w: Workload, systems: Dict[str, tuple], folder: Path, rounds: int, timing: dict,
            extra_cases: Optional[dict] = None) -> tuple:
    """Build, check and time every system of ``w``: (rows, per-case per-round seconds, error rows)."""
    built, errors = build_all(w, systems, folder)
    rows = {}
    for key, b in list(built.items()):
        try:
            rows[key] = {"system": key, "label": systems[key][0], "file_mb": peers.file_mb(b.path),
                         "cosine": w.quality(b.run), **b.info}
        except Exception as e:
            errors.append({"system": key, "label": systems[key][0], "error": one_line(e)})
            log(f"{w.name}: {key} FAILED on the accuracy inputs: {errors[-1]['error']}")
            del built[key]
    cases = {f"{key}@{case}": (lambda run=b.run, inp=inp: peers.call(run, inp))
             for key, b in built.items() for case, inp in w.inputs.items()}
    cases.update(extra_cases or {})
    log(f"{w.name}: timing {len(cases)} cases x {rounds} rounds")
    failed = {}
    times = interleaved(cases, rounds, errors=failed, **timing)
    for case, why in failed.items():
        key = case.split("@")[0]
        if rows.pop(key, None) is not None:
            errors.append({"system": key, "label": systems[key][0], "error": why})
    return [rows[k] for k in w.systems if k in rows], times, errors


def minilm_rows(rows: List[dict], times: dict, shapes: List[str]) -> List[dict]:
    for row in rows:
        for shape in shapes:
            t = times[f"{row['system']}@{shape}"]
            base = times.get(f"{REFERENCE}@{shape}")
            row[f"ms_{shape}"] = round(statistics.median(t) * 1e3, 3)
            row[f"ms_{shape}_rounds"] = [round(s * 1e3, 3) for s in t]
            ratio = median_ratio(base, t) if base else None
            row[f"ratio_{shape}"] = round(ratio, 3) if ratio else None
    return rows


def mlp_rows(rows: List[dict], times: dict, ms: List[int], read_bytes: int) -> tuple:
    bandwidth = [read_bytes / s / 1e9 for s in times.get(BANDWIDTH, [])]
    for row in rows:
        weight_bytes = row["file_mb"] * 1e6
        for m in ms:
            t = times[f"{row['system']}@m{m}"]
            gbps = [weight_bytes / s / 1e9 for s in t]
            base = times.get(f"{REFERENCE}@m{m}")
            row[f"us_m{m}"] = round(statistics.median(t) * 1e6, 1)
            row[f"us_m{m}_rounds"] = [round(s * 1e6, 1) for s in t]
            row[f"gbps_m{m}"] = round(statistics.median(gbps), 2)
            fraction = median_ratio(gbps, bandwidth) if bandwidth else None
            row[f"read_fraction_m{m}"] = round(fraction, 3) if fraction else None
            ratio = median_ratio(base, t) if base else None
            row[f"ratio_m{m}"] = round(ratio, 3) if ratio else None
    summary = {"read_bytes": read_bytes, "gbps": round(statistics.median(bandwidth), 2) if bandwidth else None,
               "gbps_rounds": [round(b, 2) for b in bandwidth]}
    return rows, summary


# ---------------------------------------------------------------- output

def _cell(value, fmt="{}"):
    return "-" if value is None else fmt.format(value)


def _kernels(row: dict) -> str:
    if "kernels" in row:
        return ", ".join(row["kernels"])
    if "onnx_ops" in row:
        return ", ".join(f"{op} x{n}" for op, n in row["onnx_ops"].items()) or "fp32 MatMul"
    return ", ".join(row.get("aoti_calls", []))


# Environment variables that cap the instruction sets of ATen, MKL and oneDNN (for --target runs).
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def markdown(results: dict) -> str:
    m = results["machine"]
    out = ["# CPU peers side by side", "",
           f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, capability {m['cpu_capability']}, "
           f"flags {' '.join(m['cpu_flags'])}. Medians of {results['rounds']} interleaved rounds; "
           f"'vs fp32' is the same-round speed relative to the fp32 .pt2 with freezing (higher is faster). "
           f"Load average at the start {', '.join(f'{x:.2f}' for x in results['load_average_at_start'])} "
           "(torch's OpenMP threads stall when another process holds a core: time on a quiet machine)."]
    if results.get("emulated"):
        caps = ", ".join(f"{k}={v}" for k, v in results.get("isa_caps", {}).items()) or "none"
        out += ["", f"**Compiled for target `{results['target']}`, libraries capped ({caps}): an emulation of "
                "such a machine's instruction sets on this one, not a measurement of another machine.**"]
    if "minilm" in results:
        shapes = results["minilm"]["shapes"]
        out += ["", "## all-MiniLM-L6-v2", "",
                "| system | MB | cosine | " + " | ".join(f"{s} ms | vs fp32" for s in shapes) + " | kernels |",
                "|---" * (4 + 2 * len(shapes)) + "|"]
        for row in results["minilm"]["rows"]:
            cells = " | ".join(f"{row[f'ms_{s}']} | {_cell(row[f'ratio_{s}'], '{:.2f}x')}" for s in shapes)
            out.append(f"| {row['label']} | {row['file_mb']} | {row['cosine']} | {cells} | {_kernels(row)} |")
        out += [f"| {e['label']} | error: {e['error']} |" for e in results["minilm"]["errors"]]
    if "mlp" in results:
        mlp, ms = results["mlp"], results["mlp"]["ms"]
        out += ["", f"## MLP {mlp['dims']} (fp32 weights), read bandwidth {mlp['read_bandwidth']['gbps']} GB/s", "",
                "| system | MB | cosine | " + " | ".join(f"M={m} µs | GB/s | of read bw | vs fp32" for m in ms) + " |",
                "|---" * (3 + 4 * len(ms)) + "|"]
        for row in mlp["rows"]:
            cells = " | ".join(f"{row[f'us_m{m}']} | {row[f'gbps_m{m}']} | "
                               f"{_cell(row[f'read_fraction_m{m}'], '{:.0%}')} | "
                               f"{_cell(row[f'ratio_m{m}'], '{:.2f}x')}" for m in ms)
            out.append(f"| {row['label']} | {row['file_mb']} | {row['cosine']} | {cells} |")
        out += [f"| {e['label']} | error: {e['error']} |" for e in mlp["errors"]]
    return "\n".join(out) + "\n"


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    log(f"wrote {out} and {out.with_suffix('.md')}")


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, a few systems, one short round")
    ap.add_argument("--only", choices=["minilm", "mlp"])
    ap.add_argument("--schemes", nargs="*", help=f"qcompiler schemes (default {' '.join(SCHEMES)}; smoke: int8wo)")
    ap.add_argument("--systems", nargs="*", help="system keys or patterns, e.g. 'qc-*' 'ort-*' (default all; "
                                                  f"smoke: {' '.join(SMOKE_SYSTEMS)})")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; smoke 1)")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/cpu_peers.json; smoke: in the temp folder)")
    ap.add_argument("--target", type=qc.Target.parse, help="compile every .pt2 for this target (e.g. cpu:avx2; "
                    "default: this machine). To run as on such a machine, cap the libraries too: "
                    f"{' '.join(f'{k}=...' for k in ISA_CAPS)}")
    args = ap.parse_args(argv)
    args.schemes = args.schemes if args.schemes is not None else (SMOKE_SCHEMES if args.smoke else SCHEMES)
    args.systems = args.systems if args.systems is not None else (SMOKE_SYSTEMS if args.smoke else DEFAULT_SYSTEMS)
    args.rounds = args.rounds or (1 if args.smoke else 5)
    args.out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "cpu_peers_smoke.json" if args.smoke
                                                else Path(__file__).parent / "results" / "cpu_peers.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    smoke = args.smoke
    systems = registry(args.schemes, args.target)
    keys = selected(list(systems), args.systems)
    timing = {"min_calls": 2, "min_time": 0.0} if smoke else {"min_calls": 5, "min_time": 0.3}
    shapes = {"1x16": (1, 16)} if smoke else {"1x128": (1, 128), "8x128": (8, 128)}
    dims, ms = ((256, 512) if smoke else (4096, 11008)), [1, 32]
    read_bytes = (64 << 20) if smoke else (1 << 30)
    results = {"machine": machine(), "target": str(args.target or qc.Target.host()),
               "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ},
               "smoke": smoke, "rounds": args.rounds,
               "emulated": any(k in os.environ for k in ISA_CAPS) or args.target not in (None, qc.Target.host()),
               "timing": timing,
               "ort_intra_op_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()}
    out = args.out
    log(f"systems: {' '.join(keys)}; {torch.get_num_threads()} threads")
    if args.only in (None, "minilm"):
        with tempfile.TemporaryDirectory() as tmp:
            w = minilm_workload(shapes, keys)
            rows, times, errors = measure(w, systems, Path(tmp), args.rounds, timing)
            results["minilm"] = {"model": "all-MiniLM-L6-v2", "shapes": list(shapes),
                                 "rows": minilm_rows(rows, times, list(shapes)), "errors": errors,
                                 "load_average_after": os.getloadavg()}
            del w, rows, times
        write(results, out)
    if args.only in (None, "mlp"):
        with tempfile.TemporaryDirectory() as tmp:
            w = mlp_workload(*dims, ms, [k for k in keys if k not in MINILM_ONLY])
            block = torch.ones(read_bytes // 4)
            rows, times, errors = measure(w, systems, Path(tmp), args.rounds, timing,
                                          extra_cases={BANDWIDTH: lambda: block.sum()})
            rows, bandwidth = mlp_rows(rows, times, ms, read_bytes)
            results["mlp"] = {"dims": f"{dims[0]} -> {dims[1]} -> SiLU -> {dims[0]}", "ms": ms,
                              "read_bandwidth": bandwidth, "rows": rows, "errors": errors,
                              "load_average_after": os.getloadavg()}
            del w, block
        write(results, out)
    print(markdown(results))


if __name__ == "__main__":
    main()
