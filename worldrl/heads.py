"""Scalar heads on ``feat``: reward, continue and critic (DreamerV3 ``MLPHead``).

Each head is an MLP (Linear -> Norm -> act, ``layers`` times) and an output layer; calling it
returns a distribution and ``loss(feat, target)`` returns the per-element loss with the batch shape
(``[B, T]`` for sequences). Reward and critic predict a symexp two-hot over 255 bins with a
zero-initialised output layer (``outscale=0``: they predict exactly 0 at init); the continue head
is a Bernoulli (soft targets allowed, e.g. ``(1 - terminated) * discount`` as DreamerV3's
``contdisc``).
"""

from __future__ import annotations

from torch import Tensor, nn

from worldrl.dists import Bernoulli, TwoHot, symexp_bins
from worldrl.nets import MLP, Linear

__all__ = ["TwoHotHead", "RewardHead", "CriticHead", "ContinueHead"]


class TwoHotHead(nn.Module):
    """MLP -> logits over ``bins`` symexp-spaced bins -> :class:`~worldrl.dists.TwoHot`."""

    def __init__(self, in_features: int, layers: int = 1, units: int = 1024, act: str = "silu",
                 norm: str = "rms", bins: int = 255, outscale: float = 0.0):
        super().__init__()
        self.mlp = MLP(in_features, layers, units, act, norm)
        self.out = Linear(self.mlp.out_features, bins, outscale=outscale)
        self.register_buffer("bins", symexp_bins(bins), persistent=False)

    def forward(self, feat: Tensor) -> TwoHot:
        return TwoHot(self.out(self.mlp(feat)), self.bins)

    def loss(self, feat: Tensor, target: Tensor) -> Tensor:
        dist = self(feat)
        assert target.shape == feat.shape[:-1], (target.shape, feat.shape)
        return dist.loss(target)


class RewardHead(TwoHotHead):
    """Reward ``r_t`` received on arriving at the state of ``feat_t`` (one hidden layer)."""


class CriticHead(TwoHotHead):
    """Value of ``feat_t`` (DreamerV3: three hidden layers, zero-initialised output)."""

    def __init__(self, in_features: int, layers: int = 3, units: int = 1024, act: str = "silu",
                 norm: str = "rms", bins: int = 255, outscale: float = 0.0):
        super().__init__(in_features, layers, units, act, norm, bins, outscale)


class ContinueHead(nn.Module):
    """Probability that the episode continues after the state of ``feat_t``."""

    def __init__(self, in_features: int, layers: int = 1, units: int = 1024, act: str = "silu",
                 norm: str = "rms", outscale: float = 1.0):
        super().__init__()
        self.mlp = MLP(in_features, layers, units, act, norm)
        self.out = Linear(self.mlp.out_features, 1, outscale=outscale)

    def forward(self, feat: Tensor) -> Bernoulli:
        return Bernoulli(self.out(self.mlp(feat)).squeeze(-1))

    def loss(self, feat: Tensor, target: Tensor) -> Tensor:
        assert target.shape == feat.shape[:-1], (target.shape, feat.shape)
        return self(feat).loss(target)
