#!/usr/bin/env bash
# Wheels for the one-shot GPU check (python -m benchmarks.device) on the lent device machine.
#
#   bash scripts/device_wheels.sh          # download into .whl/ (idempotent), print the total size
#   bash scripts/device_wheels.sh --list   # print the pinned NAME==VERSION list and exit (no network)
#
# The device machine (Python 3.12.3, torch 2.11.0+cu130, triton 3.6, numpy, ...; no network) lacks
# these packages, so they travel as wheels for cp312 manylinux x86_64 in the ignored folder .whl/
# (`carry: [".whl"]`), installed there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
# (the repository first: the torchrl/tensordict wheels also put top-level `benchmarks/` and
# `scripts/` folders, without __init__.py, into /tmp/site)
# The list is the closure of worldrl's needs (pyproject.toml: core, atari, tensorboard, bench)
# minus what the machine's image holds (benchmarks/device.py: GPU_MACHINE_PACKAGES); torch, triton
# and numpy are never carried (the machine's own builds are used). tests/test_device_check.py holds
# the list to the imports of worldrl/agents/envs/kernels and to the installed dependency metadata.
#
# antlr4-python3-runtime 4.9.3 (hydra-core's pin) exists on PyPI as a source archive only: it is
# pure Python, so it is built here into a py3-none-any wheel (pip wheel --no-deps).
#
# torchrl's and tensordict's compiled extensions: tensordict/_C.so links no libtorch (pybind11 only)
# and loads under any torch; torchrl/_torchrl.so links libtorch and was built for another torch:
# under torch 2.11 it fails with an undefined symbol (seen here with these wheels, Python 3.12 and
# torch 2.11.0). torchrl imports anyway and only its prioritized samplers' segment trees become
# None, which worldrl never uses (worldrl/replay.py: LazyMemmapStorage, its own samplers); a CPU
# `worldrl train env=atari100k preset=debug` ran to its end that way. The probe step of
# benchmarks/device.py reports what the device machine does.
#
# Environment: WHEEL_DIR (default .whl), MAX_MIB (default 55: the travelling tree's limit is
# 64 MiB with the repository), PYTHON (the pip to download with; default .venv/bin/python, else
# python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# NAME==VERSION, the versions of the project's .venv (torchrl/tensordict: the same as our CPU runs)
WHEELS=(
  torchrl==0.14.1
  tensordict==0.14.3
  hoptorch==0.1.4                 # torchrl
  pyvers==0.2.3                   # torchrl, tensordict, hoptorch
  orjson==3.13.0                  # tensordict (python < 3.13)
  importlib_metadata==10.2.0      # tensordict
  lazy-importer==0.1.0            # importlib_metadata (python < 3.15)
  gymnasium==1.4.0
  farama-notifications==0.0.6     # gymnasium
  ale-py==0.12.1                  # Atari, ROMs bundled
  hydra-core==1.3.8
  omegaconf==2.3.1                # hydra-core
  antlr4-python3-runtime==4.9.3   # hydra-core, omegaconf (built from the sdist: see above)
  accelerated-scan==0.3.1         # kernels.bench's comparison
)
# built here from the source archive when no wheel is published
SDIST_ONLY=(antlr4-python3-runtime)

if [ "${1:-}" = "--list" ]; then
  for spec in "${WHEELS[@]}"; do echo "$spec"; done
  exit 0
fi

dest="${WHEEL_DIR:-.whl}"
max_mib="${MAX_MIB:-55}"
if [ -n "${PYTHON:-}" ]; then python="$PYTHON"
elif [ -x .venv/bin/python ]; then python=.venv/bin/python
else python=python3; fi
mkdir -p "$dest"

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

norm() {  # a distribution name as a wheel file spells it: lower case, runs of -_. become _
  echo "$1" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/_/g'
}

have() {  # is a wheel of this name and version in $dest?
  local n v f
  n=$(norm "$1"); v=$2
  for f in "$dest"/*.whl; do
    [ -e "$f" ] || continue
    case "$(basename "$f" | tr '[:upper:]' '[:lower:]')" in
      "$n-$v-"*) return 0 ;;
    esac
  done
  return 1
}

keep=()
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}; version=${spec##*==}
  keep+=("$(norm "$name")-$version-")
  if have "$name" "$version"; then
    continue
  fi
  sdist=0
  for s in "${SDIST_ONLY[@]}"; do [ "$s" = "$name" ] && sdist=1; done
  if [ $sdist = 1 ]; then
    echo "device_wheels: building $spec (pure Python, no published wheel)"
    "$python" -m pip wheel -q --no-deps --no-binary "$name" -w "$dest" "$spec"
  else
    echo "device_wheels: downloading $spec"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platforms[@]}" -d "$dest" "$spec"
  fi
  have "$name" "$version" || { echo "device_wheels: no wheel for $spec in $dest" >&2; exit 1; }
done

# one version of each package only (two stop the install there), and nothing that is not listed
for f in "$dest"/*; do
  [ -e "$f" ] || continue
  base=$(basename "$f" | tr '[:upper:]' '[:lower:]')
  ok=0
  for k in "${keep[@]}"; do
    case "$base" in "$k"*.whl) ok=1 ;; esac
  done
  if [ $ok = 0 ]; then
    echo "device_wheels: removing $f (not in the list)"
    rm -rf "$f"
  fi
done
for f in "$dest"/*.whl; do
  case "$(basename "$f")" in
    torch-*|triton-*|numpy-*) echo "device_wheels: $f must not travel" >&2; exit 1 ;;
  esac
  case "$(basename "$f")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*manylinux*x86_64*.whl|*-abi3-*x86_64*.whl) ;;
    *) echo "device_wheels: $f is not for cp312 x86_64" >&2; exit 1 ;;
  esac
done

# every Requires-Dist (for Python 3.12 on Linux) is listed here or on the machine already
"$python" -m benchmarks.device --check-wheels "$dest"

ls -l "$dest"
bytes=$(cat "$dest"/*.whl | wc -c)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "device_wheels: ${#WHEELS[@]} wheels, $bytes bytes (~$mib MiB) in $dest"
if [ "$bytes" -gt $(( max_mib * 1048576 )) ]; then
  echo "device_wheels: over $max_mib MiB: the working tree that travels is limited to 64 MiB" >&2
  exit 1
fi
