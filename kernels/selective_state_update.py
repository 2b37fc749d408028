"""One recurrent step of the selective scan, for imagination / decoding (mamba_ssm's layout).

    dt = softplus?(dt + dt_bias)                       [batch, dim]
    state = exp(dt * A) * state + (dt * x) * B         [batch, dim, N], updated in place
    out = sum_n state * C + D * x, times silu(z)       [batch, dim]

``B``, ``C`` are ``[batch, N]`` or ``[batch, G, N]`` (G groups of ``dim // G`` channels). Feeding
``selective_scan``'s inputs one step at a time through this function reproduces its output and
last state (a test holds them together).

The Triton kernel has no backward pass: with autograd recording and an input that requires grad,
"auto" runs the (differentiable) PyTorch form instead, and a forced "triton" raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton_utils import (
    REAL_DTYPES,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    jit,
    kernel_for,
    needs_grad,
    next_pow2,
    resolve_backend,
    tl,
    tl_acc_dtype,
)

__all__ = ["selective_state_update", "selective_state_update_ref"]

_OP = "selective_state_update"


def _check_inputs(state, x, dt, A, B, C, D, z, dt_bias, op=_OP):
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_tensor(name, t, op)
        if t.dtype not in REAL_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected one of {REAL_DTYPES}")
    if state.dim() != 3:
        raise ValueError(f"{op}: state must be [batch, dim, N], got shape {tuple(state.shape)}")
    batch, dim, dstate = state.shape
    check_shape("x", x, (batch, dim), "[batch, dim]", op)
    check_shape("dt", dt, (batch, dim), "[batch, dim]", op)
    check_shape("A", A, (dim, dstate), "[dim, N]", op)
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            check_shape(name, t, (batch, dstate), "[batch, N]", op)
            g = 1
        elif t.dim() == 3:
            g = t.shape[1]
            check_shape(name, t, (batch, g, dstate), "[batch, G, N]", op)
            if g < 1 or dim % g != 0:
                raise ValueError(f"{op}: {name} has G={g} groups, expected a divisor of dim={dim}")
        else:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected [batch, N] = "
                             f"[{batch}, {dstate}] or [batch, G, N]")
        if groups is not None and g != groups:
            raise ValueError(f"{op}: B has {groups} groups but C has {g}; they must match")
        groups = g
    for name, t, shape, layout in (("D", D, (dim,), "[dim]"),
                                   ("z", z, (batch, dim), "[batch, dim]"),
                                   ("dt_bias", dt_bias, (dim,), "[dim]")):
        if t is not None:
            check_tensor(name, t, op)
            check_shape(name, t, shape, layout, op)
    check_same_device(op, state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return batch, dim, dstate, groups


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    """Plain PyTorch step (float32 compute, float64 for float64 ``x``); updates ``state``."""
    batch, dim, dstate, groups = _check_inputs(state, x, dt, A, B, C, D, z, dt_bias,
                                               op="selective_state_update_ref")
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt = dt.to(cd)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cd)
    if dt_softplus:
        dt = F.softplus(dt)
    heads = dim // groups
    Bg = (B if B.dim() == 3 else B[:, None]).to(cd).repeat_interleave(heads, dim=1)
    Cg = (C if C.dim() == 3 else C[:, None]).to(cd).repeat_interleave(heads, dim=1)
    new = (torch.exp(dt[..., None] * A.to(cd)) * state.to(cd)
           + (dt * x.to(cd))[..., None] * Bg)
    state.copy_(new)
    out = (new * Cg).sum(-1)
    if D is not None:
        out = out + x.to(cd) * D.to(cd)
    if z is not None:
        out = out * F.silu(z.to(cd))
    return out.to(x.dtype)


@jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    N, H, NBLK,
    s_sb, s_sd, s_sn, s_xb, s_xd, s_tb, s_td, s_Ad, s_An,
    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_D, s_zb, s_zd, s_bias, s_ob, s_od,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    g = pid // NBLK
    dl = (pid % NBLK) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dl < H
    d = g * H + dl
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    m = dmask[:, None] & nmask[None, :]
    s_ptrs = state_ptr + pid_b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn
    state = tl.load(s_ptrs, mask=m, other=0.0).to(ACC)
    x = tl.load(x_ptr + pid_b * s_xb + d * s_xd, mask=dmask, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + pid_b * s_tb + d * s_td, mask=dmask, other=0.0).to(ACC)
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + d * s_bias, mask=dmask, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=m, other=0.0).to(ACC)
    Bv = tl.load(B_ptr + pid_b * s_Bb + g * s_Bg + n * s_Bn, mask=nmask, other=0.0).to(ACC)
    Cv = tl.load(C_ptr + pid_b * s_Cb + g * s_Cg + n * s_Cn, mask=nmask, other=0.0).to(ACC)
    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=m)
    out = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        out = out + x * tl.load(D_ptr + d * s_D, mask=dmask, other=0.0).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + d * s_zd, mask=dmask, other=0.0).to(ACC)
        out = out * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_ob + d * s_od, out.to(out_ptr.dtype.element_ty), mask=dmask)


def _update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    batch, dim, dstate = state.shape
    Bg = B if B.dim() == 3 else B[:, None]
    Cg = C if C.dim() == 3 else C[:, None]
    groups = Bg.shape[1]
    heads = dim // groups
    block_n = next_pow2(dstate)
    if state.device.type == "cpu":
        block_d = min(4, next_pow2(heads))
    else:  # mamba_ssm's hand-tuned rows-per-program for each state size
        block_d = min(next_pow2(heads), 32 if dstate <= 16 else 16 if dstate <= 32 else 8)
    nblk = cdiv(heads, block_d)
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    zs = z.stride() if z is not None else (0, 0)
    kernel_for(_state_update_kernel, state.device)[(batch, groups * nblk)](
        state, x, dt, A, Bg, Cg, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, out,
        dstate, heads, nblk,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *Bg.stride(), *Cg.stride(),
        D.stride(0) if D is not None else 0, *zs, dt_bias.stride(0) if dt_bias is not None else 0,
        *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), ACC=tl_acc_dtype(cd), BLOCK_D=block_d, BLOCK_N=block_n,
        num_warps=4,
    )
    return out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, backend="auto"):
    """One selective-scan step; updates ``state`` ``[batch, dim, N]`` in place, returns
    ``out`` ``[batch, dim]`` in ``x``'s dtype. Arguments as mamba_ssm's function of this name;
    ``backend`` as in ``selective_scan`` ("torch" and "ref" are the same plain step).
    """
    _check_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    wants_grad = needs_grad(state, x, dt, A, B, C, D, z, dt_bias)
    chosen = resolve_backend(
        backend, state.device, _OP,
        triton_unsupported="the Triton step has no backward pass" if wants_grad else None)
    if chosen in ("torch", "ref"):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
