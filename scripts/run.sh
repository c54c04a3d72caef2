#!/usr/bin/env bash
# README's first command: install deps, build Release in build/, run the benchmark
# (CPU mode, then the GPU mode when nvidia-smi finds a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)" --target flashattn-bench
build/bench/flashattn-bench "$@"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  build/bench/flashattn-bench --gpu "$@"
fi
