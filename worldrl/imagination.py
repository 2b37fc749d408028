"""Backbone-agnostic imagination engine.

Rolls a :class:`~worldrl.backbones.base.Backbone` forward with a policy, starting from (detached)
posterior states of a replayed batch, using only ``imagine_step`` and ``get_feat``. Imagined
trajectories are **time-major**: ``feat [H+1, N, F]``, ``action [H+1, N, A]`` where index 0 is the
start state and ``action[t]`` is the action taken *at* state ``t`` (``action[H]`` is sampled for
the policy loss but never executed), matching DreamerV3's ``imgfeat`` / ``imgact``.

:func:`annotate` applies the reward and continue heads: ``reward[t]`` is the reward predicted for
arriving at state ``t`` (``reward[0]`` is unused by the returns), ``cont[t]`` the predicted
continue probability (already discounted when the continue head is trained on discounted targets,
DreamerV3's ``contdisc``) and ``weight = cumprod(disc * cont) / disc`` the loss weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from worldrl.backbones.base import Backbone

__all__ = ["Trajectory", "imagine", "annotate"]

PolicyFn = Callable[[Tensor], Tensor]


@dataclass
class Trajectory:
    """An imagined rollout, time-major (``[H+1, N, ...]``)."""

    feat: Tensor
    action: Tensor
    state: dict[str, Tensor] = field(default_factory=dict)
    reward: Tensor | None = None
    cont: Tensor | None = None
    weight: Tensor | None = None

    @property
    def horizon(self) -> int:
        return self.feat.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.feat.shape[1]


def imagine(backbone: Backbone, policy_fn: PolicyFn, start: Mapping[str, Tensor], horizon: int,
            sample: bool = True) -> Trajectory:
    """Roll ``backbone.imagine_step`` for ``horizon`` steps with ``action = policy_fn(feat)``.

    Args:
        backbone: any :class:`Backbone`.
        policy_fn: ``feat [N, F] -> action [N, A]`` (sampled; straight-through / reparameterised
            if gradients through the dynamics are wanted).
        start: start state ``{k: [N, ...]}`` with the backbone's state keys (extra keys ignored).
        horizon: number of imagined steps ``H``.
        sample: sample the backbone's stochastic latents (``False``: mode).

    Returns:
        :class:`Trajectory` with ``feat [H+1, N, F]``, ``action [H+1, N, A]`` and ``state``.
    """
    if horizon < 1:
        raise ValueError(f"imagination horizon must be >= 1, got {horizon}")
    keys = backbone.state_keys()
    missing = [k for k in keys if k not in start]
    if missing:
        raise ValueError(f"start state lacks {missing}; the backbone needs {list(keys)}")
    state = {k: start[k] for k in keys}
    N = state[keys[0]].shape[0]
    feats, actions, states = [], [], {k: [] for k in keys}
    for t in range(horizon + 1):
        feat = backbone.get_feat(state)
        assert feat.shape == (N, backbone.feat_size), (feat.shape, N, backbone.feat_size)
        action = policy_fn(feat)
        assert action.ndim == 2 and action.shape[0] == N, action.shape
        feats.append(feat)
        actions.append(action)
        for k in keys:
            states[k].append(state[k])
        if t < horizon:
            state = backbone.imagine_step(state, action, sample=sample)
    return Trajectory(
        feat=torch.stack(feats, 0),
        action=torch.stack(actions, 0),
        state={k: torch.stack(v, 0) for k, v in states.items()},
    )


def annotate(traj: Trajectory, reward_head: Callable, cont_head: Callable, disc: float = 1.0
             ) -> Trajectory:
    """Fill ``reward``, ``cont`` and ``weight`` ``[H+1, N]`` from the reward and continue heads.

    ``reward_head(feat).pred()`` gives rewards, ``cont_head(feat).prob()`` continue probabilities;
    ``weight = cumprod(disc * cont, 0) / disc`` (DreamerV3).
    """
    reward = reward_head(traj.feat).pred()
    cont = cont_head(traj.feat).prob()
    assert reward.shape == traj.feat.shape[:2], reward.shape
    assert cont.shape == traj.feat.shape[:2], cont.shape
    weight = torch.cumprod(disc * cont, 0) / disc
    return replace(traj, reward=reward, cont=cont, weight=weight)
