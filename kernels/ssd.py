"""Mamba-2's state-space-dual (SSD) scan, a drop-in for ``mamba_ssm``'s
``mamba_chunk_scan_combined``, and its one-step update for imagination / acting.

Per batch row and head ``h`` (``G`` groups of ``nheads // G`` heads share ``B``, ``C``; head ``h``
reads group ``h // (nheads // G)``), along time ``t``::

    dt'[t, h] = clamp(softplus?(dt[t, h] + dt_bias[h]), *dt_limit)
    S[t, h] = exp(dt'[t, h] * A[h]) * S[t-1, h] + dt'[t, h] * x[t, h] (outer) B[t, g(h)]
    y[t, h] = S[t, h] @ C[t, g(h)] + D[h] * x[t, h]
    out = y * silu(z)                                           (when z is given)

``S`` is ``[headdim, dstate]`` per head. The clamp is always applied, as in mamba_ssm: the default
``dt_limit=(0.0, inf)`` maps a negative ``dt'`` to 0.

Layouts (mamba_ssm's): x, z, out ``[batch, seqlen, nheads, headdim]``; dt ``[batch, seqlen,
nheads]``; A, dt_bias ``[nheads]``; B, C ``[batch, seqlen, ngroups, dstate]``; D ``[nheads,
headdim]`` or ``[nheads]``; initial_states and the final state ``[batch, nheads, headdim,
dstate]``; seq_idx ``[batch, seqlen]`` (integer).

Resets (``seq_idx``). The state does not pass between positions whose ``seq_idx`` differ: a
boundary lies before every ``t`` with ``seq_idx[t] != seq_idx[t-1]``, and there the carried state
is dropped (``S[t] = dt' x B``, as ``linear_scan``'s ``reset``). ``initial_states`` is the state at
position -1, whose ``seq_idx`` is taken to be 0 (mamba_ssm's kernels compare with 0 there): it
reaches the positions before the first change of ``seq_idx`` when ``seq_idx[0] == 0`` and no
position at all when ``seq_idx[0] != 0``. So ``seq_idx = cumsum(is_first, dim=1)`` expresses
episode starts, a start at step 0 included (it drops ``initial_states``). For the non-decreasing
``seq_idx`` that mamba_ssm expects this is exactly its result; for others every change is a
boundary (``[0, 1, 0]`` is three sequences), where mamba_ssm's chunk-level masks disagree with
themselves. The final state is the state after ``seqlen - 1``, i.e. that of the last sequence.

Backends: ``"ref"`` is the sequential definition (a Python loop over time, ``ssd_chunk_scan_ref``);
``"torch"`` is the chunked SSD form: per chunk of ``chunk_size`` steps, the quadratic
within-chunk term with a segment-sum decay mask, the chunk's end state, the states passed between
chunks (``kernels.linear_scan`` over the chunk index, with a reset where a chunk holds a boundary)
and the off-diagonal term of each chunk's entering state. ``"triton"`` computes the same chunked
form in two Triton kernels around ``linear_scan``'s Triton scan: ``_ssd_chunk_state_kernel``
(each chunk's own end state and total decay), the scan over chunks, and
``_ssd_chunk_scan_kernel`` (per chunk and tile of output steps: the within-chunk term over
the source tiles up to the diagonal, the entering state's share, ``D x`` and the gate);
``dt'`` is formed inside both kernels. "auto" takes "triton" for CUDA tensors when triton is
installed and "torch" otherwise; CPU tensors reach the Triton kernels only through the
interpreter (``TRITON_INTERPRET=1``, for tests). ``ssd_state_update`` has a Triton step
(``_ssd_state_update_kernel``, one program per batch row, head and block of headdim rows).

Gradients. The torch path is plain autograd through its PyTorch ops (the inter-chunk pass is
``linear_scan``'s, whose backward is its adjoint scan); autograd keeps the ``[chunk, chunk]``
decay and ``C B^T`` matrices of every chunk (``batch * seqlen * nheads * chunk_size`` values each)
for the backward pass. The Triton path is ``SsdChunkScanFn``: its forward runs the kernels and
saves only the inputs, and its backward recomputes the torch path under ``torch.enable_grad()``
and returns that path's vector-Jacobian product, so gradients are exactly the torch path's
(there is no hand-written Triton backward; a training step costs the Triton forward plus the
torch forward and backward; no double backward). The Triton step has no backward: with autograd
recording, "auto" runs the PyTorch step and a forced "triton" raises.

Numerics: inputs are computed in float32 (float64 for float64 ``x``); ``out`` has ``x``'s dtype,
the final state the compute dtype. Decays are formed only as ``exp`` of sums of ``dt' * A`` over
the steps they span (the segment sums are accumulated per pair, never as a difference of two
cumulative sums, which loses the small decays behind long runs of large ``dt``); masked entries
are zeroed after ``exp`` of finite values, so values and gradients stay finite for ``A <= 0``.
The Triton kernels keep this rule across their time tiles: a decay spanning several tiles is
``exp`` of the sum of the pieces' own sums (see the kernels' docstrings). On CUDA their float32
matrix products run as three TF32 passes (``tf32x3``: about float32's accuracy, where plain TF32
is ~1e-3 off), float64 ones in float64; their softplus is ``log(1 + exp)`` (torch's
``log1p(exp)`` differs by rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton_utils import (
    BACKENDS,
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
from kernels.linear_scan import linear_scan

__all__ = [
    "SSD_BACKENDS",
    "SsdChunkScanFn",
    "mamba_chunk_scan_combined",
    "ssd_chunk_scan",
    "ssd_chunk_scan_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]

_OP = "ssd_chunk_scan"
_STEP_OP = "ssd_state_update"

#: the backends the SSD ops have (no native CPU loop of their own)
SSD_BACKENDS = tuple(b for b in BACKENDS if b != "native")

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------
# input checks and shared pieces
# --------------------------------------------------------------------------------------------


def _check_real(name, t, op):
    check_tensor(name, t, op)
    if t.dtype not in REAL_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected one of {REAL_DTYPES}")


def _check_dt_limit(dt_limit, op):
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: dt_limit must be a pair (min, max) of floats, got "
                         f"{dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"{op}: dt_limit={dt_limit!r} has min > max")
    return lo, hi


def _check_groups(name, t, batch, seqlen, nheads, op, step=False):
    layout = "[batch, ngroups, dstate]" if step else "[batch, seqlen, ngroups, dstate]"
    lead = (batch,) if step else (batch, seqlen)
    if t.dim() != len(lead) + 2 or tuple(t.shape[:len(lead)]) != lead:
        want = ", ".join(str(v) for v in lead)
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {layout} = "
                         f"[{want}, ngroups, dstate]")
    ngroups = t.shape[-2]
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"{op}: {name} has ngroups={ngroups}, expected a divisor of "
                         f"nheads={nheads}")
    return ngroups, t.shape[-1]


def _check_common(x, dt, A, B, C, D, z, dt_bias, op, step):
    """Shapes shared by the scan and the step; returns (batch, seqlen or None, nheads, headdim,
    ngroups, dstate)."""
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        _check_real(name, t, op)
    if step:
        if x.dim() != 3:
            raise ValueError(f"{op}: x must be [batch, nheads, headdim], got shape "
                             f"{tuple(x.shape)}")
        batch, nheads, headdim = x.shape
        seqlen = None
        check_shape("dt", dt, (batch, nheads), "[batch, nheads]", op)
    else:
        if x.dim() != 4:
            raise ValueError(f"{op}: x must be [batch, seqlen, nheads, headdim], got shape "
                             f"{tuple(x.shape)}")
        batch, seqlen, nheads, headdim = x.shape
        if seqlen < 1:
            raise ValueError(f"{op}: seqlen (x.shape[1]) must be >= 1, got {seqlen}")
        check_shape("dt", dt, (batch, seqlen, nheads), "[batch, seqlen, nheads]", op)
    check_shape("A", A, (nheads,), "[nheads]", op)
    ngroups, dstate = _check_groups("B", B, batch, seqlen, nheads, op, step)
    check_shape("C", C, tuple(B.shape), "same as B", op)
    if D is not None:
        _check_real("D", D, op)
        if tuple(D.shape) not in ((nheads, headdim), (nheads,)):
            raise ValueError(f"{op}: D has shape {tuple(D.shape)}, expected [nheads, headdim] = "
                             f"{(nheads, headdim)} or [nheads] = {(nheads,)}")
    if z is not None:
        _check_real("z", z, op)
        check_shape("z", z, tuple(x.shape), "same as x", op)
    if dt_bias is not None:
        _check_real("dt_bias", dt_bias, op)
        check_shape("dt_bias", dt_bias, (nheads,), "[nheads]", op)
    return batch, seqlen, nheads, headdim, ngroups, dstate


def _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_limit, op=_OP):
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_common(
        x, dt, A, B, C, D, z, dt_bias, op, step=False)
    if initial_states is not None:
        _check_real("initial_states", initial_states, op)
        check_shape("initial_states", initial_states, (batch, nheads, headdim, dstate),
                    "[batch, nheads, headdim, dstate]", op)
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, op)
        check_shape("seq_idx", seq_idx, (batch, seqlen), "[batch, seqlen]", op)
        if seq_idx.dtype not in _INT_DTYPES:
            raise ValueError(f"{op}: seq_idx has dtype {seq_idx.dtype}, expected an integer "
                             "dtype (torch.int32 or torch.int64)")
    _check_dt_limit(dt_limit, op)
    check_same_device(op, x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      initial_states=initial_states, seq_idx=seq_idx)
    return batch, seqlen, nheads, headdim, ngroups, dstate


def _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit, op=_STEP_OP):
    """Shapes of one step; returns (nheads, ngroups)."""
    _check_real("state", state, op)
    batch, _, nheads, headdim, ngroups, dstate = _check_common(
        x, dt, A, B, C, D, z, dt_bias, op, step=True)
    check_shape("state", state, (batch, nheads, headdim, dstate),
                "[batch, nheads, headdim, dstate]", op)
    _check_dt_limit(dt_limit, op)
    check_same_device(op, state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return nheads, ngroups


def _check_chunk_size(chunk_size, op=_OP):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _discretised_dt(dt, dt_bias, dt_softplus, dt_limit, dtype):
    """``clamp(softplus?(dt + dt_bias), *dt_limit)`` in ``dtype`` (any leading shape, heads last).

    Softplus is torch's (linear above 20, as mamba_ssm's kernels); the clamp passes gradients
    inside the limits only, as mamba_ssm's backward does.
    """
    d = dt.to(dtype)
    if dt_bias is not None:
        d = d + dt_bias.to(dtype)
    if dt_softplus:
        d = F.softplus(d)
    lo, hi = (float(v) for v in dt_limit)
    return d.clamp(min=lo, max=hi)


def _gate(y, x, D, z, dtype):
    """``(y + D * x) * silu(z)``; ``y``, ``x``, ``z`` are ``[..., nheads, headdim]``."""
    if D is not None:
        d = D.to(dtype)
        y = y + x.to(dtype) * (d if d.dim() == 2 else d[:, None])
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def _boundaries(seq_idx):
    """bool ``[batch, seqlen]``: true at ``t`` where ``seq_idx[t] != seq_idx[t-1]``, with
    ``seq_idx[-1] = 0`` (the initial state's sequence)."""
    prev = torch.cat([torch.zeros_like(seq_idx[:, :1]), seq_idx[:, :-1]], dim=1)
    return seq_idx != prev


# --------------------------------------------------------------------------------------------
# reference: the plain sequential recurrence
# --------------------------------------------------------------------------------------------


def ssd_chunk_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                       seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                       return_final_states=False):
    """Sequential reference (a Python loop over time), differentiable through autograd.

    Same arguments and results as ``ssd_chunk_scan`` without ``chunk_size`` and ``backend``.
    Computes in float32 (float64 for float64 ``x``); ``out`` has ``x``'s dtype, the final state
    the compute dtype.
    """
    op = "ssd_chunk_scan_ref"
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_inputs(
        x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_limit, op=op)
    cd = _compute_dtype(x)
    rep = nheads // ngroups
    dtp = _discretised_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # [batch, seqlen, nheads]
    decay = torch.exp(dtp * A.to(cd))
    xdt = x.to(cd) * dtp[..., None]
    Bh = B.to(cd).repeat_interleave(rep, dim=2)  # [batch, seqlen, nheads, dstate]
    Ch = C.to(cd).repeat_interleave(rep, dim=2)
    state = (initial_states.to(cd) if initial_states is not None
             else torch.zeros(batch, nheads, headdim, dstate, dtype=cd, device=x.device))
    resets = _boundaries(seq_idx).unbind(1) if seq_idx is not None else None
    ys = []
    for t, (a_t, xdt_t, B_t, C_t) in enumerate(zip(decay.unbind(1), xdt.unbind(1), Bh.unbind(1),
                                                   Ch.unbind(1))):
        if resets is not None:
            state = torch.where(resets[t][:, None, None, None], torch.zeros_like(state), state)
        state = a_t[:, :, None, None] * state + xdt_t[..., None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))
    y = torch.stack(ys, dim=1)
    out = _gate(y, x, D, z, cd).to(x.dtype)
    return (out, state) if return_final_states else out


# --------------------------------------------------------------------------------------------
# the chunked SSD form (PyTorch ops, differentiated by autograd)
# --------------------------------------------------------------------------------------------


def _ssd_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
               dt_limit):
    """Returns (out, final state). Index names: b batch, c chunk, l/s step in the chunk (output /
    source), g group, r head within the group, p headdim, n dstate."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    rep = nheads // ngroups
    cd = _compute_dtype(x)
    dev = x.device
    q = min(chunk_size, seqlen)  # the values do not depend on the chunk size; skip dead padding
    nchunks = cdiv(seqlen, q)
    pad = nchunks * q - seqlen

    dtp = _discretised_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # [b, T, h]
    xdt = x.to(cd) * dtp[..., None]
    Bc, Cc = B.to(cd), C.to(cd)
    if pad:  # padded steps: dt' = 0 (decay 1) and no input, so they carry the state unchanged
        dtp = F.pad(dtp, (0, 0, 0, pad))
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        Bc = F.pad(Bc, (0, 0, 0, 0, 0, pad))
        Cc = F.pad(Cc, (0, 0, 0, 0, 0, pad))
    # x, B, C are often strided slices of one projection (as in Mamba-2): reshape, no copy
    xdt = xdt.reshape(batch, nchunks, q, ngroups, rep, headdim)
    Bc = Bc.reshape(batch, nchunks, q, ngroups, dstate)
    Cc = Cc.reshape(batch, nchunks, q, ngroups, dstate)
    # log decays, [b, c, g, r, q]
    dA = (dtp * A.to(cd)).reshape(batch, nchunks, q, ngroups, rep).permute(0, 1, 3, 4, 2)

    # segment sums seg[l, s] = sum_{s < k <= l} dA_k (0 for l <= s): a cumulative sum per column,
    # so no difference of two large cumulative sums. exp(seg) <= 1 on and below the diagonal
    # for A <= 0; above it seg = 0 (exp 1), zeroed by the mask folded into C B^T below.
    ar = torch.arange(q, device=dev)
    below = ar[:, None] > ar[None, :]  # k > s
    causal = ar[:, None] >= ar[None, :]  # l >= s
    seg = torch.cumsum(torch.where(below, dA.unsqueeze(-1), 0.0), dim=-2)
    cum = torch.cumsum(dA, dim=-1)  # sum_{k <= l} dA_k: decay from the chunk's entering state

    reset_chunk = None
    if seq_idx is None:
        within = causal
        to_end = torch.exp(seg[..., q - 1, :])  # [b, c, g, r, s]: decay from s to the chunk end
        from_start = torch.exp(cum)  # [b, c, g, r, l]
    else:
        ids = torch.cumsum(_boundaries(seq_idx).to(torch.int64), dim=1)  # sequence number
        if pad:
            ids = torch.cat([ids, ids[:, -1:].expand(batch, pad)], dim=1)
        ids = ids.view(batch, nchunks, q)
        # the sequence of the step before each chunk (0 before the first: the initial state's)
        ids_prev = torch.cat([torch.zeros_like(ids[:, :1, 0]), ids[:, :-1, -1]], dim=1)
        same = ids[:, :, :, None] == ids[:, :, None, :]  # [b, c, l, s]
        within = (causal & same)[:, :, None]  # [b, c, 1, l, s]
        reaches_end = (ids == ids[:, :, -1:])[:, :, None, None]  # [b, c, 1, 1, s]
        reached = (ids == ids_prev[..., None])[:, :, None, None]  # [b, c, 1, 1, l]
        to_end = torch.exp(seg[..., q - 1, :]).masked_fill(~reaches_end, 0.0)
        from_start = torch.exp(cum).masked_fill(~reached, 0.0)
        reset_chunk = ids[:, :, -1] != ids_prev  # [b, c]: the entering state is dropped

    # 1. within-chunk (diagonal blocks): y_l = sum_{s <= l} (C_l . B_s) decay[l, s] dt_s x_s;
    #    the causal / same-sequence mask is applied to the per-group C B^T, and multiplying by it
    #    zeroes the masked decays (finite) and their gradients
    cb = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc).masked_fill(~within, 0.0)
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", torch.exp(seg) * cb[:, :, :, None], xdt)

    # 2. each chunk's contribution to its end state
    weighted = xdt * to_end.permute(0, 1, 4, 2, 3)[..., None]  # [b, c, s, g, r, p]
    chunk_states = torch.einsum("bcsgn,bcsgrp->bcgrpn", Bc, weighted)

    # 3. states passed between chunks: h_c = exp(sum of the chunk's dA) h_{c-1} + chunk_states_c,
    #    dropped where a chunk holds a boundary; linear_scan over the chunk index
    chunk_decay = torch.exp(cum[..., -1])  # [b, c, g, r]
    per_chunk = headdim * dstate
    a = chunk_decay[..., None].expand(batch, nchunks, ngroups, rep, per_chunk)
    a = a.reshape(batch, nchunks, nheads * per_chunk)
    h0 = (initial_states.to(cd).reshape(batch, nheads * per_chunk)
          if initial_states is not None else None)
    states = linear_scan(a, chunk_states.reshape(batch, nchunks, nheads * per_chunk), h0,
                         reset=reset_chunk, backend=fallback_backend(dev))
    final = states[:, -1].view(batch, nheads, headdim, dstate)
    first = h0 if h0 is not None else torch.zeros_like(states[:, 0])
    entering = torch.cat([first[:, None], states[:, :-1]], dim=1)
    entering = entering.view(batch, nchunks, ngroups, rep, headdim, dstate)

    # 4. the entering state's share of each output (off-diagonal blocks)
    y_off = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, entering)
    y = y + y_off * from_start.permute(0, 1, 4, 2, 3)[..., None]

    y = y.reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
    out = _gate(y, x, D, z, cd).to(x.dtype)
    return out, final


# --------------------------------------------------------------------------------------------
# Triton kernels: the forward of the chunked form (the backward recomputes with _ssd_torch)
# --------------------------------------------------------------------------------------------


@jit
def _discretise(dt, bias, SOFTPLUS: tl.constexpr, DT_MIN: tl.constexpr, DT_MAX: tl.constexpr,
                ACC: tl.constexpr):
    """``clamp(softplus?(dt + bias), DT_MIN, DT_MAX)`` in ``ACC``: ``_discretised_dt`` for the
    kernels (``bias`` 0.0 without ``dt_bias``; softplus linear above 20, as torch's)."""
    d = dt + bias
    if SOFTPLUS:
        d = tl.where(d > 20.0, d, tl.log(1.0 + tl.exp(tl.minimum(d, 20.0))))
    return tl.minimum(tl.maximum(d, tl.full([], DT_MIN, ACC)), tl.full([], DT_MAX, ACC))


@jit
def _ssd_chunk_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, ids_ptr, states_ptr, decay_ptr,
    T, Q, P, N, REP, NCHUNKS, NPBLK,
    s_xb, s_xt, s_xh, s_xp,
    s_tb, s_tt, s_th,
    s_A, s_bias,
    s_Bb, s_Bt, s_Bg, s_Bn,
    s_ib, s_it,
    s_sb, s_sh, s_sc, s_sp, s_sn,
    s_db, s_dh, s_dc,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_MIN: tl.constexpr, DT_MAX: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program = (batch row x chunk, head, BLOCK_P x BLOCK_N of the state): the chunk's own end
    state ``sum_s exp(seg[end, s]) dt'_s x_s B_s^T`` (steps of an earlier sequence than the
    chunk's last step masked out) and, from the first block, its total decay ``exp(sum dA)``.

    Steps run in tiles of BLOCK_T from the chunk's end backwards; the decay from step ``s`` to the
    end is ``exp(suffix of the tile after s + tail)``, ``tail`` the sum over the later tiles: sums
    of same-signed terms only, never a difference of cumulative sums.
    """
    pid_bc = tl.program_id(0)
    h = tl.program_id(1)
    pid_pn = tl.program_id(2)
    b = pid_bc // NCHUNKS
    c = pid_bc % NCHUNKS
    pid_p = pid_pn % NPBLK
    g = h // REP
    t0 = c * Q
    qlen = tl.minimum(Q, T - t0)  # valid steps of this chunk (the last one may be short)
    rows = tl.arange(0, BLOCK_T)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    n = (pid_pn // NPBLK) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    A = tl.load(A_ptr + h * s_A).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h * s_bias).to(ACC)
    else:
        bias = 0.0
    if HAS_SEQ:
        id_end = tl.load(ids_ptr + b * s_ib + (t0 + qlen - 1) * s_it)
    later = rows[:, None] > rows[None, :]  # [k, s]: step k comes after step s
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    tail = tl.sum(tl.zeros([BLOCK_T], dtype=ACC), axis=0)
    ntiles = tl.cdiv(qlen, BLOCK_T)
    for i in range(0, ntiles):
        s = (ntiles - 1 - i) * BLOCK_T + rows
        smask = s < qlen
        t = t0 + s
        dtv = tl.load(dt_ptr + b * s_tb + t * s_tt + h * s_th, mask=smask, other=0.0).to(ACC)
        dtv = _discretise(dtv, bias, SOFTPLUS, DT_MIN, DT_MAX, ACC)
        dtv = tl.where(smask, dtv, 0.0)  # padded steps: decay 1, no input
        dA = dtv * A
        suffix = tl.sum(tl.where(later, dA[:, None], 0.0), axis=0)  # sum over k > s in the tile
        w = dtv * tl.exp(suffix + tail)
        if HAS_SEQ:
            ids = tl.load(ids_ptr + b * s_ib + t * s_it, mask=smask, other=0)
            w = tl.where(ids == id_end, w, 0.0)
        xT = tl.load(x_ptr + b * s_xb + h * s_xh + p[:, None] * s_xp + t[None, :] * s_xt,
                     mask=pmask[:, None] & smask[None, :], other=0.0).to(ACC)
        Bs = tl.load(B_ptr + b * s_Bb + g * s_Bg + t[:, None] * s_Bt + n[None, :] * s_Bn,
                     mask=smask[:, None] & nmask[None, :], other=0.0).to(ACC)
        acc += tl.dot(xT * w[None, :], Bs, input_precision=DOT)
        tail += tl.sum(dA, axis=0)
    tl.store(states_ptr + b * s_sb + h * s_sh + c * s_sc + p[:, None] * s_sp + n[None, :] * s_sn,
             acc, mask=pmask[:, None] & nmask[None, :])
    tl.store(decay_ptr + b * s_db + h * s_dh + c * s_dc, tl.exp(tail), mask=pid_pn == 0)


@jit
def _ssd_chunk_scan_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ids_ptr, init_ptr, states_ptr,
    out_ptr,
    T, Q, P, N, REP, NCHUNKS, NPBLK,
    s_xb, s_xt, s_xh, s_xp,
    s_tb, s_tt, s_th,
    s_A, s_bias,
    s_Bb, s_Bt, s_Bg, s_Bn,
    s_Cb, s_Ct, s_Cg, s_Cn,
    s_Dh, s_Dp,
    s_zb, s_zt, s_zh, s_zp,
    s_ib, s_it,
    s_0b, s_0h, s_0p, s_0n,
    s_sb, s_sh, s_sc, s_sp, s_sn,
    s_ob, s_ot, s_oh, s_op,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
    HAS_INIT: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_MIN: tl.constexpr, DT_MAX: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program = (batch row x chunk, head, BLOCK_T output steps x BLOCK_P of headdim).

    ``y_l = sum_{s <= l, same sequence} (C_l . B_s) exp(seg[l, s]) dt'_s x_s`` over the source
    tiles from the diagonal one backwards, plus the entering state's share
    ``exp(seg[l, chunk start]) C_l S_prev`` (zero past a boundary), the ``D x`` skip and the
    ``silu(z)`` gate. Segment sums: the diagonal tile's by a cumulative sum down each column of
    ``[k > s] dA_k`` (per pair); an earlier tile's as ``R_l + suffix_s + mid``, the prefix of the
    output tile up to ``l``, the suffix of the source tile after ``s`` and the sum over the tiles
    in between; all sums of same-signed terms, so no small decay is lost behind large ones.
    ``S_prev`` is the passed state after chunk ``c - 1`` (``initial_states`` for chunk 0).
    """
    pid_bc = tl.program_id(0)
    h = tl.program_id(1)
    pid_lp = tl.program_id(2)
    b = pid_bc // NCHUNKS
    c = pid_bc % NCHUNKS
    lt = pid_lp // NPBLK
    pid_p = pid_lp % NPBLK
    g = h // REP
    t0 = c * Q
    qlen = tl.minimum(Q, T - t0)
    rows = tl.arange(0, BLOCK_T)
    li = lt * BLOCK_T + rows  # the output steps l within the chunk
    lmask = li < qlen
    tl_out = t0 + li
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    nb = tl.arange(0, BLOCK_N)
    A = tl.load(A_ptr + h * s_A).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h * s_bias).to(ACC)
    else:
        bias = 0.0
    dt_l = tl.load(dt_ptr + b * s_tb + tl_out * s_tt + h * s_th, mask=lmask, other=0.0).to(ACC)
    dt_l = tl.where(lmask, _discretise(dt_l, bias, SOFTPLUS, DT_MIN, DT_MAX, ACC), 0.0)
    R = tl.cumsum(dt_l * A, axis=0)  # sum of dA over the output tile up to l
    C_ptrs = C_ptr + b * s_Cb + g * s_Cg + tl_out[:, None] * s_Ct
    if HAS_SEQ:
        ids_l = tl.load(ids_ptr + b * s_ib + tl_out * s_it, mask=lmask, other=0)
    later = rows[:, None] > rows[None, :]  # [k, s]: step k comes after step s
    acc = tl.zeros([BLOCK_T, BLOCK_P], dtype=ACC)
    mid = tl.sum(tl.zeros([BLOCK_T], dtype=ACC), axis=0)  # sum of dA over tiles (j, lt)
    for jj in range(0, lt + 1):
        s = (lt - jj) * BLOCK_T + rows
        smask = s < qlen
        ts = t0 + s
        dt_s = tl.load(dt_ptr + b * s_tb + ts * s_tt + h * s_th, mask=smask, other=0.0).to(ACC)
        dt_s = tl.where(smask, _discretise(dt_s, bias, SOFTPLUS, DT_MIN, DT_MAX, ACC), 0.0)
        dA_s = tl.where(later, (dt_s * A)[:, None], 0.0)  # [k, s]: dA_k where k > s
        if jj == 0:  # the diagonal tile: seg[l, s] = sum_{s < k <= l} dA_k, per column
            seg = tl.cumsum(dA_s, axis=0)
        else:
            seg = R[:, None] + (tl.sum(dA_s, axis=0) + mid)[None, :]
            mid += tl.sum(dt_s * A, axis=0)
        keep = (li[:, None] >= s[None, :]) & lmask[:, None] & smask[None, :]
        if HAS_SEQ:
            ids_s = tl.load(ids_ptr + b * s_ib + ts * s_it, mask=smask, other=0)
            keep = keep & (ids_l[:, None] == ids_s[None, :])
        cb = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)  # C_l . B_s, over dstate in tiles
        for n0 in range(0, N, BLOCK_N):
            n = n0 + nb
            C_l = tl.load(C_ptrs + n[None, :] * s_Cn, mask=lmask[:, None] & (n < N)[None, :],
                          other=0.0).to(ACC)
            BsT = tl.load(B_ptr + b * s_Bb + g * s_Bg + n[:, None] * s_Bn + ts[None, :] * s_Bt,
                          mask=(n < N)[:, None] & smask[None, :], other=0.0).to(ACC)
            cb += tl.dot(C_l, BsT, input_precision=DOT)
        wgt = tl.where(keep, cb * tl.exp(seg) * dt_s[None, :], 0.0)
        x_s = tl.load(x_ptr + b * s_xb + h * s_xh + ts[:, None] * s_xt + p[None, :] * s_xp,
                      mask=smask[:, None] & pmask[None, :], other=0.0).to(ACC)
        acc += tl.dot(wgt, x_s, input_precision=DOT)
    # the entering state's share: mid is now the sum of dA over the tiles before lt
    # (c as a block: the interpreter broadcasts a scalar boolean into int32, not a mask)
    chunk = nb[:, None] * 0 + c
    y_prev = tl.zeros([BLOCK_T, BLOCK_P], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + nb
        C_l = tl.load(C_ptrs + n[None, :] * s_Cn, mask=lmask[:, None] & (n < N)[None, :],
                      other=0.0).to(ACC)
        pn_mask = (n < N)[:, None] & pmask[None, :]
        prevT = tl.load(states_ptr + b * s_sb + h * s_sh + (c - 1) * s_sc + n[:, None] * s_sn
                        + p[None, :] * s_sp, mask=pn_mask & (chunk > 0), other=0.0).to(ACC)
        if HAS_INIT:
            prevT += tl.load(init_ptr + b * s_0b + h * s_0h + n[:, None] * s_0n
                             + p[None, :] * s_0p, mask=pn_mask & (chunk == 0), other=0.0).to(ACC)
        y_prev += tl.dot(C_l, prevT, input_precision=DOT)
    from_start = tl.exp(R + mid)
    if HAS_SEQ:  # the entering state's sequence is that of the step before the chunk (0 at -1)
        id_prev = tl.load(ids_ptr + b * s_ib + (t0 - 1) * s_it, mask=c > 0, other=0)
        from_start = tl.where(ids_l == id_prev, from_start, 0.0)
    acc += y_prev * from_start[:, None]
    lp_mask = lmask[:, None] & pmask[None, :]
    if HAS_D:
        x_l = tl.load(x_ptr + b * s_xb + h * s_xh + tl_out[:, None] * s_xt + p[None, :] * s_xp,
                      mask=lp_mask, other=0.0).to(ACC)
        Dv = tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=pmask, other=0.0).to(ACC)
        acc += x_l * Dv[None, :]
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + h * s_zh + tl_out[:, None] * s_zt + p[None, :] * s_zp,
                     mask=lp_mask, other=0.0).to(ACC)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(out_ptr + b * s_ob + h * s_oh + tl_out[:, None] * s_ot + p[None, :] * s_op,
             acc.to(out_ptr.dtype.element_ty), mask=lp_mask)


@jit
def _ssd_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    P, N, REP,
    s_sb, s_sh, s_sp, s_sn,
    s_xb, s_xh, s_xp,
    s_tb, s_th,
    s_A, s_bias,
    s_Bb, s_Bg, s_Bn,
    s_Cb, s_Cg, s_Cn,
    s_Dh, s_Dp,
    s_zb, s_zh, s_zp,
    s_ob, s_oh, s_op,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_MIN: tl.constexpr, DT_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program = (batch row, head, BLOCK_P of headdim): one step of the recurrence on the
    ``[BLOCK_P, dstate]`` state, written back in place, and its output."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    pid_p = tl.program_id(2)
    g = h // REP
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    m = pmask[:, None] & nmask[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h * s_bias).to(ACC)
    else:
        bias = 0.0
    dtv = _discretise(tl.load(dt_ptr + b * s_tb + h * s_th).to(ACC), bias, SOFTPLUS, DT_MIN,
                      DT_MAX, ACC)
    A = tl.load(A_ptr + h * s_A).to(ACC)
    x = tl.load(x_ptr + b * s_xb + h * s_xh + p * s_xp, mask=pmask, other=0.0).to(ACC)
    Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n * s_Bn, mask=nmask, other=0.0).to(ACC)
    Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n * s_Cn, mask=nmask, other=0.0).to(ACC)
    s_ptrs = state_ptr + b * s_sb + h * s_sh + p[:, None] * s_sp + n[None, :] * s_sn
    state = tl.load(s_ptrs, mask=m, other=0.0).to(ACC)
    state = tl.exp(dtv * A) * state + (dtv * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        y = y + x * tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=pmask, other=0.0).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + h * s_zh + p * s_zp, mask=pmask, other=0.0).to(ACC)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + b * s_ob + h * s_oh + p * s_op, y.to(out_ptr.dtype.element_ty), mask=pmask)


def _ssd_blocks(q: int, headdim: int, dstate: int, device: torch.device):
    """(BLOCK_T, BLOCK_P, BLOCK_N, num_warps) for a chunk of ``q`` steps."""
    if device.type == "cpu":  # interpreter: tiles of 4 steps and of 4 dstate columns, so that
        # the tests run every tiled path (several time tiles per chunk, dstate in pieces)
        return min(4, next_pow2(q)), min(4, next_pow2(headdim)), min(4, next_pow2(dstate)), 1
    # Untuned: no GPU was available when this was written. Compiled for sm_90 (triton 3.9,
    # num_stages=1), 32 x 32 x 32 tiles need ~230 registers and 4-8 KiB of shared memory and
    # do not spill; 64-step tiles spilled. tl.dot wants every side >= 16.
    return min(32, max(16, next_pow2(q))), 32 if headdim > 16 else 16, 32 if dstate > 16 else 16, 4


def _step_blocks(headdim: int, dstate: int, device: torch.device):
    """(BLOCK_P, BLOCK_N) of the step kernel: the whole dstate, headdim rows in blocks."""
    block_n = next_pow2(dstate)
    if device.type == "cpu":  # interpreter: 2 headdim rows per program, so tests split p
        return min(2, next_pow2(headdim)), block_n
    return max(1, min(next_pow2(headdim), 4096 // block_n)), block_n  # untuned: ~4K values


def _d_strides(D):
    """(head stride, headdim stride) of ``D`` ``[nheads, headdim]`` or ``[nheads]`` (0 over p)."""
    if D is None:
        return 0, 0
    return (D.stride(0), D.stride(1)) if D.dim() == 2 else (D.stride(0), 0)


def _limits(dt_limit):
    lo, hi = (float(v) for v in dt_limit)
    return dict(DT_MIN=lo, DT_MAX=hi)


def _ssd_fwd_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                    dt_softplus, dt_limit):
    """The chunked form by the Triton kernels; returns (out, final state). No autograd."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    rep = nheads // ngroups
    cd = _compute_dtype(x)
    dev = x.device
    q = min(chunk_size, seqlen)
    nchunks = cdiv(seqlen, q)
    block_t, block_p, block_n, num_warps = _ssd_blocks(q, headdim, dstate, dev)
    npblk = cdiv(headdim, block_p)
    # float32 products on tensor cores in three TF32 passes (about float32's accuracy; plain
    # TF32 would be ~1e-3 off); float64, and numpy in the interpreter, are exact
    dot = "tf32x3" if cd == torch.float32 and dev.type == "cuda" else "ieee"
    flags = dict(HAS_BIAS=dt_bias is not None, HAS_SEQ=seq_idx is not None,
                 SOFTPLUS=bool(dt_softplus), **_limits(dt_limit), ACC=tl_acc_dtype(cd), DOT=dot,
                 BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=num_warps,
                 num_stages=1)
    ids = reset = None
    if seq_idx is not None:
        # sequence number of every step (0 before the first boundary) and the chunks whose
        # last step lies in another sequence than the step before the chunk (the passed state
        # is dropped there), as in _ssd_torch
        ids = torch.cumsum(_boundaries(seq_idx), dim=1, dtype=torch.int32)
        ends = (torch.arange(nchunks, device=dev) * q + (q - 1)).clamp_(max=seqlen - 1)
        last = ids[:, ends]
        reset = last != torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)
    ids_arg = ids if ids is not None else x
    ids_strides = ids.stride() if ids is not None else (0, 0)
    bias_arg = dt_bias if dt_bias is not None else x
    bias_stride = dt_bias.stride(0) if dt_bias is not None else 0

    # 1. each chunk's own end state and total decay; [batch, nheads, chunk, ...] so that the
    #    scan over chunks below sees (batch, head) rows without a copy
    states = torch.empty((batch, nheads, nchunks, headdim, dstate), dtype=cd, device=dev)
    decay = torch.empty((batch, nheads, nchunks), dtype=cd, device=dev)
    grid = (batch * nchunks, nheads, npblk * cdiv(dstate, block_n))
    kernel_for(_ssd_chunk_state_kernel, dev)[grid](
        x, dt, A, B, bias_arg, ids_arg, states, decay,
        seqlen, q, headdim, dstate, rep, nchunks, npblk,
        *x.stride(), *dt.stride(), A.stride(0), bias_stride, *B.stride(), *ids_strides,
        *states.stride(), *decay.stride(),
        **flags,
    )

    # 2. the states passed between chunks: linear_scan over the chunk index per (batch, head),
    #    dropping the carried state where a chunk holds a boundary
    per_head = headdim * dstate
    a = decay.view(batch * nheads, nchunks, 1).expand(-1, -1, per_head)
    h0 = None
    if initial_states is not None:
        h0 = initial_states.to(cd).reshape(batch * nheads, per_head)
    if reset is not None:
        reset = reset[:, None].expand(-1, nheads, -1).reshape(batch * nheads, nchunks)
    passed = linear_scan(a, states.view(batch * nheads, nchunks, per_head), h0, reset=reset,
                         backend="triton")
    final = passed[:, -1].reshape(batch, nheads, headdim, dstate).clone()
    passed = passed.view(batch, nheads, nchunks, headdim, dstate)

    # 3. outputs: within-chunk term, the entering state's share, D x and the gate
    out = torch.empty((batch, seqlen, nheads, headdim), dtype=x.dtype, device=dev)
    init_arg = initial_states if initial_states is not None else passed
    init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0, 0)
    kernel_for(_ssd_chunk_scan_kernel, dev)[(batch * nchunks, nheads, cdiv(q, block_t) * npblk)](
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x, bias_arg, ids_arg,
        init_arg, passed, out,
        seqlen, q, headdim, dstate, rep, nchunks, npblk,
        *x.stride(), *dt.stride(), A.stride(0), bias_stride, *B.stride(), *C.stride(),
        *_d_strides(D), *(z.stride() if z is not None else (0, 0, 0, 0)), *ids_strides,
        *init_strides, *passed.stride(), *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=initial_states is not None, **flags,
    )
    return out, final


class SsdChunkScanFn(torch.autograd.Function):
    """``ssd_chunk_scan`` with a Triton forward and an exact backward.

    The forward runs the Triton kernels and saves the inputs only. The backward recomputes the
    chunked PyTorch form (``_ssd_torch``) under ``torch.enable_grad()`` and returns its
    vector-Jacobian product, so the gradients are exactly the torch path's (there is no
    hand-written Triton backward; a training step costs the Triton forward plus the torch
    path's forward and backward, and keeps nothing but the inputs between the two passes).
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size,
                dt_softplus, dt_limit):
        out, final = _ssd_fwd_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                                     seq_idx, dt_softplus, dt_limit)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
        ctx.set_materialize_grads(False)  # an unused output passes None, not zeros
        ctx.config = (chunk_size, dt_softplus, dt_limit)
        return out, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dfinal):
        *inputs, seq_idx = ctx.saved_tensors
        chunk_size, dt_softplus, dt_limit = ctx.config
        # the differentiable inputs autograd asks for, and the outputs that received a gradient
        wanted = [i for i, (t, w) in enumerate(zip(inputs, ctx.needs_input_grad))
                  if t is not None and w]
        used = [(o, g) for o, g in enumerate((dout, dfinal)) if g is not None]
        grads = [None] * len(inputs)
        if wanted and used:
            ins = [t.detach().requires_grad_(i in wanted) if t is not None else None
                   for i, t in enumerate(inputs)]
            x, dt, A, B, C, D, z, dt_bias, init = ins
            with torch.enable_grad():
                outs = _ssd_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, init, seq_idx,
                                  dt_softplus, dt_limit)
            found = torch.autograd.grad([outs[o] for o, _ in used], [ins[i] for i in wanted],
                                        [g for _, g in used], allow_unused=True)
            for i, g in zip(wanted, found):
                grads[i] = g
        return (*grads, None, None, None, None)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                   seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                   return_final_states=False, backend="auto"):
    """Mamba-2's SSD scan; same arguments, layouts and results as mamba_ssm's
    ``mamba_chunk_scan_combined`` (also exported under that name), plus ``backend``.

    Args:
        x: ``[batch, seqlen, nheads, headdim]``. dt: ``[batch, seqlen, nheads]``.
        A: ``[nheads]`` (negative for a decaying state).
        B, C: ``[batch, seqlen, ngroups, dstate]``; head ``h`` reads group
            ``h // (nheads // ngroups)``.
        chunk_size: steps per chunk of the chunked form (a speed knob: the values do not depend
            on it beyond rounding; ``seqlen`` need not be a multiple, the last chunk is padded).
        D: ``[nheads, headdim]`` or ``[nheads]``, the skip ``D * x`` added before the gate.
        z: like ``x``; the output is ``(y + D * x) * silu(z)``.
        dt_bias: ``[nheads]``, added to ``dt`` before the softplus.
        initial_states: ``[batch, nheads, headdim, dstate]``, the state before step 0
            (differentiable); with ``seq_idx`` it reaches only positions of sequence 0 before the
            first change (see the module docstring).
        seq_idx: integer ``[batch, seqlen]``; no state passes between positions whose ids
            differ (a boundary before every change drops the carried state).
        dt_softplus: apply softplus to ``dt + dt_bias``.
        dt_limit: ``(min, max)`` clamp of the discretised ``dt`` (always applied, as mamba_ssm).
        return_final_states: also return the state after the last step (differentiable).
        backend: "auto" (``$KERNELS_BACKEND`` if set, else CUDA tensors -> "triton" when triton
            is installed, anything else -> "torch"), "triton" (the Triton forward, with the
            exact backward of ``SsdChunkScanFn``; CPU tensors only under
            ``TRITON_INTERPRET=1``), "torch" (the chunked SSD form in PyTorch ops) or "ref" (the
            sequential loop; ignores ``chunk_size``).

    Returns:
        ``out`` ``[batch, seqlen, nheads, headdim]`` in ``x``'s dtype, and with
        ``return_final_states`` the final state ``[batch, nheads, headdim, dstate]`` (float32,
        or float64 for float64 ``x``).
    """
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_limit)
    _check_chunk_size(chunk_size)
    chosen = resolve_backend(backend, x.device, _OP)
    if chosen == "ref":
        return ssd_chunk_scan_ref(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                  dt_softplus, dt_limit, return_final_states)
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
            bool(dt_softplus), dt_limit)
    if chosen == "torch":
        out, final = _ssd_torch(*args)
    elif needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states):
        out, final = SsdChunkScanFn.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                          chunk_size, bool(dt_softplus), dt_limit)
    else:  # nothing to differentiate: skip the autograd.Function machinery
        out, final = _ssd_fwd_triton(*args)
    return (out, final) if return_final_states else out


#: mamba_ssm's name (same positional order: x, dt, A, B, C, chunk_size, D, z, dt_bias, ...)
mamba_chunk_scan_combined = ssd_chunk_scan


def ssd_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf"))):
    """One step of the SSD recurrence in plain PyTorch; updates ``state`` in place.

    Same arguments and result as ``ssd_state_update``. Computes in float32 (float64 for float64
    ``x``); the new state is written back in ``state``'s dtype.
    """
    nheads, ngroups = _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit,
                                         "ssd_state_update_ref")
    cd = _compute_dtype(x)
    rep = nheads // ngroups
    dtp = _discretised_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # [batch, nheads]
    Bh = B.to(cd).repeat_interleave(rep, dim=1)  # [batch, nheads, dstate]
    Ch = C.to(cd).repeat_interleave(rep, dim=1)
    new = (torch.exp(dtp * A.to(cd))[:, :, None, None] * state.to(cd)
           + (x.to(cd) * dtp[..., None])[..., None] * Bh[:, :, None, :])
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    return _gate(y, x, D, z, cd).to(x.dtype)


def ssd_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                     dt_limit=(0.0, float("inf")), backend="auto"):
    """One SSD step for imagination / acting (mamba_ssm's ``selective_state_update`` in its
    Mamba-2 layout, with per-head ``dt`` and scalar ``A``).

    Args:
        state: ``[batch, nheads, headdim, dstate]``, updated in place.
        x: ``[batch, nheads, headdim]``. dt: ``[batch, nheads]``. A, dt_bias: ``[nheads]``.
        B, C: ``[batch, ngroups, dstate]``. D: ``[nheads, headdim]`` or ``[nheads]``. z: like x.
        dt_softplus, dt_limit: as in ``ssd_chunk_scan``.
        backend: "auto" (as ``ssd_chunk_scan``'s, except that while autograd records a call
            with an input that requires grad it takes the PyTorch step: the Triton step has no
            backward), "triton" (raises ``ValueError`` in that case), "torch" or "ref" (both
            the plain differentiable step).

    Returns:
        ``y`` ``[batch, nheads, headdim]`` in ``x``'s dtype. Stepping it over ``seqlen`` steps
        from ``initial_states`` reproduces ``ssd_chunk_scan``'s output and final state (a
        boundary of ``seq_idx`` corresponds to zeroing ``state`` before the step).
    """
    nheads, ngroups = _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    wants_grad = needs_grad(state, x, dt, A, B, C, D, z, dt_bias)
    chosen = resolve_backend(
        backend, state.device, _STEP_OP,
        triton_unsupported="the Triton step has no backward pass" if wants_grad else None)
    if chosen in ("torch", "ref"):
        return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    batch, _, headdim, dstate = state.shape
    block_p, block_n = _step_blocks(headdim, dstate, state.device)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    cd = _compute_dtype(x)
    kernel_for(_ssd_state_update_kernel, state.device)[(batch, nheads, cdiv(headdim, block_p))](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, out,
        headdim, dstate, nheads // ngroups,
        *state.stride(), *x.stride(), *dt.stride(), A.stride(0),
        dt_bias.stride(0) if dt_bias is not None else 0, *B.stride(), *C.stride(),
        *_d_strides(D), *(z.stride() if z is not None else (0, 0, 0)), *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), **_limits(dt_limit), ACC=tl_acc_dtype(cd), BLOCK_P=block_p,
        BLOCK_N=block_n, num_warps=4,
    )
    return out
