#!/usr/bin/env bash
# Everything a GPU session runs, in one command: the SASS budget (when nvcc and
# cuobjdump are there), the GPU kernel tests, then the kernel benchmark (which
# writes benchmarks/RESULTS.md with the device's name).
#
#   bash benchmarks/gpu_session.sh [--quick]
#
# Needs python3 with torch and CuPy for the machine's CUDA (mcard[gpu] or
# mcard[gpu-cuda13]). On a machine without internet, put the wheels mcard needs
# and the machine lacks (e.g. gguf) in ./wheels first: they are installed from
# there, without an index. With OUT set, the test log and RESULTS.md are copied
# into $OUT as well.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G "wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps wheels/*.whl
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" - <<'PYEOF'
import cupy, torch
print("CuPy", cupy.__version__, "| torch", torch.__version__, "| devices", cupy.cuda.runtime.getDeviceCount(),
      "|", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
PYEOF
status=0
# the instruction budget of the kernels this session times (skipped without nvcc / cuobjdump: mcard[dev])
sass=0; "$PY" benchmarks/kernel_sass.py --json > sass.json || sass=$?
case $sass in
    0) echo "SASS budget: ok (sass.json)" ;;
    2) echo "SASS budget not measured here (needs nvcc and pip install -e '.[dev]')" ;;
    *) echo "SASS budget: OVER (sass.json)"; status=1 ;;
esac
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/smoke/test_kernels.py 2>&1 | tee gpu_tests.txt || status=1
"$PY" benchmarks/bench_kernels.py "$@" || status=1
if [ -n "${OUT:-}" ]; then cp gpu_tests.txt benchmarks/RESULTS.md sass.json "$OUT/" 2>/dev/null || true; fi
exit $status
