"""The agent contract (agents/base.py) and the agent registry (agents.AGENTS)."""

import pytest
import torch

from agents import AGENTS, make_agent
from agents.base import Agent
from agents.train import agent_state, load_agent_state
from tests.test_dreamer_agent import TINY

ACT = {"discrete": True, "n": 3}
OBS = {"vector": ((4,), torch.float32)}


def test_every_registered_agent_keeps_the_contract():
    for name in AGENTS:
        cfg = TINY if name == "dreamer" else None
        agent = make_agent(name, OBS, ACT, cfg)
        assert isinstance(agent, Agent)
        carry = agent.initial_carry(2)
        assert {k: tuple(v.shape[1:]) for k, v in carry.items()} == agent.carry_spec()
        action, new = agent.act({"vector": torch.zeros(2, 4)}, torch.ones(2, dtype=torch.bool),
                                carry, mode="eval")
        assert action.shape == (2, 3) and set(new) == set(carry)
        load_agent_state(agent, agent_state(agent))  # a checkpoint round trip


def test_unknown_agent_names_the_choices():
    with pytest.raises(ValueError, match=r"'sac'.*dreamer, random"):
        make_agent("sac", OBS, ACT, None)


def test_a_random_agent_has_no_weights_and_loads_old_checkpoints():
    agent = make_agent("random", OBS, ACT, None)
    assert agent.state_dict() == {} and agent.optim_state_dict() is None
    assert agent_state(agent) == {"model": {}}
    load_agent_state(agent, {"model": {"steps": torch.tensor(12.0)}})  # before the contract
    assert agent.diagnostics({}) == {} and agent.train_step({}) == {}
