"""POPGym through the env factory (envs/popgym.py, env=popgym)."""

import numpy as np
import pytest
import torch

import envs
from envs.popgym import POPGYM_TASKS

pytest.importorskip("popgym")  # a dev dependency; without it the suite refuses in one line


def oracle_return(task: str, seed: int, k: int) -> float:
    """RepeatPrevious played by the rule (answer the suit seen ``k`` steps back) through our
    gymnasium env: the one-hot observation and the action index must mean what popgym means."""
    env = envs.make_gym("popgym", task)
    obs, _ = env.reset(seed=seed)
    seen = [int(np.argmax(obs["vector"]))]
    total, done = 0.0, False
    while not done:
        action = seen[-k] if len(seen) >= k else 0
        obs, reward, terminated, truncated, _ = env.step(action)
        seen.append(int(np.argmax(obs["vector"])))
        total += reward
        done = terminated or truncated
    return total


def test_repeat_previous_one_hots_and_actions_mean_the_cards():
    for task, k in (("RepeatPreviousEasy", 4), ("RepeatPreviousMedium", 32)):
        assert oracle_return(task, 0, k) == pytest.approx(1.0)  # every answer right
        assert oracle_return(task, 1, k + 1) < 0.5  # the wrong lag is about chance (0.25 right)


def test_observations_are_flat_one_hots_and_multidiscrete_actions_one_discrete():
    env = envs.make_gym("popgym", "AutoencodeEasy")  # Tuple(Discrete(2), Discrete(4))
    obs, _ = env.reset(seed=0)
    v = obs["vector"]
    assert v.dtype == np.float32 and v.shape == (6,)
    assert v[:2].sum() == 1 and v[2:].sum() == 1  # one one-hot per part
    ship = envs.make_env("popgym", "BattleshipEasy", seed=0)  # MultiDiscrete([8, 8]) actions
    assert ship.action_spec.shape == (64,)  # one-hot over the 64 cells
    td = ship.rollout(3)
    assert torch.isfinite(td["next", "reward"]).all()


def test_seeded_rollouts_repeat_and_seeds_differ():
    def cards(seed):
        env = envs.make_env("popgym", "CountRecallMedium", seed=seed)
        torch.manual_seed(0)
        return env.rollout(20)["next", "vector"]

    assert torch.equal(cards(3), cards(3))
    assert not torch.equal(cards(3), cards(4))


def test_every_task_is_listed_and_a_bad_name_is_refused():
    for family in ("RepeatPrevious", "Autoencode", "CountRecall"):
        assert {f"{family}{d}" for d in ("Easy", "Medium", "Hard")} <= set(POPGYM_TASKS)
    with pytest.raises(ValueError, match="unknown task 'RepeatPrevious' for env suite 'popgym'; "
                                         "choose one of: AutoencodeEasy"):
        envs.make_env("popgym", "RepeatPrevious")


@pytest.mark.parametrize("task", POPGYM_TASKS)
def test_every_task_resets_and_steps(task):
    env = envs.make_env("popgym", task, seed=0)
    try:
        td = env.rollout(4)
        assert td["next", "vector"].dtype == torch.float32
        assert td["next", "vector"].shape[-1] == env.observation_spec["vector"].shape[-1]
    finally:
        env.close()

