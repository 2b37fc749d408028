"""Agent recipes and the training loop: TorchRL collectors, the train ratio, eval, checkpoints."""

from __future__ import annotations

import importlib

#: ``agent.name`` -> ``module:Class`` of an :class:`agents.base.Agent`, imported when built (the
#: dreamer pulls in the world models). A new agent is one line here and one ``configs/agent`` YAML.
AGENTS = {
    "dreamer": "agents.dreamer:DreamerAgent",
    "random": "agents.random_agent:RandomAgent",
}


def make_agent(name: str, obs_space: dict, act_space: dict, cfg):
    """Build an agent by name; ``cfg`` is the agent's own sub-config (``cfg.agent``)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS)}")
    module, cls = AGENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(obs_space, act_space, cfg)
