"""Atari100k in the DreamerV3 protocol, as a gymnasium env.

ALE v5 runs underneath with ``frameskip=1`` and sticky actions off; this wrapper does the rest:

- action repeat 4, rewards summed over the repeated frames;
- the observation is the pixel-wise max of the last two raw frames (removes Atari flicker);
- 64x64 RGB (OpenCV ``INTER_AREA``), channels first: ``pixels`` uint8 ``[3, 64, 64]``;
- the minimal action set of each game;
- up to ``noops`` (default 30) random no-op frames after every reset, uniform in ``[0, noops]``;
- episodes truncated at 108,000 raw frames (30 minutes of play);
- losing a life is *not* a termination. The key ``life_loss`` (bool) marks agent steps on which a
  life was lost, for recipes that want it as a training-only signal (IRIS, Drama).

The Atari100k budget is 100k agent steps = 400k frames.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ATARI100K_GAMES = (
    "alien", "amidar", "assault", "asterix", "bank_heist", "battle_zone", "boxing", "breakout",
    "chopper_command", "crazy_climber", "demon_attack", "freeway", "frostbite", "gopher", "hero",
    "jamesbond", "kangaroo", "krull", "kung_fu_master", "ms_pacman", "pong", "private_eye", "qbert",
    "road_runner", "seaquest", "up_n_down",
)  # fmt: skip


def ale_id(game: str) -> str:
    """``'bank_heist'`` -> ``'ALE/BankHeist-v5'``."""
    if game not in ATARI100K_GAMES:
        raise ValueError(
            f"unknown Atari100k game {game!r}; choose one of: {', '.join(ATARI100K_GAMES)}"
        )
    return "ALE/" + "".join(part.capitalize() for part in game.split("_")) + "-v5"


def make_ale(game: str, **kwargs: Any) -> gym.Env:
    """The raw ALE env for ``game`` with frameskip 1, no sticky actions, minimal action set."""
    try:
        import ale_py
    except ImportError as err:
        raise ImportError(
            "Atari environments need ale-py: pip install 'worldrl[atari]'"
        ) from err
    gym.register_envs(ale_py)
    return gym.make(
        ale_id(game),
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        obs_type="rgb",
        **kwargs,
    )


class AtariPreprocessing(gym.Env):
    """DreamerV3's Atari protocol around a frameskip-1 RGB env (see the module docstring).

    ``env`` must step one raw frame at a time, return RGB frames ``[H, W, 3]`` and report ``lives``
    in ``info``. ``max_frames`` counts raw frames, no-ops included.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env: gym.Env,
        repeat: int = 4,
        size: tuple[int, int] = (64, 64),
        noops: int = 30,
        max_frames: int = 108_000,
    ):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if noops < 0:
            raise ValueError(f"noops must be >= 0, got {noops}")
        self._env = env
        self._repeat = repeat
        self._size = tuple(size)
        self._noops = noops
        self._max_frames = max_frames
        self._frames = 0
        self._lives = 0
        self._seed_next: int | None = None
        self.action_space = env.action_space
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (3, *self._size), np.uint8),
                "life_loss": gym.spaces.Box(0, 1, (), bool),
            }
        )
        h, w = env.observation_space.shape[:2]
        self._buffer = np.zeros((2, h, w, 3), np.uint8)

    def _push(self, frame: np.ndarray) -> None:
        """Keep the last two raw frames: buffer[1] is the newest."""
        self._buffer[0] = self._buffer[1]
        self._buffer[1] = frame

    def _obs(self, life_loss: bool) -> dict[str, np.ndarray]:
        import cv2

        frame = np.maximum(self._buffer[0], self._buffer[1])
        if frame.shape[:2] != self._size:
            frame = cv2.resize(frame, self._size[::-1], interpolation=cv2.INTER_AREA)
        return {
            "pixels": np.ascontiguousarray(frame.transpose(2, 0, 1)),
            "life_loss": np.array(life_loss),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        frame, info = self._env.reset(seed=seed)
        self._frames = 0
        noops = int(self.np_random.integers(0, self._noops + 1)) if self._noops else 0
        for _ in range(noops):
            frame, _, terminated, truncated, info = self._env.step(0)
            self._frames += 1
            if terminated or truncated:
                frame, info = self._env.reset()
                self._frames = 0
        self._lives = info.get("lives", 0)
        self._buffer[:] = frame
        return self._obs(False), info

    def step(self, action):
        reward = 0.0
        terminated = truncated = False
        info: dict = {}
        for _ in range(self._repeat):
            frame, r, terminated, truncated, info = self._env.step(action)
            self._frames += 1
            reward += float(r)
            self._push(frame)
            if terminated or truncated or self._frames >= self._max_frames:
                break
        if self._frames >= self._max_frames and not terminated:
            truncated = True
        lives = info.get("lives", self._lives)
        life_loss = lives < self._lives
        self._lives = lives
        return self._obs(life_loss), reward, terminated, truncated, info

    def close(self):
        self._env.close()


def make_atari100k(game: str, repeat: int = 4, size=(64, 64), noops: int = 30,
                   max_frames: int = 108_000) -> gym.Env:
    """The Atari100k env for one of the 26 games, as a gymnasium env with a dict observation."""
    ale_id(game)  # validates the name before importing anything
    return AtariPreprocessing(make_ale(game), repeat=repeat, size=tuple(size), noops=noops,
                              max_frames=max_frames)
