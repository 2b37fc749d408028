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


def collect(num_envs: int, batches: int, max_len: int = 9, steps_per_batch: int = 16,
            seed: int = 0) -> list:
    """``batches`` collector batches of ``num_envs`` CounterEnv copies under the random agent,
    through the same TransformedEnv / ActingModule / Collector path as training."""
    import torch
    from torchrl.collectors import Collector

    import envs
    from agents.acting import ActingModule, carry_primer
    from agents.random_agent import RandomAgent

    env = envs.wrap(lambda: CounterEnv(max_len=max_len), num_envs=num_envs, seed=seed)
    agent = RandomAgent({"vector": ((3,), torch.float32)}, {"discrete": True, "n": 3})
    env.append_transform(carry_primer(agent))
    policy = ActingModule(agent, ["vector"], env.action_spec, mode="random")
    col = Collector(env, policy, frames_per_batch=num_envs * steps_per_batch, total_frames=-1,
                    auto_register_policy_transforms=False)
    out = []
    for i, b in enumerate(col):
        out.append(b.clone())
        if i + 1 == batches:
            break
    col.shutdown()
    return out
