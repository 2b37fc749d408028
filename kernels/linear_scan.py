"""First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t`` along time, per channel.

Layout: ``a``, ``b`` and the output are ``[B, T, D]`` (batch, time, channels); ``h0`` is ``[B, D]``;
``reset`` is a bool ``[B, T]``. Any strides work (the torch path slices views, the Triton kernels
and the native loop take strides; the native loop copies an input whose channel stride is not 1),
the output is contiguous.

Per op, as in mamba_ssm: a Triton kernel with its launcher (``_fwd_triton``/``_bwd_triton``), a
pure-PyTorch sequential reference (``linear_scan_ref``), a fast PyTorch path (``_scan_core``, a
chunked two-pass scan), an ``autograd.Function`` (``LinearScanFn``) and the public
``linear_scan`` that dispatches. On the CPU, "auto" takes the compiled C loop of
``kernels/_native.py`` (one pass over the data; built on first use) when a C compiler is there,
and the chunked PyTorch scan otherwise; both share the backward pass below.

The backward pass of a scan is a scan in the opposite direction over the gradients, with the
coefficients shifted by one step (``lam_t = g_t + a_{t+1} * lam_{t+1}``), which is why the forward
kernel also supports ``reverse``.
"""

from __future__ import annotations

from functools import partial

import torch

from kernels import _native
from kernels._cpu_utils import empty_cpu
from kernels._triton_utils import (
    COMPLEX_DTYPES,
    HAS_TRITON,
    REAL_DTYPES,
    acc_dtype,
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

__all__ = ["LinearScanFn", "linear_scan", "linear_scan_ref"]

_OP = "linear_scan"


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_inputs(a, b, h0, reset, op: str = _OP):
    check_tensor("a", a, op)
    check_tensor("b", b, op)
    if a.dim() != 3:
        raise ValueError(f"{op}: a must be [B, T, D] (batch, time, channels), got shape "
                         f"{tuple(a.shape)}")
    bsz, seqlen, dim = a.shape
    check_shape("b", b, (bsz, seqlen, dim), "[B, T, D], same as a", op)
    if seqlen < 1:
        raise ValueError(f"{op}: T (a.shape[1]) must be >= 1, got {seqlen}")
    if a.dtype not in REAL_DTYPES + COMPLEX_DTYPES:
        raise ValueError(f"{op}: a has dtype {a.dtype}, expected one of "
                         f"{REAL_DTYPES + COMPLEX_DTYPES}")
    if b.dtype != a.dtype:
        raise ValueError(f"{op}: b has dtype {b.dtype}, expected a's dtype {a.dtype}")
    if h0 is not None:
        check_tensor("h0", h0, op)
        check_shape("h0", h0, (bsz, dim), "[B, D]", op)
        if h0.dtype != a.dtype:
            raise ValueError(f"{op}: h0 has dtype {h0.dtype}, expected a's dtype {a.dtype}")
    if reset is not None:
        check_tensor("reset", reset, op)
        check_shape("reset", reset, (bsz, seqlen), "[B, T]", op)
        if reset.dtype != torch.bool:
            raise ValueError(f"{op}: reset has dtype {reset.dtype}, expected torch.bool")
    check_same_device(op, a, b=b, h0=h0, reset=reset)


# --------------------------------------------------------------------------------------------
# reference: the plain sequential definition
# --------------------------------------------------------------------------------------------


def linear_scan_ref(a, b, h0=None, reset=None, reverse=False, return_last=False):
    """Sequential reference: a Python loop over time (differentiable through autograd).

    ``h_t = a_t * (0 if reset_t else h_{t-1}) + b_t`` with ``h_{-1} = h0`` (zeros if None); with
    ``reverse=True`` time runs from ``T-1`` down to 0 and ``h0`` is the state after the end.
    Half-precision inputs are computed in float32 and cast back.
    """
    _check_inputs(a, b, h0, reset, op="linear_scan_ref")
    out_dtype = a.dtype
    acc = acc_dtype(a.dtype)
    a, b = a.to(acc), b.to(acc)
    seqlen = a.shape[1]
    h = h0.to(acc) if h0 is not None else torch.zeros_like(a[:, 0])
    a_steps, b_steps = a.unbind(1), b.unbind(1)  # unbind: one stack in backward, not T copies
    r_steps = reset.unbind(1) if reset is not None else None
    outs = [None] * seqlen
    for t in reversed(range(seqlen)) if reverse else range(seqlen):
        if r_steps is not None:
            h = torch.where(r_steps[t][:, None], torch.zeros_like(h), h)
        h = a_steps[t] * h + b_steps[t]
        outs[t] = h
    out = torch.stack(outs, dim=1).to(out_dtype)
    if return_last:
        return out, h.to(out_dtype)
    return out


# --------------------------------------------------------------------------------------------
# fast PyTorch path: a chunked two-pass scan over views (no padding, no copies of a/b)
# --------------------------------------------------------------------------------------------

# Tuned on a 2-core AMD EPYC (see results/kernels.json): chunks of at most _CHUNK_MAX steps,
# processed in super-blocks of at most _CHUNKS_PER_BLOCK chunks so that a block stays in cache
# between the two passes; 64 chunks per block make each op wide enough ([B, 64, D]) for torch to
# split it over two threads. Below _MIN_CHUNKED steps the plain loop is faster (16 steps of
# [4, 256]: 49 vs 66 us), which also holds for the chunk aggregates of a 256-step scan.
_CHUNK_MAX = 16
_CHUNKS_PER_BLOCK = 64
_MIN_CHUNKED = 33


def _loop_segment(a, b, carry, reverse, out):
    """Plain loop over a short segment; ``carry`` is the state entering it (None = zeros)."""
    a_s, b_s, o_s = a.unbind(1), b.unbind(1), out.unbind(1)
    order = range(len(a_s) - 1, -1, -1) if reverse else range(len(a_s))
    for t in order:
        if carry is None:
            o_s[t].copy_(b_s[t])
        else:
            torch.addcmul(b_s[t], a_s[t], carry, out=o_s[t])
        carry = o_s[t]


def _chunked_segment(a, b, carry, reverse, out, chunk):
    """Scan a segment whose length is a multiple of ``chunk``.

    Pass 1 reduces every chunk to its aggregate (the chunk's local scan end value from a zero
    state, and the product of its coefficients); the aggregates are a linear recurrence over the
    chunks, which this same scan turns into the state entering each chunk (recursively: a few
    dozen small ops instead of one per chunk); pass 2 rescans every chunk from its entering state
    and writes the output. Both passes are loops over the ``chunk`` positions, vectorised over
    all chunks. Only products and fused multiply-adds, no division or logarithm, so ``a = 0`` is
    exact.
    """
    nchunks = a.shape[1] // chunk
    a4 = a.unflatten(1, (nchunks, chunk))
    # unbind once: creating K views in one call is much cheaper than K Python indexings
    a_k = a4.unbind(2)
    b_k = b.unflatten(1, (nchunks, chunk)).unbind(2)
    o_k = out.unflatten(1, (nchunks, chunk)).unbind(2)
    order = range(chunk - 1, -1, -1) if reverse else range(chunk)
    agg = None
    for k in order:
        agg = b_k[k] if agg is None else torch.addcmul(b_k[k], a_k[k], agg)
    prod = a4.prod(dim=2)
    # the state entering each chunk: the chunk aggregates form a recurrence of their own
    # (enter_{c+1} = prod_c * enter_c + agg_c), scanned by the same code, one level down
    edge = torch.empty((agg.shape[0], nchunks + 1, *agg.shape[2:]), dtype=agg.dtype,
                       device=agg.device)
    first, rest = (edge[:, -1], edge[:, :-1]) if reverse else (edge[:, 0], edge[:, 1:])
    if carry is None:
        first.zero_()
    else:
        first.copy_(carry)
    _scan_core(prod, agg, carry, reverse, rest)
    enter = edge[:, 1:] if reverse else edge[:, :-1]
    state = enter
    for k in order:
        torch.addcmul(b_k[k], a_k[k], state, out=o_k[k])
        state = o_k[k]


def _scan_core(a, b, h0, reverse, out):
    """Write ``h`` of the recurrence into ``out``; a, b, out are ``[B, T, ...]`` (any strides).

    Not differentiable by itself (it writes in place); ``LinearScanFn`` wraps it.
    """
    seqlen = a.shape[1]
    if seqlen < _MIN_CHUNKED:
        _loop_segment(a, b, h0, reverse, out)
        return out
    chunk = min(_CHUNK_MAX, max(4, int(round(seqlen**0.5))))
    block = chunk * _CHUNKS_PER_BLOCK
    # segments in processing order: full blocks, then the rest in whole chunks, then a short tail
    bounds = []
    start = 0
    while seqlen - start >= block:
        bounds.append((start, start + block))
        start += block
    rest = (seqlen - start) // chunk * chunk
    if rest:
        bounds.append((start, start + rest))
        start += rest
    if start < seqlen:
        bounds.append((start, seqlen))
    if reverse:  # mirror the segmentation so that the chunked part stays aligned to the end
        bounds = [(seqlen - e, seqlen - s) for s, e in bounds]
    carry = h0
    for s, e in bounds:
        sl = slice(s, e)
        if (e - s) % chunk == 0 and (e - s) // chunk >= 2:
            _chunked_segment(a[:, sl], b[:, sl], carry, reverse, out[:, sl], chunk)
        else:
            _loop_segment(a[:, sl], b[:, sl], carry, reverse, out[:, sl])
        carry = out[:, s] if reverse else out[:, e - 1]
    return out


# the two forms of the (a, b, h0, reverse, out) scan that the forward and backward passes run
_CORES = {"torch": _scan_core, "native": _native.scan}


def scan_into(a, b, h0, out):
    """Forward scan of ``a``, ``b`` (``[B, T, D]``, one dtype of float32/float64/complex) from
    ``h0`` into ``out``, outside autograd, with ``fallback_backend``'s scan. For callers that
    own a reusable output buffer."""
    return _CORES[fallback_backend(a.device)](a, b, h0, False, out)


def _effective_a(a, reset):
    if reset is None:
        return a
    mask = reset.reshape(reset.shape + (1,) * (a.dim() - 2))
    return a.masked_fill(mask, 0)


def _fwd_torch(a, b, h0, reset, reverse, core=_scan_core):
    acc = acc_dtype(a.dtype)
    a_eff = _effective_a(a.to(acc), reset)
    out = empty_cpu(a.shape, acc, a.device)
    core(a_eff, b.to(acc), None if h0 is None else h0.to(acc), reverse, out)
    return out.to(a.dtype)


def _bwd_torch(a, h, h0, reset, grad, reverse, core=_scan_core):
    """Gradients of the scan; returns (grad_a, grad_b, grad_h0 or None).

    ``core`` runs the reverse scan over the gradients: ``_scan_core`` (chunked PyTorch) or
    ``_native.scan`` (the compiled loop, which reads the conj view of a complex ``a`` in place).
    """
    acc = acc_dtype(a.dtype)
    a_eff = _effective_a(a.to(acc), reset)
    g = grad.to(acc)
    h = h.to(acc)
    if a_eff.is_complex():  # d(a*h)/dh = a -> the adjoint multiplies by conj(a)
        a_eff = a_eff.conj()
        h = h.conj()
        h0c = None if h0 is None else h0.to(acc).conj()
    else:
        h0c = None if h0 is None else h0.to(acc)
    lam = empty_cpu(g.shape, g.dtype, g.device)  # lam_t = dL/dh_t (total)
    grad_a = empty_cpu(g.shape, g.dtype, g.device)
    if not reverse:
        # lam_{T-1} = g_{T-1};  lam_t = a_{t+1} lam_{t+1} + g_t, a scan from the end
        lam[:, -1] = g[:, -1]
        if g.shape[1] > 1:
            core(a_eff[:, 1:], g[:, :-1], lam[:, -1], True, lam[:, :-1])
            torch.mul(lam[:, 1:], h[:, :-1], out=grad_a[:, 1:])
        first = 0
    else:
        lam[:, 0] = g[:, 0]
        if g.shape[1] > 1:
            core(a_eff[:, :-1], g[:, 1:], lam[:, 0], False, lam[:, 1:])
            torch.mul(lam[:, :-1], h[:, 1:], out=grad_a[:, :-1])
        first = -1
    if h0c is None:
        grad_a[:, first].zero_()
    else:
        torch.mul(lam[:, first], h0c, out=grad_a[:, first])
    if reset is not None:
        grad_a.masked_fill_(reset.reshape(reset.shape + (1,) * (g.dim() - 2)), 0)
    grad_h0 = None if h0 is None else lam[:, first] * a_eff[:, first]
    return grad_a, lam, grad_h0


# --------------------------------------------------------------------------------------------
# Triton kernels (real dtypes)
# --------------------------------------------------------------------------------------------


@jit
def _first_order_combine(a_l, h_l, a_r, h_r):
    # (a_l, h_l) then (a_r, h_r):  h = a_r * h_l + h_r,  a = a_r * a_l
    return a_r * a_l, a_r * h_l + h_r


@jit
def _linear_scan_fwd_kernel(
    a_ptr, b_ptr, h0_ptr, reset_ptr, out_ptr,
    T, D,
    s_ab, s_at, s_ad,
    s_bb, s_bt, s_bd,
    s_hb, s_hd,
    s_rb, s_rt,
    s_ob, s_ot, s_od,
    HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr, REVERSE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program = one batch row x BLOCK_D channels; loops over time in BLOCK_T tiles.

    Each tile is scanned in registers with tl.associative_scan; the carried state joins it as
    h = h_local + cumprod(a) * carry. Masked tail steps load a=1, b=0 so they carry the state.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    rows = tl.arange(0, BLOCK_T)
    if HAS_H0:
        carry = tl.load(h0_ptr + pid_b * s_hb + d * s_hd, mask=dmask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_D], dtype=ACC)
    nchunks = tl.cdiv(T, BLOCK_T)
    for i in range(0, nchunks):
        if REVERSE:
            c = nchunks - 1 - i
        else:
            c = i
        t = c * BLOCK_T + rows
        tmask = t < T
        m = tmask[:, None] & dmask[None, :]
        a = tl.load(a_ptr + pid_b * s_ab + t[:, None] * s_at + d[None, :] * s_ad,
                    mask=m, other=1.0).to(ACC)
        b = tl.load(b_ptr + pid_b * s_bb + t[:, None] * s_bt + d[None, :] * s_bd,
                    mask=m, other=0.0).to(ACC)
        if HAS_RESET:
            r = tl.load(reset_ptr + pid_b * s_rb + t * s_rt, mask=tmask, other=0)
            a = tl.where(r[:, None] != 0, 0.0, a)
        a_cum, h = tl.associative_scan((a, b), 0, _first_order_combine, reverse=REVERSE)
        h = h + a_cum * carry[None, :]
        tl.store(out_ptr + pid_b * s_ob + t[:, None] * s_ot + d[None, :] * s_od,
                 h.to(out_ptr.dtype.element_ty), mask=m)
        if REVERSE:
            carry = tl.sum(tl.where(rows[:, None] == 0, h, 0.0), axis=0)
        else:
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, h, 0.0), axis=0)


@jit
def _linear_scan_bwd_kernel(
    a_ptr, h_ptr, h0_ptr, reset_ptr, g_ptr, ga_ptr, gb_ptr,
    T, D,
    s_ab, s_at, s_ad,
    s_hb, s_ht, s_hd,
    s_h0b, s_h0d,
    s_rb, s_rt,
    s_gb, s_gt, s_gd,
    s_ob, s_ot, s_od,
    HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr, REVERSE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Adjoint scan, opposite to the forward direction: lam_t = g_t + a_next(t) * lam_next(t).

    The shifted coefficient a_next(t) (= a_{t+1}, or a_{t-1} for a reverse forward scan) is read
    straight from memory at the shifted offset; grad_a_t = lam_t * h_prev(t) reads the saved output
    at the other shift (h0 at the sequence start). grad_b = lam. Grads of a and b share strides.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    rows = tl.arange(0, BLOCK_T)
    if HAS_H0:
        h0 = tl.load(h0_ptr + pid_b * s_h0b + d * s_h0d, mask=dmask, other=0.0).to(ACC)
    carry = tl.zeros([BLOCK_D], dtype=ACC)
    nchunks = tl.cdiv(T, BLOCK_T)
    for i in range(0, nchunks):
        if REVERSE:
            c = i
            t_next = c * BLOCK_T + rows - 1
            t_prev = c * BLOCK_T + rows + 1
        else:
            c = nchunks - 1 - i
            t_next = c * BLOCK_T + rows + 1
            t_prev = c * BLOCK_T + rows - 1
        t = c * BLOCK_T + rows
        tmask = t < T
        m = tmask[:, None] & dmask[None, :]
        nmask = (t_next >= 0) & (t_next < T)
        a_next = tl.load(a_ptr + pid_b * s_ab + t_next[:, None] * s_at + d[None, :] * s_ad,
                         mask=nmask[:, None] & dmask[None, :], other=0.0).to(ACC)
        if HAS_RESET:
            r_next = tl.load(reset_ptr + pid_b * s_rb + t_next * s_rt, mask=nmask, other=0)
            a_next = tl.where(r_next[:, None] != 0, 0.0, a_next)
        g = tl.load(g_ptr + pid_b * s_gb + t[:, None] * s_gt + d[None, :] * s_gd,
                    mask=m, other=0.0).to(ACC)
        a_cum, lam = tl.associative_scan((a_next, g), 0, _first_order_combine,
                                         reverse=not REVERSE)
        lam = lam + a_cum * carry[None, :]
        pmask = (t_prev >= 0) & (t_prev < T)
        h_prev = tl.load(h_ptr + pid_b * s_hb + t_prev[:, None] * s_ht + d[None, :] * s_hd,
                         mask=pmask[:, None] & dmask[None, :], other=0.0).to(ACC)
        if HAS_H0:
            h_prev = tl.where(pmask[:, None], h_prev, h0[None, :])
        ga = lam * h_prev
        if HAS_RESET:
            r = tl.load(reset_ptr + pid_b * s_rb + t * s_rt, mask=tmask, other=0)
            ga = tl.where(r[:, None] != 0, 0.0, ga)
        offs = pid_b * s_ob + t[:, None] * s_ot + d[None, :] * s_od
        tl.store(gb_ptr + offs, lam.to(gb_ptr.dtype.element_ty), mask=m)
        tl.store(ga_ptr + offs, ga.to(ga_ptr.dtype.element_ty), mask=m)
        if REVERSE:
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, lam, 0.0), axis=0)
        else:
            carry = tl.sum(tl.where(rows[:, None] == 0, lam, 0.0), axis=0)


def _triton_blocks(seqlen: int, dim: int, device: torch.device):
    if device.type == "cpu":  # interpreter: small tiles keep the per-element Python work low
        return min(8, next_pow2(seqlen)), min(4, next_pow2(dim)), 1
    block_d = min(32, next_pow2(dim))
    block_t = min(128, max(16, next_pow2(seqlen)))
    return block_t, block_d, 4


def _fwd_triton(a, b, h0, reset, reverse):
    bsz, seqlen, dim = a.shape
    out = torch.empty((bsz, seqlen, dim), dtype=a.dtype, device=a.device)
    block_t, block_d, num_warps = _triton_blocks(seqlen, dim, a.device)
    h0_arg = h0 if h0 is not None else out
    h0_strides = (h0.stride(0), h0.stride(1)) if h0 is not None else (0, 0)
    r_arg = reset.view(torch.uint8) if reset is not None else out
    r_strides = (reset.stride(0), reset.stride(1)) if reset is not None else (0, 0)
    grid = (bsz, cdiv(dim, block_d))
    kernel_for(_linear_scan_fwd_kernel, a.device)[grid](
        a, b, h0_arg, r_arg, out,
        seqlen, dim,
        *a.stride(), *b.stride(), *h0_strides, *r_strides, *out.stride(),
        HAS_H0=h0 is not None, HAS_RESET=reset is not None, REVERSE=bool(reverse),
        ACC=tl_acc_dtype(a.dtype), BLOCK_T=block_t, BLOCK_D=block_d, num_warps=num_warps,
    )
    return out


def _bwd_triton(a, h, h0, reset, grad, reverse):
    bsz, seqlen, dim = a.shape
    grad_a = torch.empty((bsz, seqlen, dim), dtype=a.dtype, device=a.device)
    grad_b = torch.empty_like(grad_a)
    block_t, block_d, num_warps = _triton_blocks(seqlen, dim, a.device)
    h0_arg = h0 if h0 is not None else h
    h0_strides = (h0.stride(0), h0.stride(1)) if h0 is not None else (0, 0)
    r_arg = reset.view(torch.uint8) if reset is not None else h
    r_strides = (reset.stride(0), reset.stride(1)) if reset is not None else (0, 0)
    grid = (bsz, cdiv(dim, block_d))
    kernel_for(_linear_scan_bwd_kernel, a.device)[grid](
        a, h, h0_arg, r_arg, grad, grad_a, grad_b,
        seqlen, dim,
        *a.stride(), *h.stride(), *h0_strides, *r_strides, *grad.stride(), *grad_a.stride(),
        HAS_H0=h0 is not None, HAS_RESET=reset is not None, REVERSE=bool(reverse),
        ACC=tl_acc_dtype(a.dtype), BLOCK_T=block_t, BLOCK_D=block_d, num_warps=num_warps,
    )
    grad_h0 = None
    if h0 is not None:
        first = -1 if reverse else 0
        a_first = a[:, first]
        if reset is not None:
            a_first = a_first.masked_fill(reset[:, first, None], 0)
        grad_h0 = (grad_b[:, first].to(acc_dtype(a.dtype)) * a_first).to(a.dtype)
    return grad_a, grad_b, grad_h0


# --------------------------------------------------------------------------------------------
# autograd + public entry point
# --------------------------------------------------------------------------------------------

_FWD = {"torch": _fwd_torch, "native": partial(_fwd_torch, core=_native.scan),
        "triton": _fwd_triton}
_BWD = {"torch": _bwd_torch, "native": partial(_bwd_torch, core=_native.scan),
        "triton": _bwd_triton}


class LinearScanFn(torch.autograd.Function):
    """Autograd wrapper: forward saves (a, h, h0, reset); backward is one adjoint scan."""

    @staticmethod
    def forward(ctx, a, b, h0, reset, reverse, backend):
        out = _FWD[backend](a, b, h0, reset, reverse)
        ctx.save_for_backward(a, out, h0, reset)
        ctx.reverse = reverse
        ctx.backend = backend
        ctx.mark_non_differentiable(*(() if reset is None else (reset,)))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, out, h0, reset = ctx.saved_tensors
        grad_a, grad_b, grad_h0 = _BWD[ctx.backend](a, out, h0, reset, grad, ctx.reverse)
        return (
            grad_a if ctx.needs_input_grad[0] else None,
            grad_b if ctx.needs_input_grad[1] else None,
            grad_h0 if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
        )


def linear_scan(a, b, h0=None, reset=None, reverse=False, return_last=False, backend="auto"):
    """Solve ``h_t = a_t * h_{t-1} + b_t`` along time for every batch row and channel.

    Args:
        a, b: ``[B, T, D]`` coefficients and inputs, same dtype (float16/bfloat16/float32/
            float64, or complex64/complex128 on the torch backends).
        h0: optional ``[B, D]`` state before the first step (after the last one if ``reverse``).
        reset: optional bool ``[B, T]``; where true the carried state is dropped before step t
            (``h_t = b_t``), as at an episode start. A reset at the first processed step ignores
            ``h0``. With ``reverse`` the same rule applies in the reversed time order.
        reverse: scan from ``T-1`` down to 0 (``h_t = a_t * h_{t+1} + b_t``).
        return_last: also return the final state ``[B, D]`` (``h[:, -1]``, or ``h[:, 0]`` when
            reversed); it is differentiable.
        backend: "auto" (CUDA -> Triton; CPU -> "native" when it is available, else "torch"),
            "triton", "native" (the compiled C loop, CPU only; kernels/_native.py), "torch"
            (the chunked PyTorch scan) or "ref"; "auto" defers to ``$KERNELS_BACKEND`` when
            that is set.

    Returns:
        ``h`` of shape ``[B, T, D]`` and dtype of ``a`` (and the last state when asked).
    """
    _check_inputs(a, b, h0, reset)
    chosen = resolve_backend(
        backend, a.device, _OP,
        triton_unsupported=(
            f"the Triton kernel takes real dtypes, got {a.dtype}; complex runs on backend='torch'"
            if a.is_complex() else None
        ),
        has_native=True,
    )
    if chosen == "ref":
        return linear_scan_ref(a, b, h0, reset, reverse, return_last)
    if needs_grad(a, b, h0):
        out = LinearScanFn.apply(a, b, h0, reset, bool(reverse), chosen)
    else:  # nothing to differentiate: skip the autograd.Function machinery (~10% at T=256)
        out = _FWD[chosen](a, b, h0, reset, bool(reverse))
    if return_last:
        return out, (out[:, 0] if reverse else out[:, -1])
    return out


if not HAS_TRITON:  # keep the module importable; the dispatcher never routes here without triton
    _FWD.pop("triton")
    _BWD.pop("triton")
