"""Deploying a .pt2: packaging peak, load time, and memory at load and while running, per way of loading.

    python benchmarks/bench_deploy.py [--model mlp|tinyllama-1.1b|llama-2-7b] [--schemes int8wo int4wo-64]
                                      [--layouts blob so] [--folder bench-deploy] [--out benchmarks/results/deploy_mlp]

``mlp``: eight 4096x4096 linears without bias (all weights, nothing else); ``minilm``: the bundled
all-MiniLM-L6-v2 (one 1x128 sentence a call); the decoder shapes come from
``qcompiler.zoo.DECODERS`` (random weights), captured with ``qc.capture_lm`` (max_seq_len 256). For each
scheme and weight layout (``blob``: qcompiler's default, the weights one blob beside the model's .so;
``so``: inside the .so, AOTInductor's default and qcompiler's before), a fresh process quantizes, lowers
and packages, and reports the peak resident memory packaging adds over what the process held before it
(VmHWM, reset after lowering, once unreachable objects are collected and glibc's free heap is trimmed).
Each file is then loaded in fresh processes, three ways: ``torch``
(``torch._inductor.aoti_load_package`` in a process importing only torch), ``qc.load`` (weights mapped from the
file where they can be) and ``qc.load copied`` (``map_weights=False``). (The C++ runner in
``examples/cpp`` uses the same AOTInductor loader as ``torch``, and prints its own peak). Memory is resident
memory above the process's baseline once torch and its package loader are imported (``torch`` imports Inductor
to load, about 150 MB whatever the file: reported apart as ``import MB``), as multiples of the file: at the
peak of loading, after loading, and after two calls (plus activations, and the KV cache of a decoder).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402

LAYOUTS = {"blob": {}, "so": {"aot_inductor.package_constants_in_so": True,
                              "aot_inductor.package_constants_on_disk_format": None}}
MLP_LAYERS, MLP_WIDTH, MAX_SEQ_LEN = 8, 4096, 256
# torch: aoti_load_package in a process importing only torch; qc.load: weights mapped where they can be;
# qc.load copied: map_weights=False, AOTInductor's loader (as torch, with qcompiler's checks)
WAYS = ("torch", "qc.load", "qc.load copied")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status(key: str) -> float:
    """A /proc/self/status figure in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def _release_free_memory() -> None:
    """Free what is unreachable and hand glibc's free heap back to the system (malloc_trim), so resident memory
    is what the process holds."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _decoder_on_disk(name: str, dtype, folder: Path):
    """The decoder ``name`` with random weights (std 0.02) in files under ``folder``, each mapped shared: the
    kernel writes them back and drops them as memory runs short, so a shape whose float weights exceed the
    machine's memory (Llama-2-13B in bfloat16: 26 GB) can still be quantized; the files go with the model."""
    import torch
    import transformers
    from qcompiler.zoo import DECODERS
    cls_name, fields = DECODERS[name]
    cls = getattr(transformers, cls_name)
    with torch.device("meta"):
        model = cls(cls.config_class(**fields, torch_dtype=dtype)).to(dtype).eval()
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i, (qualified, param) in enumerate(list(model.named_parameters())):
        file = folder / f"{i}.bin"
        file.unlink(missing_ok=True)
        data = torch.from_file(str(file), shared=True, size=param.numel(), dtype=dtype).view(param.shape)
        if data.dim() == 1:  # norms
            data.fill_(1)
        for rows in data.view(-1, param.shape[-1]).split(256) if data.dim() > 1 else ():
            rows.normal_(0, 0.02, generator=gen)
        owner, _, attr = qualified.rpartition(".")
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(data, requires_grad=False))
        file.unlink()  # the mapping keeps it until the model goes
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # its only buffers: computed, small
    return model


def package_one(model_name: str, scheme: str, layout: str, path: Path, dtype: str,
                weights_on_disk: Optional[Path] = None) -> dict:
    """In this (fresh) process: build, quantize, lower, then package with the peak measured from there."""
    import torch
    import qcompiler as qc
    start = time.perf_counter()
    if model_name == "mlp":
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(MLP_WIDTH, MLP_WIDTH, bias=False)
                                      for _ in range(MLP_LAYERS)]).eval()
        program = qc.quantize(model, (torch.randn(1, MLP_WIDTH),), qc.config_from_string(scheme))
        del model
    elif model_name == "minilm":
        from qcompiler.zoo import minilm
        bundled = minilm()
        program = qc.quantize(bundled.model, (), qc.config_from_string(scheme), example_kwargs=bundled.example_kwargs,
                              dynamic_shapes=bundled.dynamic_shapes)
    else:
        from qcompiler.zoo import decoder
        model = _decoder_on_disk(model_name, getattr(torch, dtype), weights_on_disk) if weights_on_disk else \
            decoder(model_name, dtype=getattr(torch, dtype))
        lm = qc.capture_lm(model, max_seq_len=MAX_SEQ_LEN)
        del model
        program = qc.convert(qc.prepare(lm, qc.config_from_string(scheme)))
        del lm
    lowered = qc.lower(program, "cpu")
    del program
    _release_free_memory()  # else packaging reuses freed, still resident memory and its peak reads low
    before = _status("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    qc.package(lowered, path, inductor_options=LAYOUTS[layout])
    return {"package_s": time.perf_counter() - t, "build_s": time.perf_counter() - start,
            "package_peak_mb": _status("VmHWM") - before, "held_before_mb": before, "file_mb": _mb(path)}


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _inputs(model_name: str) -> tuple:
    """(args, kwargs) of one call: a row for the MLP, an 8-token prompt for a decoder."""
    import torch
    if model_name == "mlp":
        return (torch.randn(1, MLP_WIDTH),), {}
    if model_name == "minilm":
        ids = torch.randint(1000, 2000, (1, 128))
        return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return (), {"input_ids": torch.randint(3, 1000, (1, 8)), "cache_position": torch.arange(8)}


def load_one(model_name: str, path: Path, how: str) -> dict:
    """In this (fresh) process: load ``path`` ``how``, call it twice, report time and memory."""
    bare = _status("VmRSS")
    import torch
    import torch._inductor.package  # noqa: F401  (what torch's loader imports: the baseline)
    import torch.export.pt2_archive._package  # noqa: F401
    if model_name == "minilm":
        import transformers.modeling_outputs  # noqa: F401  (registers the output type MiniLM's file names)
    after_import = _status("VmRSS")
    if how.startswith("qc.load"):
        import qcompiler as qc
    base = _status("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    run = torch._inductor.aoti_load_package(str(path)) if how == "torch" else \
        qc.load(path, map_weights=how == "qc.load")
    load_s = time.perf_counter() - t
    loaded, load_peak = _status("VmRSS"), _status("VmHWM")
    args, kwargs = _inputs(model_name)
    with torch.no_grad():
        run(*args, **kwargs)
        run(*args, **kwargs)
    size = _mb(path)
    return {"load_s": load_s, "import_mb": after_import - bare, "load_peak_x": (load_peak - base) / size,
            "loaded_x": (loaded - base) / size, "running_x": (_status("VmRSS") - base) / size,
            "peak_x": (_status("VmHWM") - base) / size, "file_mb": size}


def _child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_package", "_load"):
        what, model_name, *rest = sys.argv[1:]
        result = package_one(model_name, rest[0], rest[1], Path(rest[2]), rest[3],
                             Path(rest[4]) if len(rest) > 4 else None) if what == "_package" else \
            load_one(model_name, Path(rest[0]), rest[1])
        print(json.dumps(result))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp", help="mlp, minilm or a decoder of qcompiler.zoo.DECODERS")
    p.add_argument("--schemes", nargs="+", default=["int8wo", "int4wo-64"])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="a decoder's weights before quantizing (bfloat16 for shapes whose float32 weights don't fit)")
    p.add_argument("--weights-on-disk", metavar="DIR",
                   help="a decoder's float weights in files under DIR, mapped (for shapes larger than memory)")
    p.add_argument("--folder", default="bench-deploy")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--out", help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    folder = Path(a.folder)
    folder.mkdir(exist_ok=True)
    rows = []
    for scheme in a.schemes:
        for layout in a.layouts:
            path = folder / f"{a.model}_{scheme}_{layout}.pt2"
            record = path.with_suffix(".build.json")  # what packaging measured, for runs that only load
            if a.rebuild or not path.exists():
                log(f"packaging {path.name} ...")
                record.write_text(json.dumps(_child("_package", a.model, scheme, layout, str(path), a.dtype,
                                                         *([a.weights_on_disk] if a.weights_on_disk else []))))
            built = json.loads(record.read_text()) if record.exists() else None
            for way in a.ways:
                log(f"loading {path.name} with {way} ...")
                rows.append({"scheme": scheme, "layout": layout, "way": way, **(built or {}),
                             **_child("_load", a.model, str(path), way)})
    write(a, rows)


def write(a, rows: list) -> None:
    m = machine()
    def f(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else "-"
    shape = f"{MLP_LAYERS} x {MLP_WIDTH}x{MLP_WIDTH} linears" if a.model == "mlp" else f"max_seq_len {MAX_SEQ_LEN}"
    lines = [f"# Deploying {a.model}: packaging, load time and memory ({shape})",
             "", f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch {m['torch']}", "",
             "Memory: resident MB above the process's baseline once torch's loader is imported, as multiples of the "
             "file. `blob`: weights beside the .so (qcompiler's default); `so`: inside it.", "",
             "| scheme | layout | loaded by | file MB | package s | packaging adds (x file) |"
             " packaging process peak GB | load s | load peak x | after load x | after 2 calls x |", "|" + "---|" * 11]
    for r in rows:
        packaging = f"{r['package_peak_mb'] / r['file_mb']:.2f}x" if r.get("package_peak_mb") else "-"
        process = f"{(r['package_peak_mb'] + r['held_before_mb']) / 1024:.1f}" if r.get("held_before_mb") else "-"
        lines.append(f"| {r['scheme']} | {r['layout']} | {r['way']} | {f(r, 'file_mb', '{:.0f}')} | "
                     f"{f(r, 'package_s', '{:.0f}')} | {packaging} | {process} | {f(r, 'load_s', '{:.2f}')} | "
                     f"{f(r, 'load_peak_x', '{:.2f}')} | {f(r, 'loaded_x', '{:.2f}')} | "
                     f"{f(r, 'running_x', '{:.2f}')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(a.out, {"model": a.model, "machine": m, "rows": rows}, text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
