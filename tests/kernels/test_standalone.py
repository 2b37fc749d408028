"""``kernels`` stands alone: it imports torch (and triton if present) only, and works on CPU
without triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("worldrl", "agents", "envs", "gymnasium", "torchrl", "tensordict", "hydra")


def run_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "KERNELS_BACKEND")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


def test_import_pulls_in_torch_and_triton_only():
    out = run_python(
        "import json, sys\n"
        "import kernels\n"
        "mods = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print(json.dumps(mods))\n"
    )
    top = set(json.loads(out))
    assert "torch" in top
    leaked = sorted(top & set(FORBIDDEN))
    assert not leaked, f"import kernels pulled in {leaked}"


def test_works_without_triton():
    """With triton unimportable, the CPU path runs and asking for Triton fails clearly."""
    out = run_python(
        "import sys\n"
        "sys.modules['triton'] = None  # makes 'import triton' raise ImportError\n"
        "import torch, kernels\n"
        "assert not kernels.HAS_TRITON\n"
        "a, b = torch.rand(2, 40, 3), torch.randn(2, 40, 3)\n"
        "torch.testing.assert_close(kernels.linear_scan(a, b), kernels.linear_scan_ref(a, b))\n"
        "u, dt = torch.randn(1, 2, 9), torch.rand(1, 2, 9)\n"
        "A, B, C = -torch.rand(2, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)\n"
        "torch.testing.assert_close(kernels.selective_scan(u, dt, A, B, C),\n"
        "                           kernels.selective_scan_ref(u, dt, A, B, C))\n"
        "try:\n"
        "    kernels.linear_scan(a, b, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=triton without triton did not raise')\n"
        "print('ok')\n"
    )
    assert out == "ok"


@pytest.mark.parametrize("backend", ["ref", "torch", "native"])
def test_env_var_selects_backend(backend):
    code = (
        "import os, torch\n"
        f"os.environ['KERNELS_BACKEND'] = '{backend}'\n"
        "import kernels, importlib\n"
        "m = importlib.import_module('kernels.linear_scan')\n"
        "seen = []\n"
        "orig_ref, orig_fn = m.linear_scan_ref, m.LinearScanFn.apply\n"
        "m.linear_scan_ref = lambda *a, **k: seen.append('ref') or orig_ref(*a, **k)\n"
        "m.LinearScanFn.apply = lambda *a: seen.append(a[-1]) or orig_fn(*a)\n"
        "x = torch.rand(1, 5, 2, requires_grad=True)\n"
        "kernels.linear_scan(x, torch.rand(1, 5, 2))\n"
        "print(seen[0])\n"
    )
    assert run_python(code) == backend
