"""linear_scan: every backend against the sequential reference, outputs and gradients."""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels
from kernels import linear_scan, linear_scan_ref

# the package exports the function under the submodule's name; fetch the module itself
ls_mod = importlib.import_module("kernels.linear_scan")
_scan_core = ls_mod._scan_core

# the CPU backends: the chunked PyTorch scan and the compiled C loop (test_native.py checks
# that the latter builds here, so these never skip it silently)
CPU_BACKENDS = ("torch", "native")

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.HAS_TRITON), reason="needs a CUDA GPU and triton")

# (atol, rtol) against linear_scan_ref, per dtype (half types compute in float32 inside)
TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.complex128: (1e-9, 1e-9),
    torch.float32: (2e-5, 2e-4),
    torch.complex64: (2e-5, 2e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


def close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def make(bsz, seqlen, dim, dtype, h0, reset, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    a = torch.rand(bsz, seqlen, dim, generator=g, dtype=real) * 0.6 + 0.4
    b = torch.randn(bsz, seqlen, dim, generator=g, dtype=real)
    if dtype.is_complex:
        phase = torch.rand(bsz, seqlen, dim, generator=g, dtype=real) * 6.28
        a = torch.polar(a, phase)
        b = torch.complex(b, torch.randn(bsz, seqlen, dim, generator=g, dtype=real))
    h = torch.randn(bsz, dim, generator=g, dtype=real) if h0 else None
    if h is not None and dtype.is_complex:
        h = torch.complex(h, torch.randn(bsz, dim, generator=g, dtype=real))
    r = (torch.rand(bsz, seqlen, generator=g) < 0.15) if reset else None
    if r is not None:
        r[0, 0] = True  # a reset at the first step must ignore h0

    def cast(x):
        return None if x is None else x.to(device=device, dtype=dtype)

    return cast(a), cast(b), cast(h), None if r is None else r.to(device)


def check_against_ref(a, b, h0, reset, reverse, backend, dtype, ref_dtype=None):
    """Outputs and gradients of a, b, h0 (through out and the last state) against the ref."""
    ref_dtype = ref_dtype or dtype
    leaves = [x for x in (a, b, h0) if x is not None]
    ins = [x.detach().clone().requires_grad_() for x in leaves]
    ins_ref = [x.detach().to(ref_dtype).clone().requires_grad_() for x in leaves]

    def split(xs):
        return xs[0], xs[1], (xs[2] if h0 is not None else None)

    g = torch.Generator().manual_seed(1)
    w = torch.randn(a.shape, generator=g).to(a.device, ref_dtype)
    w_last = torch.randn(a.shape[0], a.shape[2], generator=g).to(a.device, ref_dtype)

    def loss(out, last):
        return (out * w).real.sum() + (last * w_last).real.sum()

    out, last = linear_scan(*split(ins), reset=reset, reverse=reverse, return_last=True,
                            backend=backend)
    ref, ref_last = linear_scan_ref(*split(ins_ref), reset=reset, reverse=reverse,
                                    return_last=True)
    assert out.dtype == dtype and out.shape == a.shape
    close(out, ref, dtype, "h")
    close(last, ref_last, dtype, "last state")
    grads = torch.autograd.grad(loss(out.to(ref_dtype), last.to(ref_dtype)), ins)
    grads_ref = torch.autograd.grad(loss(ref, ref_last), ins_ref)
    for name, gr, gr_ref in zip(("a", "b", "h0"), grads, grads_ref):
        if dtype in (torch.float16, torch.bfloat16) and name == "a":
            close_scaled(gr, gr_ref, dtype, f"grad {name}")
        else:
            close(gr, gr_ref, dtype, f"grad {name}")


def close_scaled(actual, expected, dtype, what):
    """For half-precision grad a = dh_t * h_{t-1}: h is stored in the half type, so an element's
    error scales with the magnitudes along its sequence, not with |grad a| at that step (a small
    product of large factors carries their rounding). Norm-wise relative error within the
    dtype's rtol, and every element within atol + rtol * max |expected| over its own sequence
    (``[B, T, D]``: over T for each batch row and channel)."""
    atol, rtol = TOL[dtype]
    diff = actual.to(expected.dtype) - expected
    assert torch.isfinite(actual).all(), f"{what}: not finite"
    scale = expected.norm().item()
    if scale > 0:  # (all zero at T = 1 without h0: no previous state)
        rel = diff.norm().item() / scale
        assert rel <= rtol, f"{what}: relative error {rel:.2e} > {rtol:.0e}"
    bound = atol + rtol * expected.abs().amax(dim=1, keepdim=True)
    worst = (diff.abs() - bound).max().item()
    assert worst <= 0, f"{what}: an element {worst:.2e} beyond its sequence's bound"


# T: one step, odd, the plain loop's longest, the shortest chunked ones (with a ragged tail),
# chunks whose aggregates are chunked again, several super-blocks
@pytest.mark.parametrize("seqlen", [1, 7, 32, 33, 40, 101, 2100])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0,reset", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_paths_match_ref(seqlen, reverse, h0, reset, dtype, backend):
    a, b, h, r = make(2, seqlen, 3, dtype, h0, reset)
    check_against_ref(a, b, h, r, reverse, backend, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inputs_without_grad_skip_autograd(reverse, backend):
    """No input needs a gradient (or grad mode is off): the same values, and no graph."""
    a, b, h, r = make(2, 101, 3, torch.float64, True, True)
    ref = linear_scan_ref(a, b, h, reset=r, reverse=reverse)
    out = linear_scan(a, b, h, reset=r, reverse=reverse, backend=backend)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    assert out.grad_fn is None
    with torch.no_grad():
        out = linear_scan(a.requires_grad_(), b, h, reset=r, reverse=reverse, backend=backend)
    assert out.grad_fn is None and not out.requires_grad
    # only h0 needs a gradient: the autograd path still runs
    a.requires_grad_(False)
    h.requires_grad_()
    (gh,) = torch.autograd.grad(linear_scan(a, b, h, reverse=reverse, backend=backend).sum(), h)
    (gh_ref,) = torch.autograd.grad(linear_scan_ref(a, b, h, reverse=reverse).sum(), h)
    torch.testing.assert_close(gh, gh_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_paths_complex(dtype, reverse, backend):
    a, b, h, r = make(2, 45, 4, dtype, True, True)
    check_against_ref(a, b, h, r, reverse, backend, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_paths_half_precision(dtype, backend):
    a, b, h, r = make(2, 70, 5, dtype, True, True)
    check_against_ref(a, b, h, r, False, backend, dtype, ref_dtype=torch.float32)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(reverse, backend):
    a, b, h, r = make(2, 23, 3, torch.float64, True, True)
    a.requires_grad_()
    b.requires_grad_()
    h.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, h: linear_scan(a, b, h, reset=r, reverse=reverse, backend=backend),
        (a, b, h))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_complex128(backend):
    a, b, h, _ = make(1, 18, 2, torch.complex128, True, False)
    ins = tuple(x.requires_grad_() for x in (a, b, h))
    assert torch.autograd.gradcheck(lambda a, b, h: linear_scan(a, b, h, backend=backend), ins)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_reset_semantics(backend):
    """A reset drops the carried state: h_t = b_t there; at t=0 it ignores h0."""
    a, b, h, _ = make(1, 6, 2, torch.float64, True, False)
    reset = torch.tensor([[True, False, False, True, False, False]])
    out = linear_scan(a, b, h, reset=reset, backend=backend)
    torch.testing.assert_close(out[:, 0], b[:, 0])
    torch.testing.assert_close(out[:, 3], b[:, 3])
    torch.testing.assert_close(out[:, 4], a[:, 4] * b[:, 3] + b[:, 4])
    rev = linear_scan(a, b, h, reset=reset, reverse=True, backend=backend)
    torch.testing.assert_close(rev[:, 5], a[:, 5] * h + b[:, 5])
    torch.testing.assert_close(rev[:, 3], b[:, 3])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_coefficients_are_exact(backend):
    """a = 0 must cut the recurrence exactly (no log-space products)."""
    a = torch.zeros(2, 300, 4)
    b = torch.randn(2, 300, 4)
    out = linear_scan(a, b, torch.full((2, 4), 1e30), backend=backend)
    assert torch.equal(out, b)
    a[:, 150:] = 1.0
    out = linear_scan(a, b, backend=backend)
    torch.testing.assert_close(out[:, -1], b[:, 149:].sum(1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noncontiguous_inputs(backend):
    base_a, base_b, h, r = make(3, 40, 6, torch.float64, True, True)
    a = base_a.transpose(0, 2).contiguous().transpose(0, 2)  # same values, permuted strides
    b = base_b[:, :, :].transpose(1, 2).contiguous().transpose(1, 2)
    assert not a.is_contiguous() and not b.is_contiguous()
    check_against_ref(a, b, h, r, False, backend, torch.float64)
    sliced_a = torch.cat([base_a, base_a], dim=2)[:, :, ::2]  # channel stride 2
    check_against_ref(sliced_a, b, h, r, True, backend, torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reset", [False, True])
def test_coefficients_shared_over_batch_and_time(backend, reset):
    """S4-style: one coefficient per channel, expanded (stride 0) over batch and time."""
    g = torch.Generator().manual_seed(5)
    lam = torch.polar(torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05,
                      torch.rand(6, generator=g, dtype=torch.float64) * 6.28).requires_grad_()
    b = torch.randn(3, 40, 6, generator=g, dtype=torch.complex128).requires_grad_()
    r = (torch.rand(3, 40, generator=g) < 0.2) if reset else None
    out = linear_scan(lam.expand(3, 40, 6), b, reset=r, backend=backend)
    ref = linear_scan_ref(lam.expand(3, 40, 6), b, reset=r)
    close(out, ref, torch.complex128, "h")
    w = torch.randn(3, 40, 6, generator=g, dtype=torch.complex128)
    grads = torch.autograd.grad((out * w).real.sum(), (lam, b))
    grads_ref = torch.autograd.grad((ref * w).real.sum(), (lam, b))
    for name, gr, gr_ref in zip(("lam", "b"), grads, grads_ref):
        close(gr, gr_ref, torch.complex128, f"grad {name}")


@pytest.mark.parametrize("seqlen", [1, 19])  # 19 spans three interpreter tiles of 8
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0,reset", [(False, False), (True, True)])
def test_triton_interpreter_matches_ref(interpret, seqlen, reverse, h0, reset):
    # D=5: not a multiple of the interpreter's 4-channel block
    a, b, h, r = make(2, seqlen, 5, torch.float32, h0, reset)
    check_against_ref(a, b, h, r, reverse, "triton", torch.float32)


def test_triton_interpreter_float64_noncontiguous(interpret):
    a, b, h, r = make(2, 11, 3, torch.float64, True, True)
    a = a.transpose(1, 2).contiguous().transpose(1, 2)
    check_against_ref(a, b, h, r, True, "triton", torch.float64)


def test_triton_complex_is_refused_clearly(interpret):
    a, b, _, _ = make(1, 4, 2, torch.complex64, False, False)
    with pytest.raises(ValueError, match="real dtypes"):
        linear_scan(a, b, backend="triton")
    # auto never routes complex to Triton
    torch.testing.assert_close(linear_scan(a, b), linear_scan_ref(a, b))


def test_chunked_core_segments():
    """The chunked core over lengths around every segment boundary, both directions."""
    g = torch.Generator().manual_seed(3)
    for seqlen in (15, 16, 17, 63, 64, 65, 1024, 1025, 1057):
        a = torch.rand(1, seqlen, 2, generator=g, dtype=torch.float64)
        b = torch.randn(1, seqlen, 2, generator=g, dtype=torch.float64)
        h0 = torch.randn(1, 2, generator=g, dtype=torch.float64)
        for reverse in (False, True):
            out = _scan_core(a, b, h0, reverse, torch.empty_like(a))
            ref = linear_scan_ref(a, b, h0, reverse=reverse)
            torch.testing.assert_close(out, ref, msg=f"T={seqlen} reverse={reverse}")


def test_backend_selection(monkeypatch):
    a, b, _, _ = make(1, 5, 2, torch.float32, False, False)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        linear_scan(a, b, backend="cuda")
    monkeypatch.setenv("KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="KERNELS_BACKEND='bogus'"):
        linear_scan(a, b)
    monkeypatch.setenv("KERNELS_BACKEND", "ref")
    calls = []
    real_ref = ls_mod.linear_scan_ref

    def spy(*args, **kw):
        calls.append(1)
        return real_ref(*args, **kw)

    monkeypatch.setattr(ls_mod, "linear_scan_ref", spy)
    linear_scan(a, b)
    assert calls, "KERNELS_BACKEND=ref did not route to the reference"
    linear_scan(a, b, backend="torch")  # an explicit backend wins over the variable
    assert len(calls) == 1
    monkeypatch.delenv("KERNELS_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if kernels.HAS_TRITON:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            linear_scan(a, b, backend="triton")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(a=torch.rand(2, 5)), r"a must be \[B, T, D\]"),
        (dict(b=torch.rand(2, 5, 4)), r"b has shape \(2, 5, 4\), expected \(2, 5, 3\)"),
        (dict(b=torch.rand(2, 5, 3, dtype=torch.float64)), "b has dtype torch.float64"),
        (dict(a=torch.ones(2, 5, 3, dtype=torch.int64), b=torch.ones(2, 5, 3, dtype=torch.int64)),
         "a has dtype torch.int64"),
        (dict(h0=torch.rand(2, 4)), r"h0 has shape \(2, 4\), expected \(2, 3\)"),
        (dict(reset=torch.zeros(2, 6, dtype=torch.bool)), r"reset has shape \(2, 6\)"),
        (dict(reset=torch.zeros(2, 5)), "reset has dtype torch.float32, expected torch.bool"),
        (dict(a=torch.rand(2, 0, 3), b=torch.rand(2, 0, 3)), "T .* must be >= 1"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(a=torch.rand(2, 5, 3), b=torch.rand(2, 5, 3), h0=None, reset=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_scan(**args)


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seqlen", [1, 129, 2100])
@pytest.mark.parametrize("dim", [7, 300])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("h0,reset", [(False, False), (True, True)])
def test_gpu_triton_matches_ref(seqlen, dim, reverse, dtype, h0, reset):
    a, b, h, r = make(2, seqlen, dim, dtype, h0, reset, device="cuda")
    check_against_ref(a, b, h, r, reverse, "triton", dtype,
                      ref_dtype=torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.gpu
@needs_gpu
def test_gpu_auto_dispatches_to_triton(monkeypatch):
    calls = []
    real = ls_mod._FWD["triton"]
    monkeypatch.setitem(ls_mod._FWD, "triton", lambda *a: calls.append(1) or real(*a))
    a, b, _, _ = make(2, 64, 8, torch.float32, False, False, device="cuda")
    out = linear_scan(a, b)
    assert calls and out.is_cuda
    torch.testing.assert_close(out, linear_scan(a, b, backend="torch"), atol=1e-5, rtol=1e-4)


def test_close_scaled_bounds_half_precision_gradients():
    zero = torch.zeros(2, 3, 4)
    close_scaled(zero.half(), zero, torch.float16, "all zero")  # T = 1 without h0
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 50, 40, generator=g) * 10
    close_scaled(ref.half(), ref, torch.float16, "rounded to half")
    off = ref.half().clone()
    off[0, 0, 0] += 1.0  # one element far beyond atol + rtol * max|ref| of its sequence
    with pytest.raises(AssertionError, match="beyond its sequence's bound"):
        close_scaled(off, ref, torch.float16, "one off")
    with pytest.raises(AssertionError, match="relative error"):
        close_scaled((ref * 1.02).half(), ref, torch.float16, "2% everywhere")
    bad = ref.half().clone()
    bad[1, 1, 1] = float("nan")
    with pytest.raises(AssertionError, match="not finite"):
        close_scaled(bad, ref, torch.float16, "nan")
    # a sequence of small values is held to its own scale, not to the largest elsewhere
    quiet = ref.clone()
    quiet[1, :, 7] *= 1e-3
    wrong = quiet.half().clone()
    wrong[1, :, 7] += 0.01  # tiny against max|ref| ~ 40, twice its own sequence's bound
    with pytest.raises(AssertionError, match="beyond its sequence's bound"):
        close_scaled(wrong, quiet, torch.float16, "one quiet channel off")
