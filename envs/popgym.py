"""POPGym (Morad et al., ICLR 2023; the ``popgym`` package): partially observable card, game and
control tasks that need memory; suite ``popgym``, tasks named as popgym's classes
(``RepeatPreviousEasy``, ``AutoencodeMedium``, ``CountRecallHard`` ...).

Observations become one float32 vector under ``vector``: gymnasium's ``flatten`` of the task's
space, so a ``Discrete(n)`` card is a one-hot of ``n``, a ``MultiDiscrete``/``Tuple`` observation
the concatenation of one-hots, a ``Box`` its values. A ``MultiDiscrete`` action space becomes one
``Discrete`` over all combinations (popgym's ``DiscreteAction``). Episodes end as popgym ends them
(``terminated``; the deck runs out or the game is over); rewards are popgym's, scaled so that an
episode's return lies in ``[-1, 1]``. The ``popgym`` package is imported only when a task is made.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

FAMILIES = (
    "Autoencode", "Battleship", "Concentration", "CountRecall", "HigherLower", "MineSweeper",
    "MultiarmedBandit", "NoisyPositionOnlyCartPole", "PositionOnlyCartPole", "RepeatFirst",
    "RepeatPrevious", "VelocityOnlyCartPole",
)  # fmt: skip
DIFFICULTIES = ("Easy", "Medium", "Hard")
POPGYM_TASKS = tuple(f"{f}{d}" for f in FAMILIES for d in DIFFICULTIES)


class FlatObs(gym.ObservationWrapper):
    """The observation as ``{"vector": float32 [D]}`` (gymnasium's ``flatten``: one-hots for
    discrete parts)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.inner_space = env.observation_space
        size = gym.spaces.utils.flatdim(self.inner_space)
        self.observation_space = gym.spaces.Dict(
            {"vector": gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)})

    def observation(self, observation):
        flat = gym.spaces.utils.flatten(self.inner_space, observation)
        return {"vector": np.asarray(flat, np.float32)}


def make_popgym(task: str) -> gym.Env:
    if task not in POPGYM_TASKS:
        raise ValueError(f"unknown popgym task {task!r}; choose one of: {', '.join(POPGYM_TASKS)}")
    try:
        import popgym.envs
        from popgym.wrappers import DiscreteAction
    except ImportError:
        raise ImportError("env suite 'popgym' needs the popgym package: pip install popgym") \
            from None
    env = getattr(popgym.envs, task)()
    if isinstance(env.action_space, gym.spaces.MultiDiscrete):
        env = DiscreteAction(env)
    return FlatObs(env)
