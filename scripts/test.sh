#!/usr/bin/env bash
# The test command (README, .ci/run): build everything, run the C++ tests (CPU;
# GPU tests skip without a GPU) and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFLASHATTN_CUDA="${FLASHATTN_CUDA:-AUTO}" -DFLASHATTN_CUDA_ARCHS="${FLASHATTN_CUDA_ARCHS:-90a;80}"
cmake --build "$BUILD" -j "$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)"
if [ -f python/tests/run.sh ]; then bash python/tests/run.sh; fi
