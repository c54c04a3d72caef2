#!/usr/bin/env bash
# The one-call GPU check (run on the GPU machine through the device tool):
#   build (sm_90a + sm_80) -> GPU tests -> compute-sanitizer on small cases ->
#   Python tests -> benchmark vs torch SDPA (flash, cudnn) -> short table last.
# Logs go to $OUT (or ./gpu_check_out). Stages can be skipped: SKIP="sanitize python bwd decode".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
ARCHS=${FLASHATTN_CUDA_ARCHS:-90a;80}
HEADDIMS=${FLASHATTN_HEADDIMS:-64;96;128;192;256}
BUILD=${BUILD_DIR:-/tmp/flashattn-gpu-build}
SKIP=${SKIP:-}
JOBS=$(nproc)
summary=()
note() { summary+=("$1"); echo "== $1"; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
CARD=$(head -1 "$OUT/card.txt" | cut -d, -f1)

# Python extension built in the same tree (no second CUDA build) when nanobind is importable.
PYOPT="-DFLASHATTN_PYTHON=OFF"
if python3 -c "import nanobind" 2>/dev/null && [ -f python/CMakeLists.txt ]; then
  PYOPT="-DFLASHATTN_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3)"
fi

t0=$(date +%s)
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHATTN_CUDA=ON \
     -DFLASHATTN_CUDA_ARCHS="$ARCHS" -DFLASHATTN_HEADDIMS="$HEADDIMS" $PYOPT >"$OUT/configure.log" 2>&1 &&
   cmake --build "$BUILD" -j "$JOBS" >"$OUT/build.log" 2>&1; then
  note "build OK ($(( $(date +%s) - t0 ))s, archs $ARCHS, head dims $HEADDIMS)"
else
  tail -40 "$OUT/configure.log" "$OUT/build.log"
  note "build FAILED"
  printf '%s\n' "${summary[@]}"
  exit 1
fi
grep -E "spill|C7508" "$OUT/build.log" | sort -u | head -20 > "$OUT/spills.txt"
[ -s "$OUT/spills.txt" ] && note "ptxas spill/setmaxnreg warnings: $(wc -l < "$OUT/spills.txt") (see spills.txt)"

# 1. Tests: C++ CPU + GPU.
t0=$(date +%s)
"$BUILD/tests/flashattn_gpu_tests" --gtest_brief=1 >"$OUT/gpu_tests.log" 2>&1
rc=$?
note "GPU tests: rc=$rc, $(grep -cE '^\[       OK|^\[  PASSED' "$OUT/gpu_tests.log") ok-lines, $(grep -c '^\[  FAILED  \]' "$OUT/gpu_tests.log") failed-lines ($(( $(date +%s) - t0 ))s)"
grep -E '^\[  FAILED  \]|Failure|error' "$OUT/gpu_tests.log" | head -30
tail -3 "$OUT/gpu_tests.log"

# 2. compute-sanitizer on the small cases of every kernel.
if ! skipped sanitize; then
  for tool in memcheck racecheck synccheck; do
    t0=$(date +%s)
    compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/tests/flashattn_gpu_tests" \
      --gtest_filter='Sanitize*' --gtest_brief=1 >"$OUT/sanitize_$tool.log" 2>&1
    note "compute-sanitizer $tool: rc=$? ($(grep -m1 -oE 'ERROR SUMMARY: [0-9]+ error' "$OUT/sanitize_$tool.log" || echo 'no summary'); $(( $(date +%s) - t0 ))s)"
  done
fi

# 3. Python tests (torch present here).
if ! skipped python && [[ "$PYOPT" == *ON* ]]; then
  t0=$(date +%s)
  PYTHONPATH="$BUILD/python:$PWD/python:${PYTHONPATH:-}" python3 -m pytest -q python/tests >"$OUT/pytest.log" 2>&1
  note "pytest: rc=$? $(tail -1 "$OUT/pytest.log") ($(( $(date +%s) - t0 ))s)"
fi

# 4. Benchmark (ours vs torch SDPA flash/cudnn, same run, same card).
t0=$(date +%s)
"$BUILD/bench/flashattn-bench" --gpu >"$OUT/bench_fwd.txt" 2>"$OUT/bench_fwd.err"
note "bench fwd: rc=$? ($(( $(date +%s) - t0 ))s)"
if ! skipped bwd; then
  "$BUILD/bench/flashattn-bench" --gpu --bwd >"$OUT/bench_bwd.txt" 2>"$OUT/bench_bwd.err"
  note "bench bwd: rc=$?"
fi
if ! skipped decode; then
  "$BUILD/bench/flashattn-bench" --gpu --decode >"$OUT/bench_decode.txt" 2>"$OUT/bench_decode.err"
  note "bench decode: rc=$?"
fi

echo
echo "######## $CARD ########"
printf '%s\n' "${summary[@]}"
for f in bench_fwd bench_bwd bench_decode; do
  [ -s "$OUT/$f.txt" ] && { echo "--- $f"; tail -40 "$OUT/$f.txt"; }
done
