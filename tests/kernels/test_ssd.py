"""ssd_chunk_scan / ssd_state_update: the chunked SSD form against the sequential reference."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import kernels
from kernels import (
    SSD_BACKENDS,
    mamba_chunk_scan_combined,
    ssd_chunk_scan,
    ssd_chunk_scan_ref,
    ssd_state_update,
    ssd_state_update_ref,
)

ssd_mod = importlib.import_module("kernels.ssd")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.HAS_TRITON), reason="needs a CUDA GPU and triton")

# (atol, rtol) against ssd_chunk_scan_ref (which computes in float32/float64), per dtype
TOL = {
    torch.float64: (1e-9, 1e-8),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (6e-2, 6e-2),
}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
INF = float("inf")

# option sets: the D layout, which optional inputs are given, the dt transform
OPTIONS = {
    "bare": dict(),
    "full": dict(D="hp", z=True, dt_bias=True, init=True, softplus=True),
    "Dh-limit": dict(D="h", dt_bias=True, init=True, softplus=True, dt_limit=(0.3, 0.9)),
    "z-rawdt": dict(z=True, raw_dt=True),  # dt < 0 in places: the default (0, inf) clamp bites
}


def close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def make(batch, seqlen, nheads, headdim, ngroups, dstate, dtype, opts=OPTIONS["full"],
         device="cpu", seed=0):
    """Inputs in mamba_ssm's layouts; A, D, dt_bias and the state in float32/float64."""
    g = torch.Generator().manual_seed(seed)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, dt=dtype, scale=1.0, shift=0.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift
        return x.to(device, dt)

    if opts.get("softplus"):
        dt = rnd(batch, seqlen, nheads, scale=0.7, shift=-1.0)
    elif opts.get("raw_dt"):
        dt = rnd(batch, seqlen, nheads, scale=0.5, shift=0.1)
    else:
        dt = (torch.rand(batch, seqlen, nheads, generator=g, dtype=torch.float64) * 0.8 + 0.05)
        dt = dt.to(device, dtype)
    d_shape = {"hp": (nheads, headdim), "h": (nheads,)}.get(opts.get("D"))
    return dict(
        x=rnd(batch, seqlen, nheads, headdim),
        dt=dt,
        A=-(torch.rand(nheads, generator=g, dtype=torch.float64) * 1.5 + 0.2).to(device, wdt),
        B=rnd(batch, seqlen, ngroups, dstate),
        C=rnd(batch, seqlen, ngroups, dstate),
        D=rnd(*d_shape, dt=wdt) if d_shape else None,
        z=rnd(batch, seqlen, nheads, headdim) if opts.get("z") else None,
        dt_bias=rnd(nheads, dt=wdt, scale=0.3) if opts.get("dt_bias") else None,
        initial_states=(rnd(batch, nheads, headdim, dstate, dt=wdt) if opts.get("init")
                        else None),
    )


def flags(opts):
    return dict(dt_softplus=bool(opts.get("softplus")),
                dt_limit=opts.get("dt_limit", (0.0, INF)))


def seq_ids(batch, seqlen, chunk, device="cpu"):
    """seq_idx rows with boundaries inside a chunk and on a chunk start. Even rows start at 0
    (the initial state reaches their first sequence), odd rows at 1 (it reaches nothing)."""
    rows = []
    for b in range(batch):
        if b % 2 == 0:
            cuts, base = (seqlen // 3 + 1, chunk, 2 * chunk + 1), 0
        else:
            cuts, base = (seqlen - 1, chunk + 2), 1
        t = torch.arange(seqlen)
        ids = base + sum((t >= c).long() for c in cuts if 0 < c < seqlen)
        rows.append(ids if torch.is_tensor(ids) else torch.full((seqlen,), base))
    return torch.stack(rows).to(device)


def check_against_ref(args, chunk, opts, dtype, seq_idx=None, backend="torch"):
    """Outputs, final state and the gradients of every input (through both) against the ref."""
    present = [k for k in NAMES if args[k] is not None]
    ins = {k: args[k].detach().clone().requires_grad_() for k in present}
    ref_ins = {k: args[k].detach().clone().requires_grad_() for k in present}
    full = dict.fromkeys(NAMES)
    out, final = ssd_chunk_scan(**{**full, **ins}, chunk_size=chunk, seq_idx=seq_idx,
                                return_final_states=True, backend=backend, **flags(opts))
    ref, ref_final = ssd_chunk_scan_ref(**{**full, **ref_ins}, seq_idx=seq_idx,
                                        return_final_states=True, **flags(opts))
    assert out.shape == args["x"].shape and out.dtype == args["x"].dtype
    assert final.shape == ref_final.shape and final.dtype == ref_final.dtype
    close(out, ref, dtype, "out")
    close(final, ref_final, dtype, "final state")
    g = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=g).to(out.device, ref.dtype)
    w_final = torch.randn(final.shape, generator=g).to(out.device, ref_final.dtype)
    grads = torch.autograd.grad((out.to(ref.dtype) * w).sum() + (final * w_final).sum(),
                                list(ins.values()))
    ref_grads = torch.autograd.grad((ref * w).sum() + (ref_final * w_final).sum(),
                                    list(ref_ins.values()))
    for name, gr, gr_ref in zip(present, grads, ref_grads):
        assert gr.shape == ins[name].shape and gr.dtype == ins[name].dtype, name
        assert torch.isfinite(gr).all(), name
        close(gr, gr_ref, dtype, f"grad {name}")


# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size): T=1; T not a multiple of the
# chunk over several chunks with 2 groups; T a multiple with 3 groups; T shorter than a chunk
SHAPES = [(2, 1, 2, 3, 1, 4, 4), (2, 19, 4, 3, 2, 5, 4), (1, 24, 6, 2, 3, 3, 8),
          (2, 13, 3, 4, 1, 2, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", list(OPTIONS), ids=str)
@pytest.mark.parametrize("resets", [False, True], ids=["no-seq_idx", "seq_idx"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_matches_ref(shape, opts, resets, dtype):
    *dims, chunk = shape
    args = make(*dims, dtype, OPTIONS[opts])
    seq_idx = seq_ids(dims[0], dims[1], chunk) if resets else None
    check_against_ref(args, chunk, OPTIONS[opts], dtype, seq_idx)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 64])
def test_chunk_size_does_not_change_values(chunk):
    args = make(2, 17, 4, 2, 2, 3, torch.float64)
    check_against_ref(args, chunk, OPTIONS["full"], torch.float64, seq_ids(2, 17, 5))


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_resets_equal_separate_sequences(backend):
    """With seq_idx, every sequence gives what it gives run on its own; the initial state
    reaches the first sequence only when its id is 0; the final state is the last sequence's."""
    batch, seqlen, chunk = 2, 22, 4
    args = make(batch, seqlen, 4, 3, 2, 3, torch.float64)
    seq_idx = seq_ids(batch, seqlen, chunk)
    assert seq_idx[0, 0] == 0 and seq_idx[1, 0] == 1
    out, final = ssd_chunk_scan(**args, chunk_size=chunk, seq_idx=seq_idx, dt_softplus=True,
                                return_final_states=True, backend=backend)
    for b in range(batch):
        ids = seq_idx[b].tolist()
        starts = [0] + [t for t in range(1, seqlen) if ids[t] != ids[t - 1]]
        assert len(starts) >= 3
        for i, (s, e) in enumerate(zip(starts, starts[1:] + [seqlen])):
            part = {k: (v[b:b + 1, s:e] if k in ("x", "dt", "B", "C", "z") else v)
                    for k, v in args.items()}
            keep_init = i == 0 and ids[0] == 0
            part["initial_states"] = args["initial_states"][b:b + 1] if keep_init else None
            ref, ref_final = ssd_chunk_scan_ref(**part, dt_softplus=True,
                                                return_final_states=True)
            close(out[b:b + 1, s:e], ref, torch.float64, f"row {b} sequence {i} [{s}, {e})")
        close(final[b:b + 1], ref_final, torch.float64, f"row {b} final state")


def test_initial_state_reaches_only_sequence_zero():
    """Changing initial_states changes the outputs before the first boundary of a row that starts
    with id 0 and nothing else; its gradient is zero for a row that starts elsewhere."""
    args = make(2, 12, 2, 2, 1, 3, torch.float32)
    seq_idx = torch.tensor([[0] * 5 + [1] * 7, [2] * 12])
    out1 = ssd_chunk_scan(**args, chunk_size=4, seq_idx=seq_idx, dt_softplus=True)
    args2 = {**args, "initial_states": args["initial_states"] + 1.0}
    out2 = ssd_chunk_scan(**args2, chunk_size=4, seq_idx=seq_idx, dt_softplus=True)
    changed = (out1 - out2).abs().amax(dim=(2, 3)) > 1e-6
    expected = torch.zeros(2, 12, dtype=torch.bool)
    expected[0, :5] = True
    assert torch.equal(changed, expected)
    init = args["initial_states"].clone().requires_grad_()
    ssd_chunk_scan(**{**args, "initial_states": init}, chunk_size=4, seq_idx=seq_idx,
                   dt_softplus=True).square().sum().backward()
    assert init.grad[0].abs().sum() > 0 and torch.equal(init.grad[1], torch.zeros_like(init[1]))


def test_return_final_states_and_result_types():
    args = make(2, 10, 2, 3, 1, 4, torch.float32)
    out = ssd_chunk_scan(**args, chunk_size=4)
    assert torch.is_tensor(out) and out.shape == (2, 10, 2, 3)
    out2, final = ssd_chunk_scan(**args, chunk_size=4, return_final_states=True)
    assert torch.equal(out, out2)
    assert final.shape == (2, 2, 3, 4) and final.dtype == torch.float32
    # the final state is the state the next segment starts from: scanning [0, 6) then [6, 10)
    # from it gives the same outputs
    head = {k: (v[:, :6] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    tail = {k: (v[:, 6:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    out_a, mid = ssd_chunk_scan(**head, chunk_size=4, return_final_states=True)
    out_b, end = ssd_chunk_scan(**{**tail, "initial_states": mid}, chunk_size=4,
                                return_final_states=True)
    close(torch.cat([out_a, out_b], dim=1), out, torch.float32, "split scan")
    close(end, final, torch.float32, "split final state")


def test_gradcheck_float64_with_resets():
    args = make(2, 7, 2, 2, 2, 2, torch.float64)
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 1, 2], [1, 1, 1, 2, 2, 2, 2]])  # cuts mid and at 3
    names = [k for k in NAMES if args[k] is not None]
    assert len(names) == len(NAMES)
    ins = tuple(args[k].requires_grad_() for k in names)

    def fn(*xs):
        return ssd_chunk_scan(**dict(zip(names, xs)), chunk_size=3, seq_idx=seq_idx,
                              dt_softplus=True, return_final_states=True, backend="torch")

    assert torch.autograd.gradcheck(fn, ins)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("d_layout", ["hp", "h"])
def test_state_update_stepped_equals_scan(request, d_layout, backend):
    """Stepping ssd_state_update (zeroing the state at each boundary) reproduces the scan's
    outputs and final state, and updates the state tensor in place. The Triton step runs
    interpreted, 2 headdim rows per program (headdim 3: a full and a partial block)."""
    if backend == "triton":
        request.getfixturevalue("interpret")
    opts = {**OPTIONS["full"], "D": d_layout, "dt_limit": (0.2, 1.0)}
    args = make(2, 9, 4, 3, 2, 5, torch.float32, opts)
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    out, final = ssd_chunk_scan(**args, chunk_size=4, seq_idx=seq_idx, return_final_states=True,
                                **flags(opts))
    state = args["initial_states"].clone()
    ptr = state.data_ptr()
    prev = torch.zeros(2, dtype=torch.long)
    ys = []
    for t in range(9):
        boundary = seq_idx[:, t] != prev
        state[boundary] = 0.0
        prev = seq_idx[:, t]
        before = state.clone()
        y = ssd_state_update(state, args["x"][:, t], args["dt"][:, t], args["A"],
                             args["B"][:, t], args["C"][:, t], args["D"], args["z"][:, t],
                             args["dt_bias"], **flags(opts), backend=backend)
        assert state.data_ptr() == ptr and not torch.equal(state, before)
        assert y.shape == (2, 4, 3) and y.dtype == torch.float32
        ys.append(y)
    close(torch.stack(ys, dim=1), out, torch.float32, "stepped outputs")
    close(state, final, torch.float32, "stepped state")


def test_state_update_ref_formula_and_grad():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 2, 3, 4, generator=g)
    x = torch.randn(2, 2, 3, generator=g, requires_grad=True)
    dt, A = torch.rand(2, 2, generator=g), -torch.rand(2, generator=g)
    B, C = torch.randn(2, 1, 4, generator=g), torch.randn(2, 1, 4, generator=g)
    expected = (torch.exp(dt * A)[..., None, None] * state
                + (dt[..., None] * x)[..., None] * B[:, :, None, :])
    s = state.clone()
    y = ssd_state_update(s, x, dt, A, B, C, backend="torch")
    torch.testing.assert_close(s, expected.detach())
    torch.testing.assert_close(y, (expected * C[:, :, None, :]).sum(-1))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(ssd_state_update_ref(state.clone(), x, dt, A, B, C), y)


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_dt_transform_skip_and_gate_semantics(backend):
    """dt' = clamp(softplus(dt + dt_bias), *dt_limit) (the default limit maps dt < 0 to 0), and
    out = (y + D * x) * silu(z), checked against the same scan fed the transformed inputs."""
    args = make(2, 10, 4, 3, 2, 3, torch.float64, OPTIONS["full"])
    x, dt, bias, D, z = args["x"], args["dt"], args["dt_bias"], args["D"], args["z"]
    core = dict(x=x, A=args["A"], B=args["B"], C=args["C"],
                initial_states=args["initial_states"], chunk_size=4, backend=backend)
    dt_sp = torch.nn.functional.softplus(dt + bias)
    lo, hi = 0.25, 0.6
    assert ((dt_sp < lo) | (dt_sp > hi)).any() and ((dt_sp > lo) & (dt_sp < hi)).any()
    plain = ssd_chunk_scan(**core, dt=dt_sp.clamp(lo, hi))
    out = ssd_chunk_scan(**core, dt=dt, dt_bias=bias, dt_softplus=True, dt_limit=(lo, hi))
    close(out, plain, torch.float64, "softplus(dt + dt_bias) then dt_limit")
    raw = dt - 0.6
    assert (raw < 0).any()
    close(ssd_chunk_scan(**core, dt=raw), ssd_chunk_scan(**core, dt=raw.clamp(min=0.0)),
          torch.float64, "default dt_limit clamps negative dt to 0")
    y = ssd_chunk_scan(**core, dt=dt_sp)
    close(ssd_chunk_scan(**core, dt=dt_sp, D=D), y + D * x, torch.float64, "D [nheads, headdim]")
    close(ssd_chunk_scan(**core, dt=dt_sp, D=D[:, 0]), y + D[:, :1] * x, torch.float64,
          "D [nheads]")
    close(ssd_chunk_scan(**core, dt=dt_sp, D=D, z=z),
          (y + D * x) * torch.nn.functional.silu(z), torch.float64, "D, then the gate")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_inputs_as_split_from_one_projection(request, backend):
    """Mamba-2 slices x, B, C (and z, dt) out of one in_proj output: non-contiguous views."""
    if backend == "triton":
        request.getfixturevalue("interpret")
    batch, seqlen, nheads, headdim, ngroups, dstate = 2, 13, 4, 3, 2, 2
    g = torch.Generator().manual_seed(3)
    widths = (nheads * headdim, nheads * headdim, ngroups * dstate, ngroups * dstate, nheads)
    proj = torch.randn(batch, seqlen, sum(widths), generator=g, dtype=torch.float64)
    z, x, B, C, dt = proj.split(widths, dim=-1)
    args = make(batch, seqlen, nheads, headdim, ngroups, dstate, torch.float64)
    args.update(x=x.unflatten(-1, (nheads, headdim)), z=z.unflatten(-1, (nheads, headdim)),
                B=B.unflatten(-1, (ngroups, dstate)), C=C.unflatten(-1, (ngroups, dstate)), dt=dt)
    assert not any(args[k].is_contiguous() for k in ("x", "z", "B", "C", "dt"))
    for chunk in (4, 13):  # padded, and one chunk with no padding (no copy on the way)
        check_against_ref(args, chunk, OPTIONS["full"], torch.float64, seq_ids(2, 13, chunk),
                          backend=backend)


def test_bf16_inputs_compute_in_float32():
    args = make(2, 21, 4, 4, 2, 4, torch.bfloat16)
    assert args["x"].dtype == torch.bfloat16 and args["A"].dtype == torch.float32
    check_against_ref(args, 8, OPTIONS["full"], torch.bfloat16, seq_ids(2, 21, 8))
    out, final = ssd_chunk_scan(**args, chunk_size=8, dt_softplus=True, return_final_states=True)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    ref = ssd_chunk_scan_ref(**{k: (v.float() if v is not None else None)
                                for k, v in args.items()}, dt_softplus=True)
    close(out, ref, torch.bfloat16, "bf16 against the float32 ref of the same values")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("resets", [False, True], ids=["no-seq_idx", "seq_idx"])
def test_long_runs_of_large_dt_stay_finite_and_exact(request, resets, backend):
    """Runs of huge dt (decay exp(-1e3..1e4) per step) then tiny dt inside one chunk: a segment
    sum taken as a difference of cumulative sums loses the tiny decays in float32 (the sums reach
    ~1e5); ours must match the reference, with finite values and gradients. The Triton kernels
    (interpreted, tiles of 4 steps) form the sums across 8 tiles per chunk."""
    if backend == "triton":
        request.getfixturevalue("interpret")
    batch, seqlen, chunk = 2, 48, 32
    args = make(batch, seqlen, 3, 2, 1, 3, torch.float32, OPTIONS["full"])
    dt = torch.full((batch, seqlen, 3), -3.0)  # softplus -> ~0.05
    dt[:, 2:20] = 3000.0  # 18 steps of dt' = 3000 (A in [-1.7, -0.2])
    dt[:, 33:36] = 1e4
    args["dt"] = dt
    args["dt_bias"] = torch.zeros(3)
    seq_idx = seq_ids(batch, seqlen, chunk) if resets else None
    check_against_ref(args, chunk, OPTIONS["full"], torch.float32, seq_idx, backend=backend)


def test_mamba_name_and_positional_signature():
    assert mamba_chunk_scan_combined is ssd_chunk_scan
    args = make(2, 11, 4, 2, 2, 3, torch.float32)
    seq_idx = seq_ids(2, 11, 4)
    pos = [args[k] for k in ("x", "dt", "A", "B", "C")] + [4] + [
        args[k] for k in ("D", "z", "dt_bias", "initial_states")]
    out, final = mamba_chunk_scan_combined(*pos, seq_idx, True, (0.0, INF), True)
    ref, ref_final = ssd_chunk_scan_ref(*pos[:5], *pos[6:], seq_idx, True, (0.0, INF), True)
    close(out, ref, torch.float32, "out")
    close(final, ref_final, torch.float32, "final")


def test_backend_dispatch(monkeypatch):
    calls = []
    real = ssd_mod._ssd_torch
    monkeypatch.setattr(ssd_mod, "_ssd_torch", lambda *a: calls.append("torch") or real(*a))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make(1, 6, 2, 2, 1, 2, torch.float64)
    ref = ssd_chunk_scan_ref(**args)
    for backend, env, expected in (("auto", None, "torch"), ("torch", "ref", "torch"),
                                   ("ref", None, None), ("auto", "ref", None),
                                   ("auto", "native", "torch"), ("auto", "torch", "torch")):
        if env is None:
            monkeypatch.delenv("KERNELS_BACKEND", raising=False)
        else:
            monkeypatch.setenv("KERNELS_BACKEND", env)
        calls.clear()
        out = ssd_chunk_scan(**args, chunk_size=4, backend=backend)
        assert calls == ([expected] if expected else []), (backend, env)
        close(out, ref, torch.float64, f"backend={backend} env={env}")
    assert SSD_BACKENDS == ("auto", "triton", "torch", "ref")
    # a process-wide "triton" means Triton, which takes CPU tensors only under the interpreter
    monkeypatch.setenv("KERNELS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="ssd_chunk_scan: backend='triton'"):
        ssd_chunk_scan(**args, chunk_size=4)


@pytest.mark.parametrize("backend", ["native", "cuda"])
def test_unknown_backends_raise(backend):
    args = make(1, 5, 2, 2, 1, 2, torch.float32)
    match = (rf"ssd_chunk_scan: backend='{backend}' is not one of "
             r"\('auto', 'triton', 'torch', 'ref'\)")
    with pytest.raises(ValueError, match=match):
        ssd_chunk_scan(**args, chunk_size=4, backend=backend)
    state = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=match.replace("ssd_chunk_scan", "ssd_state_update")):
        ssd_state_update(state, args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
                         args["C"][:, 0], backend=backend)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make(1, 5, 2, 2, 1, 2, torch.float32)
    problem = ("runs only under the Triton interpreter" if kernels.HAS_TRITON
               else "triton is not installed")
    with pytest.raises(RuntimeError, match=f"ssd_chunk_scan: backend='triton'.*{problem}"):
        ssd_chunk_scan(**args, chunk_size=4, backend="triton")
    state = torch.zeros(1, 2, 2, 2)
    with pytest.raises(RuntimeError, match=f"ssd_state_update: backend='triton'.*{problem}"):
        ssd_state_update(state, args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
                         args["C"][:, 0], backend="triton")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=torch.randn(2, 9, 4)), r"x must be \[batch, seqlen, nheads, headdim\], got shape "
                                       r"\(2, 9, 4\)"),
        (dict(dt=torch.rand(2, 8, 4)), r"dt has shape \(2, 8, 4\), expected \(2, 9, 4\)"),
        (dict(A=torch.rand(4, 1)), r"A has shape \(4, 1\), expected \(4,\) \(\[nheads\]\)"),
        (dict(B=torch.randn(2, 9, 3)), r"B has shape \(2, 9, 3\), expected \[batch, seqlen, "),
        (dict(B=torch.randn(2, 9, 3, 3), C=torch.randn(2, 9, 3, 3)),
         "B has ngroups=3, expected a divisor of nheads=4"),
        (dict(C=torch.randn(2, 9, 2, 3)), r"C has shape \(2, 9, 2, 3\), expected \(2, 9, 1, 3\)"),
        (dict(D=torch.rand(4, 3)), r"D has shape \(4, 3\), expected \[nheads, headdim\] = "
                                   r"\(4, 2\) or \[nheads\] = \(4,\)"),
        (dict(z=torch.rand(2, 9, 4, 3)), r"z has shape \(2, 9, 4, 3\)"),
        (dict(dt_bias=torch.rand(3)), r"dt_bias has shape \(3,\), expected \(4,\)"),
        (dict(initial_states=torch.rand(2, 4, 2, 2)),
         r"initial_states has shape \(2, 4, 2, 2\), expected \(2, 4, 2, 3\)"),
        (dict(seq_idx=torch.zeros(2, 8, dtype=torch.long)), r"seq_idx has shape \(2, 8\)"),
        (dict(seq_idx=torch.zeros(2, 9)), "seq_idx has dtype torch.float32, expected an integer"),
        (dict(dt_limit=(1.0, 0.5)), r"dt_limit=\(1.0, 0.5\) has min > max"),
        (dict(dt_limit=0.5), "dt_limit must be a pair"),
        (dict(x=torch.randn(2, 9, 4, 2, dtype=torch.complex64)), "x has dtype torch.complex64"),
        (dict(x=torch.ones(2, 9, 4, 2, dtype=torch.int32)), "x has dtype torch.int32"),
    ],
)
@pytest.mark.parametrize("fn", [ssd_chunk_scan, ssd_chunk_scan_ref], ids=["scan", "ref"])
def test_bad_inputs(fn, change, match):
    args = make(2, 9, 4, 2, 1, 3, torch.float32, {"D": "h"})
    args.update(seq_idx=None, dt_limit=(0.0, INF))
    args.update(change)
    if fn is ssd_chunk_scan:
        args["chunk_size"] = 4
    op = "ssd_chunk_scan_ref" if fn is ssd_chunk_scan_ref else "ssd_chunk_scan"
    with pytest.raises(ValueError, match=f"{op}: {match}"):
        fn(**args)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, None])
def test_bad_chunk_size(chunk_size):
    args = make(1, 5, 2, 2, 1, 2, torch.float32)
    match = f"ssd_chunk_scan: chunk_size must be a positive int, got {chunk_size}"
    with pytest.raises(ValueError, match=match):
        ssd_chunk_scan(**args, chunk_size=chunk_size)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(state=torch.zeros(2, 4, 2)), r"state has shape \(2, 4, 2\), expected \(2, 4, 2, 3\)"),
        (dict(x=torch.zeros(2, 4)), r"x must be \[batch, nheads, headdim\]"),
        (dict(dt=torch.zeros(2, 4, 2)), r"dt has shape \(2, 4, 2\), expected \(2, 4\)"),
        (dict(B=torch.zeros(2, 3)), r"B has shape \(2, 3\), expected \[batch, ngroups, dstate\]"),
        (dict(D=torch.zeros(2)), r"D has shape \(2,\)"),
    ],
)
def test_state_update_bad_inputs(change, match):
    args = dict(state=torch.zeros(2, 4, 2, 3), x=torch.zeros(2, 4, 2), dt=torch.zeros(2, 4),
                A=-torch.ones(4), B=torch.zeros(2, 1, 3), C=torch.zeros(2, 1, 3))
    args.update(change)
    with pytest.raises(ValueError, match=f"ssd_state_update: {match}"):
        ssd_state_update(**args)


# ------------------------------------------------------------------- Triton (interpreted)

# interpreter shapes (tiles of 4 steps, 4 headdim rows and 4 dstate columns; see _ssd_blocks):
# T=1; 3 chunks of 8 (2 tiles each; the last chunk 3 steps) with 2 groups and dstate 5 (two
# pieces); chunks of 16 (4 tiles, then a short chunk of 7) with headdim 6 (a full and a partial
# headdim block); chunks of 5 (a tile of 4 and one of 1)
TRITON_SHAPES = [(2, 1, 2, 3, 1, 4, 4), (2, 19, 4, 3, 2, 5, 8), (1, 23, 2, 6, 1, 3, 16),
                 (2, 13, 3, 4, 1, 2, 5)]


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("opts", list(OPTIONS), ids=str)
@pytest.mark.parametrize("resets", [False, True], ids=["no-seq_idx", "seq_idx"])
def test_triton_interpreter_matches_ref(interpret, shape, opts, resets):
    """Values, final state and gradients (SsdChunkScanFn) against the sequential reference."""
    *dims, chunk = shape
    args = make(*dims, torch.float64, OPTIONS[opts])
    seq_idx = seq_ids(dims[0], dims[1], chunk) if resets else None
    check_against_ref(args, chunk, OPTIONS[opts], torch.float64, seq_idx, backend="triton")


@pytest.mark.parametrize("opts", ["full", "Dh-limit"])
def test_triton_interpreter_float32(interpret, opts):
    args = make(2, 19, 4, 3, 2, 5, torch.float32, OPTIONS[opts])
    check_against_ref(args, 8, OPTIONS[opts], torch.float32, seq_ids(2, 19, 8), backend="triton")


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_triton_chunk_sizes(interpret, chunk):
    """One step per chunk, an odd chunk size, one chunk longer than T."""
    args = make(2, 11, 2, 3, 2, 3, torch.float64)
    check_against_ref(args, chunk, OPTIONS["full"], torch.float64, seq_ids(2, 11, 4),
                      backend="triton")


def test_triton_resets_anywhere(interpret):
    """seq_idx changing at random places (at step 0, on chunk and tile starts, back to an earlier
    id: every change is a boundary) gives the reference's values and final state."""
    g = torch.Generator().manual_seed(5)
    args = make(3, 21, 2, 2, 1, 3, torch.float64)
    seq_idx = torch.randint(0, 3, (3, 21), generator=g)
    seq_idx[0, :9] = 0  # the initial state reaches 9 steps of row 0
    seq_idx[1, 0] = 2  # and nothing of row 1
    full = dict(chunk_size=8, seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
    out, final = ssd_chunk_scan(**args, **full, backend="triton")
    ref, ref_final = ssd_chunk_scan_ref(**args, seq_idx=seq_idx, dt_softplus=True,
                                        return_final_states=True)
    close(out, ref, torch.float64, "out")
    close(final, ref_final, torch.float64, "final state")


def test_triton_result_types_and_no_grad_path(interpret, monkeypatch):
    """Without anything to differentiate the kernels run without the autograd.Function; with
    return_final_states=False only ``out`` comes back; dtypes, shapes and a final state that
    owns its storage (not a view of the per-chunk states)."""
    applied = []
    real_apply = ssd_mod.SsdChunkScanFn.apply
    monkeypatch.setattr(ssd_mod.SsdChunkScanFn, "apply",
                        lambda *a: applied.append(1) or real_apply(*a))
    args = make(2, 10, 2, 3, 1, 4, torch.float32)
    out = ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True, backend="triton")
    assert torch.is_tensor(out) and out.shape == (2, 10, 2, 3) and out.dtype == torch.float32
    out2, final = ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True,
                                 return_final_states=True, backend="triton")
    assert torch.equal(out, out2) and final.shape == (2, 2, 3, 4)
    assert final.dtype == torch.float32 and not applied
    assert final.is_contiguous() and final.untyped_storage().nbytes() == final.numel() * 4
    ref = ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True, backend="torch")
    close(out, ref, torch.float32, "out")


def test_triton_forward_then_torch_recompute_in_backward(interpret, monkeypatch):
    """The forward runs the Triton kernels only; the backward recomputes _ssd_torch once, and
    the gradients are the torch path's (the same ops on the same cotangents)."""
    calls = []
    real_torch, real_fwd = ssd_mod._ssd_torch, ssd_mod._ssd_fwd_triton
    monkeypatch.setattr(ssd_mod, "_ssd_torch", lambda *a: calls.append("torch") or real_torch(*a))
    monkeypatch.setattr(ssd_mod, "_ssd_fwd_triton",
                        lambda *a: calls.append("triton") or real_fwd(*a))
    args = make(2, 13, 4, 3, 2, 3, torch.float64)
    seq_idx = seq_ids(2, 13, 4)
    present = [k for k in NAMES if args[k] is not None]
    results = {}
    for backend in ("triton", "torch"):
        ins = {k: args[k].detach().clone().requires_grad_() for k in present}
        calls.clear()
        out, final = ssd_chunk_scan(**ins, chunk_size=4, seq_idx=seq_idx, dt_softplus=True,
                                    return_final_states=True, backend=backend)
        assert calls == (["triton"] if backend == "triton" else ["torch"])
        loss = (out * torch.cos(out)).sum() + final.square().sum()
        results[backend] = (out, final, torch.autograd.grad(loss, list(ins.values())))
        assert calls == (["triton", "torch"] if backend == "triton" else ["torch"])
    close(results["triton"][0], results["torch"][0], torch.float64, "out")
    close(results["triton"][1], results["torch"][1], torch.float64, "final state")
    for name, g_tr, g_to in zip(present, results["triton"][2], results["torch"][2]):
        close(g_tr, g_to, torch.float64, f"grad {name}")


@pytest.mark.parametrize("used", ["out", "final"])
def test_triton_grads_with_one_output_and_some_inputs(interpret, used):
    """Gradients when only one of (out, final state) is used and only some inputs require grad
    (the rest stay None)."""
    args = make(2, 9, 2, 3, 1, 2, torch.float64)
    seq_idx = torch.tensor([[0] * 5 + [1] * 4, [1] * 9])
    grads = {}
    for backend in ("triton", "ref"):
        ins = dict(args)
        ins.update({k: args[k].detach().clone().requires_grad_() for k in ("x", "A", "C")})
        ins["dt"] = args["dt"].detach().clone().requires_grad_(False)
        kw = dict(seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
        if backend == "ref":
            out, final = ssd_chunk_scan_ref(**ins, **kw)
        else:
            out, final = ssd_chunk_scan(**ins, chunk_size=4, **kw, backend=backend)
        (out.sum() if used == "out" else final.sum()).backward()
        assert ins["dt"].grad is None and ins["B"].grad is None
        grads[backend] = [ins[k].grad for k in ("x", "A", "C")]
    for name, g_tr, g_ref in zip(("x", "A", "C"), *grads.values()):
        if used == "final" and name == "C":  # C only reads the state: no path to the final one
            assert g_tr is None and g_ref is None
        else:
            close(g_tr, g_ref, torch.float64, f"grad {name} ({used} used)")


@pytest.mark.parametrize("opts", list(OPTIONS), ids=str)
def test_triton_state_update_matches_ref_step(interpret, opts):
    """One Triton step against the reference step, in float64: new state (in place) and y."""
    o = OPTIONS[opts]
    args = make(3, 1, 4, 5, 2, 3, torch.float64, o)
    state = (args["initial_states"] if args["initial_states"] is not None
             else torch.randn(3, 4, 5, 3, dtype=torch.float64))
    step = dict(x=args["x"][:, 0], dt=args["dt"][:, 0], A=args["A"], B=args["B"][:, 0],
                C=args["C"][:, 0], D=args["D"], z=args["z"][:, 0] if args["z"] is not None
                else None, dt_bias=args["dt_bias"], **flags(o))
    s1, s2 = state.clone(), state.clone()
    y1 = ssd_state_update(s1, **step, backend="triton")
    y2 = ssd_state_update_ref(s2, **step)
    close(y1, y2, torch.float64, "y")
    close(s1, s2, torch.float64, "state")


def test_triton_state_update_refuses_grad(interpret):
    state = torch.zeros(1, 2, 2, 3)
    x = torch.randn(1, 2, 2, requires_grad=True)
    step = (x, torch.rand(1, 2), -torch.rand(2), torch.randn(1, 1, 3), torch.randn(1, 1, 3))
    with pytest.raises(ValueError, match="ssd_state_update: backend='triton': .*no backward"):
        ssd_state_update(state, *step, backend="triton")
    y = ssd_state_update(state, *step)  # auto: the differentiable PyTorch step
    y.sum().backward()
    assert x.grad is not None


# triton imported with TRITON_INTERPRET=1 in the environment interprets its own library too, and
# then cannot compile for a GPU in this process (see kernels/README.md)
INTERPRETED_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRETED_AT_IMPORT, reason="TRITON_INTERPRET=1 was set before triton "
                    "was imported: this process can't compile GPU kernels")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_triton_kernels_compile_for_sm90(tmp_path, monkeypatch, dtype):
    """No GPU is needed to compile: the three SSD kernels build down to a cubin for sm_90 with
    the launchers' tile sizes and options, every optional input on (float32, bfloat16) or off
    (float64). The interpreter checks none of what only the compiler does (types of values
    joined after branches, dot operand shapes and precisions, layouts). Interpreted launches
    first: they must leave triton.language as they found it (kernels/_triton_utils.py)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = make(1, 6, 2, 2, 1, 2, torch.float32)
    ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True, backend="triton")
    ssd_state_update(args["initial_states"].clone(), args["x"][:, 0], args["dt"][:, 0],
                     args["A"], args["B"][:, 0], args["C"][:, 0], z=args["z"][:, 0],
                     dt_softplus=True, backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    io = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}
    on = dtype != torch.float64
    block_t, block_p, block_n, num_warps = ssd_mod._ssd_blocks(256, 64, 128, torch.device("cuda"))
    dt_flags = dict(HAS_BIAS=on, SOFTPLUS=on, DT_MIN=0.0, DT_MAX=float("inf"),
                    ACC=tl_acc(cd))
    tiles = dict(ACC=tl_acc(cd), DOT="tf32x3" if cd == torch.float32 else "ieee",
                 BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n)
    kernels_consts = (
        (ssd_mod._ssd_chunk_state_kernel, {**dt_flags, **tiles, "HAS_SEQ": on}),
        (ssd_mod._ssd_chunk_scan_kernel, {**dt_flags, **tiles, "HAS_SEQ": on, "HAS_D": on,
                                          "HAS_Z": on, "HAS_INIT": on}),
        (ssd_mod._ssd_state_update_kernel, {**dt_flags, "HAS_D": on, "HAS_Z": on, **dict(zip(
            ("BLOCK_P", "BLOCK_N"), ssd_mod._step_blocks(64, 128, torch.device("cuda"))))}),
    )
    wide = {"A_ptr", "D_ptr", "bias_ptr", "init_ptr", "states_ptr", "decay_ptr", "state_ptr"}
    for fn, consts in kernels_consts:
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name == "ids_ptr":
                sig[name] = "*i32"
            elif name.endswith("_ptr"):
                sig[name] = f"*{io[cd] if name in wide else io[dtype]}"
            else:
                sig[name] = "i32"
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=num_warps, num_stages=1))
        assert compiled.asm["cubin"], fn.__name__


def tl_acc(dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_torch_path_matches_ref(dtype):
    args = make(2, 300, 8, 16, 2, 16, dtype, device="cuda")
    check_against_ref(args, 64, OPTIONS["full"], dtype, seq_ids(2, 300, 64, device="cuda"),
                      backend="torch")


# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size): small dims (blocks padded to
# 16); Mamba-2's usual chunk of 256 (4 tiles of 64) with dstate 128; T not a multiple of 64
GPU_SHAPES = [(2, 5, 2, 3, 1, 4, 4), (2, 300, 8, 16, 2, 16, 64), (1, 1031, 4, 64, 1, 128, 256),
              (2, 200, 4, 32, 2, 64, 64)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("resets", [False, True], ids=["no-seq_idx", "seq_idx"])
def test_gpu_triton_matches_ref(shape, dtype, resets):
    *dims, chunk = shape
    args = make(*dims, dtype, device="cuda")
    seq_idx = seq_ids(dims[0], dims[1], chunk, device="cuda") if resets else None
    check_against_ref(args, chunk, OPTIONS["full"], dtype, seq_idx, backend="triton")


@pytest.mark.gpu
@needs_gpu
def test_gpu_auto_runs_triton_and_state_update(monkeypatch):
    calls = []
    real = ssd_mod._ssd_fwd_triton
    monkeypatch.setattr(ssd_mod, "_ssd_fwd_triton", lambda *a: calls.append(1) or real(*a))
    args = make(2, 100, 4, 16, 2, 16, torch.float32, device="cuda")
    out = ssd_chunk_scan(**args, chunk_size=32, dt_softplus=True)
    assert calls == [1]
    close(out, ssd_chunk_scan_ref(**args, dt_softplus=True), torch.float32, "auto on CUDA")
    st1, st2 = args["initial_states"].clone(), args["initial_states"].clone()
    step = dict(x=args["x"][:, 0], dt=args["dt"][:, 0], A=args["A"], B=args["B"][:, 0],
                C=args["C"][:, 0], D=args["D"], z=args["z"][:, 0], dt_bias=args["dt_bias"],
                dt_softplus=True, dt_limit=(0.1, 2.0))
    close(ssd_state_update(st1, **step), ssd_state_update_ref(st2, **step), torch.float32, "y")
    close(st1, st2, torch.float32, "state")

