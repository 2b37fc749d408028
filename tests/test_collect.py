"""Collection through TorchRL's Collector with the acting module and its recurrent carry."""

import time

import pytest
import torch
from torch import nn
from torchrl.collectors import Collector

import envs
from agents.acting import ActingModule, carry_primer
from tests.helpers import CounterEnv


class CountingAgent(nn.Module):
    """Carry = steps seen since the episode started; acts 1 (one-hot) in train/eval mode."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def carry_spec(self):
        return {"count": (1,)}

    def act(self, obs, is_first, carry, mode="train"):
        self.calls += 1
        count = torch.where(is_first[:, None], torch.zeros_like(carry["count"]), carry["count"])
        count = count + 1
        action = torch.zeros(is_first.shape[0], 3)
        action[:, 1] = 1
        return action, {"count": count}


def make_collector(agent, num_envs=2, mode="train"):
    env = envs.wrap(CounterEnv, num_envs=num_envs, seed=0)
    env.append_transform(carry_primer(agent))
    policy = ActingModule(agent, ["vector"], env.action_spec, mode=mode)
    col = Collector(env, policy, frames_per_batch=num_envs * 20, total_frames=-1,
                    auto_register_policy_transforms=False)
    return col, policy


def test_carry_is_threaded_through_steps_and_reset_at_episode_start():
    agent = CountingAgent()
    col, _ = make_collector(agent)
    batches = []
    for i, b in enumerate(col):
        batches.append(b)
        if i == 2:
            break
    col.shutdown()
    data = torch.cat(batches, dim=1)  # [2 envs, 60 steps]
    t = data["vector"][..., 2]             # step within the episode, from the env
    written = data["next", "carry", "count"][..., 0]
    read = data["carry", "count"][..., 0]
    assert torch.equal(written, t + 1)     # reset at every is_first, +1 per step otherwise
    assert data["is_first"].sum() >= 10     # many episodes crossed, in both envs
    # the carry read at step t is the one written at step t-1 within an episode
    same_episode = ~data["is_first"][:, 1:, 0]
    assert torch.equal(read[:, 1:][same_episode], written[:, :-1][same_episode])
    assert (data["action"][..., 1] == 1).all()


def test_random_mode_then_switch_to_the_agent():
    agent = CountingAgent()
    col, policy = make_collector(agent, mode="random")
    it = iter(col)
    first = next(it)
    assert agent.calls == 0
    assert first["action"][..., 0].any() or first["action"][..., 2].any()  # not all action 1
    policy.mode = "train"
    second = next(it)
    col.shutdown()
    assert agent.calls == 20 and (second["action"][..., 1] == 1).all()


def test_unknown_mode_is_refused():
    _, policy = make_collector(CountingAgent(), num_envs=1)
    with pytest.raises(ValueError, match="unknown acting mode 'greedy'.*random, train, eval"):
        policy.mode = "greedy"


@pytest.mark.parametrize("name,keys", [
    ("gym_CartPole-v1", {"vector"}),
    ("atari100k_pong", {"pixels", "life_loss"}),
    ("dmc_proprio_cheetah_run", {"vector"}),
])
def test_suites_through_the_collector(name, keys):
    env = envs.make(name, seed=0)
    agent = CountingAgent()
    env.append_transform(carry_primer(agent))
    policy = ActingModule(agent, [k for k in keys if k != "life_loss"], env.action_spec,
                          mode="random")
    col = Collector(env, policy, frames_per_batch=8, total_frames=8,
                    auto_register_policy_transforms=False)
    batch = next(iter(col))
    col.shutdown()
    assert keys <= set(batch.keys()) and batch.shape == (8,)
    assert batch["is_first"][0]


def test_env_name_errors():
    with pytest.raises(ValueError, match="unknown task 'pongg' for env suite 'atari100k'"):
        envs.make("atari100k_pongg")
    with pytest.raises(ValueError, match="unknown env name 'mujoco_ant'"):
        envs.make("mujoco_ant")
    with pytest.raises(ValueError, match="unknown env suite 'procgen'.*atari100k"):
        envs.make_env("procgen", "coinrun")


class PreferringAgent(CountingAgent):
    """CountingAgent whose action is the argmax of a parameter: the weights show in the actions."""

    def __init__(self, n: int):
        super().__init__()
        self.prefer = nn.Parameter(torch.zeros(n))

    def act(self, obs, is_first, carry, mode="train"):
        _, new = super().act(obs, is_first, carry, mode)
        index = self.prefer.argmax().expand(is_first.shape[0])
        return nn.functional.one_hot(index, self.prefer.shape[0]).float(), new


@pytest.mark.parametrize("backend", ["process", pytest.param("ray", marks=pytest.mark.slow)])
def test_collector_workers_keep_their_carry_and_follow_the_learners_weights(backend, monkeypatch):
    """env.collectors=2: two worker processes (or Ray actors), one env stream each; the acting
    mode and the weights set in the learner reach the workers' copies after
    update_policy_weights_()."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # Ray's workers unpickle the policy, whose agent class lives in this test module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root / "tests"), str(root)]))
    from agents.collect import make_collector, streams_of
    from agents.train import build_env
    from worldrl.config import load_config

    cfg = load_config(["preset=debug", "env.collectors=2", "env.task=CartPole-v1",
                       f"env.collector_backend={backend}"])
    env = build_env(cfg.env, seed=None)
    agent = PreferringAgent(int(env.action_spec.shape[-1]))
    env.append_transform(carry_primer(agent))
    policy = ActingModule(agent, ["vector"], env.action_spec, mode="random")
    col = make_collector(env, policy, cfg, seed=0, primer=carry_primer(agent))
    batches = iter(col)
    try:
        def take(n):
            return [next(batches) for _ in range(n)]

        first, seen, deadline = [], set(), time.time() + 120
        while seen != {0, 1} and time.time() < deadline:  # both workers deliver (one may start
            first.append(next(batches))                    # batches ahead of the other)
            seen.update(streams_of(first[-1]))
        assert seen == {0, 1}, f"only stream(s) {seen} delivered in {len(first)} batches"
        assert all(b["carry", "count"].abs().sum() == 0 for b in first)  # random mode: untouched
        for preferred in (1, 0):
            with torch.no_grad():
                agent.prefer.zero_()
                agent.prefer[preferred] = 1.0
            policy.mode = "train"
            col.update_policy_weights_()
            # a worker may have a batch queued and another half collected with the weights it
            # had: skip each stream's batches until its first one acted wholly with the new ones
            # (the preferred action at every step, and the train mode's count moving)
            def new_weights(b, preferred=preferred):
                actions = b["action"].argmax(-1).reshape(-1)
                moved = (b["next", "carry", "count"] > 0).all()
                return bool((actions == preferred).all() and moved)

            switched, deadline = set(), time.time() + 120  # a starved worker may lag many batches
            while time.time() < deadline:
                b = next(batches)
                if new_weights(b):
                    switched.update(streams_of(b))
                if switched == {0, 1}:
                    break
            assert switched == {0, 1}, f"the workers did not switch to the new weights: {switched}"
            last = {}
            for b in take(6):
                actions = b["action"].argmax(-1).reshape(-1)
                assert (actions == preferred).all(), (preferred, actions)
                first_step = b["is_first"].reshape(-1)
                count = b["carry", "count"].reshape(-1)
                nxt = b["next", "carry", "count"].reshape(-1)
                assert (nxt == torch.where(first_step, torch.ones_like(count), count + 1)).all()
                assert (count[first_step] == 0).all()  # the primer's reset at episode starts
                (stream,) = streams_of(b)
                if stream in last and not first_step[0]:  # the carry goes on across batches
                    assert count[0] == last[stream]
                last[stream] = nxt[-1]
            assert len(last) == 2
    finally:
        col.shutdown()
