"""Small envs and builders shared by the tests."""

import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    """obs ``vector`` = [env id, global step counter, step within episode]; episodes of random
    length in [3, 9]; reward = the step within the episode; discrete actions (3)."""

    _ids = iter(range(10**6))

    def __init__(self, env_id: int | None = None, max_len: int = 9):
        self.observation_space = gym.spaces.Dict(
            {"vector": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)}
        )
        self.action_space = gym.spaces.Discrete(3)
        self.env_id = next(CounterEnv._ids) if env_id is None else env_id
        self.max_len = max_len
        self.counter = 0
        self.t = 0
        self.length = 5

    def _obs(self):
        return {"vector": np.array([self.env_id, self.counter, self.t], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.np_random.integers(3, self.max_len + 1))
        self.counter += 1
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.counter += 1
        terminated = self.t >= self.length
        truncated = False
        if terminated and self.t % 2 == 0:  # even-length episodes end by truncation instead
            terminated, truncated = False, True
        return self._obs(), float(self.t), terminated, truncated, {}
