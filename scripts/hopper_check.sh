#!/usr/bin/env bash
# One device call for the Hopper rung: build the GPU tests (sm_90a only), run the
# Hopper tests, a compute-sanitizer pass on one small case, then timings of
# kHopper / kFA2 (scripts/hopper_timing.cpp, with leave-one-out variants) and
# torch SDPA flash / cuDNN on the same card. Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hopper_out}
mkdir -p "$OUT"
B=/tmp/b
DIMS=${HOPPER_DIMS:-64;128;256}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
t0=$(date +%s)
cmake -S . -B $B -G Ninja -DFLASHATTN_CUDA=ON -DFLASHATTN_CUDA_ARCHS=90a -DFLASHATTN_HEADDIMS="$DIMS" \
  -DCMAKE_BUILD_TYPE=Release -DFLASHATTN_BUILD_BENCH=OFF >"$OUT/cfg.log" 2>&1 &&
  cmake --build $B --target flashattn_gpu_tests -j16 >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 ))s"; grep -E "C7508|spill" "$OUT/build.log" | grep -i hopper | sort -u | head
t0=$(date +%s)
timeout ${TEST_TIMEOUT:-150} $B/tests/flashattn_gpu_tests --gtest_filter='*Hopper*' >"$OUT/tests.log" 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 ))s"
grep -E "^\[  FAILED|Failure|Expected|Which is|LE\(|O$|LSE$|^\[  PASSED|SKIPPED \]" "$OUT/tests.log" | head -60
for v in ${TEST_VARIANTS:-}; do
  FLASHATTN_HOPPER_VARIANT=$v timeout 60 $B/tests/flashattn_gpu_tests --gtest_filter='*Hopper*:-*OddLengths' \
    >"$OUT/tests_$v.log" 2>&1
  echo "tests[$v] rc=$? $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/tests_$v.log" | tr '\n' ' ')"
done
if [ -z "${NO_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null; then
  for tool in ${SAN_TOOLS:-memcheck racecheck synccheck}; do
    timeout 60 compute-sanitizer --tool $tool $B/tests/flashattn_gpu_tests --gtest_filter='HopperGpu.Batch3' \
      >"$OUT/san_$tool.log" 2>&1
    echo "sanitizer $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_$tool.log" | head -2 | tr '\n' ' ')"
  done
fi
g++ -O2 -std=c++17 scripts/hopper_timing.cpp -Iinclude -I/usr/local/cuda/include $B/src/libflashattn.a \
  $(pkg-config --libs libhwy 2>/dev/null) -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/ht || exit 1
MODE=${TIMING_MODE:-quick}
timeout 60 /tmp/ht $MODE 2>&1 | tee "$OUT/timing.txt"
for v in no_overlap no_persistent pingpong; do
  FLASHATTN_HOPPER_VARIANT=$v timeout 40 /tmp/ht $MODE 2>&1 | grep hopper | sed "s/^/$v /" | tee -a "$OUT/timing.txt"
done
timeout 90 python3 scripts/hopper_torch_timing.py $MODE 2>&1 | tee "$OUT/torch.txt"
