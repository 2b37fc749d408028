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
and the off-diagonal term of each chunk's entering state. There is no Triton kernel yet: "auto"
takes "torch" on every device, and an explicit ``backend="triton"`` raises ``ValueError``.

Gradients of the chunked form are plain autograd through its PyTorch ops (there is no
hand-written backward, so no ``autograd.Function`` here); the inter-chunk pass is
``linear_scan``'s, whose backward is its adjoint scan. Autograd keeps the ``[chunk, chunk]``
decay and ``C B^T`` matrices of every chunk (``batch * seqlen * nheads * chunk_size`` values each)
for the backward pass.

Numerics: inputs are computed in float32 (float64 for float64 ``x``); ``out`` has ``x``'s dtype,
the final state the compute dtype. Decays are formed only as ``exp`` of sums of ``dt' * A`` over
the steps they span (the segment sums are accumulated per pair, never as a difference of two
cumulative sums, which loses the small decays behind long runs of large ``dt``); masked entries
are zeroed after ``exp`` of finite values, so values and gradients stay finite for ``A <= 0``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels._triton_utils import (
    BACKENDS,
    ENV_BACKEND,
    REAL_DTYPES,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    fallback_backend,
)
from kernels.linear_scan import linear_scan

__all__ = [
    "SSD_BACKENDS",
    "mamba_chunk_scan_combined",
    "ssd_chunk_scan",
    "ssd_chunk_scan_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]

_OP = "ssd_chunk_scan"
_STEP_OP = "ssd_state_update"

#: the backends the SSD ops have (no Triton kernel and no native loop of their own yet)
SSD_BACKENDS = ("auto", "torch", "ref")

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------
# input checks and shared pieces
# --------------------------------------------------------------------------------------------


def _resolve_backend(backend, op):
    """"auto" (or None) -> ``$KERNELS_BACKEND`` if set ("ref" -> "ref", anything else -> "torch":
    a process-wide "triton" or "native" means "torch" for these ops), else "torch"."""
    chosen = "auto" if backend is None else backend
    if chosen in ("triton", "native"):
        kind = "Triton kernel" if chosen == "triton" else "native CPU loop"
        raise ValueError(f"{op}: backend={chosen!r} is not available (there is no {kind} for the "
                         f"SSD scan yet); available backends: {SSD_BACKENDS}")
    if chosen not in SSD_BACKENDS:
        raise ValueError(f"{op}: backend={chosen!r} is not one of {SSD_BACKENDS}")
    if chosen == "auto":
        env = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{op}: ${ENV_BACKEND}={env!r} is not one of {BACKENDS}")
        return "ref" if env == "ref" else "torch"
    return chosen


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
        backend: "auto" (``$KERNELS_BACKEND`` if set, else "torch", on every device), "torch"
            (the chunked SSD form) or "ref" (the sequential loop; ignores ``chunk_size``). There
            is no Triton kernel yet: "triton" (and "native") raise ``ValueError``.

    Returns:
        ``out`` ``[batch, seqlen, nheads, headdim]`` in ``x``'s dtype, and with
        ``return_final_states`` the final state ``[batch, nheads, headdim, dstate]`` (float32,
        or float64 for float64 ``x``).
    """
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_limit)
    _check_chunk_size(chunk_size)
    chosen = _resolve_backend(backend, _OP)
    if chosen == "ref":
        return ssd_chunk_scan_ref(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                  dt_softplus, dt_limit, return_final_states)
    out, final = _ssd_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                            dt_softplus, dt_limit)
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
        backend: "auto", "torch" or "ref" (all the same plain step; "triton" raises).

    Returns:
        ``y`` ``[batch, nheads, headdim]`` in ``x``'s dtype. Stepping it over ``seqlen`` steps
        from ``initial_states`` reproduces ``ssd_chunk_scan``'s output and final state (a
        boundary of ``seq_idx`` corresponds to zeroing ``state`` before the step).
    """
    _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    _resolve_backend(backend, _STEP_OP)
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
