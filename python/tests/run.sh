#!/usr/bin/env bash
# Python tests (called by scripts/test.sh after ctest): install the package from
# the repo root, then run pytest on python/tests.
#
# CI has nvcc but no GPU, so by default the extension is built CPU-only
# (FLASHATTN_PY_CUDA=OFF): compiling the CUDA kernels again would cost minutes
# on two cores and no test could run them there (the C++ build/ctest step
# already compiles them). On a GPU machine: FLASHATTN_PY_CUDA=ON
# FLASHATTN_CUDA_ARCHS=90a FLASHATTN_HEADDIMS="64;128" bash python/tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export FLASHATTN_PY_CUDA=${FLASHATTN_PY_CUDA:-OFF}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# Reuse a build dir between runs when one is given (SKBUILD_BUILD_DIR); else a fresh temporary one.
BUILD_ARGS=()
if [ -n "${SKBUILD_BUILD_DIR:-}" ]; then BUILD_ARGS=(--config-settings=build-dir="$SKBUILD_BUILD_DIR"); fi
echo "== pip install flashattn (FLASHATTN_PY_CUDA=$FLASHATTN_PY_CUDA)"
$PY -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps "${BUILD_ARGS[@]}" .
$PY -c "import flashattn, sys; print('flashattn', flashattn.__version__, 'from', flashattn.__file__, '| CUDA compiled:', flashattn.cuda_compiled())"
if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "NOTE: torch not installed: the torch tests (autograd, torch.compile, CUDA parity) are skipped"
fi
# Run from python/tests so `import flashattn` is the installed package, not python/flashattn.
cd python/tests
exec $PY -m pytest -q -rs -p no:cacheprovider .
