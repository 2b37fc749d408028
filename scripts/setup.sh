#!/usr/bin/env bash
# Set up worldrl in a virtual environment (./.venv by default), idempotently.
#
#   bash scripts/setup.sh            # the library with Atari + DMC + POPGym + TensorBoard extras
#   bash scripts/setup.sh dev        # the same plus pytest, pytest-xdist, ruff, scipy (for the tests)
#
# torch is installed first, on its own: on a machine with an NVIDIA driver (nvidia-smi works) pip's
# default CUDA build, otherwise the CPU build. Without this step pip would resolve an unpinned
# `torch` to the newest CUDA build (several GB) even on a CPU-only machine.
# Packages are installed with uv (put into the venv by pip first; the same versions as pip, ~5x
# faster), or with pip where uv cannot be had or WORLDRL_INSTALLER=pip. uv leaves byte-compiling
# to the first import of each module, except where PYTHONDONTWRITEBYTECODE is set: then nothing
# would ever be cached (`import torch` from source: ~3x slower), so it compiles all at install.
# Environment: WORLDRL_VENV (venv path), PYTHON (interpreter, >= 3.10), TORCH_VERSION (default
# 2.13.0), TORCH_INDEX_URL (a wheel index for torch, e.g. PyTorch's CPU index on a CPU machine),
# WORLDRL_INSTALLER (uv or pip; default uv), PIP_FIND_LINKS (also handed to uv).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-all}"
venv="${WORLDRL_VENV:-.venv}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"

"$python" - <<'PY' || { echo "worldrl needs Python >= 3.10 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if [ "${WORLDRL_INSTALLER:-uv}" = uv ] \
    && { [ -x "$venv/bin/uv" ] || "${pip[@]}" install uv 2>/dev/null; } && [ -x "$venv/bin/uv" ]; then
  pip=("$venv/bin/uv" pip install -q --python "$venv/bin/python")
  [ -z "${PYTHONDONTWRITEBYTECODE:-}" ] || pip+=(--compile-bytecode)
  for links in ${PIP_FIND_LINKS:-}; do pip+=(--find-links "$links"); done
  [ -z "${PIP_INDEX_URL:-}" ] || export UV_DEFAULT_INDEX="${UV_DEFAULT_INDEX:-$PIP_INDEX_URL}"
  [ -z "${PIP_EXTRA_INDEX_URL:-}" ] || export UV_INDEX="${UV_INDEX:-$PIP_EXTRA_INDEX_URL}"
else
  [ "${WORLDRL_INSTALLER:-uv}" = pip ] || echo "setup: uv could not be installed: using pip"
  pip+=(install)
fi

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "setup: NVIDIA driver found: installing the CUDA build of torch==$torch_version"
    "${pip[@]}" "torch==$torch_version"
  else
    echo "setup: no CUDA driver: installing the CPU build of torch==$torch_version"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      "${pip[@]}" "torch==$torch_version" --index-url "$TORCH_INDEX_URL"
    else
      "${pip[@]}" "torch==$torch_version"
    fi
  fi
fi

echo "setup: installing worldrl[$extras] (editable)"
"${pip[@]}" -e ".[$extras]"
"$venv/bin/python" -c "import torch, torchrl, worldrl, agents, envs, kernels; \
print(f'setup: ok (torch {torch.__version__}, torchrl {torchrl.__version__}, cuda={torch.cuda.is_available()})')"
# the CPU linear scan is a small C loop that kernels builds on first use; without a compiler it
# falls back to a slower PyTorch scan (and tests/kernels/test_native.py::test_builds_here fails)
command -v "${CC:-cc}" >/dev/null 2>&1 \
  || echo "setup: warning: no C compiler (${CC:-cc}); install gcc for the fast CPU scan" >&2
