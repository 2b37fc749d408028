"""kernels._cpu_utils: huge-page advice for large CPU outputs changes mapping, never values."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import linear_scan, linear_scan_ref
from kernels._cpu_utils import HUGEPAGE_MIN_BYTES, empty_cpu

ls_mod = importlib.import_module("kernels.linear_scan")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
thp_usable = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP.exists() or "[never]" in THP.read_text(),
    reason="transparent huge pages are off on this system (THP mode 'never' or not Linux)")


def mapping_field(ptr: int, name: str) -> str:
    """Field ``name`` (e.g. ``VmFlags``) of the mapping that holds address ``ptr``
    (/proc/self/smaps); empty when there is none."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def test_empty_cpu_small_is_plain_and_shapes_match():
    x = empty_cpu((3, 5), torch.float64)
    assert x.shape == (3, 5) and x.dtype == torch.float64 and x.is_contiguous()
    big = empty_cpu((HUGEPAGE_MIN_BYTES // 4 + 1,), torch.float32)
    big.fill_(2.0)
    assert big.numel() == HUGEPAGE_MIN_BYTES // 4 + 1 and bool((big == 2.0).all())


@thp_usable
def test_large_outputs_are_advised_huge_pages():
    # Whether the kernel then finds free 2 MiB pages depends on the machine's memory (CI once
    # saw AnonHugePages 0), so the test checks the advice itself: smaps' VmFlags "hg" (VM_HUGEPAGE)
    x = empty_cpu((4, 1 << 20), torch.float32)  # 16 MiB
    x.fill_(1.0)
    # madvise splits the mapping at the 2 MiB boundaries: look at the one in the middle
    middle = x.data_ptr() + x.numel() * x.element_size() // 2
    assert "hg" in mapping_field(middle, "VmFlags").split(), "16 MiB output not advised"
    # (no check that a small output is not advised: malloc may hand it memory that an earlier
    # large, advised output left behind, which then still carries the flag)


def test_large_scan_matches_reference_and_switch_turns_advice_off():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 9000, 256, generator=g) * 0.5 + 0.5  # 9.2 MB output: huge-page path
    b = torch.randn(1, 9000, 256, generator=g)
    assert a.numel() * 4 >= HUGEPAGE_MIN_BYTES
    torch.testing.assert_close(linear_scan(a, b, backend="torch"), linear_scan_ref(a, b),
                               atol=2e-5, rtol=2e-4)
    code = ("import kernels._cpu_utils as c; import torch; "
            "x = c.empty_cpu((1 << 22,), torch.float32); print(c._get_madvise() is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "KERNELS_HUGEPAGES": "0"}, check=True)
    assert out.stdout.strip() == "True"
