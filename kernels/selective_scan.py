"""Selective scan (Mamba's S6 recurrence), a drop-in for ``mamba_ssm``'s ``selective_scan_fn``.

Per channel ``d`` and state ``n``, along time ``l``::

    dt[b, d, l] = softplus?(delta[b, d, l] + delta_bias[d])
    x[b, d, n, l] = exp(dt * A[d, n]) * x[b, d, n, l-1] + dt * B[b, g(d), n, l] * u[b, d, l]
    y[b, d, l] = sum_n C[b, g(d), n, l] * x[b, d, n, l] + D[d] * u[b, d, l]
    out = y * silu(z)                                   (when z is given)

Layouts (mamba_ssm's): u, delta, z, out ``[batch, dim, L]``; A ``[dim, N]``; B, C
``[batch, N, L]`` or ``[batch, G, N, L]`` (G groups of ``dim // G`` channels); D, delta_bias
``[dim]``; ``initial_state`` and the last state ``[batch, dim, N]`` (float32, or float64 for
float64 inputs). Real dtypes only.

Backends: ``selective_scan_ref`` is the sequential definition; the torch path runs the recurrence
in time chunks with the chunked linear scan (``kernels.linear_scan``), checkpointing each chunk so
that the backward pass keeps only chunk-boundary states; the Triton kernel fuses discretisation,
the scan, the C contraction, the D skip and the z gate, keeps the ``[dim, N]`` state of a tile in
registers and writes only chunk-boundary states, from which the backward kernel recomputes each
chunk and runs its adjoint scan in reverse.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels._triton_utils import (
    REAL_DTYPES,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    fallback_backend,
    jit,
    kernel_for,
    needs_grad,
    next_pow2,
    resolve_backend,
    tl,
    tl_acc_dtype,
)
from kernels.linear_scan import linear_scan, scan_into

__all__ = [
    "SelectiveScanFn",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_ref",
]

_OP = "selective_scan"


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_real(name, x, op):
    if x.dtype not in REAL_DTYPES:
        hint = ""
        if x.is_complex():
            hint = " (complex selective scans are not supported; use real A, B, C)"
        raise ValueError(f"{op}: {name} has dtype {x.dtype}, expected one of {REAL_DTYPES}{hint}")


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, op=_OP):
    """Validate shapes/dtypes; return (batch, dim, L, N, G)."""
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_tensor(name, x, op)
        _check_real(name, x, op)
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be [batch, dim, L], got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        raise ValueError(f"{op}: L (u.shape[2]) must be >= 1, got {seqlen}")
    check_shape("delta", delta, (batch, dim, seqlen), "[batch, dim, L], same as u", op)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"{op}: A has shape {tuple(A.shape)}, expected [dim, N] = [{dim}, N]")
    dstate = A.shape[1]
    groups = None
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 3:
            check_shape(name, x, (batch, dstate, seqlen), "[batch, N, L]", op)
            g = 1
        elif x.dim() == 4:
            g = x.shape[1]
            check_shape(name, x, (batch, g, dstate, seqlen), "[batch, G, N, L]", op)
            if g < 1 or dim % g != 0:
                raise ValueError(f"{op}: {name} has G={g} groups, expected a divisor of dim={dim}")
        else:
            raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}, expected [batch, N, L] = "
                             f"[{batch}, {dstate}, {seqlen}] or [batch, G, N, L]")
        if groups is not None and g != groups:
            raise ValueError(f"{op}: B has {groups} groups but C has {g}; they must match")
        groups = g
    for name, x, shape, layout in (
        ("D", D, (dim,), "[dim]"),
        ("z", z, (batch, dim, seqlen), "[batch, dim, L], same as u"),
        ("delta_bias", delta_bias, (dim,), "[dim]"),
        ("initial_state", initial_state, (batch, dim, dstate), "[batch, dim, N]"),
    ):
        if x is not None:
            check_tensor(name, x, op)
            _check_real(name, x, op)
            check_shape(name, x, shape, layout, op)
    check_same_device(op, u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state)
    return batch, dim, seqlen, dstate, groups


def _compute_dtype(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _as_groups(x):
    """[batch, N, L] -> [batch, 1, N, L] (a view)."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def _discretised_dt(delta, delta_bias, delta_softplus, dtype):
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return dt


def _gate(y, u, D, z, dtype):
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


# --------------------------------------------------------------------------------------------
# reference: the plain sequential definition
# --------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Sequential reference (a Python loop over L), differentiable through autograd.

    Same arguments and results as ``selective_scan``. Computes in float32 (float64 for float64
    ``u``); ``out`` has ``u``'s dtype, the last state the compute dtype.
    """
    batch, dim, seqlen, dstate, groups = _check_inputs(
        u, delta, A, B, C, D, z, delta_bias, initial_state, op="selective_scan_ref")
    cd = _compute_dtype(u)
    dt = _discretised_dt(delta, delta_bias, delta_softplus, cd)
    heads = dim // groups
    Bg = _as_groups(B).to(cd).repeat_interleave(heads, dim=1)  # [batch, dim, N, L]
    Cg = _as_groups(C).to(cd).repeat_interleave(heads, dim=1)
    A_ = A.to(cd)
    uu = u.to(cd)
    x = (initial_state.to(cd) if initial_state is not None
         else torch.zeros(batch, dim, dstate, dtype=cd, device=u.device))
    ys = []
    for t, (dt_t, u_t, B_t, C_t) in enumerate(zip(dt.unbind(2), uu.unbind(2), Bg.unbind(3),
                                                  Cg.unbind(3))):
        del t
        x = torch.exp(dt_t[:, :, None] * A_) * x + (dt_t * u_t)[:, :, None] * B_t
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=2)
    out = _gate(y, u, D, z, cd).to(u.dtype)
    return (out, x) if return_last_state else out


# --------------------------------------------------------------------------------------------
# fast PyTorch path: time chunks x chunked linear scan, checkpointed per chunk
# --------------------------------------------------------------------------------------------

# State elements (batch * chunk * dim * N) per time chunk: 2^20 (4 MiB per fp32 tensor, the chunk's
# few tensors stay in a 32 MiB L3). On a 2-core EPYC, chunks of 2^20 ran 1.9-2.8x faster than
# L2-sized 2^17 ones at L >= 1024 (fewer, wider ops; each chunk costs a few dozen op dispatches).
_TORCH_CHUNK_ELEMS = 1 << 20
# Checkpoint the chunks (keep boundary states only, recompute in backward) when the whole
# [batch, L, dim, N] state has at least this many elements; below it the three saved tensors per
# chunk are small and recomputing would only double the time.
_CHECKPOINT_MIN_ELEMS = 1 << 20


def _torch_chunk(state, A, dt_t, dtu_t, B_t, C_t, ws=None):
    """One time chunk, time-major: returns (y [batch, K, dim], state after the chunk).

    ``dt_t``, ``dtu_t`` (``dt * u``): ``[batch, K, dim]``; ``B_t``, ``C_t``: ``[batch, K, G, N]``.
    The ``[batch, K, dim, N]`` tensors are contiguous so the broadcasts run over the inner axis;
    the scan over K is ``linear_scan``'s CPU path (the native loop when it is available, else
    the chunked torch scan; the chunked torch scan on other devices). ``ws``: a flat buffer of at
    least ``3 * batch * K * dim * N`` elements for the three ``[batch, K, dim, N]`` tensors, given
    only when nothing is differentiated (see ``_workspace``).
    """
    batch, k, dim = dt_t.shape
    groups, dstate = B_t.shape[2], B_t.shape[3]
    heads = dim // groups
    shape = (batch, k, groups, heads, dstate)
    n = batch * k * dim * dstate
    prod_dt_a = None if ws is None else ws[:n].view(batch, k, dim, dstate)
    prod_u_b = None if ws is None else ws[n:2 * n].view(shape)
    dA = torch.mul(dt_t[..., None], A, out=prod_dt_a).exp_().view(batch, k, dim * dstate)
    dBu = torch.mul(dtu_t.reshape(batch, k, groups, heads, 1), B_t.unsqueeze(3), out=prod_u_b)
    dBu = dBu.view(batch, k, dim * dstate)
    h0 = state.reshape(batch, -1)
    if ws is None:
        h = linear_scan(dA, dBu, h0, backend=fallback_backend(dA.device))
    else:
        h = scan_into(dA, dBu, h0, ws[2 * n:3 * n].view(batch, k, dim * dstate))
    y = torch.einsum("bkghn,bkgn->bkgh", h.view(shape), C_t)
    last = h[:, -1].view(batch, dim, dstate)
    return y.reshape(batch, k, dim), (last if ws is None else last.clone())


_WS = threading.local()


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-thread buffer of at least ``numel`` elements, kept between calls.

    Without autograd, the CPU path's three ``[batch, K, dim, N]`` temporaries per chunk (2^20
    elements each at most, unless ``batch * dim * N`` alone is larger) live here instead of in
    fresh allocations: glibc hands such blocks back to the OS when they are freed, and on a
    2-core VM the page faults of taking them again cost 2-3x the whole scan (selective_scan at
    L=256, batch 2, dim 64, N 16: ~2,500 faults and ~6 ms per call, against ~0.7 ms without them).
    """
    buf = getattr(_WS, "buf", None)
    if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        _WS.buf = buf
    return buf


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    cd = _compute_dtype(u)
    dt = _discretised_dt(delta, delta_bias, delta_softplus, cd)
    # time-major copies, made once: [batch, L, dim] and [batch, L, G, N]
    dt_t = dt.transpose(1, 2).contiguous()
    dtu_t = dt_t * u.to(cd).transpose(1, 2)
    B_t = _as_groups(B).to(cd).permute(0, 3, 1, 2).contiguous()
    C_t = _as_groups(C).to(cd).permute(0, 3, 1, 2).contiguous()
    A_ = A.to(cd)
    state = (initial_state.to(cd) if initial_state is not None
             else torch.zeros(batch, dim, dstate, dtype=cd, device=u.device))
    chunk = max(16, min(seqlen, _TORCH_CHUNK_ELEMS // max(1, batch * dim * dstate)))
    grad = needs_grad(u, delta, A, B, C, delta_bias, initial_state)
    ws = None
    if not grad and u.device.type == "cpu":
        ws = _workspace(3 * batch * min(chunk, seqlen) * dim * dstate, cd, u.device)
    ys = []
    for s in range(0, seqlen, chunk):
        sl = slice(s, min(seqlen, s + chunk))
        args = (state, A_, dt_t[:, sl], dtu_t[:, sl], B_t[:, sl], C_t[:, sl])
        if grad and seqlen > chunk and batch * seqlen * dim * dstate >= _CHECKPOINT_MIN_ELEMS:
            # keep only the chunk-boundary state; recompute the chunk in the backward pass
            y, state = checkpoint(_torch_chunk, *args, use_reentrant=False)
        else:
            y, state = _torch_chunk(*args, ws=ws)
        ys.append(y)
    y = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)).transpose(1, 2)
    out = _gate(y, u, D, z, cd).to(u.dtype)
    return out, state


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


@jit
def _ssm_combine(a_l, x_l, a_r, x_r):
    return a_r * a_l, a_r * x_l + x_r


@jit
def _selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, out_ptr, states_ptr,
    L, N, H, NBLK,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_Ad, s_An,
    s_Bb, s_Bg, s_Bn, s_Bl,
    s_Cb, s_Cg, s_Cn, s_Cl,
    s_D, s_zb, s_zd, s_zl, s_bias,
    s_ib, s_id, s_in,
    s_ob, s_od, s_ol,
    s_sb, s_sd, s_sc, s_sn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Program = (batch row, BLOCK_D channels of one group); loops over L in BLOCK_L tiles.

    The [BLOCK_D, BLOCK_N, BLOCK_L] tile of (exp(dt*A), dt*B*u) is scanned in registers along L;
    the state entering each tile is written to ``states`` (the backward pass restarts from it),
    nothing of size [dim, N, L] leaves the chip.
    """
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    g = pid // NBLK
    dl = (pid % NBLK) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dl < H
    d = g * H + dl
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    rows = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=dn_mask, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * s_bias, mask=dmask, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d * s_D, mask=dmask, other=0.0).to(ACC)
    if HAS_INIT:
        state = tl.load(init_ptr + pid_b * s_ib + d[:, None] * s_id + n[None, :] * s_in,
                        mask=dn_mask, other=0.0).to(ACC)
    else:
        state = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    st_ptrs = states_ptr + pid_b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn
    nchunks = tl.cdiv(L, BLOCK_L)
    for c in range(0, nchunks):
        tl.store(st_ptrs + c * s_sc, state, mask=dn_mask)
        lt = c * BLOCK_L + rows
        lmask = lt < L
        m = dmask[:, None] & lmask[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + d[:, None] * s_ud + lt[None, :] * s_ul,
                    mask=m, other=0.0).to(ACC)
        dt = tl.load(dt_ptr + pid_b * s_tb + d[:, None] * s_td + lt[None, :] * s_tl,
                     mask=m, other=0.0).to(ACC)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        dt = tl.where(m, dt, 0.0)  # padded steps: exp(0*A) = 1 and dt*B*u = 0 carry the state
        nl = nmask[:, None] & lmask[None, :]
        Bt = tl.load(B_ptr + pid_b * s_Bb + g * s_Bg + n[:, None] * s_Bn + lt[None, :] * s_Bl,
                     mask=nl, other=0.0).to(ACC)
        Ct = tl.load(C_ptr + pid_b * s_Cb + g * s_Cg + n[:, None] * s_Cn + lt[None, :] * s_Cl,
                     mask=nl, other=0.0).to(ACC)
        dA = tl.exp(dt[:, None, :] * A[:, :, None])
        dBu = (dt * u)[:, None, :] * Bt[None, :, :]
        a_cum, x = tl.associative_scan((dA, dBu), 2, _ssm_combine)
        x = x + a_cum * state[:, :, None]
        y = tl.sum(x * Ct[None, :, :], axis=1)
        if HAS_D:
            y = y + u * Dv[:, None]
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + d[:, None] * s_zd + lt[None, :] * s_zl,
                         mask=m, other=0.0).to(ACC)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + pid_b * s_ob + d[:, None] * s_od + lt[None, :] * s_ol,
                 y.to(out_ptr.dtype.element_ty), mask=m)
        state = tl.sum(tl.where(rows[None, None, :] == BLOCK_L - 1, x, 0.0), axis=2)
    tl.store(st_ptrs + nchunks * s_sc, state, mask=dn_mask)


@jit
def _selective_scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, dinit_ptr,
    L, N, H, NBLK,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_Ad, s_An,
    s_Bb, s_Bg, s_Bn, s_Bl,
    s_Cb, s_Cg, s_Cn, s_Cl,
    s_D, s_zb, s_zd, s_zl, s_bias,
    s_sb, s_sd, s_sc, s_sn,
    s_yb, s_yd, s_yl,
    s_lb, s_ld, s_ln,
    s_gb, s_gd, s_gl,
    s_gBb, s_gBg, s_gBn, s_gBl,
    s_pb, s_pd, s_pn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Chunks in reverse: recompute the chunk's states from its saved entering state, then run
    the adjoint scan lam_l = dL/dx_l = C_l * dy_l + exp(dt_{l+1} A) * lam_{l+1} in reverse.

    du/ddelta/dz are written directly (strides s_g*), dB/dC are reduced over the tile's channels
    and atomically added (float32, [batch, G, N, L]); dA/dD/ddelta_bias/dinitial_state are written
    per batch row (``[batch, dim, N]`` / ``[batch, dim]``) and reduced over batch by the launcher.
    """
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    g = pid // NBLK
    dl = (pid % NBLK) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dl < H
    d = g * H + dl
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    rows = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=dn_mask, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * s_bias, mask=dmask, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d * s_D, mask=dmask, other=0.0).to(ACC)
    if HAS_DLAST:
        lam_carry = tl.load(dlast_ptr + pid_b * s_lb + d[:, None] * s_ld + n[None, :] * s_ln,
                            mask=dn_mask, other=0.0).to(ACC)
    else:
        lam_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    dinit = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    dD_acc = tl.zeros([BLOCK_D], dtype=ACC)
    dbias_acc = tl.zeros([BLOCK_D], dtype=ACC)
    st_ptrs = states_ptr + pid_b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn
    nchunks = tl.cdiv(L, BLOCK_L)
    for i in range(0, nchunks):
        c = nchunks - 1 - i
        state0 = tl.load(st_ptrs + c * s_sc, mask=dn_mask, other=0.0).to(ACC)
        lt = c * BLOCK_L + rows
        lmask = lt < L
        m = dmask[:, None] & lmask[None, :]
        nl = nmask[:, None] & lmask[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + d[:, None] * s_ud + lt[None, :] * s_ul,
                    mask=m, other=0.0).to(ACC)
        dt = tl.load(dt_ptr + pid_b * s_tb + d[:, None] * s_td + lt[None, :] * s_tl,
                     mask=m, other=0.0).to(ACC)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt_pre = dt
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        dt = tl.where(m, dt, 0.0)
        # dt one step later (the coefficient that carries lam back into this step)
        l1 = lt + 1
        m1 = dmask[:, None] & (l1 < L)[None, :]
        dt1 = tl.load(dt_ptr + pid_b * s_tb + d[:, None] * s_td + l1[None, :] * s_tl,
                      mask=m1, other=0.0).to(ACC)
        if HAS_BIAS:
            dt1 = dt1 + bias[:, None]
        if SOFTPLUS:
            dt1 = tl.where(dt1 > 20.0, dt1, tl.log(1.0 + tl.exp(tl.minimum(dt1, 20.0))))
        dt1 = tl.where(m1, dt1, 0.0)  # past the end: coefficient 1 carries dlast in
        Bt = tl.load(B_ptr + pid_b * s_Bb + g * s_Bg + n[:, None] * s_Bn + lt[None, :] * s_Bl,
                     mask=nl, other=0.0).to(ACC)
        Ct = tl.load(C_ptr + pid_b * s_Cb + g * s_Cg + n[:, None] * s_Cn + lt[None, :] * s_Cl,
                     mask=nl, other=0.0).to(ACC)
        # recompute the chunk's states
        dA = tl.exp(dt[:, None, :] * A[:, :, None])
        dtu = dt * u
        dBu = dtu[:, None, :] * Bt[None, :, :]
        a_cum, x = tl.associative_scan((dA, dBu), 2, _ssm_combine)
        x = x + a_cum * state0[:, :, None]
        dy = tl.load(dout_ptr + pid_b * s_yb + d[:, None] * s_yd + lt[None, :] * s_yl,
                     mask=m, other=0.0).to(ACC)
        gofs = pid_b * s_gb + d[:, None] * s_gd + lt[None, :] * s_gl
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + d[:, None] * s_zd + lt[None, :] * s_zl,
                         mask=m, other=0.0).to(ACC)
            sig = tl.sigmoid(zz)
            y = tl.sum(x * Ct[None, :, :], axis=1)
            if HAS_D:
                y = y + u * Dv[:, None]
            dz = dy * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + gofs, dz.to(dz_ptr.dtype.element_ty), mask=m)
            dy = dy * zz * sig
        du = tl.zeros([BLOCK_D, BLOCK_L], dtype=ACC)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
            du = dy * Dv[:, None]
        # dC[n, l] = sum_d dy[d, l] x[d, n, l]
        dC = tl.sum(dy[:, None, :] * x, axis=0)
        gB_ofs = pid_b * s_gBb + g * s_gBg + n[:, None] * s_gBn + lt[None, :] * s_gBl
        tl.atomic_add(dC_ptr + gB_ofs, dC, mask=nl)
        # adjoint scan, reverse in time
        a_next = tl.exp(dt1[:, None, :] * A[:, :, None])
        g_x = dy[:, None, :] * Ct[None, :, :]
        a_cum, lam = tl.associative_scan((a_next, g_x), 2, _ssm_combine, reverse=True)
        lam = lam + a_cum * lam_carry[:, :, None]
        x_prev_dA = x - dBu  # = exp(dt*A) * x_{l-1}, without dividing by exp(dt*A)
        dB = tl.sum(lam * dtu[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + gB_ofs, dB, mask=nl)
        dA_acc += tl.sum(lam * x_prev_dA * dt[:, None, :], axis=2)
        lamB = tl.sum(lam * Bt[None, :, :], axis=1)
        ddt = lamB * u + tl.sum(lam * x_prev_dA * A[:, :, None], axis=1)
        du = du + lamB * dt
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_pre)
        ddt = tl.where(m, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddt_ptr + gofs, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
        tl.store(du_ptr + gofs, du.to(du_ptr.dtype.element_ty), mask=m)
        dinit = tl.sum(tl.where(rows[None, None, :] == 0, dA * lam, 0.0), axis=2)
        lam_carry = tl.sum(tl.where(rows[None, None, :] == 0, lam, 0.0), axis=2)
    p_ofs = pid_b * s_pb + d[:, None] * s_pd + n[None, :] * s_pn
    tl.store(dA_ptr + p_ofs, dA_acc, mask=dn_mask)
    tl.store(dinit_ptr + p_ofs, dinit, mask=dn_mask)
    # dD / ddelta_bias partials share the [batch, dim] layout: use column n == 0 of the p layout
    tl.store(dD_ptr + pid_b * s_pb + d * s_pd, dD_acc, mask=dmask)
    tl.store(dbias_ptr + pid_b * s_pb + d * s_pd, dbias_acc, mask=dmask)


def _ss_blocks(heads: int, dstate: int, seqlen: int, device: torch.device):
    block_n = next_pow2(dstate)
    if device.type == "cpu":  # interpreter: tiny tiles (the combine runs per element in Python)
        return min(4, next_pow2(heads)), block_n, min(8, next_pow2(seqlen)), 1
    # keep BLOCK_D * BLOCK_N * BLOCK_L around 2-4K values per tensor (registers)
    block_l = min(64, max(16, next_pow2(seqlen)))
    block_d = max(1, min(next_pow2(heads), 4096 // (block_n * block_l)))
    return block_d, block_n, block_l, 4


def _nullable(x, fallback):
    return x if x is not None else fallback


def _fwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    Bg, Cg = _as_groups(B), _as_groups(C)
    groups = Bg.shape[1]
    heads = dim // groups
    block_d, block_n, block_l, num_warps = _ss_blocks(heads, dstate, seqlen, u.device)
    nblk = cdiv(heads, block_d)
    nchunks = cdiv(seqlen, block_l)
    cd = _compute_dtype(u)
    out = torch.empty((batch, dim, seqlen), dtype=u.dtype, device=u.device)
    states = torch.empty((batch, dim, nchunks + 1, dstate), dtype=cd, device=u.device)
    zs = z.stride() if z is not None else (0, 0, 0)
    inits = initial_state.stride() if initial_state is not None else (0, 0, 0)
    kernel_for(_selective_scan_fwd_kernel, u.device)[(batch, groups * nblk)](
        u, delta, A, Bg, Cg, _nullable(D, u), _nullable(z, u), _nullable(delta_bias, u),
        _nullable(initial_state, u), out, states,
        seqlen, dstate, heads, nblk,
        *u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(),
        D.stride(0) if D is not None else 0, *zs,
        delta_bias.stride(0) if delta_bias is not None else 0,
        *inits, *out.stride(), *states.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_INIT=initial_state is not None, SOFTPLUS=bool(delta_softplus), ACC=tl_acc_dtype(cd),
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, num_warps=num_warps,
    )
    return out, states


def _bwd_triton(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    Bg, Cg = _as_groups(B), _as_groups(C)
    groups = Bg.shape[1]
    heads = dim // groups
    block_d, block_n, block_l, num_warps = _ss_blocks(heads, dstate, seqlen, u.device)
    nblk = cdiv(heads, block_d)
    cd = states.dtype
    dev = u.device
    du = torch.empty((batch, dim, seqlen), dtype=u.dtype, device=dev)
    ddelta = torch.empty((batch, dim, seqlen), dtype=delta.dtype, device=dev)
    dz = torch.empty((batch, dim, seqlen), dtype=z.dtype, device=dev) if z is not None else None
    dB = torch.zeros((batch, groups, dstate, seqlen), dtype=cd, device=dev)
    dC = torch.zeros_like(dB)
    dA_part = torch.empty((batch, dim, dstate), dtype=cd, device=dev)
    dinit = torch.empty_like(dA_part)
    dD_part = torch.empty((batch, dim, dstate), dtype=cd, device=dev)  # column 0 used
    dbias_part = torch.empty_like(dD_part)
    zs = z.stride() if z is not None else (0, 0, 0)
    dls = dlast.stride() if dlast is not None else (0, 0, 0)
    kernel_for(_selective_scan_bwd_kernel, dev)[(batch, groups * nblk)](
        u, delta, A, Bg, Cg, _nullable(D, u), _nullable(z, u), _nullable(delta_bias, u), states,
        dout, _nullable(dlast, states),
        du, ddelta, dA_part, dB, dC, dD_part, _nullable(dz, du), dbias_part, dinit,
        seqlen, dstate, heads, nblk,
        *u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(),
        D.stride(0) if D is not None else 0, *zs,
        delta_bias.stride(0) if delta_bias is not None else 0,
        *states.stride(), *dout.stride(), *dls, *du.stride(), *dB.stride(), *dA_part.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_DLAST=dlast is not None, SOFTPLUS=bool(delta_softplus), ACC=tl_acc_dtype(cd),
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, num_warps=num_warps,
    )
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part[:, :, 0].sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_part[:, :, 0].sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    dB = dB.to(B.dtype).view(B.shape)
    dC = dC.to(C.dtype).view(C.shape)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dinit


class SelectiveScanFn(torch.autograd.Function):
    """Triton selective scan: saves the inputs and chunk-boundary states, recomputes the rest."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        out, states = _fwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.set_materialize_grads(False)  # an unused last state passes None, not zeros
        ctx.delta_softplus = delta_softplus
        ctx.has_init = initial_state is not None
        last = states[:, :, -1]
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = _bwd_triton(
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states)
        return (du, ddelta, dA, dB, dC, dD, dz, dbias,
                dinit.to(states.dtype) if ctx.has_init else None, None)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend="auto"):
    """Mamba's selective scan; same arguments, layouts and results as ``selective_scan_fn``.

    Args:
        u, delta: ``[batch, dim, L]``. A: ``[dim, N]`` (real; negative for a stable scan).
        B, C: ``[batch, N, L]`` or ``[batch, G, N, L]``. D, delta_bias: ``[dim]``.
        z: ``[batch, dim, L]``; the output is multiplied by ``silu(z)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after step ``L-1`` ``[batch, dim, N]``; unlike
            mamba_ssm, gradients flowing into it are propagated.
        initial_state: optional ``[batch, dim, N]`` state before step 0 (differentiable).
        backend: "auto" (CUDA -> Triton, else the chunked torch path), "triton", "torch", "ref";
            "auto" defers to ``$KERNELS_BACKEND`` when set.

    Returns:
        ``out`` ``[batch, dim, L]`` in ``u``'s dtype, and the last state (float32, or float64
        for float64 ``u``) when ``return_last_state``.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = resolve_backend(backend, u.device, _OP)
    if chosen == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, initial_state)
    if chosen == "torch":
        out, last = _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          initial_state)
    else:
        out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                          bool(delta_softplus))
    return (out, last) if return_last_state else out


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Alias with mamba_ssm's name and positional signature."""
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

