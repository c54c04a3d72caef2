#!/usr/bin/env bash
# README's first command: install deps, build Release in build/, run the benchmark
# (CPU mode, then the GPU mode when nvidia-smi finds a GPU). Extra arguments go to
# flashattn-bench (e.g. --quick). The CUDA backend is built when a GPU is present
# (override with FLASHATTN_CUDA=ON|OFF|AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then GPU=1; fi
CUDA=${FLASHATTN_CUDA:-$([ $GPU = 1 ] && echo ON || echo OFF)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHATTN_CUDA="$CUDA"
cmake --build build -j "$(nproc)" --target flashattn-bench
build/bench/flashattn-bench "$@"
if [ $GPU = 1 ]; then build/bench/flashattn-bench --gpu "$@"; fi
