"""llama.cpp beside qcompiler's LLM benchmark: the same Llama shape as GGUF with random weights.

    python benchmarks/peer_llamacpp.py run MODEL.gguf PROMPT NEW     # one measurement, as JSON on stdout

``systems(config, folder, rebuild, log)`` writes an F16 GGUF of ``config``'s shape (random weights,
``gguf`` package, no vocabulary: tokens go in as ids), quantizes it with llama.cpp's own quantizer
(``llama_model_quantize``: Q8_0, Q4_0, Q4_K_M) and returns one measure function per type, each running
this file in a fresh process with 2 threads. Needs ``llama-cpp-python`` (built from source) and ``gguf``.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TYPES = ("Q8_0", "Q4_0", "Q4_K_M")
THREADS = 2


def write_f16(config, path: Path, vocabulary: bool = False) -> None:
    """An F16 GGUF of a Llama ``config`` (transformers LlamaConfig) with random weights; ``vocabulary``: a made-up
    SentencePiece vocabulary (``<unk>``, ``<s>``, ``</s>``, then ``▁t<i>``) instead of none, which llama.cpp's
    server needs to turn the tokens it makes into text."""
    import gguf
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv, vocab = config.num_attention_heads, config.num_key_value_heads, config.vocab_size
    head_dim = h // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if vocabulary:
        _add_vocabulary(w, vocab)
    else:
        w.add_tokenizer_model("no_vocab")
    rng = np.random.default_rng(0)

    def weight(rows, cols):  # [out, in] in numpy order: GGUF stores ggml's ne = [in, out]
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm():
        return np.ones(h, dtype=np.float32)

    # (name, numpy shape, dtype, maker): described first, then made and written one at a time, so that a
    # model larger than memory (Llama-2-7B in F16: 13.5 GB) never sits in it whole
    tensors = [("token_embd.weight", (vocab, h), np.float16, lambda: weight(vocab, h))]
    for i in range(layers):
        for name, rows, cols in (("attn_q", h, h), ("attn_k", kv * head_dim, h), ("attn_v", kv * head_dim, h),
                                 ("attn_output", h, h), ("ffn_gate", ffn, h), ("ffn_up", ffn, h),
                                 ("ffn_down", h, ffn)):
            tensors.append((f"blk.{i}.{name}.weight", (rows, cols), np.float16,
                            lambda rows=rows, cols=cols: weight(rows, cols)))
        tensors += [(f"blk.{i}.attn_norm.weight", (h,), np.float32, norm),
                    (f"blk.{i}.ffn_norm.weight", (h,), np.float32, norm)]
    tensors += [("output_norm.weight", (h,), np.float32, norm),
                ("output.weight", (vocab, h), np.float16, lambda: weight(vocab, h))]
    for name, shape, dtype, _ in tensors:
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, _, make in tensors:
        w.write_tensor_data(make())
    w.close()


def _add_vocabulary(w, vocab: int) -> None:
    import gguf
    special = ["<unk>", "<s>", "</s>"]
    w.add_tokenizer_model("llama")
    w.add_token_list(special + [f"\u2581t{i}" for i in range(len(special), vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.NORMAL] * (vocab - len(special)))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def quantize(src: Path, dst: Path, qtype: str) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = THREADS
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src.name} to {qtype}")


def systems(config, folder: Path, rebuild: bool, log, prompt: int = 128, new: int = 128,
            types: tuple = TYPES) -> dict:
    import llama_cpp  # noqa: F401  (fails here, not in the subprocess, where it is not installed)
    f16 = folder / "llamacpp-f16.gguf"
    made = {}
    for qtype in types:
        path = folder / f"llamacpp-{qtype}.gguf"
        if rebuild or not path.is_file():
            if not f16.is_file():
                log("  writing the F16 GGUF (random weights) ...")
                write_f16(config, f16)
            log(f"  llama.cpp quantizing to {qtype} ...")
            try:
                quantize(f16, path, qtype)
            except RuntimeError as e:  # a type this build's quantizer lacks (NVFP4 in llama-cpp-python 0.3.36)
                log(f"  llama.cpp {qtype}: not measured ({e})")
                continue
        made[f"llama.cpp {qtype}"] = path
    return {name: (lambda path=path: measure(path, prompt, new)) for name, path in made.items()}


def measure(path: Path, prompt: int = 128, new: int = 128) -> dict:
    out = subprocess.run([sys.executable, __file__, "run", str(path), str(prompt), str(new)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-500:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(path: str, prompt: int, new: int) -> dict:
    """Greedy generation of ``new`` tokens after a ``prompt``-token prompt, after one warm-up."""
    import llama_cpp
    began = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=prompt + new, n_batch=prompt, n_threads=THREADS, n_threads_batch=THREADS,
                          verbose=False)  # maps the file (use_mmap, its default)
    load_s = time.perf_counter() - began
    ids, vocab = np.random.default_rng(0).integers(3, 256, prompt).tolist(), llm.n_vocab()

    def generate(n):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        times, token = [], None
        for _ in range(n):
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))  # the last row
            times.append(time.perf_counter() - start)
            llm.eval([token])
        return times
    generate(2)
    times = generate(new)
    decode = (len(times) - 1) / (times[-1] - times[0])
    return {"prefill_tokens_per_s": prompt / times[0], "decode_tokens_per_s": decode, "load_s": load_s,
            "peak_memory_mb": _peak_rss_mb(),
            "model_bytes": Path(path).stat().st_size, "embedding_bytes": _embedding_bytes(path)}


def _embedding_bytes(path: str) -> int:
    """The GGUF's token embedding table, in its stored type (a token reads one row of it)."""
    import gguf
    return next(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")


def _peak_rss_mb() -> float:
    """VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "run":
        sys.exit(__doc__)
    print(json.dumps(run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
