"""Shared plumbing for the kernels: the optional triton import, backend choice, launch helpers.

Triton is optional. Without it ``HAS_TRITON`` is False, ``jit`` returns the plain function (so
the kernel definitions still import) and asking for ``backend="triton"`` raises a clear error.

Kernels are always built as compiled ``triton.JITFunction`` objects, whatever ``TRITON_INTERPRET``
said at import time; ``kernel_for`` picks the interpreted copy per launch when the tensors live on
the CPU and ``TRITON_INTERPRET=1`` is set *at call time*. The import order of triton, torch and
this package therefore does not matter, and one process can run CUDA kernels compiled and CPU
kernels interpreted. Kernel bodies may call other ``@jit`` functions only as ``combine_fn`` of
``tl.associative_scan`` / ``tl.reduce`` (the interpreter calls them through ``.fn``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

from kernels import _native

try:  # triton is an optional dependency: the torch paths work without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in the standalone test with triton hidden
    triton = None
    tl = None
    HAS_TRITON = False

#: every backend name; "native" (the compiled CPU loop, kernels/_native.py) is linear_scan's only
BACKENDS = ("auto", "triton", "native", "torch", "ref")
ENV_BACKEND = "KERNELS_BACKEND"

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def jit(fn: Callable) -> Callable:
    """``triton.jit`` that always yields a compiled-mode kernel (see module docstring)."""
    if not HAS_TRITON:
        return fn
    return triton.JITFunction(fn)


def interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRETED: dict[int, object] = {}


@contextlib.contextmanager
def _jit_calls_interpreted():
    """Let interpreted code call compiled-mode ``@jit`` functions (ours and triton.language's).

    When triton was imported without ``TRITON_INTERPRET=1``, helpers such as ``tl.zeros`` or
    ``tl.sum`` are compiled-mode ``JITFunction`` objects whose ``__call__`` refuses to run outside
    a compiled kernel. For the duration of an interpreted launch, route those calls to the
    interpreter's copy of the same function (identity checks such as ``combine_fn is
    tl.standard._sum_combine`` keep working because the objects are unchanged).

    Each such call patches ``triton.language`` for the interpreter as
    ``InterpretedFunction.__call__`` does, and undoes it afterwards: that method (triton 3.9)
    never restores its patches, and a helper's module (``triton.language.core``, which the
    kernel's own launch does not patch) would otherwise stay patched for the interpreter, so that
    every later GPU kernel in the process failed to compile.
    """
    from triton.runtime.interpreter import InterpretedFunction, _patch_lang
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__
    cache: dict[int, InterpretedFunction] = {}

    def call(self, *args, **kwargs):
        fn = cache.get(id(self))
        if fn is None:
            fn = cache[id(self)] = InterpretedFunction(self.fn)
        scope = _patch_lang(self.fn)
        try:
            return fn.rewrite()(*args, **kwargs)
        finally:
            scope.restore()

    JITFunction.__call__ = call
    try:
        yield
    finally:
        JITFunction.__call__ = original


class _InterpretedKernel:
    """``kernel[grid](...)`` through the Triton interpreter (CPU tensors)."""

    def __init__(self, kernel):
        from triton.runtime.interpreter import InterpretedFunction

        self._fn = InterpretedFunction(kernel.fn)

    def __getitem__(self, grid):
        launch = self._fn[grid]

        def run(*args, **kwargs):
            with _jit_calls_interpreted():
                return launch(*args, **kwargs)

        return run


def kernel_for(kernel, device: torch.device):
    """The launchable form of ``kernel`` for tensors on ``device``.

    CUDA: the compiled kernel. CPU: the Triton interpreter's copy (only reached when
    ``resolve_backend`` allowed it, i.e. ``TRITON_INTERPRET=1``).
    """
    if device.type == "cuda":
        return kernel
    key = id(kernel)
    if key not in _INTERPRETED:
        _INTERPRETED[key] = _InterpretedKernel(kernel)
    return _INTERPRETED[key]


def resolve_backend(
    backend: str | None, device: torch.device, op: str, triton_unsupported: str | None = None,
    has_native: bool = False,
) -> str:
    """Map ``backend`` (or ``$KERNELS_BACKEND`` when ``backend`` is None/"auto") to a concrete one.

    auto: CUDA tensors -> "triton" (or "torch" when triton is missing or ``triton_unsupported``
    gives a reason the kernel can't take these inputs); CPU tensors -> "native" for an op that
    has it (``has_native``) when the compiled loop is available, else "torch". An explicit
    "triton" or "native" that can't run raises with the reason. ``$KERNELS_BACKEND=native`` means
    "torch" for the ops without a native form (their torch paths scan through linear_scan's).
    """
    allowed = BACKENDS if has_native else tuple(b for b in BACKENDS if b != "native")
    chosen = backend if backend is not None else "auto"
    if chosen not in allowed:
        raise ValueError(f"{op}: backend={chosen!r} is not one of {allowed}")
    if chosen == "auto":
        env = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{op}: ${ENV_BACKEND}={env!r} is not one of {BACKENDS}")
        chosen = "torch" if env == "native" and not has_native else env
    if chosen == "auto":
        if device.type == "cuda" and HAS_TRITON and triton_unsupported is None:
            return "triton"
        return fallback_backend(device) if has_native else "torch"
    if chosen == "native":
        if device.type != "cpu":
            raise ValueError(f"{op}: backend='native' takes CPU tensors, got device {device}")
        if not _native.available():
            raise RuntimeError(f"{op}: backend='native' is unavailable "
                               f"({_native.unavailable_reason()}); use backend='torch'")
    if chosen == "triton":
        if triton_unsupported is not None:
            raise ValueError(f"{op}: backend='triton': {triton_unsupported}")
        if not HAS_TRITON:
            raise RuntimeError(
                f"{op}: backend='triton' was requested but triton is not installed "
                "(pip install triton, or use backend='torch')"
            )
        if device.type == "cpu" and not interpret_enabled():
            raise RuntimeError(
                f"{op}: backend='triton' with CPU tensors runs only under the Triton interpreter; "
                "set TRITON_INTERPRET=1 (slow, for testing) or use backend='torch'"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(
                f"{op}: backend='triton' supports CUDA (or CPU under TRITON_INTERPRET=1) tensors, "
                f"got device {device}"
            )
    return chosen


def fallback_backend(device: torch.device) -> str:
    """The non-Triton scan for tensors on ``device``: "native" on the CPU when the compiled loop
    is available, else "torch" (also what the selective ops' PyTorch paths scan with)."""
    return "native" if device.type == "cpu" and _native.available() else "torch"


def needs_grad(*tensors) -> bool:
    """Whether autograd must record a call on these tensors (``None`` entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the dtype itself otherwise."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def tl_acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_tensor(name: str, x, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")


def check_shape(name: str, x: torch.Tensor, expected: tuple, layout: str, op: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} has shape {tuple(x.shape)}, expected {tuple(expected)} ({layout})"
        )


def check_same_device(op: str, ref: torch.Tensor, **tensors) -> None:
    for name, x in tensors.items():
        if x is not None and x.device != ref.device:
            raise ValueError(f"{op}: {name} is on {x.device}, expected {ref.device}")
