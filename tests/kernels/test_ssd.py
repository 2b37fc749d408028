"""ssd_chunk_scan / ssd_state_update: the chunked SSD form against the sequential reference."""

from __future__ import annotations

import importlib

import pytest
import torch

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


@pytest.mark.parametrize("d_layout", ["hp", "h"])
def test_state_update_stepped_equals_scan(d_layout):
    """Stepping ssd_state_update (zeroing the state at each boundary) reproduces the scan's
    outputs and final state, and updates the state tensor in place."""
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
                             args["dt_bias"], **flags(opts))
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


def test_strided_inputs_as_split_from_one_projection():
    """Mamba-2 slices x, B, C (and z, dt) out of one in_proj output: non-contiguous views."""
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
        check_against_ref(args, chunk, OPTIONS["full"], torch.float64, seq_ids(2, 13, chunk))


def test_bf16_inputs_compute_in_float32():
    args = make(2, 21, 4, 4, 2, 4, torch.bfloat16)
    assert args["x"].dtype == torch.bfloat16 and args["A"].dtype == torch.float32
    check_against_ref(args, 8, OPTIONS["full"], torch.bfloat16, seq_ids(2, 21, 8))
    out, final = ssd_chunk_scan(**args, chunk_size=8, dt_softplus=True, return_final_states=True)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    ref = ssd_chunk_scan_ref(**{k: (v.float() if v is not None else None)
                                for k, v in args.items()}, dt_softplus=True)
    close(out, ref, torch.bfloat16, "bf16 against the float32 ref of the same values")


@pytest.mark.parametrize("resets", [False, True], ids=["no-seq_idx", "seq_idx"])
def test_long_runs_of_large_dt_stay_finite_and_exact(resets):
    """Runs of huge dt (decay exp(-1e3..1e4) per step) then tiny dt inside one chunk: a segment
    sum taken as a difference of cumulative sums loses the tiny decays in float32 (the sums reach
    ~1e5); ours must match the reference, with finite values and gradients."""
    batch, seqlen, chunk = 2, 48, 32
    args = make(batch, seqlen, 3, 2, 1, 3, torch.float32, OPTIONS["full"])
    dt = torch.full((batch, seqlen, 3), -3.0)  # softplus -> ~0.05
    dt[:, 2:20] = 3000.0  # 18 steps of dt' = 3000 (A in [-1.7, -0.2])
    dt[:, 33:36] = 1e4
    args["dt"] = dt
    args["dt_bias"] = torch.zeros(3)
    seq_idx = seq_ids(batch, seqlen, chunk) if resets else None
    check_against_ref(args, chunk, OPTIONS["full"], torch.float32, seq_idx)


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
    args = make(1, 6, 2, 2, 1, 2, torch.float64)
    ref = ssd_chunk_scan_ref(**args)
    for backend, env, expected in (("auto", None, "torch"), ("torch", "ref", "torch"),
                                   ("ref", None, None), ("auto", "ref", None),
                                   ("auto", "triton", "torch"), ("auto", "native", "torch")):
        if env is None:
            monkeypatch.delenv("KERNELS_BACKEND", raising=False)
        else:
            monkeypatch.setenv("KERNELS_BACKEND", env)
        calls.clear()
        out = ssd_chunk_scan(**args, chunk_size=4, backend=backend)
        assert calls == ([expected] if expected else []), (backend, env)
        close(out, ref, torch.float64, f"backend={backend} env={env}")
    assert SSD_BACKENDS == ("auto", "torch", "ref")


@pytest.mark.parametrize("backend", ["triton", "native", "cuda"])
def test_unavailable_backends_raise(backend):
    args = make(1, 5, 2, 2, 1, 2, torch.float32)
    match = (rf"ssd_chunk_scan: backend='{backend}' .*available backends: "
             r"\('auto', 'torch', 'ref'\)" if backend != "cuda"
             else r"ssd_chunk_scan: backend='cuda' is not one of \('auto', 'torch', 'ref'\)")
    with pytest.raises(ValueError, match=match):
        ssd_chunk_scan(**args, chunk_size=4, backend=backend)
    state = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=match.replace("ssd_chunk_scan", "ssd_state_update")):
        ssd_state_update(state, args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
                         args["C"][:, 0], backend=backend)


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


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_torch_path_matches_ref(dtype):
    args = make(2, 300, 8, 16, 2, 16, dtype, device="cuda")
    check_against_ref(args, 64, OPTIONS["full"], dtype, seq_ids(2, 300, 64, device="cuda"),
                      backend="auto")
