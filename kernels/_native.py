"""The linear scan as a compiled C loop on the CPU (``linear_scan(..., backend="native")``).

PyTorch has no CPU op for a recurrence with time-varying coefficients. Its fastest form built
from PyTorch ops (the chunked two-pass scan in ``linear_scan.py``) still issues ~50 ops at T=256
and moves every element about nine times; a plain loop over time that is vectorised over the
channels reads ``a`` and ``b`` once and writes ``h`` once. This module is that loop, in C99,
for float32, float64, complex64 and complex128 (interleaved real/imaginary pairs, as torch
stores them, with the product written out so that no libgcc complex helper is called).

Build: on first use the source below is compiled with the system C compiler (``$CC``, else
``cc``; ``-O3``, no machine-specific flags) into a cache directory (``$KERNELS_CACHE_DIR``, else
``$XDG_CACHE_HOME/worldrl-kernels``, else ``~/.cache/worldrl-kernels``) under a name that hashes
the source, the compiler's version and the machine, then loaded with ctypes. The build writes to
a temporary file and renames it, so concurrent first uses are safe. ctypes releases the GIL for
the call, so a large scan is split over threads (batch rows x channel tiles, one part per torch
intra-op thread).

When there is no compiler, the build fails, or ``KERNELS_NATIVE=0`` is set, ``available()`` is
False, ``unavailable_reason()`` says why, and ``backend="auto"`` uses the chunked PyTorch scan.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "unavailable_reason", "scan", "ENV_NATIVE", "PARALLEL_MIN_NUMEL"]

ENV_NATIVE = "KERNELS_NATIVE"

#: Scans with at least this many elements are split over threads (below it, handing work to a
#: thread costs more than it saves; see results/kernels.json).
PARALLEL_MIN_NUMEL = 1 << 20

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* h_t = a_t * h_{t-1} + b_t over t (or from T-1 down to 0 when reverse), for nb batch rows and
   nd channels. Strides are in elements (complex: in complex elements); the channel stride is 1
   for a, b, h0 and out. Channels go in tiles of TILE so the carried state stays in L1. */
#define TILE 512

#define REAL_SCAN(NAME, T_)                                                                  \
void NAME(const T_* a, const T_* b, const T_* h0, T_* out, int64_t nb, int64_t nt,          \
          int64_t nd, int64_t sab, int64_t sat, int64_t sbb, int64_t sbt, int64_t shb,       \
          int64_t sob, int64_t sot, int reverse, int conj_a) {                               \
  T_ h[TILE];                                                                                \
  (void)conj_a;                                                                              \
  for (int64_t i = 0; i < nb; ++i) {                                                         \
    for (int64_t d0 = 0; d0 < nd; d0 += TILE) {                                              \
      const int64_t n = nd - d0 < TILE ? nd - d0 : TILE;                                     \
      if (h0) { for (int64_t d = 0; d < n; ++d) h[d] = h0[i * shb + d0 + d]; }               \
      else memset(h, 0, sizeof(T_) * (size_t)n);                                             \
      for (int64_t s = 0; s < nt; ++s) {                                                     \
        const int64_t t = reverse ? nt - 1 - s : s;                                          \
        const T_* restrict ap = a + i * sab + t * sat + d0;                                   \
        const T_* restrict bp = b + i * sbb + t * sbt + d0;                                   \
        T_* restrict op = out + i * sob + t * sot + d0;                                       \
        for (int64_t d = 0; d < n; ++d) {                                                    \
          const T_ v = ap[d] * h[d] + bp[d];                                                 \
          h[d] = v;                                                                          \
          op[d] = v;                                                                         \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }                                                                                          \
}

/* complex: every pointer is to interleaved (re, im) scalars; strides count complex elements */
#define COMPLEX_SCAN(NAME, T_)                                                               \
void NAME(const T_* a, const T_* b, const T_* h0, T_* out, int64_t nb, int64_t nt,          \
          int64_t nd, int64_t sab, int64_t sat, int64_t sbb, int64_t sbt, int64_t shb,       \
          int64_t sob, int64_t sot, int reverse, int conj_a) {                               \
  T_ hr[TILE], hi[TILE];                                                                     \
  const T_ sgn = conj_a ? (T_)-1 : (T_)1;                                                    \
  for (int64_t i = 0; i < nb; ++i) {                                                         \
    for (int64_t d0 = 0; d0 < nd; d0 += TILE) {                                              \
      const int64_t n = nd - d0 < TILE ? nd - d0 : TILE;                                     \
      if (h0) {                                                                              \
        for (int64_t d = 0; d < n; ++d) {                                                    \
          hr[d] = h0[2 * (i * shb + d0 + d)];                                                \
          hi[d] = h0[2 * (i * shb + d0 + d) + 1];                                            \
        }                                                                                    \
      } else {                                                                               \
        memset(hr, 0, sizeof(T_) * (size_t)n);                                               \
        memset(hi, 0, sizeof(T_) * (size_t)n);                                               \
      }                                                                                      \
      for (int64_t s = 0; s < nt; ++s) {                                                     \
        const int64_t t = reverse ? nt - 1 - s : s;                                          \
        const T_* restrict ap = a + 2 * (i * sab + t * sat + d0);                             \
        const T_* restrict bp = b + 2 * (i * sbb + t * sbt + d0);                             \
        T_* restrict op = out + 2 * (i * sob + t * sot + d0);                                 \
        for (int64_t d = 0; d < n; ++d) {                                                    \
          const T_ ar = ap[2 * d], ai = sgn * ap[2 * d + 1];                                 \
          const T_ vr = ar * hr[d] - ai * hi[d] + bp[2 * d];                                 \
          const T_ vi = ar * hi[d] + ai * hr[d] + bp[2 * d + 1];                             \
          hr[d] = vr;                                                                        \
          hi[d] = vi;                                                                        \
          op[2 * d] = vr;                                                                    \
          op[2 * d + 1] = vi;                                                                \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }                                                                                          \
}

REAL_SCAN(scan_f32, float)
REAL_SCAN(scan_f64, double)
COMPLEX_SCAN(scan_c64, float)
COMPLEX_SCAN(scan_c128, double)
"""

_FUNCS = {
    torch.float32: "scan_f32",
    torch.float64: "scan_f64",
    torch.complex64: "scan_c64",
    torch.complex128: "scan_c128",
}

_lock = threading.Lock()
_state: dict = {}  # "lib" -> {dtype: ctypes function} | "reason" -> str
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None


def _cache_dir() -> Path:
    if os.environ.get("KERNELS_CACHE_DIR"):
        return Path(os.environ["KERNELS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "worldrl-kernels"


def _build() -> dict:
    """Compile (or find in the cache) and load the library; raise OSError with the reason."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler: {cc!r} is not on PATH (set $CC)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as exc:
        raise OSError(f"{cc} --version failed: {exc}") from exc
    flags = ["-O3", "-std=c99", "-shared", "-fPIC"]
    key = hashlib.sha256("\n".join([_SOURCE, cc, *version, *flags, platform.machine(),
                                    platform.system()]).encode()).hexdigest()[:16]
    lib_path = _cache_dir() / f"linear_scan_{key}.so"
    if lib_path.exists():
        try:
            return _bind(ctypes.CDLL(str(lib_path)))
        except OSError:  # a damaged cache entry (e.g. a copied or truncated file): build it again
            pass
    _compile(cc, flags, lib_path)
    return _bind(ctypes.CDLL(str(lib_path)))


def _compile(cc: str, flags: list[str], lib_path: Path) -> None:
    """Build the library into ``lib_path`` through a temporary file and an atomic rename."""
    cache = lib_path.parent
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / "linear_scan.c"
        src.write_text(_SOURCE)
        built = Path(tmp) / "linear_scan.so"
        try:
            proc = subprocess.run([cc, *flags, "-o", str(built), str(src)],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(f"{cc} failed to run: {exc}") from exc
        if proc.returncode != 0:
            raise OSError(f"{cc} could not build the scan: {proc.stderr.strip()[-500:]}")
        os.replace(built, lib_path)  # atomic: a concurrent build just replaces the same file


def _bind(lib: ctypes.CDLL) -> dict:
    funcs = {}
    for dtype, name in _FUNCS.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 10 + [ctypes.c_int] * 2
        fn.restype = None
        funcs[dtype] = fn
    return funcs


def _load() -> dict | None:
    if "lib" in _state or "reason" in _state:
        return _state.get("lib")
    with _lock:
        if "lib" not in _state and "reason" not in _state:
            if os.environ.get(ENV_NATIVE, "1").strip() == "0":
                _state["reason"] = f"${ENV_NATIVE}=0"
            else:
                try:
                    _state["lib"] = _build()
                except OSError as exc:
                    _state["reason"] = str(exc)
    return _state.get("lib")


def available() -> bool:
    """Whether the compiled scan can run (builds it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False (None when it is True)."""
    _load()
    return _state.get("reason")


def _executor(workers: int) -> ThreadPoolExecutor:
    """The worker pool, made again in a forked child (whose copy has no threads behind it)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kernels-native")
            _pool_pid = os.getpid()
    return _pool


def _num_threads() -> int:
    """Threads a large scan is split over: torch's intra-op thread count."""
    return torch.get_num_threads()


def _inner_ok(x: torch.Tensor) -> bool:
    return x.shape[-1] == 1 or x.stride(-1) == 1


def _prep(x: torch.Tensor) -> torch.Tensor:
    """A view the C loop can read: channel stride 1 and no lazy conj/neg bit."""
    x = x.resolve_neg()
    if x.is_conj():
        x = x.resolve_conj()
    return x if _inner_ok(x) else x.contiguous()


def scan(a, b, h0, reverse: bool, out) -> torch.Tensor:
    """Write the scan of ``a``, ``b`` ([B, T, D] CPU, any B/T strides) into ``out``.

    ``a``, ``b``, ``h0`` and ``out`` share a dtype in ``float32/float64/complex64/complex128``;
    ``out`` has channel stride 1 and must not overlap the inputs. A conj view of ``a`` is read
    as conjugated without a copy.
    """
    funcs = _load()
    if funcs is None:
        raise RuntimeError(f"linear_scan: backend='native' is unavailable: {unavailable_reason()}")
    if a.dtype not in funcs:
        raise ValueError(f"linear_scan: backend='native' takes {tuple(funcs)}, got {a.dtype}")
    # the C loop trusts these (a wrong dtype or shape would read or write past a buffer)
    bsz, seqlen, dim = a.shape
    for name, x, shape in (("b", b, a.shape), ("h0", h0, (bsz, dim)), ("out", out, a.shape)):
        if x is not None and (x.dtype != a.dtype or tuple(x.shape) != tuple(shape)
                              or x.device.type != "cpu"):
            raise ValueError(f"linear_scan native: {name} must be a CPU {a.dtype} tensor of shape "
                             f"{tuple(shape)}, got {x.dtype} {tuple(x.shape)} on {x.device}")
    if a.device.type != "cpu":
        raise ValueError(f"linear_scan native: a must be on the CPU, got {a.device}")
    if not _inner_ok(out):
        raise ValueError("linear_scan: backend='native' needs an output with channel stride 1")
    conj_a = a.is_complex() and a.is_conj()
    if conj_a:
        a = a.conj()  # the data as stored; the kernel conjugates while reading
    a, b = _prep(a), _prep(b)
    h0 = None if h0 is None else _prep(h0)
    fn = funcs[a.dtype]
    size = a.element_size()

    def run(b0: int, b1: int, d0: int, d1: int) -> None:
        def ptr(x, i_stride):
            return x.data_ptr() + (b0 * i_stride + d0) * size

        fn(ptr(a, a.stride(0)), ptr(b, b.stride(0)),
           None if h0 is None else ptr(h0, h0.stride(0)), ptr(out, out.stride(0)),
           b1 - b0, seqlen, d1 - d0,
           a.stride(0), a.stride(1), b.stride(0), b.stride(1),
           0 if h0 is None else h0.stride(0), out.stride(0), out.stride(1),
           int(bool(reverse)), int(conj_a))

    nthreads = _num_threads()
    if nthreads <= 1 or a.numel() < PARALLEL_MIN_NUMEL:
        run(0, bsz, 0, dim)
        return out
    # parts: whole batch rows when there are enough of them, else channel ranges
    if bsz >= nthreads:
        cuts = [bsz * k // nthreads for k in range(nthreads + 1)]
        parts = [(cuts[k], cuts[k + 1], 0, dim) for k in range(nthreads)]
    else:
        cuts = [dim * k // nthreads for k in range(nthreads + 1)]
        parts = [(0, bsz, cuts[k], cuts[k + 1]) for k in range(nthreads)]
    futures = [_executor(nthreads - 1).submit(run, *p) for p in parts[1:]]
    run(*parts[0])
    for f in futures:
        f.result()
    return out
