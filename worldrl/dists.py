"""Output distributions and transforms used by the DreamerV3 recipe.

Follows ``embodied/jax/outs.py`` and ``embodied/jax/heads.py`` of danijar/dreamerv3 (2024+):

* :func:`symlog` / :func:`symexp` squashing.
* :class:`TwoHot`: a categorical over fixed *symexp-spaced* bins. As in the 2024 code the two-hot
  target is interpolated linearly between the two neighbouring bins in raw (not symlog) space, so
  the expected value of the two-hot encoding of ``x`` is exactly ``x`` for ``x`` inside the bins.
  ``pred()`` uses DreamerV3's symmetric summation so that uniform probabilities give exactly 0.
* :class:`OneHot`: categorical over one-hot events with ``unimix`` (mixture with the uniform
  distribution) and straight-through gradients for ``sample()``/``mode()``. ``event_dims`` sums
  log-probs, entropies and KLs over extra trailing axes, so ``OneHot(logits[..., 32, 32],
  event_dims=1)`` is the 32x32 categorical latent of the RSSM.
* :class:`MSE` (optionally in symlog space), :class:`Bernoulli` (soft targets allowed, used for the
  continue flag) and :class:`BoundedNormal` (the current DreamerV3 continuous policy: ``tanh`` mean,
  ``std = (max - min) * sigmoid(raw + 2) + min``, an untruncated Normal).

Every distribution has ``pred()`` (point prediction), ``loss(target)`` (negative log-likelihood or
squared error, with the target detached) and, where meaningful, ``log_prob``, ``sample``,
``entropy`` and ``kl``. Loss/log-prob outputs have the batch shape (event axes reduced).

Deviations from DreamerV3: :meth:`MSE.pred` of a symlog-MSE returns ``symexp(mean)`` (the value in
target space; DreamerV3 returns the symlog-space mean), and :class:`TwoHot.mean` is an alias of
``pred``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "one_hot",
    "symlog",
    "symexp",
    "symexp_bins",
    "twohot_encode",
    "TwoHot",
    "OneHot",
    "MSE",
    "Bernoulli",
    "BoundedNormal",
]


def one_hot(index: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``F.one_hot(index, classes).to(dtype)`` without its host read: on the CPU ``F.one_hot``
    checks ``index.min() >= 0`` with ``.item()``, which a captured CUDA graph cannot hold and
    which stalls a GPU update. Out-of-range indices give an all-zero row instead of an error."""
    arange = torch.arange(classes, device=index.device)
    return (index.unsqueeze(-1) == arange).to(dtype)


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symexp_bins(num: int = 255, low: float = -20.0, high: float = 20.0) -> Tensor:
    """``symexp(linspace(low, high, num))``, built exactly symmetric around zero as DreamerV3 does.

    Only symmetric ranges (``low == -high``) are supported because the symmetric construction is
    what makes a uniform distribution predict exactly zero.
    """
    if num < 2:
        raise ValueError(f"symexp_bins needs num >= 2, got num={num}")
    if low != -high:
        raise ValueError(f"symexp_bins needs a symmetric range, got low={low}, high={high}")
    if num % 2 == 1:
        half = symexp(torch.linspace(low, 0.0, (num - 1) // 2 + 1, dtype=torch.float64))
        bins = torch.cat([half, -half[:-1].flip(0)], 0)
    else:
        half = symexp(torch.linspace(low, 0.0, num // 2, dtype=torch.float64))
        bins = torch.cat([half, -half.flip(0)], 0)
    return bins.float()


def twohot_encode(target: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``target [...]`` over sorted ``bins [K]`` -> ``[..., K]``.

    The two neighbouring bins get weights inversely proportional to their distance, so
    ``(encode(x) * bins).sum(-1) == x`` inside the range; outside, all mass goes to the edge bin.
    """
    target = target.detach().float()
    num = bins.shape[0]
    below = (bins <= target[..., None]).long().sum(-1) - 1
    above = num - (bins > target[..., None]).long().sum(-1)
    below = below.clamp(0, num - 1)
    above = above.clamp(0, num - 1)
    equal = below == above
    one = torch.ones_like(target)
    dist_below = torch.where(equal, one, (bins[below] - target).abs())
    dist_above = torch.where(equal, one, (bins[above] - target).abs())
    total = dist_below + dist_above
    weight_below = dist_above / total
    weight_above = dist_below / total
    return (
        one_hot(below, num) * weight_below[..., None]
        + one_hot(above, num) * weight_above[..., None]
    )


def _sum_last(x: Tensor, dims: int) -> Tensor:
    return x.sum(dim=tuple(range(-dims, 0))) if dims else x


class TwoHot:
    """Categorical over fixed bins with two-hot targets (DreamerV3 ``symexp_twohot``).

    Args:
        logits: ``[..., K]`` unnormalised log-probabilities.
        bins: ``[K]`` sorted bin values (default :func:`symexp_bins` with ``K`` bins).
    """

    def __init__(self, logits: Tensor, bins: Tensor | None = None):
        logits = logits.float()
        if bins is None:
            bins = symexp_bins(logits.shape[-1])
        bins = bins.to(logits.device)
        assert logits.shape[-1] == bins.shape[0], (logits.shape, bins.shape)
        self.logits = logits
        self.bins = bins
        self.probs = torch.softmax(logits, -1)

    def pred(self) -> Tensor:
        """Expected value, summed symmetrically from the outside in (exactly 0 when uniform)."""
        n = self.logits.shape[-1]
        p, b = self.probs, self.bins
        if n % 2 == 1:
            m = (n - 1) // 2
            mid = p[..., m] * b[m]
            left = (p[..., :m] * b[:m]).flip(-1)
            right = p[..., m + 1 :] * b[m + 1 :]
            return mid + (left + right).sum(-1)
        m = n // 2
        left = (p[..., :m] * b[:m]).flip(-1)
        right = p[..., m:] * b[m:]
        return (left + right).sum(-1)

    mean = pred

    def log_prob(self, target: Tensor) -> Tensor:
        """Cross-entropy of the two-hot target with the predicted distribution, negated.

        The same value as ``(twohot_encode(target, bins) * log_softmax(logits)).sum(-1)``, read
        with two gathers instead of a dense ``[..., K]`` target."""
        target = target.detach().float()
        num = self.bins.shape[0]
        below = torch.searchsorted(self.bins, target.contiguous(), right=True) - 1
        above = (below + 1).clamp(0, num - 1)  # the first bin above the target
        below = below.clamp(0, num - 1)
        equal = below == above  # outside the bins: all mass on the edge bin
        dist_below = torch.where(equal, 1.0, (self.bins[below] - target).abs())
        dist_above = torch.where(equal, 1.0, (self.bins[above] - target).abs())
        total = dist_below + dist_above
        logp = torch.log_softmax(self.logits, -1)
        lp_below = logp.gather(-1, below[..., None])[..., 0]
        lp_above = logp.gather(-1, above[..., None])[..., 0]
        return (dist_above * lp_below + dist_below * lp_above) / total

    def loss(self, target: Tensor) -> Tensor:
        return -self.log_prob(target.detach())

    def entropy(self) -> Tensor:
        return -(self.probs * torch.log_softmax(self.logits, -1)).sum(-1)


class OneHot:
    """Categorical over one-hot vectors with unimix and straight-through gradients.

    Args:
        logits: ``[..., *extra, K]``.
        unimix: weight of the uniform mixture; probabilities are ``(1 - u) softmax + u / K`` so
            every class keeps at least ``u / K`` probability.
        event_dims: number of axes before the class axis that belong to the event (summed over in
            ``log_prob``, ``entropy`` and ``kl``). ``1`` for a ``[..., groups, classes]`` latent.
    """

    def __init__(self, logits: Tensor, unimix: float = 0.0, event_dims: int = 0):
        logits = logits.float()
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}")
        if unimix:
            probs = torch.softmax(logits, -1)
            probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
            logits = torch.log(probs)
        self.logits = torch.log_softmax(logits, -1)
        self.probs = torch.exp(self.logits)
        self.unimix = unimix
        self.event_dims = event_dims
        self.classes = logits.shape[-1]

    def _straight_through(self, index: Tensor) -> Tensor:
        onehot = one_hot(index, self.classes, self.probs.dtype)
        return onehot + (self.probs - self.probs.detach())  # exact 0/1 forward values

    def sample(self) -> Tensor:
        """One-hot sample; its gradient is the gradient of the probabilities (straight-through)."""
        # inverse-CDF sampling: one uniform per categorical, index = #{k : cdf_k <= u}; several
        # times faster than torch.multinomial for many small categoricals on the CPU
        probs = self.probs.detach()
        u = torch.rand(probs.shape[:-1] + (1,), dtype=probs.dtype, device=probs.device)
        index = (probs.cumsum(-1) <= u).sum(-1).clamp_max(self.classes - 1)
        return self._straight_through(index)

    rsample = sample

    def mode(self) -> Tensor:
        return self._straight_through(self.logits.argmax(-1))

    pred = mode

    def log_prob(self, event: Tensor) -> Tensor:
        return _sum_last((self.logits * event.detach()).sum(-1), self.event_dims)

    def loss(self, target: Tensor) -> Tensor:
        return -self.log_prob(target)

    def entropy(self) -> Tensor:
        return _sum_last(-(self.probs * self.logits).sum(-1), self.event_dims)

    def kl(self, other: OneHot) -> Tensor:
        """``KL(self || other)`` summed over the event axes."""
        assert isinstance(other, OneHot), type(other)
        assert self.logits.shape == other.logits.shape, (self.logits.shape, other.logits.shape)
        kl = (self.probs * (self.logits - other.logits)).sum(-1)
        return _sum_last(kl, self.event_dims)

    @property
    def minent(self) -> float:
        return 0.0

    @property
    def maxent(self) -> float:
        return math.log(self.classes)


class MSE:
    """Deterministic output with squared-error loss summed over ``event_dims`` trailing axes.

    With ``squash=symlog`` the network predicts in symlog space and the target is symlog-ed
    (DreamerV3 ``symlog_mse``); ``pred()`` then maps back with ``symexp``.
    """

    def __init__(self, mean: Tensor, event_dims: int = 0, squash: str | None = None):
        if squash not in (None, "symlog"):
            raise ValueError(f"MSE squash must be None or 'symlog', got {squash!r}")
        self.mean_ = mean.float()
        self.event_dims = event_dims
        self.squash = squash

    def pred(self) -> Tensor:
        return symexp(self.mean_) if self.squash == "symlog" else self.mean_

    mean = pred
    mode = pred

    def loss(self, target: Tensor) -> Tensor:
        if not torch.is_floating_point(target):
            raise TypeError(f"MSE target must be floating point, got {target.dtype}")
        assert target.shape == self.mean_.shape, (target.shape, self.mean_.shape)
        target = target.detach().float()
        if self.squash == "symlog":
            target = symlog(target)
        return _sum_last((self.mean_ - target) ** 2, self.event_dims)


class Bernoulli:
    """Bernoulli over ``{0, 1}`` from logits; ``loss`` accepts soft targets in ``[0, 1]``."""

    def __init__(self, logits: Tensor):
        self.logits = logits.float()
        self.dist = torch.distributions.Bernoulli(logits=self.logits, validate_args=False)

    def prob(self) -> Tensor:
        """Probability of 1 (of continuing, for the continue head)."""
        return torch.sigmoid(self.logits)

    mean = prob

    def pred(self) -> Tensor:
        return (self.logits > 0).float()

    mode = pred

    def log_prob(self, event: Tensor) -> Tensor:
        return self.dist.log_prob(event.detach().float())

    def loss(self, target: Tensor) -> Tensor:
        return -self.log_prob(target)

    def sample(self) -> Tensor:
        return self.dist.sample()

    def entropy(self) -> Tensor:
        return self.dist.entropy()


class BoundedNormal:
    """DreamerV3's continuous policy: ``Normal(tanh(mean), (hi - lo) * sigmoid(std + 2) + lo)``.

    Log-probs and entropies are summed over the action axis. Samples are not clipped (as in
    DreamerV3); clip them to ``[-1, 1]`` before sending them to an environment.
    """

    def __init__(self, mean: Tensor, std: Tensor, minstd: float = 0.1, maxstd: float = 1.0):
        if not 0.0 < minstd <= maxstd:
            raise ValueError(f"need 0 < minstd <= maxstd, got minstd={minstd}, maxstd={maxstd}")
        self.minstd, self.maxstd = minstd, maxstd
        self.loc = torch.tanh(mean.float())
        self.scale = (maxstd - minstd) * torch.sigmoid(std.float() + 2.0) + minstd
        self.dist = torch.distributions.Normal(self.loc, self.scale, validate_args=False)

    def pred(self) -> Tensor:
        return self.loc

    mode = pred
    mean = pred

    def sample(self) -> Tensor:
        """Reparameterised sample (gradients reach the mean and std)."""
        return self.dist.rsample()

    rsample = sample

    def log_prob(self, event: Tensor) -> Tensor:
        return self.dist.log_prob(event.detach()).sum(-1)

    def entropy(self) -> Tensor:
        return self.dist.entropy().sum(-1)

    def _normal_entropy(self, std: float) -> float:
        return self.loc.shape[-1] * (0.5 * math.log(2 * math.pi * std**2) + 0.5)

    @property
    def minent(self) -> float:
        return self._normal_entropy(self.minstd)

    @property
    def maxent(self) -> float:
        return self._normal_entropy(self.maxstd)
