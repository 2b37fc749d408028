"""The env contract, for every suite (envs.SUITES): each observation key has a kind the model
codes (worldrl.obs) or is a replayed signal, and a reset and a step give every key with the event
shape and dtype the spec declares."""

import os

import pytest
import torch

import envs
from agents.acting import obs_space_of
from worldrl.obs import is_signal, kind_of, space_of

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.mark.parametrize("suite", sorted(envs.SUITES))
def test_every_suite_keeps_the_observation_contract(suite):
    task = envs.SUITES[suite][1][0]
    env = envs.make_env(suite, task, num_envs=2, seed=0)
    try:
        space = space_of(env.observation_spec)
        model = obs_space_of(env.observation_spec)
        assert model and set(model) <= set(space)
        for key, (shape, dtype) in space.items():
            assert kind_of(shape, dtype) is not None or is_signal(dtype), (suite, key)
        td = env.rand_step(env.reset())
        for key, (shape, dtype) in space.items():
            for x in (td[key], td["next", key]):
                assert tuple(x.shape) == (2, *shape) and x.dtype == dtype, (suite, key)
        assert td["is_first"].all() and torch.isfinite(td["next", "reward"]).all()
    finally:
        env.close()
