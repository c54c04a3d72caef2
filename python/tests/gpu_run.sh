#!/usr/bin/env bash
# One-call check of the Python package on a GPU machine: CUDA build of the
# extension (archs/head dims from the environment), pytest, wrapper-overhead and
# end-to-end timing, the train_tiny example. Logs under $OUT (default ./py_gpu_out).
# Usage: FLASHATTN_CUDA_ARCHS=90a FLASHATTN_HEADDIMS="64;128" bash python/tests/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/py_gpu_out}
mkdir -p "$OUT"
export FLASHATTN_PY_CUDA=ON FLASHATTN_CUDA_ARCHS=${FLASHATTN_CUDA_ARCHS:-90a} FLASHATTN_HEADDIMS=${FLASHATTN_HEADDIMS:-64;128}
export PIP_BREAK_SYSTEM_PACKAGES=1  # a Debian python may be marked externally managed
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -v --config-settings=build-dir=/tmp/flashattn-pybuild . >"$OUT/build.log" 2>&1
rc=$?
s_build="build rc=$rc ($(( $(date +%s) - t0 ))s, archs $FLASHATTN_CUDA_ARCHS, head dims $FLASHATTN_HEADDIMS)"
if [ $rc -ne 0 ]; then grep -E "error|FAILED" "$OUT/build.log" | head -30; echo "$s_build"; exit 1; fi
t0=$(date +%s)
(cd python/tests && timeout "${PYTEST_TIMEOUT:-150}" python3 -m pytest -v -rs -p no:cacheprovider --durations=8 --tb=short . >"$OUT/pytest.log" 2>&1)
s_test="pytest rc=$? ($(( $(date +%s) - t0 ))s): $(tail -1 "$OUT/pytest.log")"
grep -E "^FAILED|^ERROR|Error:|assert" "$OUT/pytest.log" | head -40
grep -E "^SKIPPED" "$OUT/pytest.log" | head -20
(cd /tmp && timeout 60 python3 "$OLDPWD/python/bench/overhead.py" >"$OUT/overhead.txt" 2>&1); s_bench="overhead.py rc=$?"
(cd /tmp && timeout 40 python3 "$OLDPWD/python/examples/train_tiny.py" >"$OUT/train_tiny.txt" 2>&1); s_train="train_tiny rc=$? $(tail -1 "$OUT/train_tiny.txt")"
echo "######## $CARD"
cat "$OUT/overhead.txt"
echo "$s_build"; echo "$s_test"; echo "$s_bench"; echo "$s_train"
