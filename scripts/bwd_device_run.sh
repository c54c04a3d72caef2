#!/usr/bin/env bash
# One device call for the fa2 backward: build, GPU backward tests, timing of ours
# and torch (SDPA flash, cuDNN) in the same call. Usage: scripts/bwd_device_run.sh OUT_DIR
set -uo pipefail
OUT=${1:-/tmp/out}
B=/tmp/b
CUDA=/usr/local/cuda
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/summary.txt
cmake -S . -B $B -G Ninja -DFLASHATTN_CUDA=ON -DFLASHATTN_CUDA_ARCHS=90a -DFLASHATTN_HEADDIMS="64;96;128;256" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
# A/B (optional): a previous kernel kept in the ignored folder .bwd_ab, built as
# objects that override the library's hdim128/hdim64 bf16 launchers.
AB_OBJS=""
if [ -d .bwd_ab ]; then
  for d in 128 64; do
    nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Iinclude -Isrc \
      -c .bwd_ab/old_hdim${d}_bf16.cu -o /tmp/old$d.o &
    AB_OBJS="$AB_OBJS /tmp/old$d.o"
  done
fi
cmake --build $B --target flashattn -j16 2>&1 | grep -E "error|FAILED" | head -20
TESTS=$B/tests/flashattn_gpu_tests
# Extra libraries the static library may need (NCCL when the ring transport found it).
EXTRA=$(sed -n "s/^NCCL_LIBRARY:FILEPATH=\(.*nccl.*\)$/\1/p" $B/CMakeCache.txt | grep -v NOTFOUND)
if ! cmake --build $B --target flashattn_gpu_tests -j16 >$OUT/build_tests.txt 2>&1; then
  # Someone else's GPU test may not build: build ours alone against the library.
  echo "flashattn_gpu_tests did not build; building test_bwd_gpu alone" | tee -a $OUT/summary.txt
  g++ -O2 -std=c++17 -Iinclude -Isrc -Itests/common -Itests/gpu -I$CUDA/include tests/gpu/test_bwd_gpu.cpp \
    tests/common/test_util.cpp $B/src/libflashattn.a -L$CUDA/lib64 -lcudart -lgtest -lgtest_main $EXTRA -fopenmp -lpthread \
    -o /tmp/bwd_tests && TESTS=/tmp/bwd_tests
fi
cuobjdump -sass $B/src/CMakeFiles/flashattn.dir/cuda/fa2/fa2_bwd_hdim128_bf16.cu.o 2>/dev/null |
  grep -cE "HMMA" | sed 's/^/HMMA in hdim128 bf16 object: /' | tee -a $OUT/summary.txt
g++ -O2 -std=c++17 scripts/bwd_timing.cpp -Iinclude -I$CUDA/include $B/src/libflashattn.a -L$CUDA/lib64 -lcudart \
  $EXTRA -fopenmp -lpthread -o /tmp/bwd_timing && timeout 60 /tmp/bwd_timing 2>&1 | tee -a $OUT/summary.txt
timeout 60 python3 scripts/bwd_torch.py 2>&1 | tee -a $OUT/summary.txt
timeout ${TEST_TIMEOUT:-120} $TESTS --gtest_filter='*Bwd*' >$OUT/tests.txt 2>&1
echo "tests rc=$?" | tee -a $OUT/summary.txt
grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|cases ran" $OUT/tests.txt | head -30 | tee -a $OUT/summary.txt
wait
if [ -n "$AB_OBJS" ]; then
  g++ -O2 -std=c++17 scripts/bwd_timing.cpp -Iinclude -I$CUDA/include $AB_OBJS $B/src/libflashattn.a -L$CUDA/lib64 \
    -lcudart $EXTRA -fopenmp -lpthread -o /tmp/bwd_timing_old && timeout 60 /tmp/bwd_timing_old old 2>&1 |
    grep -E "d=(128|64) causal=[01] det=0|d=128 causal=[01] det=1" | tee -a $OUT/summary.txt
fi
# Where the time goes (d = 128, N = 2k, non-causal), when Nsight Compute is installed.
if command -v ncu >/dev/null; then
  timeout 60 ncu --kernel-name regex:bwd_main --launch-count 1 --section SpeedOfLight --section WarpStateStats \
    --section ComputeWorkloadAnalysis /tmp/bwd_timing prof 4 >$OUT/ncu.txt 2>&1
  grep -E "SM Frequency|Duration|Throughput|Pipe|Stall|Warp Cycles|Issue" $OUT/ncu.txt | head -40 | tee -a $OUT/summary.txt
fi
