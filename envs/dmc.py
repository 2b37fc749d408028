"""DeepMind Control Suite as a gymnasium env: vision (64x64 RGB) or proprio (the state vector).

DreamerV3's protocol: action repeat 2 (rewards summed), episodes of 1000 simulator steps (500
agent steps), no terminations, actions in ``[-1, 1]``, camera 0 (camera 2 for quadruped). Rendering
uses MuJoCo's EGL backend when ``MUJOCO_GL`` is unset.
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

DMC_TASKS = (
    "acrobot_swingup", "cartpole_balance", "cartpole_balance_sparse", "cartpole_swingup",
    "cartpole_swingup_sparse", "cheetah_run", "cup_catch", "finger_spin", "finger_turn_easy",
    "finger_turn_hard", "hopper_hop", "hopper_stand", "pendulum_swingup", "quadruped_run",
    "quadruped_walk", "reacher_easy", "reacher_hard", "walker_run", "walker_stand", "walker_walk",
)  # fmt: skip

_DOMAIN_ALIASES = {"cup": "ball_in_cup"}
_CAMERAS = {"quadruped": 2}


def split_task(task: str) -> tuple[str, str]:
    """``'walker_walk'`` -> ``('walker', 'walk')``; ``'cup_catch'`` -> ``('ball_in_cup',
    'catch')``."""
    if task not in DMC_TASKS:
        raise ValueError(f"unknown DMC task {task!r}; choose one of: {', '.join(DMC_TASKS)}")
    domain, name = task.split("_", 1)
    return _DOMAIN_ALIASES.get(domain, domain), name


class DMCEnv(gym.Env):
    """One DMC task: ``obs='pixels'`` gives ``pixels`` uint8 [3, H, W], ``obs='vector'``
    the state vector."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, obs: str = "pixels", repeat: int = 2, size=(64, 64),
                 camera: int | None = None):
        if obs not in ("pixels", "vector"):
            raise ValueError(f"unknown DMC observation {obs!r}; choose one of: pixels, vector")
        domain, name = split_task(task)
        if obs == "pixels":
            os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            from dm_control import suite
        except ImportError as err:
            raise ImportError(
                "DMC environments need dm-control: pip install 'worldrl[dmc]'"
            ) from err
        self._suite = suite
        self._domain, self._name = domain, name
        self._obs_kind = obs
        self._repeat = repeat
        self._size = tuple(size)
        self._camera = _CAMERAS.get(domain, 0) if camera is None else camera
        self._env = suite.load(domain, name, task_kwargs={"random": 0})
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float32), spec.maximum.astype(np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        if obs == "pixels":
            space = gym.spaces.Box(0, 255, (3, *self._size), np.uint8)
        else:
            dim = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
            space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.observation_space = gym.spaces.Dict({obs: space})

    def _obs(self, time_step) -> dict[str, np.ndarray]:
        if self._obs_kind == "pixels":
            frame = self._env.physics.render(*self._size, camera_id=self._camera)
            return {"pixels": np.ascontiguousarray(frame.transpose(2, 0, 1))}
        parts = [np.asarray(v, np.float32).reshape(-1) for v in time_step.observation.values()]
        return {"vector": np.concatenate(parts)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env = self._suite.load(self._domain, self._name, task_kwargs={"random": seed})
        return self._obs(self._env.reset()), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        action = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward, time_step = 0.0, None
        for _ in range(self._repeat):
            time_step = self._env.step(action)
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                break
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        return self._obs(time_step), reward, terminated, truncated, {}
