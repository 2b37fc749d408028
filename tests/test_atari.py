"""The Atari100k protocol: repeat, max-pool, no-ops, minimal actions, 64x64, lives, frame cap."""

import gymnasium as gym
import numpy as np
import pytest

from envs.atari import ATARI100K_GAMES, AtariPreprocessing, ale_id, make_atari100k


class FakeALE(gym.Env):
    """Frame k shows value k in one half: the left half on even frames, the right on odd ones.

    Reward 1 per frame; one life lost at frame ``lose_at``; terminates at frame ``end_at``.
    """

    def __init__(self, lose_at=10**9, end_at=10**9, h=64, w=64):
        self.observation_space = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        self.lose_at, self.end_at, self.h, self.w = lose_at, end_at, h, w
        self.frame = 0
        self.actions = []

    def _obs(self):
        img = np.zeros((self.h, self.w, 3), np.uint8)
        half = slice(0, self.w // 2) if self.frame % 2 == 0 else slice(self.w // 2, self.w)
        img[:, half] = self.frame % 256
        return img

    def _lives(self):
        return 3 if self.frame < self.lose_at else 2

    def reset(self, *, seed=None, options=None):
        self.frame = 0
        self.actions = []
        return self._obs(), {"lives": self._lives()}

    def step(self, action):
        self.frame += 1
        self.actions.append(int(action))
        return self._obs(), 1.0, self.frame >= self.end_at, False, {"lives": self._lives()}


def test_action_repeat_sums_rewards_and_max_pools_last_two_frames():
    base = FakeALE()
    env = AtariPreprocessing(base, repeat=4, size=(64, 64), noops=0)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(2)
    assert base.frame == 4 and base.actions == [2, 2, 2, 2]
    assert reward == 4.0 and not terminated and not truncated
    pixels = obs["pixels"]
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8
    # frames 3 (odd: right half = 3) and 4 (even: left half = 4) pooled: both halves lit
    assert (pixels[:, :, :32] == 4).all() and (pixels[:, :, 32:] == 3).all()


def test_episode_end_inside_the_repeat_stops_early():
    base = FakeALE(end_at=6)
    env = AtariPreprocessing(base, repeat=4, noops=0)
    env.reset(seed=0)
    env.step(0)
    _, reward, terminated, _, _ = env.step(0)
    assert terminated and base.frame == 6 and reward == 2.0


@pytest.mark.parametrize("noops", [0, 30])
def test_noop_starts(noops):
    counts = []
    for seed in range(40):
        base = FakeALE()
        env = AtariPreprocessing(base, noops=noops)
        env.reset(seed=seed)
        counts.append(base.frame)
        assert all(a == 0 for a in base.actions)
    assert min(counts) >= 0 and max(counts) <= noops
    if noops:
        assert len(set(counts)) > 10  # spread over the range, not a constant
    # seeded: the same seed gives the same number of no-ops
    a, b = AtariPreprocessing(FakeALE(), noops=noops), AtariPreprocessing(FakeALE(), noops=noops)
    a.reset(seed=7)
    b.reset(seed=7)
    assert a._env.frame == b._env.frame


def test_life_loss_is_flagged_but_not_terminal():
    env = AtariPreprocessing(FakeALE(lose_at=6), noops=0)
    obs, _ = env.reset(seed=0)
    assert not obs["life_loss"]
    obs, _, terminated, _, _ = env.step(0)  # frames 1-4
    assert not obs["life_loss"]
    obs, _, terminated, truncated, _ = env.step(0)  # frames 5-8: life lost at 6
    assert obs["life_loss"] and not terminated and not truncated
    obs, _, terminated, _, _ = env.step(0)
    assert not obs["life_loss"] and not terminated


def test_frame_cap_truncates():
    env = AtariPreprocessing(FakeALE(), noops=0, max_frames=20)
    env.reset(seed=0)
    for i in range(5):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
        assert truncated == (i == 4)


def test_resize_to_64x64_from_atari_resolution():
    env = AtariPreprocessing(FakeALE(h=210, w=160), noops=0)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (3, 64, 64)


def test_all_26_games_by_name():
    assert len(ATARI100K_GAMES) == 26
    assert ale_id("bank_heist") == "ALE/BankHeist-v5"
    assert ale_id("up_n_down") == "ALE/UpNDown-v5"
    with pytest.raises(ValueError, match="unknown Atari100k game 'pongg'.*pong"):
        ale_id("pongg")


@pytest.mark.parametrize("game,n_actions", [("pong", 6), ("breakout", 4), ("boxing", 18)])
def test_real_ale_protocol(game, n_actions):
    pytest.importorskip("ale_py")
    env = make_atari100k(game, noops=0)
    obs, _ = env.reset(seed=0)
    assert env.action_space.n == n_actions  # the minimal action set
    assert obs["pixels"].shape == (3, 64, 64) and obs["pixels"].dtype == np.uint8
    ale = env._env.unwrapped.ale
    before = ale.getEpisodeFrameNumber()
    env.step(0)
    assert ale.getEpisodeFrameNumber() - before == 4
    assert ale.getFloat("repeat_action_probability") == 0.0  # sticky actions off
