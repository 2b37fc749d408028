"""Mamba world model, as Drama (Wang et al., ICLR 2025) builds it.

Drama's sequence model (``realwenlongwang/drama``, ``mamba_ssm/models/mixer_seq_simple.py``): a stem
``Linear([z, a]) -> RMSNorm -> SiLU`` to ``d_model``, ``n_layer`` residual pre-norm Mamba blocks
(``r + Mamba(RMSNorm(r))``, no MLP), a final RMSNorm; the output is the deterministic state that
predicts the next latent, reward and termination. Drama's defaults: 2 layers, ``d_state`` 16,
``d_model`` 512 (our size S: ``d_model = deter // 4 = 512``; XS: 64).

The Mamba (v1) mixer follows ``mamba_ssm.modules.mamba_simple.Mamba``: ``in_proj`` to ``x, z``
(``expand * d_model`` each), a causal depthwise conv (``d_conv`` 4) + SiLU on ``x``, ``x_proj`` to
``dt`` (rank ``ceil(d_model / 16)``), ``B``, ``C``; ``dt = softplus(dt_proj(dt) + bias)`` with the
bias initialised at ``softplus^-1(U_log[1e-3, 1e-1])``; ``A = -exp(A_log)``, ``A_log`` at
``log(1..d_state)``; ``y = selective_scan(x, dt, A, B, C) + D x``, gated by ``silu(z)``, then
``out_proj``. Sequences go through ``kernels.selective_scan``, single steps through
``kernels.selective_state_update`` (in place on a copy; with autograd recording the same step is
written out in PyTorch, since the kernel updates its state in place).

Episode starts inside a sequence (``is_first``), which Drama's replay ignores:

* the conv sees zeros in place of inputs from before the start (its rolling state keeps the last
  ``d_conv - 1`` inputs, masked the same way);
* the scan's state is dropped: ``selective_scan`` has no reset input, so at a reset step the
  scan gets ``dt' = 1e6`` (``exp(dt' A)`` underflows to exactly 0 for ``|A| > 1.1e-4``) and
  ``u' = u * dt / dt'`` (so ``dt' B u' = dt B u``), while ``D u`` and the gate are applied
  outside the scan. Exact up to float rounding; tested against separate sequences.

The state of a layer: ``conv [d_inner, d_conv - 1]`` and ``ssm [d_inner, d_state]``.
Deviations from Drama: Mamba-1 (Drama's default is Mamba-2: the ``mamba2`` backbone); our RMSNorm
(eps 1e-4); heads read ``feat = [deter, stoch]`` as in DreamerV3 (Drama's read the hidden state
only); and, by default, ``bc_norm`` (``B, C`` RMS-normalised over ``d_state``, as Jamba and
Falcon-Mamba) and ``gated_norm`` (Mamba-2's RMSNorm of the gated output before ``out_proj``). At
init ``x_proj`` gives ``B, C`` an RMS of ~0.07, so without them a cue moves the state K=16 steps
later ~1e3 less than in ``s4``, and the world model learned the recall of ``benchmarks.memory``
for 1 of 3 seeds in 2,000 updates (with them: 3 of 3, by 1,300; ``benchmarks/mamba_recall.py``).
Both off is Drama's mixer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kernels
from worldrl.backbones.ssm_base import SSMBackbone
from worldrl.nets import Norm

RESET_DT = 1e6


def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_floor: float) -> Tensor:
    """``mamba_ssm``'s ``dt`` bias: ``softplus^-1(dt)``, ``dt ~ U_log[dt_min, dt_max]`` floored."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp_min(dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


class ConvMixer(nn.Module):
    """Base of the Mamba mixers: the causal depthwise conv (``d_conv`` taps over ``channels``)
    whose inputs from before an episode start are masked, over sequences and as a rolling state
    ``[channels, d_conv - 1]``."""

    def _init_conv(self, channels: int, d_conv: int) -> None:
        if d_conv < 2:
            raise ValueError(f"mamba d_conv must be >= 2, got {d_conv}")
        self.d_conv = d_conv
        self.conv_weight = nn.Parameter(torch.empty(channels, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(channels))
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init (fan-in = d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)

    def _conv_seq(self, xi: Tensor, reset: Tensor, conv_state: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Causal depthwise conv over ``xi [B, T, di]`` from ``conv_state [B, di, k-1]``.

        Returns the conv output, the padded inputs ``[B, T+k-1, di]`` with inputs from before an
        episode start masked, per output step, and the segment ids ``[B, T+k-1]``.
        """
        k = self.d_conv
        xpad = torch.cat([conv_state.transpose(1, 2), xi], 1)  # [B, T+k-1, di]
        seg = torch.cat([reset.new_zeros(reset.shape[0], k - 1), reset], 1).long().cumsum(1)
        T = xi.shape[1]
        out = self.conv_bias + xi * self.conv_weight[:, k - 1]
        for j in range(k - 1):  # tap j reads x_{t-(k-1-j)}: valid if no start in between
            same = (seg[:, j:j + T] == seg[:, k - 1:]).to(xi.dtype)[..., None]
            out = out + xpad[:, j:j + T] * same * self.conv_weight[:, j]
        return out, xpad, seg

    def _conv_states(self, xpad: Tensor, seg: Tensor, steps: slice) -> Tensor:
        """Rolling conv states ``[B, n, di, k-1]`` after each output step in ``steps``."""
        k = self.d_conv
        win = xpad.unfold(1, k - 1, 1)[:, 1:][:, steps]  # [B, n, di, k-1]: after step t
        sw = seg.unfold(1, k - 1, 1)[:, 1:][:, steps]  # [B, n, k-1]
        return win * (sw == sw[..., -1:]).to(win.dtype)[:, :, None, :]

    def _rms(self, t: Tensor) -> Tensor:
        """``t`` scaled to unit RMS over its last dimension (no weight; ``norm_eps``)."""
        return t * torch.rsqrt(t.square().mean(-1, keepdim=True) + self.norm_eps)

    def _gated_norm(self, y: Tensor, z: Tensor, groups: int = 1) -> Tensor:
        """``mamba_ssm``'s ``RMSNormGated`` (``norm_before_gate=False``): RMSNorm of ``y *
        silu(z)`` over each of ``groups`` equal parts of the features, times ``norm_scale``."""
        g = self._rms((y * F.silu(z.float())).unflatten(-1, (groups, -1)))
        return g.flatten(-2) * self.norm_scale

    def _conv_step(self, xi: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
        """One conv step: ``xi [B, C]`` -> ``(conv output [B, C], new rolling state)``."""
        window = torch.cat([conv_state, xi[..., None]], -1)  # [B, C, k]
        return (window * self.conv_weight).sum(-1) + self.conv_bias, window[..., 1:]


class MambaMixer(ConvMixer):
    """Mamba-1 mixer (``mamba_ssm``'s ``Mamba``) with resettable state; see the module docstring."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4, bc_norm: bool = True, gated_norm: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.bc_norm, self.gated_norm, self.norm_eps = bc_norm, gated_norm, norm_eps
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = di = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self._init_conv(di, d_conv)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias_init(di, dt_min, dt_max, dt_floor))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        if gated_norm:
            self.norm_scale = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)

    # --------------------------------------------------------------------------------- helpers
    def _ssm_inputs(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``xc [..., d_inner]`` -> ``(dt before softplus/bias, B, C)``; ``B, C`` RMS-normalised
        over ``d_state`` with ``bc_norm``."""
        dt, b, c = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], -1)
        if self.bc_norm:
            b, c = self._rms(b), self._rms(c)
        return dt @ self.dt_proj.weight.t(), b, c

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        """``y * silu(z)``, RMS-normalised (``gated_norm``: Mamba-2's gated RMSNorm)."""
        return self._gated_norm(y, z) if self.gated_norm else y * F.silu(z)

    # ---------------------------------------------------------------------------------- layers
    def forward(self, x: Tensor, reset: Tensor, state: dict[str, Tensor], tail: int = 0
                ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None]:
        """``x [B, T, d_model]`` -> ``(out, last state, states after the last tail steps)``."""
        B, T, _ = x.shape
        xi, z = self.in_proj(x).chunk(2, -1)
        conv, xpad, seg = self._conv_seq(xi, reset, state["conv"])
        xc = F.silu(conv)
        dt_raw, b, c = self._ssm_inputs(xc)
        dt = F.softplus(dt_raw + self.dt_proj.bias)
        A = -torch.exp(self.A_log.float())
        r = reset[..., None]
        dt_s = torch.where(r, torch.full_like(dt, RESET_DT), dt)
        u_s = torch.where(r, xc * dt / RESET_DT, xc)
        h0 = state["ssm"].float()
        pre = T - tail
        ys, h_last, tails = [], h0, None
        if pre > 0:
            y, h_last = kernels.selective_scan(
                u_s[:, :pre].transpose(1, 2), dt_s[:, :pre].transpose(1, 2), A,
                b[:, :pre].transpose(1, 2), c[:, :pre].transpose(1, 2),
                return_last_state=True, initial_state=h0)
            ys.append(y.transpose(1, 2))
        if tail:  # the states of the last steps, [B, tail, di, N], through the linear scan
            dtt, ut = dt[:, pre:, :, None], xc[:, pre:, :, None]
            a = torch.exp(dtt * A)
            bb = dtt * ut * b[:, pre:, None, :]
            h = kernels.linear_scan(a.reshape(B, tail, -1), bb.reshape(B, tail, -1),
                                    h_last.reshape(B, -1), reset[:, pre:])
            h = h.reshape(B, tail, self.d_inner, self.d_state)
            ys.append((h * c[:, pre:, None, :]).sum(-1))
            h_last = h[:, -1]
            tails = {"conv": self._conv_states(xpad, seg, slice(pre, T)), "ssm": h}
        y = ys[0] if len(ys) == 1 else torch.cat(ys, 1)
        y = self._gate(y + xc * self.D, z)
        last = {"conv": self._conv_states(xpad, seg, slice(T - 1, T))[:, 0], "ssm": h_last}
        return self.out_proj(y.to(x.dtype)), last, tails

    def step(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One step: ``x [B, d_model]`` -> ``(out [B, d_model], new state)``."""
        xi, z = self.in_proj(x).chunk(2, -1)
        conv, conv_state = self._conv_step(xi, state["conv"])
        xc = F.silu(conv)
        dt_raw, b, c = self._ssm_inputs(xc)
        A = -torch.exp(self.A_log.float())
        ssm = state["ssm"].float().clone()
        if torch.is_grad_enabled():  # the kernel's step writes its state in place
            dt = F.softplus(dt_raw + self.dt_proj.bias)
            ssm = torch.exp(dt[..., None] * A) * ssm + (dt * xc)[..., None] * b[:, None, :]
            y = self._gate((ssm * c[:, None, :]).sum(-1) + self.D * xc, z)
        elif self.gated_norm:  # the kernel gates by silu(z) only: the norm after it
            y = self._gated_norm(kernels.selective_state_update(
                ssm, xc, dt_raw, A, b, c, self.D, dt_bias=self.dt_proj.bias, dt_softplus=True), z)
        else:
            y = kernels.selective_state_update(ssm, xc, dt_raw, A, b, c, self.D, z,
                                               dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y.to(x.dtype)), {"conv": conv_state, "ssm": ssm}


class MixerStack(SSMBackbone):
    """Drama's stack of residual pre-norm mixer blocks, ``x + mixer(norm(x))`` (no MLP), over
    :class:`~worldrl.backbones.ssm_base.SSMBackbone`; subclasses give the mixers."""

    def _init_stack(self, mixers: list[nn.Module], norm: str) -> None:
        self.norms = nn.ModuleList([Norm(self.d_model, norm) for _ in mixers])
        self.mixers = nn.ModuleList(mixers)
        with torch.no_grad():  # mamba_ssm's prenorm-residual init: out_proj / sqrt(n_layer)
            for m in self.mixers:
                nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
                m.out_proj.weight /= math.sqrt(len(mixers))

    @property
    def num_layers(self) -> int:
        return len(self.mixers)

    def _layers_seq(self, x, reset, states, tail=0):
        last, tails = [], []
        for norm, mixer, st in zip(self.norms, self.mixers, states):
            y, s_last, s_tail = mixer(norm(x), reset, st, tail)
            x = x + y
            last.append(s_last)
            tails.append(s_tail)
        return x, last, (tails if tail else None)

    def _layers_step(self, x, states):
        new = []
        for norm, mixer, st in zip(self.norms, self.mixers, states):
            y, s = mixer.step(norm(x), st)
            x = x + y
            new.append(s)
        return x, new


class Mamba(MixerStack):
    """Drama-style Mamba world-model backbone (registry name ``mamba``).

    Args (beyond :class:`~worldrl.backbones.ssm_base.SSMBackbone`'s):
        deter: the size preset's ``deter``; ``d_model = deter // 4`` unless given (S: 512).
        d_model: width of the stack (= ``deter`` features of the states).
        layers: Mamba blocks (Drama: 2). d_state, d_conv, expand, dt_rank: the mixer's.
        bc_norm, gated_norm: the mixer's normalisations of ``B, C`` and of its gated output
            (both ``False``: ``mamba_ssm``'s Mamba-1 as Drama uses it; see the module docstring).
    """

    layer_prefix = "mamba"

    def __init__(self, embed_size: int, action_size: int, *, deter: int = 2048,
                 d_model: int | None = None, layers: int = 2, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 hidden: int = 256, stoch: int = 32, classes: int = 16, unimix: float = 0.01,
                 act: str = "silu", norm: str = "rms", imglayers: int = 1, obslayers: int = 1,
                 outscale: float = 1.0, imag_context: int = 8, bc_norm: bool = True,
                 gated_norm: bool = True):
        d_model = d_model or max(1, deter // 4)
        super().__init__(embed_size, action_size, d_model=d_model, hidden=hidden, stoch=stoch,
                         classes=classes, unimix=unimix, act=act, norm=norm, imglayers=imglayers,
                         obslayers=obslayers, outscale=outscale, imag_context=imag_context)
        if layers < 1:
            raise ValueError(f"mamba layers must be >= 1, got {layers}")
        self._init_stack([MambaMixer(d_model, d_state, d_conv, expand, dt_rank,
                                     bc_norm=bc_norm, gated_norm=gated_norm)
                          for _ in range(layers)], norm)

    def _layer_spec(self) -> dict[str, tuple[int, ...]]:
        m = self.mixers[0]
        return {"conv": (m.d_inner, m.d_conv - 1), "ssm": (m.d_inner, m.d_state)}
