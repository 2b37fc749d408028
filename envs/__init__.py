"""Environment factories: Atari100k, DMC (vision/proprio), gymnasium classic control, the recall
memory tasks and POPGym.

Every env is a TorchRL env whose observations are a dict of keys (``pixels`` uint8 [3, 64, 64],
``vector`` float32 [D]) with ``is_first`` (True on the first step of an episode), ``terminated``,
``truncated``, ``done``, ``reward`` and ``episode_reward`` (the running return). Actions are one-hot
for discrete action spaces and in ``[-1, 1]`` for continuous ones.

This package knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import gymnasium as gym

from envs.atari import ATARI100K_GAMES, make_atari100k
from envs.classic import GYM_TASKS, make_classic
from envs.dmc import DMC_TASKS
from envs.memory import MEMORY_TASKS, make_memory
from envs.popgym import POPGYM_TASKS, make_popgym


def _make_dmc(task: str, obs: str = "pixels", **kwargs: Any) -> gym.Env:
    from envs.dmc import DMCEnv

    return DMCEnv(task, obs=obs, **kwargs)


def _make_dmc_proprio(task: str, **kwargs: Any) -> gym.Env:
    return _make_dmc(task, obs="vector", **kwargs)


def _make_atari100k_av(game: str, **kwargs: Any) -> gym.Env:
    from envs.atari_av import make_atari100k_av  # imports torch (log-mel); only when used

    return make_atari100k_av(game, **kwargs)


SUITES: dict[str, tuple[Callable[..., gym.Env], tuple[str, ...]]] = {
    "atari100k": (make_atari100k, ATARI100K_GAMES),
    "atari100k_av": (_make_atari100k_av, ATARI100K_GAMES),  # + audio: log-mel [7, 40] per step
    "dmc": (_make_dmc, DMC_TASKS),
    "dmc_proprio": (_make_dmc_proprio, DMC_TASKS),
    "gym": (make_classic, GYM_TASKS),
    "memory": (make_memory, MEMORY_TASKS),
    "popgym": (make_popgym, POPGYM_TASKS),  # vector observations; the popgym package
}


def check_task(suite: str, task: str) -> None:
    """Raise a ValueError naming the bad suite or task and the valid choices."""
    if suite not in SUITES:
        raise ValueError(f"unknown env suite {suite!r}; choose one of: {', '.join(SUITES)}")
    tasks = SUITES[suite][1]
    if task not in tasks:
        raise ValueError(
            f"unknown task {task!r} for env suite {suite!r}; choose one of: {', '.join(tasks)}"
        )


def parse_name(name: str) -> tuple[str, str]:
    """``'atari100k_pong'`` -> ``('atari100k', 'pong')``; also ``'dmc_walker_walk'``,
    ``'gym_CartPole-v1'``."""
    for suite in sorted(SUITES, key=len, reverse=True):
        if name.startswith(suite + "_"):
            task = name[len(suite) + 1 :]
            check_task(suite, task)
            return suite, task
    raise ValueError(
        f"unknown env name {name!r}; expected SUITE_TASK with SUITE one of: {', '.join(SUITES)}"
    )


def make_gym(suite: str, task: str, **options: Any) -> gym.Env:
    """The gymnasium env (dict observation) for ``suite``/``task``."""
    check_task(suite, task)
    return SUITES[suite][0](task, **options)


def _gym_to_torchrl(make_gym_env: Callable[[], gym.Env]):
    from torchrl.envs import GymWrapper

    return GymWrapper(make_gym_env(), device="cpu")


def wrap(make_gym_env: Callable[[], gym.Env], *, num_envs: int = 1, parallel: bool = False,
         seed: int | None = None):
    """A TorchRL env over ``num_envs`` copies of a gymnasium env with a dict observation, with
    ``is_first`` (InitTracker), ``episode_reward`` (RewardSum) and ``step_count``.

    ``parallel`` runs the copies in subprocesses (``ParallelEnv``, ``make_gym_env`` must then be
    picklable), else in this process (``SerialEnv``).
    """
    from torchrl.envs import (
        Compose,
        InitTracker,
        ParallelEnv,
        RewardSum,
        SerialEnv,
        StepCounter,
        TransformedEnv,
    )

    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    make_one = partial(_gym_to_torchrl, make_gym_env)
    if num_envs == 1:
        base = make_one()
    else:
        base = (ParallelEnv if parallel else SerialEnv)(num_envs, make_one)
    env = TransformedEnv(
        base, Compose(InitTracker(init_key="is_first"), RewardSum(), StepCounter())
    )
    if seed is not None:
        env.set_seed(seed)
    return env


def make_env(suite: str, task: str, *, num_envs: int = 1, parallel: bool = False,
             seed: int | None = None, options: Mapping[str, Any] | None = None):
    """The TorchRL env for ``suite``/``task`` (see :func:`wrap`); ``options`` go to the suite's
    gymnasium factory (e.g. ``noops`` for Atari, ``repeat`` for DMC)."""
    check_task(suite, task)
    return wrap(partial(make_gym, suite, task, **dict(options or {})), num_envs=num_envs,
                parallel=parallel, seed=seed)


def make(name: str, **kwargs: Any):
    """A TorchRL env by name: ``make('atari100k_pong')``, ``make('dmc_proprio_walker_walk')``."""
    suite, task = parse_name(name)
    return make_env(suite, task, **kwargs)


__all__ = [
    "ATARI100K_GAMES", "DMC_TASKS", "GYM_TASKS", "POPGYM_TASKS", "SUITES", "check_task", "make",
    "make_env", "make_gym", "parse_name", "wrap",
]  # fmt: skip
