#!/usr/bin/env bash
# What a session lent a GPU runs first, in one call of the device tool (docs/cuda-kernels.md):
#   bash benchmarks/gpu_session.sh     # logs and figures under $OUT (default /tmp/gpu-out)
# The GPU machine's image has its own torch (not our pin) and no network: qcompiler runs from the tree.
# PT2_S / TEST_S / BENCH_S / AQLM_S cap each step in seconds (150 + 150 + 170 + 50 by default: call it with
# timeout_s 560, which leaves a 15-minute lease room for its start and one shorter rerun);
# SKIP_PT2=1 / SKIP_TESTS=1 / SKIP_BENCH=1 leave a step out; TEST_K selects tests (pytest -k); EXTRA (a command) runs first.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import qcompiler" || exit 1
[ -n "${EXTRA:-}" ] && bash -c "$EXTRA" 2>&1 | tee "$OUT/extra.log" | tail -60
if [ -z "${SKIP_PT2:-}" ]; then  # which CUDA .pt2 the loader crashes on (docs/cuda-kernels.md), ~3 minutes
    timeout -s INT "${PT2_S:-150}" python3 benchmarks/cuda_pt2_check.py 2>&1 | tee "$OUT/pt2_check.log" \
        | grep -E "exit|\[" | tail -20
fi
if [ -z "${SKIP_TESTS:-}" ]; then  # SIGINT at the limit: pytest still prints what failed so far
    timeout -s INT -k 15 "${TEST_S:-150}" python3 -m pytest -q -p no:cacheprovider -n 8 --tb=line -rf \
        --junitxml="$OUT/tests.xml" -k "${TEST_K:-not nothing}" tests/test_triton_matmul.py \
        tests/test_triton_attention.py 2>&1 \
        | tee "$OUT/tests.log" | grep -E "passed|failed|^FAILED|^ERROR|^/.*Error|^E " | tail -60
fi
if [ -z "${SKIP_BENCH:-}" ]; then
    timeout -s INT "${BENCH_S:-170}" python3 benchmarks/bench_cuda_layers.py --no-peer \
        --schemes int8wo int4wo-64 int4wo-128 codebook-4 codebook-3 int8dq int8da-int4w-128 \
        --out "$OUT/cuda_layers.json" 2>&1 | tee "$OUT/bench.log" | grep -v Warning
    timeout -s INT "${AQLM_S:-50}" python3 benchmarks/bench_cuda_layers.py --no-peer --schemes aqlm-2x8-g8 \
        --shapes 4096x4096 --out "$OUT/cuda_layers_aqlm.json" 2>&1 | tee "$OUT/bench_aqlm.log" | tail -8
fi
