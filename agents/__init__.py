"""Agent recipes and the training loop: TorchRL collectors, the train ratio, eval, checkpoints."""

from __future__ import annotations

AGENTS = ("dreamer", "random")


def make_agent(name: str, obs_space: dict, act_space: dict, cfg):
    """Build an agent by name; ``cfg`` is the agent's own sub-config (with its backbone merged)."""
    if name == "random":
        from agents.random_agent import RandomAgent

        return RandomAgent(obs_space, act_space, cfg)
    if name == "dreamer":
        from agents.dreamer import DreamerAgent

        return DreamerAgent(obs_space, act_space, cfg)
    raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS)}")
