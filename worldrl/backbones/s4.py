"""S4-family world model (S4WM / R2I): stacked diagonal SSM layers in the **S5** parameterisation.

Why S5 and not S4D: R2I builds its world model on S5 layers computed with a parallel scan that
resets at episode starts, which is exactly ``kernels.linear_scan`` (``reset=is_first``); S4D's
per-channel (SISO) kernels are usually computed as a convolution, which cannot reset mid-sequence.

Each layer (Smith et al. 2023, "Simplified State Space Layers"), on ``u [B, T, H]``:

* a MIMO diagonal SSM with ``P`` complex modes (``d_state``) shared by all ``H`` channels, kept in
  conjugate-symmetric form (the ``2P`` real dimensions of the state are the ``P`` modes and their
  conjugates, so the output is ``2 Re(C h)``)::

      h_t = Lambda_bar * h_{t-1} + B_bar u_t          (complex [P]; reset where is_first)
      y_t = 2 Re(C h_t) + D * u_t                     (real [H])

* zero-order-hold discretisation with a learned timestep per mode:
  ``Lambda_bar = exp(Lambda dt)``, ``B_bar = (Lambda_bar - 1) / Lambda * B``;
* ``Lambda = -exp(log_neg_re) + i im``: the real part stays negative (a stable scan);
  initialised at the eigenvalues of HiPPO-N (the normal part of HiPPO-LegS) of size ``2P``: real
  parts ``-1/2``, the ``P`` imaginary parts that are positive; ``log dt ~ U[log 1e-3, log 1e-1]``;
* the block: ``r + GLU(Linear(GELU(SSM(RMSNorm(r)))))`` (S5's pre-norm residual block with a GLU).

The sequence model around the layers (posterior from the embedding only, stem, prior) is
:class:`~worldrl.backbones.ssm_base.SSMBackbone`'s. A layer's state is stored as real
``[P, 2]`` (real, imaginary) so that it travels in float32 TensorDicts.

Deviations from S5 / R2I: one HiPPO block (S5 may use ``J`` blocks) and random complex ``B``,
``C`` instead of S5's eigenvector-transformed HiPPO ``B``; no dropout; R2I's policy may read the
SSM hidden state, ours reads ``feat = [deter, stoch]`` as DreamerV3 does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kernels
from worldrl.backbones.ssm_base import SSMBackbone
from worldrl.nets import Linear, Norm


def hippo_n_eigenvalues(modes: int) -> Tensor:
    """The ``modes`` eigenvalues with positive imaginary part of HiPPO-N of size ``2 * modes``
    (complex128, sorted by imaginary part): ``-1/2 + i w``."""
    n = 2 * modes
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    skew = 0.5 * q[:, None] * q[None, :]
    skew = torch.tril(skew, -1) * -1 + torch.triu(skew, 1)  # A_N = -I/2 + skew
    w = torch.linalg.eigvalsh(-1j * skew.to(torch.complex128))  # skew = i w, w real
    w = torch.sort(w[w > 0]).values
    if w.numel() != modes:
        raise RuntimeError(f"HiPPO-N of size {n} gave {w.numel()} positive frequencies")
    return torch.complex(torch.full_like(w, -0.5), w)


class S5SSM(nn.Module):
    """One S5 SSM (see the module docstring): ``H`` channels, ``P`` complex modes."""

    def __init__(self, channels: int, modes: int, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        self.channels, self.modes = channels, modes
        lam = hippo_n_eigenvalues(modes)
        self.log_neg_re = nn.Parameter(torch.log(-lam.real).float())
        self.im = nn.Parameter(lam.imag.float())
        self.log_dt = nn.Parameter(
            torch.rand(modes) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.B = nn.Parameter(torch.randn(modes, channels, 2) * math.sqrt(0.5 / channels))
        self.C = nn.Parameter(torch.randn(channels, modes, 2) * math.sqrt(0.5 / modes))
        self.D = nn.Parameter(torch.randn(channels))

    def discretise(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Lambda_bar [P], B_bar [P, H], C [H, P])``, complex64."""
        lam = torch.complex(-torch.exp(self.log_neg_re), self.im)
        lam_bar = torch.exp(lam * torch.exp(self.log_dt))
        b = torch.complex(self.B[..., 0], self.B[..., 1])
        b_bar = ((lam_bar - 1.0) / lam)[:, None] * b
        return lam_bar, b_bar, torch.complex(self.C[..., 0], self.C[..., 1])

    def _out(self, h: Tensor, c: Tensor, u: Tensor) -> Tensor:
        return 2.0 * (h @ c.transpose(0, 1)).real + self.D * u

    def forward(self, u: Tensor, reset: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        """``u [B, T, H]``, ``reset [B, T]``, complex ``h0 [B, P]`` -> ``(y, h [B, T, P])``."""
        B, T, _ = u.shape
        lam_bar, b_bar, c = self.discretise()
        bu = u.to(b_bar.dtype) @ b_bar.transpose(0, 1)
        h = kernels.linear_scan(lam_bar.expand(B, T, self.modes), bu, h0, reset)
        return self._out(h, c, u), h

    def step(self, u: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``u [B, H]``, ``h [B, P]`` complex -> ``(y [B, H], new h)``."""
        lam_bar, b_bar, c = self.discretise()
        h = lam_bar * h + u.to(b_bar.dtype) @ b_bar.transpose(0, 1)
        return self._out(h, c, u), h


class S5Block(nn.Module):
    """``r + GLU(Linear(GELU(S5(RMSNorm(r)))))``."""

    def __init__(self, channels: int, modes: int, norm: str = "rms"):
        super().__init__()
        self.norm = Norm(channels, norm)
        self.ssm = S5SSM(channels, modes)
        self.glu = Linear(channels, 2 * channels)

    def mix(self, y: Tensor) -> Tensor:
        return F.glu(self.glu(F.gelu(y)), dim=-1)


def _to_complex(x: Tensor) -> Tensor:
    return torch.complex(x[..., 0], x[..., 1])


def _to_real(h: Tensor) -> Tensor:
    return torch.stack([h.real, h.imag], -1)


class S4(SSMBackbone):
    """S4WM / R2I-style world-model backbone with S5 layers (registry name ``s4``).

    Args (beyond :class:`~worldrl.backbones.ssm_base.SSMBackbone`'s):
        deter: the size preset's ``deter``; the width is ``d_model = deter // 4`` unless
            ``d_model`` is given (XS: 64, S: 512).
        d_model: width of the SSM stack (= ``deter`` features of the states).
        d_state: complex modes ``P`` per layer (``None``: ``d_model // 2``, i.e. ``d_model`` real
            state dimensions).
        layers: number of S5 blocks.
    """

    layer_prefix = "s5_"

    def __init__(self, embed_size: int, action_size: int, *, deter: int = 2048,
                 d_model: int | None = None, d_state: int | None = None, layers: int = 2,
                 hidden: int = 256, stoch: int = 32, classes: int = 16, unimix: float = 0.01,
                 act: str = "silu", norm: str = "rms", imglayers: int = 1, obslayers: int = 1,
                 outscale: float = 1.0, imag_context: int = 8):
        d_model = d_model or max(1, deter // 4)
        super().__init__(embed_size, action_size, d_model=d_model, hidden=hidden, stoch=stoch,
                         classes=classes, unimix=unimix, act=act, norm=norm, imglayers=imglayers,
                         obslayers=obslayers, outscale=outscale, imag_context=imag_context)
        if layers < 1:
            raise ValueError(f"s4 layers must be >= 1, got {layers}")
        self.d_state = d_state or max(1, d_model // 2)
        self.blocks = nn.ModuleList([S5Block(d_model, self.d_state, norm) for _ in range(layers)])

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _layer_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.d_state, 2)}

    def _layers_seq(self, x, reset, states, tail=0):
        last, tails = [], []
        for block, st in zip(self.blocks, states):
            y, h = block.ssm(block.norm(x), reset, _to_complex(st["h"]))
            x = x + block.mix(y)
            last.append({"h": _to_real(h[:, -1])})
            if tail:
                tails.append({"h": _to_real(h[:, -tail:])})
        return x, last, (tails if tail else None)

    def _layers_step(self, x, states):
        new = []
        for block, st in zip(self.blocks, states):
            y, h = block.ssm.step(block.norm(x), _to_complex(st["h"]))
            x = x + block.mix(y)
            new.append({"h": _to_real(h)})
        return x, new
