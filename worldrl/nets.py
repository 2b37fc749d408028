"""Network building blocks: linear layers, norms, MLP, CNN encoder / decoder.

Modelled on ``dreamerv3/rssm.py`` (``Encoder``/``Decoder``) and ``embodied/jax/nets.py`` of
danijar/dreamerv3 (2024+), written for PyTorch (channels-first images ``[..., C, H, W]``).

* Weights use DreamerV3's ``trunc_normal`` fan-in init (normal truncated at 2 std, rescaled by
  1.1368 so the variance is ``1 / fan_in``) times ``outscale``; biases start at zero.
  :class:`BlockLinear` uses the fan-in of the *whole* input, as DreamerV3's initializer does.
* :class:`Norm` is RMSNorm (default) or LayerNorm with ``eps = 1e-4``, computed in float32.
* Images enter the encoder as ``uint8`` and are mapped to ``x / 255 - 0.5``; the decoder ends in a
  sigmoid and its :class:`~worldrl.dists.MSE` loss compares with ``x / 255`` in ``[0, 1]`` (summed
  over pixels), exactly as DreamerV3.
* Vectors enter the encoder through ``symlog`` and are decoded with a symlog-MSE (summed over
  dimensions).
* Which observation keys are coded by what, and the per-kind codecs (images, vectors, audio),
  are in :mod:`worldrl.obs`.
* ``strided=False`` (DreamerV3 default): stride-1 convolutions followed by 2x2 max-pooling in the
  encoder and nearest-neighbour upsampling + convolution in the decoder. ``strided=True``: stride-2
  convolutions / transposed convolutions (4x cheaper; our CPU preset uses it).
* The image decoder's input projection is DreamerV3's ``bspace`` scheme: a block-linear map from
  ``deter`` (``bspace`` blocks) plus an MLP from ``stoch``, summed, normed. ``bspace=0`` uses one
  linear layer from ``feat``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import einops
import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "get_act",
    "trunc_normal_init_",
    "Linear",
    "BlockLinear",
    "Norm",
    "ChannelNorm",
    "MLP",
    "ConvEncoder",
    "ConvDecoder",
]

ACTIVATIONS = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "none": nn.Identity,
}
NORMS = ("rms", "layer", "none")


def get_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choices: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def trunc_normal_init_(weight: Tensor, fan_in: int, scale: float = 1.0) -> None:
    """DreamerV3 ``trunc_normal`` fan-in init, multiplied by ``scale`` (``outscale``)."""
    with torch.no_grad():
        if scale == 0.0:
            weight.zero_()
            return
        std = 1.1368 * math.sqrt(1.0 / fan_in)
        nn.init.trunc_normal_(weight, mean=0.0, std=1.0, a=-2.0, b=2.0)
        weight.mul_(std * scale)


class Linear(nn.Linear):
    """``nn.Linear`` with DreamerV3 init (trunc-normal fan-in times ``outscale``, zero bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 outscale: float = 1.0):
        self.outscale = outscale
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        trunc_normal_init_(self.weight, self.in_features, self.outscale)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class BlockLinear(nn.Module):
    """Block-diagonal linear map: ``blocks`` independent ``in/blocks -> out/blocks`` maps.

    Input ``[..., in]`` is split into ``blocks`` contiguous groups (DreamerV3 ``BlockLinear``).
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True,
                 outscale: float = 1.0):
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(
                f"BlockLinear needs in_features={in_features} and out_features={out_features} "
                f"divisible by blocks={blocks}")
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        self.weight = nn.Parameter(
            torch.empty(blocks, in_features // blocks, out_features // blocks))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        trunc_normal_init_(self.weight, in_features, outscale)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-1] == self.in_features, (x.shape, self.in_features)
        x = x.reshape(*x.shape[:-1], self.blocks, self.in_features // self.blocks)
        x = torch.einsum("...ki,kio->...ko", x, self.weight)
        x = x.reshape(*x.shape[:-2], self.out_features)
        if self.bias is not None:
            x = x + self.bias
        return x


class Norm(nn.Module):
    """RMSNorm / LayerNorm over the last axis with a learned scale (and shift for LayerNorm)."""

    def __init__(self, dim: int, impl: str = "rms", eps: float = 1e-4):
        super().__init__()
        if impl not in NORMS:
            raise ValueError(f"unknown norm {impl!r}; choices: {list(NORMS)}")
        self.impl, self.eps = impl, eps
        if impl != "none":
            self.scale = nn.Parameter(torch.ones(dim))
        if impl == "layer":
            self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "none":
            return x
        dtype = x.dtype
        x = x.float()
        if self.impl == "rms":
            x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.scale
        else:
            mean = x.mean(-1, keepdim=True)
            var = (x.square().mean(-1, keepdim=True) - mean.square()).clamp_min(0.0)
            x = (x - mean) * torch.rsqrt(var + self.eps) * self.scale + self.shift
        return x.to(dtype)


class ChannelNorm(Norm):
    """:class:`Norm` over the channel axis of ``[N, C, H, W]`` feature maps."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(-3, -1)).movedim(-1, -3)


class MLP(nn.Module):
    """``layers`` x (Linear -> Norm -> act); accepts any leading batch shape."""

    def __init__(self, in_features: int, layers: int, units: int, act: str = "silu",
                 norm: str = "rms"):
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_features
        for _ in range(layers):
            mods += [Linear(dim, units), Norm(units, norm), get_act(act)]
            dim = units
        self.net = nn.Sequential(*mods)
        self.out_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _conv_pad(kernel: int) -> int:
    return (kernel - 1) // 2


def _phase_taps(kernel: int, transposed: bool) -> tuple[Tensor, int]:
    """Which taps of a ``kernel``-wide filter reach each output phase of a 2x up-convolution.

    Output ``y[2m + r]`` (phase ``r``) of nearest 2x upsampling followed by a 'same' convolution,
    or of a stride-2 transposed convolution (padding ``(kernel - 1) // 2``, output ``2H``), is a
    sum of ``w[t] * x[m + d(r, t)]`` over the taps ``t`` (for the upsampling, taps that land on
    the same low-resolution pixel add up). Returns ``A [2, K', kernel]`` with
    ``A[r, j, t] = 1`` where ``d(r, t) = j - pad`` and ``pad``: the phases are ``K'``-wide
    correlations of the low-resolution input, padded by ``pad`` on each side.
    """
    p = _conv_pad(kernel)
    offsets = {}
    for r in (0, 1):
        for t in range(kernel):
            if transposed:
                if (r + p - t) % 2 == 0:
                    offsets[r, t] = (r + p - t) // 2
            else:
                offsets[r, t] = (r + t - p) // 2
    pad = max(max(offsets.values()), -min(offsets.values()))
    taps = torch.zeros(2, 2 * pad + 1, kernel)
    for (r, t), d in offsets.items():
        taps[r, d + pad, t] = 1.0
    return taps, pad


def _depth_to_space(y: Tensor, channels: int) -> Tensor:
    """``[N, 4C, H, W]`` with channel ``(2 ry + rx) * C + c`` -> ``[N, C, 2H, 2W]``, channels-last
    in memory (one copy; free of strides when ``y`` is channels-last)."""
    n, _, h, w = y.shape
    y = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, channels)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, channels)
    return y.permute(0, 3, 1, 2)


class _PhaseConv:
    """2x up-convolution computed as one stride-1 convolution of the low-resolution input with
    the four output phases' filters stacked on the channels, then a depth-to-space copy.

    The same function of the same parameters as the layer it replaces, with fewer operations:
    nearest upsampling + a 5x5 convolution costs 25 taps per output pixel, the phase form 9 (and
    no upsampled tensor is ever made); a stride-2 transposed convolution becomes a plain
    convolution, which oneDNN and cuDNN run several times faster.
    """

    transposed: bool

    def _setup_phases(self, kernel: int) -> None:
        taps, self.phase_pad = _phase_taps(kernel, self.transposed)
        self.register_buffer("phase_taps", taps, persistent=False)

    def _phase_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.transposed:  # ConvTranspose2d stores [in, out, kh, kw]
            weight = weight.transpose(0, 1)
        cout = weight.shape[0]
        a = self.phase_taps.to(weight.dtype)
        w = torch.einsum("ajt,oitu,bku->aboijk", a, weight, a)
        w = w.reshape(4 * cout, *w.shape[3:])
        if bias is not None:
            bias = bias.repeat(4)
        y = nn.functional.conv2d(x, w, bias, padding=self.phase_pad)
        return _depth_to_space(y, cout)


class UpConv2d(_PhaseConv, nn.Conv2d):
    """Nearest 2x upsampling followed by a 'same' ``Conv2d`` (DreamerV3's decoder layer), in the
    phase form of :class:`_PhaseConv`. Parameters and checkpoint keys are a ``Conv2d``'s."""

    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        if kernel % 2 == 0:
            raise ValueError(f"UpConv2d needs an odd kernel for 'same' padding, got {kernel}")
        super().__init__(in_channels, out_channels, kernel, padding="same")
        self._setup_phases(kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self._phase_forward(x, self.weight, self.bias)


class UpConvTranspose2d(_PhaseConv, nn.ConvTranspose2d):
    """``ConvTranspose2d`` with stride 2, padding ``(kernel - 1) // 2`` and the output padding
    that doubles the resolution, in the phase form of :class:`_PhaseConv`."""

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        pad = _conv_pad(kernel)
        super().__init__(in_channels, out_channels, kernel, stride=2, padding=pad,
                         output_padding=2 + 2 * pad - kernel)
        self._setup_phases(kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self._phase_forward(x, self.weight, self.bias)


class ConvEncoder(nn.Module):
    """CNN over ``[N, C, H, W]`` float images; halves the resolution once per depth.

    Output: flattened features ``[N, depth * mults[-1] * (H / 2^L) * (W / 2^L)]``.
    """

    def __init__(self, in_channels: int, resolution: Sequence[int], depth: int = 64,
                 mults: Sequence[int] = (2, 3, 4, 4), kernel: int = 5, act: str = "silu",
                 norm: str = "rms", strided: bool = False):
        super().__init__()
        self.depths = [depth * m for m in mults]
        self.strided = strided
        factor = 2 ** len(self.depths)
        h, w = resolution
        if h % factor or w % factor:
            raise ValueError(
                f"image resolution {tuple(resolution)} must be divisible by 2^{len(self.depths)}"
                f" (one halving per entry of mults={list(mults)})")
        self.minres = (h // factor, w // factor)
        if not all(3 <= r <= 16 for r in self.minres):
            raise ValueError(
                f"CNN output resolution {self.minres} must be in [3, 16] per side; "
                f"adjust mults={list(mults)} for resolution {tuple(resolution)}")
        layers: list[nn.Module] = []
        cin = in_channels
        for d in self.depths:
            if strided:
                layers.append(nn.Conv2d(cin, d, kernel, stride=2, padding=_conv_pad(kernel)))
            else:
                layers.append(nn.Conv2d(cin, d, kernel, stride=1, padding="same"))
                layers.append(nn.MaxPool2d(2))
            layers += [ChannelNorm(d, norm), get_act(act)]
            cin = d
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                trunc_normal_init_(m.weight, m.in_channels * kernel * kernel)
                nn.init.zeros_(m.bias)
        self.out_features = self.depths[-1] * self.minres[0] * self.minres[1]

    def forward(self, x: Tensor) -> Tensor:
        # channels-last: oneDNN's and cuDNN's fast layout; the channel norms read contiguous rows
        x = self.net(x.contiguous(memory_format=torch.channels_last))
        assert x.shape[-2:] == self.minres, (x.shape, self.minres)
        return x.flatten(-3)


class ConvDecoder(nn.Module):
    """Transposed CNN from ``feat = concat(deter, stoch)`` to ``[N, C, H, W]`` in ``[0, 1]``."""

    def __init__(self, deter: int, stoch: int, out_channels: int, resolution: Sequence[int],
                 depth: int = 64, mults: Sequence[int] = (2, 3, 4, 4), kernel: int = 5,
                 units: int = 1024, act: str = "silu", norm: str = "rms",
                 outscale: float = 1.0, bspace: int = 8, strided: bool = False):
        super().__init__()
        self.deter, self.stoch = deter, stoch
        self.depths = [depth * m for m in mults]
        self.strided, self.bspace = strided, bspace
        factor = 2 ** len(self.depths)
        h, w = resolution
        if h % factor or w % factor:
            raise ValueError(
                f"image resolution {tuple(resolution)} must be divisible by 2^{len(self.depths)}")
        self.minres = (h // factor, w // factor)
        if not all(3 <= r <= 16 for r in self.minres):
            raise ValueError(f"CNN decoder start resolution {self.minres} must be in [3, 16]")
        self.resolution = (h, w)
        self.out_channels = out_channels
        c0 = self.depths[-1]
        space = c0 * self.minres[0] * self.minres[1]
        if bspace:
            if deter % bspace or c0 % bspace:
                raise ValueError(
                    f"bspace={bspace} must divide deter={deter} and the top depth {c0}")
            self.sp0 = BlockLinear(deter, space, bspace)
            self.sp1 = nn.Sequential(Linear(stoch, 2 * units), Norm(2 * units, norm),
                                     get_act(act), Linear(2 * units, space))
        else:
            self.space = Linear(deter + stoch, space)
        self.spnorm = ChannelNorm(c0, norm)
        self.spact = get_act(act)
        layers: list[nn.Module] = []
        cin = c0
        outs = list(reversed(self.depths[:-1])) + [out_channels]
        for i, d in enumerate(outs):
            last = i == len(outs) - 1
            conv = UpConvTranspose2d(cin, d, kernel) if strided else UpConv2d(cin, d, kernel)
            fan_in = cin * kernel * kernel
            trunc_normal_init_(conv.weight, fan_in, outscale if last else 1.0)
            nn.init.zeros_(conv.bias)
            layers.append(conv)
            if not last:
                layers += [ChannelNorm(d, norm), get_act(act)]
            cin = d
        self.net = nn.Sequential(*layers)
        if not strided:
            self._register_load_state_dict_pre_hook(self._upgrade_upsample_keys)

    @staticmethod
    def _upgrade_upsample_keys(state_dict, prefix, *args) -> None:
        """Checkpoints from before the phase form had an ``nn.Upsample`` before each convolution
        (``net.[Upsample, Conv, Norm, act] * L``): their layer ``k`` is our layer
        ``k - k // 4 - 1``. Renames those keys in place so that such checkpoints still load."""
        head = prefix + "net."
        if head + "1.weight" not in state_dict:  # ours: net.1 is a norm (scale), never a weight
            return
        for key in [k for k in state_dict if k.startswith(head)]:
            index, rest = key[len(head):].split(".", 1)
            old = int(index)
            state_dict[f"{head}{old - old // 4 - 1}.{rest}"] = state_dict.pop(key)

    def forward(self, feat: Tensor) -> Tensor:
        assert feat.shape[-1] == self.deter + self.stoch, (feat.shape, self.deter, self.stoch)
        c0 = self.depths[-1]
        h, w = self.minres
        if self.bspace:
            deter, stoch = feat[..., : self.deter], feat[..., self.deter :]
            x0 = einops.rearrange(self.sp0(deter), "n (g h w c) -> n (g c) h w",
                                  g=self.bspace, h=h, w=w)
            x1 = self.sp1(stoch).reshape(-1, h, w, c0).permute(0, 3, 1, 2)
            x = x0 + x1
        else:
            x = self.space(feat).reshape(-1, h, w, c0).permute(0, 3, 1, 2)
        x = self.spact(self.spnorm(x.contiguous(memory_format=torch.channels_last)))
        x = torch.sigmoid(self.net(x))
        assert x.shape[1:] == (self.out_channels, *self.resolution), x.shape
        return x
