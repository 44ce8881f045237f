#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine without internet: installs the wheels in wheels/ (the
# packages the machine's image lacks, downloaded beforehand: docs/benchmarks.md, "On a GPU") into
# a folder of their own, then runs the check with the arguments given. PYTHON picks the Python
# (default python3: the one that holds JAX, PyTorch and transformers there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G "wheels/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/emojax-wheels wheels/*.whl
  export PYTHONPATH="/tmp/emojax-wheels${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
