"""The compiled CPU loop (kernels/_native.py): it builds, caches, splits over threads, and falls
back to the chunked PyTorch scan with the reason when it cannot build."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import kernels
from kernels import _native, linear_scan, linear_scan_ref, selective_scan, selective_scan_ref

ls_mod = importlib.import_module("kernels.linear_scan")


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A not-yet-loaded native module state with its own empty cache directory."""
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("KERNELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELS_NATIVE", raising=False)
    return tmp_path / "cache"


def test_builds_here():
    """This machine (and CI) has a C compiler: the native loop must build, so that the tests
    that run backend="native" never fall back silently."""
    if os.environ.get(_native.ENV_NATIVE) == "0":
        pytest.skip("KERNELS_NATIVE=0 turns the native loop off on purpose")
    assert _native.available(), _native.unavailable_reason()
    assert _native.unavailable_reason() is None


def test_auto_takes_native_on_cpu(monkeypatch):
    seen = []
    real = ls_mod._FWD["native"]
    monkeypatch.setitem(ls_mod._FWD, "native", lambda *a: seen.append(1) or real(*a))
    a, b = torch.rand(2, 50, 3), torch.randn(2, 50, 3)
    torch.testing.assert_close(linear_scan(a, b), linear_scan_ref(a, b))
    assert seen == [1]


def test_build_is_cached(fresh_native):
    assert _native.available()
    libs = sorted(fresh_native.glob("*.so"))
    assert len(libs) == 1, libs
    stamp = libs[0].stat().st_mtime_ns
    _native._state.clear()  # as a new process would: finds the library, does not rebuild
    assert _native.available()
    assert [p.stat().st_mtime_ns for p in fresh_native.glob("*.so")] == [stamp]
    assert [p for p in fresh_native.iterdir() if p.is_dir()] == []  # no temporary build dirs


def test_damaged_cache_entry_is_rebuilt(fresh_native, monkeypatch, tmp_path):
    assert _native.available()
    (built,) = fresh_native.glob("*.so")
    other = tmp_path / "other-cache"  # a cache whose entry of that name is damaged
    other.mkdir()
    (other / built.name).write_bytes(b"not a shared library")
    monkeypatch.setenv("KERNELS_CACHE_DIR", str(other))
    _native._state.clear()
    assert _native.available(), _native.unavailable_reason()
    rebuilt = (other / built.name).read_bytes()
    assert rebuilt != b"not a shared library" and rebuilt[:4] == built.read_bytes()[:4]
    a, b = torch.rand(2, 40, 3), torch.randn(2, 40, 3)
    torch.testing.assert_close(linear_scan(a, b, backend="native"), linear_scan_ref(a, b))


def test_missing_compiler_falls_back_with_the_reason(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc-for-worldrl")
    assert not _native.available()
    assert "no-such-cc-for-worldrl" in _native.unavailable_reason()
    a, b = torch.rand(2, 70, 3), torch.randn(2, 70, 3)
    torch.testing.assert_close(linear_scan(a, b), linear_scan_ref(a, b))  # auto -> torch
    with pytest.raises(RuntimeError, match="backend='native' is unavailable.*no-such-cc"):
        linear_scan(a, b, backend="native")
    assert not fresh_native.exists() or not list(fresh_native.glob("*.so"))


def test_failed_build_falls_back_with_the_reason(fresh_native, monkeypatch, tmp_path):
    bad_cc = tmp_path / "bad-cc"
    bad_cc.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    bad_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(bad_cc))
    assert not _native.available()
    assert "could not build" in _native.unavailable_reason()
    assert "internal error" in _native.unavailable_reason()


def test_env_var_turns_it_off(fresh_native, monkeypatch):
    monkeypatch.setenv("KERNELS_NATIVE", "0")
    assert not _native.available()
    assert _native.unavailable_reason() == "$KERNELS_NATIVE=0"


@pytest.mark.parametrize("bsz", [4, 2])  # 4 rows: split by rows; 2 rows < 3 threads: channels
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_thread_split_matches_ref(monkeypatch, bsz, reverse, dtype):
    monkeypatch.setattr(_native, "PARALLEL_MIN_NUMEL", 1)
    monkeypatch.setattr(_native, "_num_threads", lambda: 3)
    g = torch.Generator().manual_seed(bsz)
    a = (torch.rand(bsz, 30, 7, generator=g, dtype=torch.float64) * 0.9).to(dtype)
    b = torch.randn(bsz, 30, 7, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(bsz, 7, generator=g, dtype=torch.float64).to(dtype)
    out = _native.scan(a, b, h0, reverse, torch.empty_like(a))
    torch.testing.assert_close(out, linear_scan_ref(a, b, h0, reverse=reverse),
                               atol=1e-12, rtol=1e-12)


def test_conj_view_is_read_conjugated():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 20, 5, generator=g, dtype=torch.complex128) * 0.5
    b = torch.randn(2, 20, 5, generator=g, dtype=torch.complex128)
    out = _native.scan(a.conj(), b, None, False, torch.empty_like(a))
    ref = linear_scan_ref(a.conj().resolve_conj(), b)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_bad_calls_are_refused_clearly():
    a = torch.rand(1, 4, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="backend='native' takes .*got torch.float16"):
        _native.scan(a, a, None, False, torch.empty_like(a))
    a = torch.rand(1, 4, 3)
    with pytest.raises(ValueError, match=r"out must be a CPU torch.float32 tensor of shape"):
        _native.scan(a, a, None, False, torch.empty(1, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"h0 must be .* of shape \(1, 3\), got .* \(1, 4\)"):
        _native.scan(a, a, torch.zeros(1, 4), False, torch.empty_like(a))
    with pytest.raises(ValueError, match="channel stride 1"):
        _native.scan(a, a, None, False, torch.empty(1, 3, 4).transpose(1, 2))
    # the selective ops have no native form of their own
    u, dt = torch.randn(1, 2, 9), torch.rand(1, 2, 9)
    A, B, C = -torch.rand(2, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
    with pytest.raises(ValueError, match="backend='native' is not one of"):
        selective_scan(u, dt, A, B, C, backend="native")


def test_env_native_for_the_selective_ops_means_torch(monkeypatch):
    monkeypatch.setenv("KERNELS_BACKEND", "native")
    u, dt = torch.randn(1, 2, 9), torch.rand(1, 2, 9)
    A, B, C = -torch.rand(2, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
    torch.testing.assert_close(selective_scan(u, dt, A, B, C),
                               selective_scan_ref(u, dt, A, B, C))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_native_refuses_cuda_tensors():
    a = torch.rand(1, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="backend='native' takes CPU tensors"):
        linear_scan(a, a, backend="native")


def test_package_exports_the_backend_name():
    assert "native" in kernels.BACKENDS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_thread_split_works_in_a_forked_child(monkeypatch):
    """A child forked after the pool exists gets a pool of its own (the copy has no threads)."""
    monkeypatch.setattr(_native, "PARALLEL_MIN_NUMEL", 1)
    monkeypatch.setattr(_native, "_num_threads", lambda: 2)
    a, b = torch.rand(2, 30, 5, dtype=torch.float64), torch.randn(2, 30, 5, dtype=torch.float64)
    ref = linear_scan_ref(a, b)
    torch.testing.assert_close(_native.scan(a, b, None, False, torch.empty_like(a)), ref)
    assert _native._pool is not None
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if the split scan finishes and is right
        code = 1
        try:
            import signal

            signal.alarm(20)  # a hang (a pool without threads) becomes a failure, not a stuck test
            out = _native.scan(a, b, None, False, torch.empty_like(a))
            code = 0 if torch.allclose(out, ref) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
