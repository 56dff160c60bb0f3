"""Compile every Triton kernel variant the CUDA backend launches for an H100 (sm_90), on a machine without a GPU.

    python tests/compile_for_hopper.py      # exits 1 naming each variant that does not compile

Triton's interpreter (what the other tests run) never compiles a kernel, so a construct the GPU compiler rejects
(an int8 ``tl.dot`` with K < 32, two return types of one helper) passed here and failed on the first GPU. Triton
ships its own ``ptxas``: each variant goes through the whole pipeline to a cubin, as its first launch would,
with the divisibility hints Triton's JIT gives arguments that are multiples of 16. Run without TRITON_INTERPRET
(it makes the kernels interpreter functions, which do not compile).
"""
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qcompiler.runtime import triton_matmul as tm

HOPPER = GPUTarget("cuda", 90, 32)
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "u8",
           torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64"}


def compile_launch(launch: tm.Launch, config: triton.Config):
    """``launch``'s kernel with ``config``, compiled for HOPPER (the compiled kernel; raises where it fails)."""
    signature, attrs, constants = {}, {}, {**launch.kwargs, **config.kwargs}
    for i, (name, arg) in enumerate(zip(launch.kernel.arg_names, launch.args)):
        if isinstance(arg, torch.Tensor):
            signature[name] = "*" + _DTYPES[arg.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are aligned
        elif isinstance(arg, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if arg % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    signature.update({name: "constexpr" for name in constants})
    return triton.compile(ASTSource(launch.kernel, signature, constants, attrs), target=HOPPER,
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))


def variants():
    """(name, launch, configs): each weight format and activation dtype the backend launches, every config of
    both families for int4 (the common case), the first of each family elsewhere."""
    torch.manual_seed(0)
    n, k = 64, 256
    firsts = [tm.configs("decode")[0], tm.configs("prefill")[0]]
    every = tm.configs("decode") + tm.configs("prefill")
    x = torch.randn(4, k, dtype=torch.bfloat16)

    def q(bits):
        return torch.randint(0, 256, (n, (k * bits + 7) // 8), dtype=torch.uint8)

    s, z = torch.rand(n, k // 32), torch.rand(n, k // 32)
    for bits in (1, 2, 3, 4, 5, 6, 8):
        yield f"affine {bits}-bit, groups of 32", tm.wo_launch(x, q(bits), bits, k, scale=s, zero=z), (
            every if bits == 4 else firsts)
    yield "int8 per channel", tm.wo_launch(x, q(8), 8, k, True, torch.rand(n, 1), torch.zeros(n, 1)), firsts
    yield "affine, groups of 48", tm.wo_launch(x[:, :240], q(4)[:, :120], 4, 240, scale=torch.rand(n, 5),
                                               zero=torch.rand(n, 5)), firsts
    yield "float32 activations", tm.wo_launch(x.float(), q(4), 4, k, scale=s, zero=z), firsts
    for bits in (3, 4, 8):
        yield f"codebook {bits}-bit", tm.wo_launch(x, q(bits), bits, k, table=torch.randn(4, 1 << bits)), firsts
    for fmt, block, scale in ((1, 32, torch.randint(100, 140, (n, k // 32), dtype=torch.uint8)),
                              (2, 16, torch.rand(n, k // 16).to(torch.float8_e4m3fn))):
        launch = tm.wo_launch(x, q(4), 4, k, scale=scale, table=torch.randn(1, 16), scale_format=fmt)
        yield f"fixed table, scale format {fmt}, blocks of {block}", launch, firsts
    xq = torch.randint(-128, 128, (4, k), dtype=torch.int8)
    for bits, group, zero in ((8, k, None), (4, 32, torch.zeros(4, dtype=torch.int32))):
        launch = tm.dq_launch(xq, torch.rand(4), zero, q(bits), bits, k, torch.rand(n, k // group), torch.bfloat16)
        yield f"int8 activations, {bits}-bit weights, groups of {group}", launch, [
            triton.Config({**c.kwargs, "BK": min(c.kwargs["BK"], launch.max_bk or c.kwargs["BK"])},
                          num_warps=c.num_warps, num_stages=c.num_stages) for c in firsts]
    for books, codes in ((2, torch.randint(0, 256, (n, k // 8, 2), dtype=torch.uint8)),
                         (1, torch.randint(-(1 << 15), 1 << 15, (n, k // 8, 1), dtype=torch.int16))):
        entries = 256 if codes.dtype == torch.uint8 else 1 << 16
        yield f"AQLM, {books} codebooks of {entries}", tm.additive_launch(
            x, codes, torch.randn(books, entries, 8, dtype=torch.float16), torch.rand(n)), firsts


def attention_variants():
    """``qcompiler::triton_cache_attention`` (``runtime/triton_attention.py``) for each cache dtype, with and without
    slots, as (name, launch, configs)."""
    from types import SimpleNamespace

    from qcompiler.runtime import triton_attention
    from test_cache_attention import STORES, _case
    for store in STORES:
        q, k, v, k_scale, v_scale, start, groups, scale = _case(3, 4, 2, 4, 64, 128, [5, 100, 0], store)
        for slot in (None, torch.tensor([2, 0])):
            rows = 2 if slot is None else 3  # a cache row per sequence, or more slots than sequences
            cache = [t[:rows] if t is not None else None for t in (k, v, k_scale, v_scale)]
            kernel, _, args, kwargs, _ = triton_attention.launch(q[:2], *cache, start[:2], groups, scale, slot)
            yield (f"cache attention, {store} cache{', slots' if slot is not None else ''}",
                   SimpleNamespace(kernel=kernel, args=args, kwargs=kwargs),
                   [triton.Config({}, num_warps=4, num_stages=2)])


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels do not compile")
        return 2
    failed = 0
    for name, launch, configs in [*variants(), *attention_variants()]:
        for config in configs:
            try:
                compile_launch(launch, config)
            except Exception as e:  # noqa: BLE001 - every failure is reported, with its variant
                failed += 1
                print(f"FAILED {name} {config}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
    print(f"{failed} of the variants failed to compile for sm_90" if failed else "every variant compiled for sm_90")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
