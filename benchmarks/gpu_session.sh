#!/usr/bin/env bash
# What needs a GPU, in one call of the `device` tool (BENCHMARKS.md, "On a lent GPU"): build the
# extension with the CUDA kernels for the GPU present, run the tests (the CUDA and Triton ones
# run only there), then the GPU benchmarks. Logs and benchmarks.json go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then  # packages the machine lacks (trimesh), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-build-isolation --no-deps . > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"
  exit 1
fi
python3 -m get3dhuman.cli info | tee "$out/info.txt"
python3 -m pytest -q -p no:cacheprovider tests -m "not slow" \
  --deselect tests/test_build.py::test_native_cmake_build_and_ctest 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
python3 -m pytest -q -p no:cacheprovider benchmarks --benchmark-only -k "cuda or triton" \
  --benchmark-json "$out/benchmarks.json" 2>&1 | tee "$out/benchmarks.log"
benchmarks=${PIPESTATUS[0]}
exit $((tests != 0 || benchmarks != 0))
