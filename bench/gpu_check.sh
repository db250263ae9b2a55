#!/usr/bin/env bash
# GPU readiness check (see bench/gpu_check.py): compiled Triton SSC tests, bench/ssc.py's
# CUDA rows, a 20-step bf16-mixed training run of every model and `sepkit profile` on CUDA,
# recorded as JSON under bench/results/gpu_check_<UTC time>/ (summary.json + per-step files).
#
#   bash bench/gpu_check.sh [gpu_check.py options]      # from the repository root
#   PYTHON=/path/to/python bash bench/gpu_check.sh      # the Python that has torch with CUDA
#
# Needs no network and installs nothing. Exits non-zero when any step failed; the steps'
# own timeouts keep it under 8 minutes, and `timeout` below is the hard stop behind them.
set -uo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root" || exit 2
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_check: no Python at '$python' (set PYTHON to the interpreter that has torch with CUDA)" >&2
    exit 2
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
if command -v timeout >/dev/null 2>&1; then
    exec timeout --kill-after=5 470 "$python" bench/gpu_check.py "$@"
fi
exec "$python" bench/gpu_check.py "$@"
