"""Mamba-2 world model: Drama's default sequence model (Wang et al., ICLR 2025).

The stack is the ``mamba`` backbone's (a stem ``Linear([z, a]) -> RMSNorm -> SiLU``, ``layers``
residual pre-norm blocks ``r + Mamba2(RMSNorm(r))``, a final RMSNorm) with Mamba-2 mixers, as
``mamba_ssm.modules.mamba2.Mamba2`` builds them: one ``in_proj`` to ``z, x, B, C, dt`` (``x`` of
``d_inner = expand * d_model`` in ``nheads`` heads of ``headdim``; ``B, C`` of ``ngroups x
d_state``; ``dt`` one per head), a causal depthwise conv (``d_conv`` 4) + SiLU over ``[x, B, C]``,
the state-space dual scan (:func:`kernels.ssd_chunk_scan`: per head a scalar decay
``exp(dt * A)``, ``A = -exp(A_log)`` with ``A`` drawn from ``U[1, 16]``, state ``[headdim,
d_state]``), ``+ D x``, a gated RMSNorm ``norm(y * silu(z))`` per group, ``out_proj``. ``dt =
softplus(dt + dt_bias)``, ``dt_bias`` initialised at ``softplus^-1(U_log[1e-3, 1e-1])``.

Deviation from Drama and ``mamba_ssm`` (``bc_norm``, on by default): ``B`` and ``C`` are
RMS-normalised over ``d_state`` (as the ``mamba`` backbone's, Jamba's and Falcon-Mamba's).
Without it the cue of a K=16 recall moves the answer step's state by ~1e-3 (relative; ``s4``
~2e-2) and the world model learned the recall for 2 of 3 seeds in 2,000 updates
(``benchmarks/mamba_recall.py``).

Drama's settings (``config_files/train.yaml``: ``Backbone: Mamba2``, 2 layers, ``d_state`` 16,
``d_model`` 512) are the defaults at size S (``d_model = deter // 4``); ``headdim`` defaults to
``d_model // 8``, so every size has 16 heads (S: 64, ``mamba_ssm``'s default).

Episode starts (``is_first``): the conv masks inputs from before the start (as ``mamba``'s); the
scan gets ``seq_idx = cumsum(is_first)``, so no state passes a start, and a start at the first step
drops the carried state. Single steps use :func:`kernels.ssd_state_update` (in place on a copy;
written out in PyTorch when autograd records).

The state of a layer: ``conv [d_inner + 2 ngroups d_state, d_conv - 1]`` and ``ssm [nheads,
headdim, d_state]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kernels
from worldrl.backbones.mamba import ConvMixer, MixerStack, dt_bias_init


class Mamba2Mixer(ConvMixer):
    """Mamba-2 mixer with resettable state; see the module docstring."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 64,
                 A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_floor: float = 1e-4, norm_eps: float = 1e-5,
                 bc_norm: bool = True):
        super().__init__()
        self.bc_norm = bc_norm
        di = expand * d_model
        if di % headdim:
            raise ValueError(f"mamba2 d_inner = expand * d_model = {di} is not a multiple of "
                             f"headdim {headdim}")
        nheads = di // headdim
        if nheads % ngroups:
            raise ValueError(f"mamba2 nheads {nheads} is not a multiple of ngroups {ngroups}")
        self.d_model, self.d_state, self.d_inner = d_model, d_state, di
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.chunk_size = chunk_size
        self.conv_dim = di + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * di + 2 * ngroups * d_state + nheads, bias=False)
        self._init_conv(self.conv_dim, d_conv)
        self.dt_bias = nn.Parameter(dt_bias_init(nheads, dt_min, dt_max, dt_floor))
        self.A_log = nn.Parameter(torch.empty(nheads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(nheads))
        self.norm_scale = nn.Parameter(torch.ones(di))
        self.norm_eps = norm_eps
        self.out_proj = nn.Linear(di, d_model, bias=False)

    # --------------------------------------------------------------------------------- helpers
    def _split_proj(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``in_proj`` output -> ``(z, xBC, dt)``."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], -1)

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[..., conv_dim]`` -> ``x [..., H, P]``, ``B, C [..., G, N]`` (``B, C``
        RMS-normalised over ``d_state`` with ``bc_norm``)."""
        n = self.ngroups * self.d_state
        x, b, c = xbc.split([self.d_inner, n, n], -1)
        lead = xbc.shape[:-1]
        b = b.reshape(*lead, self.ngroups, self.d_state)
        c = c.reshape(*lead, self.ngroups, self.d_state)
        if self.bc_norm:
            b, c = self._rms(b), self._rms(c)
        return x.reshape(*lead, self.nheads, self.headdim), b, c

    # ---------------------------------------------------------------------------------- layers
    def forward(self, x: Tensor, reset: Tensor, state: dict[str, Tensor], tail: int = 0
                ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None]:
        """``x [B, T, d_model]`` -> ``(out, last state, states after the last tail steps)``."""
        Bsz, T, _ = x.shape
        z, xbc, dt = self._split_proj(self.in_proj(x))
        conv, xpad, seg = self._conv_seq(xbc, reset, state["conv"])
        xs, b, c = self._split_xbc(F.silu(conv))
        A = -torch.exp(self.A_log.float())
        h0 = state["ssm"].float()
        seq_idx = reset.long().cumsum(1)  # h0 is id 0: it reaches step 0 unless it is a start
        pre = T - tail
        tails = None
        if not tail:
            y, h_last = kernels.ssd_chunk_scan(
                xs, dt, A, b, c, self.chunk_size, D=self.D, dt_bias=self.dt_bias,
                initial_states=h0, seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
        else:  # the prefix by the chunked scan, then the last steps by a linear scan that keeps
            # every state [B, tail, H, P, N] (the tails); their outputs are read from those states
            ys, h_pre = [], h0
            if pre:
                y_pre, h_pre = kernels.ssd_chunk_scan(
                    xs[:, :pre], dt[:, :pre], A, b[:, :pre], c[:, :pre], self.chunk_size,
                    D=self.D, dt_bias=self.dt_bias, initial_states=h0, seq_idx=seq_idx[:, :pre],
                    dt_softplus=True, return_final_states=True)
                ys.append(y_pre.float())
            dtt = F.softplus(dt[:, pre:].float() + self.dt_bias)  # [B, tail, H]
            rep = self.nheads // self.ngroups
            bt = b[:, pre:].float().repeat_interleave(rep, 2)  # [B, tail, H, N]
            ct = c[:, pre:].float().repeat_interleave(rep, 2)
            xt = xs[:, pre:].float()  # [B, tail, H, P]
            a = torch.exp(dtt * A)[..., None, None].expand(-1, -1, -1, self.headdim, self.d_state)
            inp = (dtt[..., None] * xt)[..., None] * bt[:, :, :, None, :]
            h = kernels.linear_scan(a.reshape(Bsz, tail, -1), inp.reshape(Bsz, tail, -1),
                                    h_pre.reshape(Bsz, -1), reset[:, pre:])
            h = h.reshape(Bsz, tail, self.nheads, self.headdim, self.d_state)
            ys.append((h * ct[:, :, :, None, :]).sum(-1) + self.D[:, None] * xt)
            y, h_last = torch.cat(ys, 1), h[:, -1]
            tails = {"conv": self._conv_states(xpad, seg, slice(pre, T)), "ssm": h}
        out = self._gated_norm(y.reshape(Bsz, T, self.d_inner).float(), z, self.ngroups)
        last = {"conv": self._conv_states(xpad, seg, slice(T - 1, T))[:, 0], "ssm": h_last}
        return self.out_proj(out.to(x.dtype)), last, tails

    def step(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One step: ``x [B, d_model]`` -> ``(out [B, d_model], new state)``."""
        z, xbc, dt = self._split_proj(self.in_proj(x))
        conv, conv_state = self._conv_step(xbc, state["conv"])
        xs, b, c = self._split_xbc(F.silu(conv))
        A = -torch.exp(self.A_log.float())
        ssm = state["ssm"].float().clone()
        if torch.is_grad_enabled():  # the kernel's step writes its state in place
            rep = self.nheads // self.ngroups
            bh, ch = b.float().repeat_interleave(rep, 1), c.float().repeat_interleave(rep, 1)
            d = F.softplus(dt.float() + self.dt_bias)  # [B, H]
            ssm = (torch.exp(d * A)[..., None, None] * ssm
                   + (d[..., None] * xs.float())[..., None] * bh[:, :, None, :])
            y = (ssm * ch[:, :, None, :]).sum(-1) + self.D[:, None] * xs.float()
        else:
            y = kernels.ssd_state_update(ssm, xs, dt, A, b, c, D=self.D, dt_bias=self.dt_bias,
                                         dt_softplus=True)
        out = self._gated_norm(y.reshape(x.shape[0], self.d_inner).float(), z, self.ngroups)
        return self.out_proj(out.to(x.dtype)), {"conv": conv_state, "ssm": ssm}


class Mamba2(MixerStack):
    """Drama's Mamba-2 world-model backbone (registry name ``mamba2``).

    Args (beyond :class:`~worldrl.backbones.ssm_base.SSMBackbone`'s):
        deter: the size preset's ``deter``; ``d_model = deter // 4`` unless given (S: 512).
        d_model: width of the stack (= ``deter`` features of the states).
        layers: Mamba-2 blocks (Drama: 2). d_state, d_conv, expand, ngroups, chunk_size: the
            mixer's. headdim: per-head width (``None``: ``d_model // 8``, 16 heads).
        bc_norm: ``B, C`` RMS-normalised over ``d_state`` (``False``: ``mamba_ssm``'s Mamba-2).
    """

    layer_prefix = "mamba2_"

    def __init__(self, embed_size: int, action_size: int, *, deter: int = 2048,
                 d_model: int | None = None, layers: int = 2, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, headdim: int | None = None, ngroups: int = 1,
                 chunk_size: int = 64, hidden: int = 256, stoch: int = 32, classes: int = 16,
                 unimix: float = 0.01, act: str = "silu", norm: str = "rms", imglayers: int = 1,
                 obslayers: int = 1, outscale: float = 1.0, imag_context: int = 8,
                 bc_norm: bool = True):
        d_model = d_model or max(1, deter // 4)
        super().__init__(embed_size, action_size, d_model=d_model, hidden=hidden, stoch=stoch,
                         classes=classes, unimix=unimix, act=act, norm=norm, imglayers=imglayers,
                         obslayers=obslayers, outscale=outscale, imag_context=imag_context)
        if layers < 1:
            raise ValueError(f"mamba2 layers must be >= 1, got {layers}")
        headdim = headdim or max(1, d_model // 8)
        self._init_stack([Mamba2Mixer(d_model, d_state, d_conv, expand, headdim, ngroups,
                                      chunk_size, bc_norm=bc_norm) for _ in range(layers)], norm)

    def _layer_spec(self) -> dict[str, tuple[int, ...]]:
        m = self.mixers[0]
        return {"conv": (m.conv_dim, m.d_conv - 1), "ssm": (m.nheads, m.headdim, m.d_state)}
