"""DMC vision and proprio: shapes, action repeat, episode length."""

import numpy as np
import pytest

pytest.importorskip("dm_control")

from envs.dmc import DMC_TASKS, DMCEnv, split_task  # noqa: E402


def test_vision_shape_and_action_repeat():
    env = DMCEnv("walker_walk", obs="pixels", repeat=2)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (3, 64, 64) and obs["pixels"].dtype == np.uint8
    assert obs["pixels"].std() > 0  # a rendered scene, not a blank frame
    t0 = env._env.physics.data.time
    env.step(np.zeros(env.action_space.shape, np.float32))
    assert env._env.physics.data.time - t0 == pytest.approx(2 * env._env.control_timestep())


def test_proprio_vector_and_episode_length():
    env = DMCEnv("cheetah_run", obs="vector", repeat=2)
    obs, _ = env.reset(seed=0)
    assert obs["vector"].shape == (17,) and obs["vector"].dtype == np.float32
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == 500 and truncated and not terminated


def test_seeded_reset_is_reproducible():
    a = DMCEnv("cartpole_swingup", obs="vector")
    b = DMCEnv("cartpole_swingup", obs="vector")
    np.testing.assert_array_equal(a.reset(seed=3)[0]["vector"], b.reset(seed=3)[0]["vector"])


def test_task_names():
    assert len(DMC_TASKS) == 20
    assert split_task("cup_catch") == ("ball_in_cup", "catch")
    with pytest.raises(ValueError, match="unknown DMC task 'walker_fly'.*walker_walk"):
        DMCEnv("walker_fly")
    with pytest.raises(ValueError, match="unknown DMC observation 'rgb'"):
        DMCEnv("walker_walk", obs="rgb")
