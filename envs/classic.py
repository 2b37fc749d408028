"""Gymnasium classic control with a dict observation ``{"vector": float32}``: CPU quickstarts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

GYM_TASKS = (
    "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1",
)  # fmt: skip


class VectorObs(gym.ObservationWrapper):
    """Puts a Box observation under the key ``vector`` as float32."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = env.observation_space.shape
        self.observation_space = gym.spaces.Dict(
            {"vector": gym.spaces.Box(-np.inf, np.inf, shape, np.float32)}
        )

    def observation(self, observation):
        return {"vector": np.asarray(observation, np.float32)}


def make_classic(task: str) -> gym.Env:
    if task not in GYM_TASKS:
        raise ValueError(f"unknown gym task {task!r}; choose one of: {', '.join(GYM_TASKS)}")
    return VectorObs(gym.make(task))
