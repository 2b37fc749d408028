"""A uniform-random agent that does not learn (``agent=random``): a baseline and a test double."""

from __future__ import annotations

import torch

from agents.acting import random_action
from agents.base import Agent


class RandomAgent(Agent):
    """The agent contract with uniform actions and no update; no weights."""

    def __init__(self, obs_space: dict, act_space: dict, cfg=None):
        super().__init__()
        self.act_space = act_space
        self._register_load_state_dict_pre_hook(self._drop_old_counter)

    @staticmethod
    def _drop_old_counter(state_dict, prefix, *args) -> None:
        """Checkpoints from before the agent contract held a dummy ``steps`` parameter."""
        state_dict.pop(prefix + "steps", None)

    def carry_spec(self) -> dict[str, tuple[int, ...]]:
        return {"prev_action": (self.act_space["n"],)}

    @torch.no_grad()
    def act(self, obs, is_first, carry, mode="train"):
        action = random_action(self.act_space, is_first.shape[0])
        return action, {"prev_action": action}

    def train_step(self, batch) -> dict[str, float]:
        return {}

