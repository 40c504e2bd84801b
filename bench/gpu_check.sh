#!/usr/bin/env bash
# GPU check (issue 16): on a machine with one NVIDIA GPU, export vit_h (random weights) in fp32 and fp16, run AMG +
# ALPS through the embedded backend on onnxruntime's CUDA provider (and TensorRT's when the wheel has it), time cuML
# k-means, and append the rows to bench/results.json (rendered to bench/RESULTS.md). The check itself stops
# starting new steps after 8 minutes (--time-limit SECONDS); preparing the environment comes before and is not
# counted.
#
#   bash bench/gpu_check.sh              # on the GPU machine
#   bash bench/gpu_check.sh --dry-run    # anywhere: every step on the CPU (tiny test SAM, scikit-learn)
#
# Environment: the dry run uses the project's .venv (make setup). The GPU run uses .venv-gpu, made here once:
# requirements.txt + requirements.lock as `make setup` installs them, then the CPU onnxruntime swapped for
# bench/requirements-gpu.txt (onnxruntime-gpu, cuml-cu13). Wheels in $ALPS_WHEELS (or /opt/wheels) are used first,
# for machines that cannot reach a package index. GPU_PYTHON=python3 runs the check with that Python instead, for an
# image that already holds the packages (torch, onnxruntime-gpu, ...). Other arguments go to bench/gpu_check.py
# (--images N, --model-repository DIR to skip the export, --results-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FIND_LINKS=()
for dir in "${ALPS_WHEELS:-}" /opt/wheels; do
  if [ -n "$dir" ] && [ -d "$dir" ]; then FIND_LINKS+=(--find-links "$dir"); fi
done

dry_run=0
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1; fi
done

if [ "$dry_run" = 1 ]; then
  test -x .venv/bin/python || make setup
  exec .venv/bin/python bench/gpu_check.py "$@"
fi

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed); use --dry-run on a CPU machine" >&2
  exit 2
fi
nvidia-smi -L

if [ -n "${GPU_PYTHON:-}" ]; then
  # An environment that already holds the GPU packages (a CUDA image's own Python, say): no .venv-gpu.
  RUN_PYTHON=$GPU_PYTHON
else
  VENV=.venv-gpu
  STAMP=$VENV/.installed-$(cat requirements.txt requirements.lock bench/requirements-gpu.txt | sha256sum | cut -c1-12)
  if [ ! -f "$STAMP" ]; then
    echo "[gpu-check] preparing $VENV (once) ..."
    test -x $VENV/bin/python || "$PYTHON" -m venv $VENV
    PIP=($VENV/bin/python -m pip install --disable-pip-version-check --quiet "${FIND_LINKS[@]}")
    "${PIP[@]}" -r requirements.txt -c requirements.lock
    $VENV/bin/python -m pip uninstall --yes --quiet onnxruntime
    "${PIP[@]}" -r bench/requirements-gpu.txt
    "${PIP[@]}" --no-deps -e .
    rm -f $VENV/.installed-*
    touch "$STAMP"
  fi
  RUN_PYTHON=$VENV/bin/python
fi
$RUN_PYTHON -c "import onnxruntime as o; print('[gpu-check] onnxruntime', o.__version__, o.get_available_providers())"
exec $RUN_PYTHON bench/gpu_check.py "$@"
