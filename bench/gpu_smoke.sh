#!/usr/bin/env bash
# One-call smoke check of flashattn-bench on a GPU machine: build the bench
# (CUDA on), run --gpu --quick (fwd, bwd, decode), the CPU --quick mode and the
# install test; logs under $OUT (or /tmp/flashattn-smoke), a short summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flashattn-smoke}
B=${BUILD_DIR:-/tmp/fa-bench-build}
mkdir -p "$OUT"
t0=$(date +%s)
cmake -S . -B "$B" -G Ninja -DFLASHATTN_CUDA=ON -DFLASHATTN_CUDA_ARCHS=90a -DFLASHATTN_HEADDIMS="64;128" \
  -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.txt" 2>&1 || { echo "configure failed"; tail -20 "$OUT/configure.txt"; exit 1; }
timeout "${BUILD_TIMEOUT:-170}" cmake --build "$B" --target flashattn-bench -j "$(nproc)" >"$OUT/build.txt" 2>&1
rc=$?
echo "build rc=$rc ($(( $(date +%s) - t0 ))s)"
[ $rc -eq 0 ] || { grep -E "error|FAILED" "$OUT/build.txt" | head -30; exit 1; }
run() {  # name timeout args...
  local name=$1 lim=$2; shift 2
  local s=$(date +%s)
  timeout "$lim" "$B/bench/flashattn-bench" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  echo "$name: rc=$? ($(( $(date +%s) - s ))s)"
}
run gpu_fwd 75 --gpu --quick
run gpu_bwd 45 --gpu --quick --bwd
run gpu_decode 40 --gpu --quick --decode
run cpu 40 --quick
timeout 60 ctest --test-dir "$B" -R install_consumer --output-on-failure >"$OUT/install.txt" 2>&1
echo "install_consumer: rc=$?"
for f in gpu_fwd gpu_bwd gpu_decode cpu; do
  echo "===== $f"; grep -A40 "== summary" "$OUT/$f.txt" | head -30; tail -3 "$OUT/$f.err"
done
