#!/usr/bin/env bash
# One device call for the decode kernel (issue 8): build, GPU tests, memcheck on
# a small paged case, bandwidth timing of ours and torch in the same call.
# Usage: scripts/decode_device_run.sh OUT_DIR
set -uo pipefail
OUT=${1:-/tmp/out}
B=/tmp/b
CUDA=/usr/local/cuda
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee $OUT/summary.txt
cmake -S . -B $B -G Ninja -DFLASHATTN_CUDA=ON -DFLASHATTN_CUDA_ARCHS=90a -DFLASHATTN_HEADDIMS="64;128" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
cmake --build $B --target flashattn -j16 2>&1 | grep -E "error|FAILED" | head -20
EXTRA=$(sed -n "s/^NCCL_LIBRARY:FILEPATH=\(.*nccl.*\)$/\1/p" $B/CMakeCache.txt | grep -v NOTFOUND)
TESTS=$B/tests/flashattn_gpu_tests
if ! cmake --build $B --target flashattn_gpu_tests -j16 >$OUT/build_tests.txt 2>&1; then
  echo "flashattn_gpu_tests did not build; building test_decode_gpu alone" | tee -a $OUT/summary.txt
  grep -E "error" $OUT/build_tests.txt | head -5 | tee -a $OUT/summary.txt
  g++ -O2 -std=c++17 -Iinclude -Isrc -Itests/common -Itests/gpu -I$CUDA/include tests/gpu/test_decode_gpu.cpp \
    tests/common/test_util.cpp $B/src/libflashattn.a -L$CUDA/lib64 -lcudart -lgtest -lgtest_main $EXTRA -fopenmp -lpthread \
    -o /tmp/decode_tests && TESTS=/tmp/decode_tests
fi
g++ -O2 -std=c++17 scripts/decode_timing.cpp -Iinclude -I$CUDA/include $B/src/libflashattn.a -L$CUDA/lib64 -lcudart \
  $EXTRA -fopenmp -lpthread -o /tmp/decode_timing && timeout 120 /tmp/decode_timing 2>&1 | tee -a $OUT/summary.txt
timeout 120 python3 scripts/decode_torch.py 2>&1 | tee -a $OUT/summary.txt
timeout ${TEST_TIMEOUT:-150} $TESTS --gtest_filter='*Decode*:*Varlen*' >$OUT/tests.txt 2>&1
echo "tests rc=$?" | tee -a $OUT/summary.txt
grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|error|tests ran" $OUT/tests.txt | head -40 | tee -a $OUT/summary.txt
timeout 120 $CUDA/bin/compute-sanitizer --tool memcheck $TESTS --gtest_filter='DecodeGpuSanitize.*' >$OUT/memcheck.txt 2>&1
echo "memcheck rc=$?" | tee -a $OUT/summary.txt
grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.txt | tee -a $OUT/summary.txt
