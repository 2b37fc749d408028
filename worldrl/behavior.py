"""Actor-critic learning in imagination (DreamerV3 ``imag_loss`` / ``repl_loss``, 2024+).

Recipe (``dreamerv3/agent.py`` and ``configs.yaml`` of danijar/dreamerv3, checked against the
source):

* Imagination from every posterior state of the replayed batch (``B*T`` starts, detached),
  horizon 15, actions sampled from the actor on ``sg(feat)``.
* lambda-returns (``lam=0.95``) bootstrapped with the *fast* critic (``slowtar: False``); the
  discount is folded into the continue head's target (``contdisc: True``: target
  ``(1 - terminated) * (1 - 1/333)``, ``disc = 1`` here); ``contdisc=False`` uses the undiscounted
  continue target and ``disc = 1 - 1/horizon``. Loss weight ``cumprod(disc * cont) / disc``.
* Return normalisation: percentile EMA (5th / 95th, rate 0.01 i.e. decay 0.99, no debiasing, the
  EMA starts at 0) and ``scale = max(1, hi - lo)``; advantages ``(ret - V) / scale``.
* Actor: REINFORCE for discrete **and** continuous actions. The 2024 code has no ``actor_grad``
  switch any more: the policy loss is ``-w * (logpi(sg(a)) * sg(adv) + actent * entropy)`` with
  ``actent = 3e-4`` and imagined features stop-gradiented. ``actor_grad='dynamics'`` is our option
  (DreamerV1/V2 style): the loss is ``-w * (adv + actent * entropy)`` with gradients flowing
  through straight-through / reparameterised actions and the (frozen) world model.
* Critic: two-hot loss toward ``sg(ret)`` plus ``slowreg * `` two-hot loss toward the slow
  critic's prediction (``slowreg = 1``); slow critic = EMA of the critic with update fraction
  0.02 every update. Replay value loss (``repval``, scale 0.3): lambda-returns on the replayed
  rewards bootstrapped from the imagined return of each posterior state, discount ``1 - 1/333``.
* Discrete policy: categorical with 1% unimix (the DreamerV3 config sets ``unimix: 0.01`` for
  the policy but its 2024 ``categorical`` output ignores it; we apply it). Continuous policy:
  :class:`~worldrl.dists.BoundedNormal` (``minstd 0.1``, ``maxstd 1``), output scale 0.01.

Time-major everywhere: imagined tensors are ``[H+1, N]``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn

from worldrl.backbones.base import Backbone, State
from worldrl.dists import BoundedNormal, OneHot
from worldrl.heads import ContinueHead, CriticHead, RewardHead
from worldrl.imagination import Trajectory, annotate, imagine
from worldrl.nets import MLP, Linear

__all__ = ["Actor", "Normalize", "SlowCopy", "lambda_return", "frozen", "ActorCritic",
           "ACTOR_GRADS"]

ACTOR_GRADS = ("reinforce", "dynamics")


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily mark parameters as not requiring grad, so a forward pass inside lets gradients
    flow *through* the modules (to their inputs) without accumulating into their parameters."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Actor(nn.Module):
    """Policy MLP: one-hot categorical (discrete) or bounded normal (continuous)."""

    def __init__(self, feat_size: int, action_size: int, discrete: bool, *, layers: int = 3,
                 units: int = 1024, act: str = "silu", norm: str = "rms", minstd: float = 0.1,
                 maxstd: float = 1.0, outscale: float = 0.01, unimix: float = 0.01):
        super().__init__()
        self.discrete, self.action_size = discrete, action_size
        self.minstd, self.maxstd, self.unimix = minstd, maxstd, unimix
        self.mlp = MLP(feat_size, layers, units, act, norm)
        out = action_size if discrete else 2 * action_size
        self.out = Linear(self.mlp.out_features, out, outscale=outscale)

    def forward(self, feat: Tensor) -> OneHot | BoundedNormal:
        x = self.out(self.mlp(feat))
        if self.discrete:
            return OneHot(x, self.unimix)
        mean, std = x.chunk(2, -1)
        return BoundedNormal(mean, std, self.minstd, self.maxstd)


class Normalize(nn.Module):
    """EMA statistics for returns / values / advantages (DreamerV3 ``Normalize``).

    ``impl='perc'``: ``lo, hi`` = EMA of the ``perclo`` / ``perchi`` percentiles with ``rate``
    (update fraction; decay ``1 - rate``), returns ``(lo, max(limit, hi - lo))``.
    ``impl='meanstd'``: ``(mean, max(limit, std))``. ``impl='none'``: ``(0, 1)``. With ``debias``
    the EMAs are divided by the EMA of 1 (DreamerV3 default config: off for the return normaliser).
    With ``group`` set (a ``torch.distributed`` process group: the data-parallel learner) the
    statistics are taken over every rank's ``x``, as one process would over the whole batch.
    """

    IMPLS = ("perc", "meanstd", "none")

    def __init__(self, impl: str = "perc", rate: float = 0.01, limit: float = 1.0,
                 perclo: float = 5.0, perchi: float = 95.0, debias: bool = False):
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"unknown normaliser impl {impl!r}; choices: {list(self.IMPLS)}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"normaliser rate must be in (0, 1], got {rate}")
        self.impl, self.rate, self.limit = impl, rate, limit
        self.perclo, self.perchi, self.debias = perclo, perchi, debias
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("corr", torch.zeros(()))
        self.register_buffer("quantiles", torch.tensor([perclo / 100, perchi / 100]),
                             persistent=False)  # on the device already: no copy per update
        self.group = None

    def __getstate__(self) -> dict:
        # a copy sent to a collector worker acts, it never updates: it needs no process group
        # (which cannot be pickled)
        return {**self.__dict__, "group": None}

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().float().flatten()
        if self.impl == "none":
            return
        if self.group is not None:  # traceable by torch.compile, unlike dist.all_gather
            x = funcol.all_gather_single(x, 0, self.group)
        if self.impl == "perc":
            q = torch.quantile(x, self.quantiles.to(x.dtype))
            a, b = q[0], q[1]
        else:
            a, b = x.mean(), x.square().mean()
        self.lo.lerp_(a, self.rate)
        self.hi.lerp_(b, self.rate)
        self.corr.lerp_(torch.ones_like(self.corr), self.rate)

    def stats(self) -> tuple[Tensor, Tensor]:
        """``(offset, scale)``, detached."""
        if self.impl == "none":
            return torch.zeros((), device=self.lo.device), torch.ones((), device=self.lo.device)
        corr = 1.0 / torch.clamp_min(self.corr, self.rate) if self.debias else 1.0
        lo, hi = self.lo * corr, self.hi * corr
        if self.impl == "perc":
            return lo.clone(), torch.clamp_min(hi - lo, self.limit)
        std = torch.sqrt(torch.relu(hi - lo.square()))
        return lo.clone(), torch.clamp_min(std, self.limit)

    def forward(self, x: Tensor, update: bool = True) -> tuple[Tensor, Tensor]:
        if update:
            self.update(x)
        return self.stats()


class SlowCopy(nn.Module):
    """EMA copy of a module (DreamerV3 ``SlowModel``): ``slow <- rate * src + (1 - rate) * slow``
    every ``every`` updates; starts as an exact copy; its parameters never require grad."""

    def __init__(self, source: nn.Module, rate: float = 0.02, every: int = 1):
        super().__init__()
        if not (rate == 1.0 or 0.0 < rate < 0.5):
            raise ValueError(f"slow model rate must be 1 or in (0, 0.5), got {rate}")
        if every < 1:
            raise ValueError(f"slow model 'every' must be >= 1, got {every}")
        self.model = copy.deepcopy(source)
        self.model.requires_grad_(False)
        self.rate, self.every = rate, every
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        if self.every == 1 or int(self.count) % self.every == 0:  # no host sync by default
            # one multi-tensor kernel, not one per tensor
            torch._foreach_lerp_(list(self.model.parameters()),
                                 [p.detach() for p in source.parameters()], self.rate)
        self.count += 1


def lambda_return(reward: Tensor, cont: Tensor, boot: Tensor, disc: float = 1.0,
                  lam: float = 0.95, last: Tensor | None = None) -> Tensor:
    """TD(lambda) returns, time-major. Inputs ``[T+1, ...]``, output ``[T, ...]``.

    ``R_T = boot_T`` and ``R_t = r_{t+1} + disc * c_{t+1} * ((1 - l_{t+1}) * boot_{t+1}
    + l_{t+1} * R_{t+1})`` with ``l = lam * (1 - last)``: ``reward[t]`` is the reward for arriving
    at step ``t``, ``cont[t]`` the probability of continuing from it (``1 - terminal``), ``boot``
    the bootstrap values; ``last`` (bool) cuts the recursion (episode boundary inside a replayed
    sequence) and bootstraps there.
    """
    assert reward.shape == cont.shape == boot.shape, (reward.shape, cont.shape, boot.shape)
    live = cont[1:].float() * disc
    lam_t = lam * torch.ones_like(live) if last is None else lam * (1.0 - last[1:].float())
    interm = reward[1:] + (1.0 - lam_t) * live * boot[1:]
    rets = [boot[-1]]
    for t in reversed(range(live.shape[0])):
        rets.append(interm[t] + live[t] * lam_t[t] * rets[-1])
    return torch.stack(rets[::-1][:-1], 0)


class ActorCritic(nn.Module):
    """DreamerV3 behaviour learning: actor, critic, slow critic and the normalisers.

    Args:
        feat_size, action_size, discrete: model sizes and action type.
        actor, critic: keyword configs of :class:`Actor` / :class:`~worldrl.heads.CriticHead`.
        imag_horizon: imagination length ``H``.
        horizon: effective horizon; discount ``1 - 1/horizon``.
        contdisc: the discount is folded into the continue head's target (DreamerV3 default).
        lam, actent, slowreg, slowtar: lambda, entropy scale, slow-critic regulariser scale,
            bootstrap with the slow critic.
        slow_rate, slow_every: slow critic EMA.
        actor_grad: ``'reinforce'`` (DreamerV3 2024, both action types) or ``'dynamics'``.
        retnorm, valnorm, advnorm: :class:`Normalize` configs.
        repval_loss, repval_grad: replay value loss on/off; whether it trains the representation.
        imag_last: imagine only from the last ``imag_last`` posterior steps of each replayed
            sequence (DreamerV3 ``imag_last``; 0 = all ``T``, the default); the replay value loss
            then covers those steps too.
    """

    def __init__(self, feat_size: int, action_size: int, discrete: bool, *,
                 actor: dict | None = None, critic: dict | None = None, imag_horizon: int = 15,
                 horizon: float = 333, contdisc: bool = True, lam: float = 0.95,
                 actent: float = 3e-4, slowreg: float = 1.0, slowtar: bool = False,
                 slow_rate: float = 0.02, slow_every: int = 1, actor_grad: str = "reinforce",
                 retnorm: dict | None = None, valnorm: dict | None = None,
                 advnorm: dict | None = None, repval_loss: bool = True, repval_grad: bool = True,
                 imag_last: int = 0):
        super().__init__()
        if actor_grad not in ACTOR_GRADS:
            raise ValueError(f"unknown actor_grad {actor_grad!r}; choices: {list(ACTOR_GRADS)}")
        if horizon <= 1:
            raise ValueError(f"horizon must be > 1 (discount 1 - 1/horizon), got {horizon}")
        self.actor = Actor(feat_size, action_size, discrete, **(actor or {}))
        self.critic = CriticHead(feat_size, **(critic or {}))
        self.slow_critic = SlowCopy(self.critic, slow_rate, slow_every)
        self.retnorm = Normalize(**(retnorm or {}))
        self.valnorm = Normalize(**(valnorm or {"impl": "none"}))
        self.advnorm = Normalize(**(advnorm or {"impl": "none"}))
        self.discrete, self.action_size = discrete, action_size
        self.imag_horizon, self.horizon, self.contdisc = int(imag_horizon), horizon, contdisc
        self.lam, self.actent, self.slowreg, self.slowtar = lam, actent, slowreg, slowtar
        self.actor_grad = actor_grad
        self.repval_loss, self.repval_grad = repval_loss, repval_grad
        if imag_last < 0:
            raise ValueError(f"imag_last must be >= 0 (0: every replayed step), got {imag_last}")
        self.imag_last = int(imag_last)

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.horizon

    @property
    def cont_target_scale(self) -> float:
        """Factor for the continue head's target ``1 - terminated`` (``contdisc``)."""
        return self.discount if self.contdisc else 1.0

    def policy(self, feat: Tensor) -> OneHot | BoundedNormal:
        return self.actor(feat)

    def update_slow(self) -> None:
        self.slow_critic.update(self.critic)

    # ------------------------------------------------------------------------------ imagination
    def rollout(self, backbone: Backbone, reward_head: RewardHead, cont_head: ContinueHead,
                start: State) -> Trajectory:
        """Imagine ``imag_horizon`` steps from ``start`` and apply the heads.

        ``reinforce``: everything under ``no_grad`` (the trajectory is data). ``dynamics``: the
        world model is frozen but differentiable, actions are straight-through / reparameterised.
        """
        disc = 1.0 if self.contdisc else self.discount
        start = {k: v.detach() for k, v in start.items()}
        if self.actor_grad == "reinforce":
            with torch.no_grad():
                traj = imagine(backbone, lambda f: self.actor(f).sample().detach(), start,
                               self.imag_horizon)
                return annotate(traj, reward_head, cont_head, disc)
        with frozen(backbone, reward_head, cont_head):
            traj = imagine(backbone, lambda f: self.actor(f.detach()).rsample(), start,
                           self.imag_horizon)
            return annotate(traj, reward_head, cont_head, disc)

    def imag_loss(self, traj: Trajectory, update: bool = True
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Policy and value losses ``[H, N]`` on an annotated trajectory (DreamerV3 ``imag_loss``).

        Returns ``(losses, outs, metrics)`` with ``outs['ret'] [H, N]`` (the lambda-returns).
        """
        H1, N = traj.feat.shape[:2]
        assert traj.reward is not None and traj.cont is not None and traj.weight is not None
        disc = 1.0 if self.contdisc else self.discount
        reinforce = self.actor_grad == "reinforce"
        feat = traj.feat.detach()
        critic = self.critic(feat)  # trains the critic; also the bootstrap values under REINFORCE
        voffset, vscale = self.valnorm.stats()
        with torch.no_grad():
            slowval_raw = self.slow_critic(feat).pred()
        slowval = slowval_raw * vscale + voffset
        if reinforce:
            val = critic.pred().detach() * vscale + voffset
        else:  # values differentiable w.r.t. the imagined features, not the critic's weights
            with frozen(self.critic):
                val = self.critic(traj.feat).pred() * vscale + voffset
        tarval = slowval if self.slowtar else val
        if reinforce:
            with torch.no_grad():
                ret = lambda_return(traj.reward, traj.cont, tarval, disc, self.lam)
        else:
            ret = lambda_return(traj.reward, traj.cont, tarval, disc, self.lam)
        assert ret.shape == (H1 - 1, N), ret.shape
        weight = traj.weight.detach()[:-1]

        _, rscale = self.retnorm(ret, update)
        adv = (ret - tarval[:-1]) / rscale
        aoffset, ascale = self.advnorm(adv, update)
        adv_normed = (adv - aoffset) / ascale

        policy = self.actor(traj.feat.detach())
        ent = policy.entropy()[:-1]
        if reinforce:
            logpi = policy.log_prob(traj.action.detach())[:-1]
            policy_loss = -weight * (logpi * adv_normed.detach() + self.actent * ent)
        else:
            policy_loss = -weight * (adv_normed + self.actent * ent)

        voffset, vscale = self.valnorm(ret, update)
        tar_normed = ((ret - voffset) / vscale).detach()
        tar_padded = torch.cat([tar_normed, torch.zeros_like(tar_normed[:1])], 0)
        value_loss = (critic.loss(tar_padded)
                      + self.slowreg * critic.loss(slowval_raw.detach()))[:-1]
        value_loss = weight * value_loss

        losses = {"policy": policy_loss, "value": value_loss}
        metrics = {
            "ret": ((ret - self.retnorm.stats()[0]) / rscale).mean(),
            "ret_raw": ret.mean(),
            "adv": adv.mean(),
            "adv_std": adv.std(),
            "adv_mag": adv.abs().mean(),
            "rew": traj.reward.mean(),
            "con": traj.cont.mean(),
            "val": val.mean(),
            "slowval": slowval.mean(),
            "weight": traj.weight.mean(),
            "entropy": ent.mean(),
            "rand": (ent.mean() - policy.minent) / (policy.maxent - policy.minent + 1e-8),
            "retnorm_lo": self.retnorm.lo.clone(),
            "retnorm_hi": self.retnorm.hi.clone(),
            "return_scale": rscale,
        }
        metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, {"ret": ret.detach()}, metrics

    # ----------------------------------------------------------------------------------- replay
    def replay_value_loss(self, feat: Tensor, reward: Tensor, terminated: Tensor,
                          is_first: Tensor, boot: Tensor, is_last: Tensor | None = None,
                          update: bool = True) -> Tensor:
        """DreamerV3 ``repl_loss``: value loss on replayed sequences, ``[B, T-1]``.

        Args:
            feat: ``[B, T, F]`` posterior features (detached unless ``repval_grad``).
            reward, terminated, is_first: ``[B, T]`` replay data (``reward[:, t]`` received on
                arriving at obs ``t``). Step ``t`` is an episode's last in the sequence where
                ``is_first[:, t+1]`` or ``is_last[:, t]``; those steps are masked and
                bootstrapped (DreamerV3's ``last``).
            boot: ``[B, T]`` imagined lambda-return from each posterior state.
            is_last: optional ``[B, T]`` bool.
        """
        B, T = reward.shape
        assert feat.shape[:2] == (B, T) and boot.shape == (B, T), (feat.shape, boot.shape)
        if not self.repval_grad:
            feat = feat.detach()
        last = torch.zeros_like(is_first, dtype=torch.bool)
        last[:, :-1] = is_first[:, 1:].bool()
        if is_last is not None:
            last = last | is_last.bool()
        cont = 1.0 - terminated.float()
        tm = lambda x: x.transpose(0, 1)  # noqa: E731  [B, T] -> [T, B]
        with torch.no_grad():
            ret = lambda_return(tm(reward.float()), tm(cont), tm(boot.detach()), self.discount,
                                self.lam, tm(last))
            voffset, vscale = self.valnorm(ret, update)
            ret_normed = tm((ret - voffset) / vscale)  # [B, T-1]
            slowpred = self.slow_critic(feat.detach()).pred()
        critic = self.critic(feat)
        padded = torch.cat([ret_normed, torch.zeros_like(ret_normed[:, :1])], 1)
        loss = (critic.loss(padded) + self.slowreg * critic.loss(slowpred))[:, :-1]
        weight = (~last).float()[:, :-1]
        return weight * loss
