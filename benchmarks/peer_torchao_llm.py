"""torchao beside qcompiler's LLM benchmark: the same decoder quantized by ``torchao.quantize_``, shipped as a .pt2.

    python benchmarks/peer_torchao_llm.py run MODEL.pt2 PROMPT NEW     # one measurement, as JSON on stdout

``systems(model_name, folder, rebuild, log, max_seq_len, prompt, new)`` builds each torchao system the
way a torchao user deploys with AOTInductor: the bf16 model from ``qcompiler.zoo.decoder``, quantized in
place by ``torchao.quantization.quantize_`` (``Int8WeightOnlyConfig``; for int4, groups of 64, the CPU
config ``torchao.prototype.quantization.int4.PrototypeInt4WeightOnlyConfig``, whose ``Int4OpaqueTensor``
calls ATen's ``_weight_int4pack_mm_for_cpu``: torchao 0.18's ``Int4WeightOnlyConfig`` packs for GPUs),
captured with its KV cache by ``qc.capture_lm`` (torchao's tensor subclasses export as their plain
tensors), compiled and packaged by ``torch._inductor.aoti_compile_and_package`` alone. Each runs from
this file in a fresh process through plain ``aoti_load_package`` and ``qc.stream``. A system torchao
cannot build here is logged with torchao's error, not left out silently.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIGS = ("int8wo", "int4wo-64")


def torchao_config(name: str):
    """torchao 0.18's config for ``name``; its CPU int4 (``Int4OpaqueTensor``) is the prototype config."""
    from torchao.quantization import Int8WeightOnlyConfig
    if name == "int8wo":
        return Int8WeightOnlyConfig()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    return PrototypeInt4WeightOnlyConfig(group_size=64)


def build(name: str, model_name: str, max_seq_len: int, path: Path) -> None:
    import qcompiler as qc
    from qcompiler.llm.capture_lm import LM_METADATA_KEY, lm_shape
    from qcompiler.zoo import decoder
    from torchao.quantization import quantize_
    model = decoder(model_name, dtype=torch.bfloat16)
    quantize_(model, torchao_config(name))
    lm = qc.capture_lm(model, max_seq_len=max_seq_len)
    del model
    metadata = {LM_METADATA_KEY: json.dumps(lm_shape(lm.named_buffers()))}  # qc.stream reads the cache size
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(lm, package_path=str(path),
                                                 inductor_configs={"aot_inductor.metadata": metadata})


def systems(model_name: str, folder: Path, rebuild: bool, log, max_seq_len: int, prompt: int, new: int) -> dict:
    """name -> measure function, for each system torchao could build (the others are logged with the error)."""
    from qcompiler.zoo import DECODERS
    config = DECODERS[model_name][1]
    embedding = config["vocab_size"] * config["hidden_size"] * 2  # quantize_ leaves the bf16 table alone
    import torchao  # noqa: F401  (fails here where torchao is not installed)
    made = {}
    for name in CONFIGS:
        path = folder / f"torchao-{name}.pt2"
        if rebuild or not path.is_file():
            log(f"  torchao {name}: quantize_, capture, aoti_compile_and_package ...")
            out = subprocess.run([sys.executable, __file__, "build", name, model_name, str(max_seq_len), str(path)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                log(f"  torchao {name}: could not build: {_last_error(out.stderr)}")
                continue
        made[f"torchao {name}"] = path
    return {key: (lambda path=path: {**measure(path, prompt, new), "embedding_bytes": embedding})
            for key, path in made.items()}


def measure(path: Path, prompt: int, new: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "run", str(path), str(prompt), str(new)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(_last_error(out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(path: str, prompt: int, new: int) -> dict:
    """Greedy generation of ``new`` tokens after a ``prompt``-token prompt, after a warm-up, as ``qcompiler
    generate`` times it: prefill = prompt / time to the first token; decode over the tokens after it."""
    import qcompiler as qc
    began = time.perf_counter()
    loaded = torch._inductor.aoti_load_package(path)
    load_s = time.perf_counter() - began
    ids = torch.randint(3, 256, (1, prompt), generator=torch.Generator().manual_seed(0))
    for _ in qc.stream(loaded, ids, 2):
        pass
    start, times = time.perf_counter(), []
    for _ in qc.stream(loaded, ids, new):
        times.append(time.perf_counter() - start)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return {"prefill_tokens_per_s": prompt / times[0], "decode_tokens_per_s": (len(times) - 1) / (times[-1] - times[0]),
            "peak_memory_mb": peak, "load_s": load_s, "model_bytes": Path(path).stat().st_size}


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "failed"


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
    elif len(sys.argv) == 5 and sys.argv[1] == "run":
        print(json.dumps(run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        sys.exit(__doc__)
