#!/usr/bin/env bash
# One GPU call for the softmax / naive / FA1 work (cuda-basic): build the GPU tests,
# run them, time softmax + naive + FA1 against torch, then compute-sanitizer on small cases.
set -uo pipefail
OUT=${OUT:-/tmp/ladder_out}; mkdir -p "$OUT"
B=/tmp/b
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/card.txt"
t0=$(date +%s)
cmake -S . -B $B -G Ninja -DFLASHATTN_CUDA=ON -DFLASHATTN_CUDA_ARCHS=90a -DFLASHATTN_HEADDIMS="${HD:-64}" \
  -DFLASHATTN_NCCL=OFF -DFLASHATTN_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 &&
  cmake --build $B --target flashattn_gpu_tests -j16 >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 ))s"; grep -i "spill" "$OUT/build.log" | grep -E "fa1|softmax|naive" | sort -u | head
g++ -O2 -std=c++17 scripts/ladder_timing.cpp -Iinclude -I/usr/local/cuda/include $B/src/libflashattn.a \
  -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/ladder_timing 2>"$OUT/timing_build.log" || tail "$OUT/timing_build.log"
t0=$(date +%s)
timeout 150 $B/tests/flashattn_gpu_tests --gtest_filter="${FILTER:-*Softmax*:*Naive*:*FA1*}" --gtest_brief=1 >"$OUT/tests.log" 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 ))s"; grep -E "Failure|FAILED|error|Expected|Which is|worst|trace|\.cpp:" "$OUT/tests.log" | head -40; tail -3 "$OUT/tests.log"
timeout 60 /tmp/ladder_timing >"$OUT/timing.txt" 2>&1; echo "timing rc=$?"
timeout 60 python3 scripts/ladder_torch_timing.py >"$OUT/torch.txt" 2>&1; echo "torch rc=$?"
SF='Sanitize/SanitizeFwd.SmallCases/naive:Sanitize/SanitizeFwd.SmallCases/fa1:SoftmaxGpu.SmallForSanitizer'
for tool in memcheck racecheck; do
  timeout ${SAN_T:-60} compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/flashattn_gpu_tests --gtest_filter="$SF" --gtest_brief=1 >"$OUT/san_$tool.log" 2>&1
  echo "$tool rc=$? $(grep -m1 -oE 'ERROR SUMMARY: [0-9]+ error' "$OUT/san_$tool.log")"
done
echo "=== timing"; cat "$OUT/timing.txt"; echo "=== torch"; cat "$OUT/torch.txt"
