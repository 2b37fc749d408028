"""selective_scan / selective_state_update: every backend against the sequential reference."""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels
from kernels import (
    selective_scan,
    selective_scan_fn,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)

ss_mod = importlib.import_module("kernels.selective_scan")

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.HAS_TRITON), reason="needs a CUDA GPU and triton")

# (atol, rtol) against selective_scan_ref (which computes in float32/float64), per dtype
TOL = {
    torch.float64: (1e-9, 1e-8),
    torch.float32: (1e-4, 1e-3),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def make(batch, dim, seqlen, dstate, groups, dtype, full=True, device="cpu", seed=0,
         signed_bias=True):
    """Inputs in mamba_ssm's layouts; A, D, delta_bias and the state in float32/float64.
    ``signed_bias=False``: ``delta_bias >= 0``, for long sequences without softplus, where a
    negative step makes ``exp(delta * A)`` grow until the reference itself overflows."""
    g = torch.Generator().manual_seed(seed)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dt)

    bshape = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    args = dict(
        u=rnd(batch, dim, seqlen),
        delta=(torch.rand(batch, dim, seqlen, generator=g, dtype=torch.float64) * 0.8)
        .to(device, dtype),
        A=-(torch.rand(dim, dstate, generator=g, dtype=torch.float64) + 0.2).to(device, wdt),
        B=rnd(*bshape),
        C=rnd(*bshape),
        D=rnd(dim, dt=wdt) if full else None,
        z=rnd(batch, dim, seqlen) if full else None,
        delta_bias=((torch.randn(dim, generator=g, dtype=torch.float64) if signed_bias else
                     torch.rand(dim, generator=g, dtype=torch.float64)) * 0.3).to(device, wdt)
        if full else None,
        initial_state=rnd(batch, dim, dstate, dt=wdt) if full else None,
    )
    return args


def check_against_ref(args, softplus, backend, dtype):
    """Outputs, last state and the gradients of every input (through both) against the ref."""
    present = [k for k in NAMES if args[k] is not None]
    ins = {k: args[k].detach().clone().requires_grad_() for k in present}
    ref_ins = {k: args[k].detach().clone().requires_grad_() for k in present}
    full = dict.fromkeys(NAMES)
    out, last = selective_scan(**{**full, **ins}, delta_softplus=softplus,
                               return_last_state=True, backend=backend)
    ref, ref_last = selective_scan_ref(**{**full, **ref_ins}, delta_softplus=softplus,
                                       return_last_state=True)
    assert out.shape == args["u"].shape and out.dtype == args["u"].dtype
    close(out, ref, dtype, "out")
    close(last, ref_last, dtype, "last state")
    g = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=g).to(out.device, ref.dtype)
    w_last = torch.randn(last.shape, generator=g).to(out.device, ref_last.dtype)
    grads = torch.autograd.grad((out.to(ref.dtype) * w).sum() + (last * w_last).sum(),
                                list(ins.values()))
    ref_grads = torch.autograd.grad((ref * w).sum() + (ref_last * w_last).sum(),
                                    list(ref_ins.values()))
    for name, gr, gr_ref in zip(present, grads, ref_grads):
        assert gr.shape == ins[name].shape, name
        close(gr, gr_ref, dtype, f"grad {name}")


# (batch, dim, L, N, G): L=1; odd L; several chunks with groups; dim not a multiple of the block
SHAPES = [(2, 3, 1, 4, None), (2, 3, 19, 4, None), (1, 4, 37, 3, 2), (2, 6, 70, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("full", [True, False], ids=["D-z-bias-init", "bare"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ckpt", [True, False], ids=["checkpointed", "saved"])
def test_torch_path_matches_ref(monkeypatch, shape, softplus, full, dtype, ckpt):
    # tiny time chunks so that L=37/70 run through several chunks, checkpointed or not
    monkeypatch.setattr(ss_mod, "_TORCH_CHUNK_ELEMS", 16 * shape[0] * shape[1] * shape[3])
    monkeypatch.setattr(ss_mod, "_CHECKPOINT_MIN_ELEMS", 0 if ckpt else 1 << 62)
    args = make(*shape, dtype, full=full)
    check_against_ref(args, softplus, "torch", dtype)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_grad_cpu_path_reuses_its_workspace_safely(monkeypatch, shape, dtype):
    """Without autograd the CPU path keeps its [batch, K, dim, N] temporaries in a per-thread
    workspace: results match the ref over several chunks, and nothing returned aliases it."""
    monkeypatch.setattr(ss_mod, "_TORCH_CHUNK_ELEMS", 16 * shape[0] * shape[1] * shape[3])
    monkeypatch.setattr(ss_mod, "_WS", type(ss_mod._WS)())  # a fresh, empty workspace
    first, second = make(*shape, dtype), make(*shape, dtype, seed=1)
    with torch.no_grad():
        out1, last1 = selective_scan(**first, delta_softplus=True, return_last_state=True,
                                     backend="torch")
        kept = out1.clone(), last1.clone()
        out2, last2 = selective_scan(**second, delta_softplus=True, return_last_state=True,
                                     backend="torch")
    assert ss_mod._WS.buf.numel() >= 3 * shape[0] * shape[1] * shape[3] * 16
    assert torch.equal(out1, kept[0]) and torch.equal(last1, kept[1])  # not overwritten
    for args, out, last in ((first, out1, last1), (second, out2, last2)):
        ref, ref_last = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
        close(out, ref, dtype, "out")
        close(last, ref_last, dtype, "last state")


def test_torch_path_half_precision_inputs():
    args = make(2, 4, 33, 4, None, torch.bfloat16)
    check_against_ref(args, True, "torch", torch.bfloat16)


def test_gradcheck_float64_torch_path(monkeypatch):
    monkeypatch.setattr(ss_mod, "_TORCH_CHUNK_ELEMS", 16)  # several checkpointed chunks
    monkeypatch.setattr(ss_mod, "_CHECKPOINT_MIN_ELEMS", 0)
    args = make(1, 2, 21, 3, None, torch.float64)
    names = [k for k in NAMES if args[k] is not None]
    ins = tuple(args[k].requires_grad_() for k in names)

    def fn(*xs):
        out, last = selective_scan(**dict(zip(names, xs)), delta_softplus=True,
                                   return_last_state=True, backend="torch")
        return out, last

    assert torch.autograd.gradcheck(fn, ins)


# interpreter shapes: tiles of 8 steps and 4 channels; (2, 6, 27, 5, 3) has 3 groups of 2
@pytest.mark.parametrize("shape", [(2, 3, 19, 4, None), (2, 6, 27, 5, 3)], ids=str)
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("full", [True, False], ids=["D-z-bias-init", "bare"])
def test_triton_interpreter_matches_ref(interpret, shape, softplus, full):
    args = make(*shape, torch.float64, full=full)
    check_against_ref(args, softplus, "triton", torch.float64)


def test_triton_interpreter_float32_L1_and_noncontiguous(interpret):
    args = make(2, 3, 1, 4, None, torch.float32)
    check_against_ref(args, True, "triton", torch.float32)
    args = make(2, 5, 12, 4, None, torch.float32)
    args["u"] = args["u"].transpose(1, 2).contiguous().transpose(1, 2)
    args["B"] = torch.cat([args["B"], args["B"]], dim=-1)[..., ::2]
    assert not args["u"].is_contiguous() and not args["B"].is_contiguous()
    check_against_ref(args, False, "triton", torch.float32)


def test_mamba_positional_signature_and_last_state():
    args = make(2, 4, 9, 3, None, torch.float32, full=True)
    pos = [args[k] for k in NAMES[:8]]
    out = selective_scan_fn(*pos, True)
    out2, last = selective_scan_fn(*pos, True, True)
    ref, ref_last = selective_scan_ref(*pos, True, True)
    close(out, ref, torch.float32, "out")
    close(out2, ref, torch.float32, "out")
    close(last, ref_last, torch.float32, "last")
    assert last.shape == (2, 4, 3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_state_update_matches_scan(request, backend):
    """Stepping selective_state_update reproduces selective_scan's output and last state."""
    if backend == "triton":
        request.getfixturevalue("interpret")
    args = make(2, 6, 7, 5, 3, torch.float32)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True,
                               backend="torch")
    state = args["initial_state"].clone()
    ys = []
    for t in range(args["u"].shape[-1]):
        ys.append(selective_state_update(
            state, args["u"][..., t], args["delta"][..., t], args["A"], args["B"][..., t],
            args["C"][..., t], args["D"], args["z"][..., t], args["delta_bias"], True,
            backend=backend))
    close(torch.stack(ys, -1), out, torch.float32, "stepped outputs")
    close(state, last, torch.float32, "stepped state")


def test_state_update_ref_semantics_and_grad():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 3, 4, generator=g)
    x, dt = torch.randn(2, 3, generator=g), torch.rand(2, 3, generator=g)
    A = -torch.rand(3, 4, generator=g)
    B, C = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    expected_state = torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B[:, None]
    s = state.clone()
    x.requires_grad_()
    out = selective_state_update(s, x, dt, A, B, C)  # grad wanted: auto -> torch path
    torch.testing.assert_close(s, expected_state.detach())
    torch.testing.assert_close(out, (expected_state * C[:, None]).sum(-1))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(selective_state_update_ref(state.clone(), x, dt, A, B, C), out)


def test_state_update_triton_refuses_grad(interpret):
    state = torch.zeros(1, 2, 4)
    x = torch.randn(1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="no backward"):
        selective_state_update(state, x, torch.rand(1, 2), -torch.rand(2, 4), torch.randn(1, 4),
                               torch.randn(1, 4), backend="triton")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(u=torch.randn(2, 4)), r"u must be \[batch, dim, L\]"),
        (dict(delta=torch.rand(2, 4, 8)), r"delta has shape \(2, 4, 8\), expected \(2, 4, 9\)"),
        (dict(A=torch.rand(5, 3)), r"A has shape \(5, 3\), expected \[dim, N\] = \[4, N\]"),
        (dict(B=torch.randn(2, 3, 8)), r"B has shape \(2, 3, 8\), expected \(2, 3, 9\)"),
        (dict(B=torch.randn(2, 3, 3, 9), C=torch.randn(2, 3, 3, 9)),
         "G=3 groups, expected a divisor of dim=4"),
        (dict(C=torch.randn(2, 2, 3, 9)), "B has 1 groups but C has 2"),
        (dict(D=torch.rand(5)), r"D has shape \(5,\), expected \(4,\)"),
        (dict(z=torch.rand(2, 4, 10)), r"z has shape"),
        (dict(initial_state=torch.rand(2, 4, 2)), r"initial_state has shape \(2, 4, 2\)"),
        (dict(A=torch.rand(4, 3, dtype=torch.complex64)), "complex selective scans"),
        (dict(u=torch.ones(2, 4, 9, dtype=torch.int32)), "u has dtype torch.int32"),
    ],
)
def test_bad_inputs(change, match):
    args = make(2, 4, 9, 3, None, torch.float32, full=False)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


def test_state_update_bad_inputs():
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\), expected \(2, 3\)"):
        selective_state_update(torch.zeros(2, 3, 4), torch.zeros(2, 5), torch.zeros(2, 3),
                               torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", [(2, 3, 1, 4, None), (2, 67, 300, 16, None),
                                   (3, 64, 1031, 16, 4), (1, 128, 2048, 64, None)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("softplus", [False, True])
def test_gpu_triton_matches_ref(shape, dtype, softplus):
    args = make(*shape, dtype, device="cuda", signed_bias=softplus)
    check_against_ref(args, softplus, "triton", dtype)


@pytest.mark.gpu
@needs_gpu
def test_gpu_state_update_matches_ref():
    args = make(4, 64, 1, 16, 2, torch.float32, device="cuda")
    st1 = args["initial_state"].clone()
    st2 = args["initial_state"].clone()
    step = dict(x=args["u"][..., 0], dt=args["delta"][..., 0], A=args["A"],
                B=args["B"][..., 0], C=args["C"][..., 0], D=args["D"], z=args["z"][..., 0],
                dt_bias=args["delta_bias"], dt_softplus=True)
    y1 = selective_state_update(st1, **step, backend="triton")
    y2 = selective_state_update_ref(st2, **step)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st1, st2, atol=1e-5, rtol=1e-4)
