"""Fixtures for the kernel tests.

Triton on CPU: ``kernels`` builds every kernel in compiled mode and makes the interpreter's copy
at launch time when the tensors are on the CPU and ``TRITON_INTERPRET=1`` is set *then*, so the
``interpret`` fixture only has to set the variable for the test (import order of triton, torch
and kernels, and whatever other test files did first, does not matter). GPU tests use compiled
kernels in the same process.
"""

from __future__ import annotations

import pytest
import torch

import kernels


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels on CPU tensors through the Triton interpreter for this test."""
    if not kernels.HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("KERNELS_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _one_thread_and_no_backend_override(monkeypatch):
    monkeypatch.delenv("KERNELS_BACKEND", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

