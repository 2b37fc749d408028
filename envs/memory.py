"""A memory task family (S4WM-style recall): suite ``memory``, tasks ``recall_16`` ...
``recall_1024``.

An episode of ``recall_K`` (vector observations ``[cue_0, cue_1, query]``, two actions)::

    t = 0          the cue: a one-hot of a random bit c, query 0
    t = 1 .. K     blank (zeros): the gap of K steps
    t = K + 1      the query: [0, 0, 1]; the agent's action here is its answer
    t = K + 2      blank, terminal: reward 1 if the answer was c, else 0

Actions before the query do nothing. The final observation does not show whether the answer was
right, so predicting the reward (a world model) or answering (a policy) needs the cue from K + 1
steps before. A random policy succeeds half the time. ``noise > 0`` adds Gaussian noise of that
scale to the blank steps' observations (distractors).

:func:`recall_episodes` builds whole episodes at once (NumPy) for benchmarks that bypass the
gymnasium interface; the env produces the same observations.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

GAPS = (16, 64, 256, 1024)
MEMORY_TASKS = tuple(f"recall_{k}" for k in GAPS)
OBS_DIM = 3


def gap_of(task: str) -> int:
    if task not in MEMORY_TASKS:
        raise ValueError(f"unknown memory task {task!r}; choose one of: {', '.join(MEMORY_TASKS)}")
    return int(task.split("_")[1])


def recall_episodes(gap: int, cues: np.ndarray, noise: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Observations ``[N, gap + 3, 3]`` (float32) of episodes with cue bits ``cues [N]``."""
    cues = np.asarray(cues, dtype=np.int64)
    obs = np.zeros((cues.shape[0], gap + 3, OBS_DIM), np.float32)
    obs[np.arange(cues.shape[0]), 0, cues] = 1.0
    if noise:
        rng = rng or np.random.default_rng()
        obs[:, 1:gap + 1, :2] = noise * rng.standard_normal((cues.shape[0], gap, 2))
    obs[:, gap + 1, 2] = 1.0
    return obs


class RecallEnv(gym.Env):
    """``recall_K`` as a gymnasium env with a dict observation ``{"vector": float32 [3]}``."""

    metadata = {"render_modes": []}

    def __init__(self, gap: int, noise: float = 0.0):
        if gap < 1:
            raise ValueError(f"recall gap must be >= 1, got {gap}")
        self.gap, self.noise = gap, noise
        self.observation_space = gym.spaces.Dict(
            {"vector": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)})
        self.action_space = gym.spaces.Discrete(2)
        self._obs = np.zeros((gap + 3, OBS_DIM), np.float32)
        self.cue, self.t = 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        self._obs = recall_episodes(self.gap, np.array([self.cue]), self.noise,
                                    self.np_random)[0]
        self.t = 0
        return {"vector": self._obs[0].copy()}, {}

    def step(self, action):
        if self.t > self.gap + 1:
            raise RuntimeError("step() after the episode ended; call reset()")
        reward, terminated = 0.0, False
        if self.t == self.gap + 1:  # the answer
            reward, terminated = float(int(action) == self.cue), True
        self.t += 1
        return {"vector": self._obs[self.t].copy()}, reward, terminated, False, {}


def make_memory(task: str, noise: float = 0.0) -> gym.Env:
    return RecallEnv(gap_of(task), noise)
