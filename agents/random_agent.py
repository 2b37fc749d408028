"""A uniform-random agent that does not learn (``agent=random``): a baseline and a test double."""

from __future__ import annotations

import torch
from torch import nn

from agents.acting import random_action


class RandomAgent(nn.Module):
    """Same surface as the learning agents; ``act`` samples uniform actions."""

    def __init__(self, obs_space: dict, act_space: dict, cfg=None):
        super().__init__()
        self.act_space = act_space
        # one parameter so that checkpoints and optimisers have something to hold
        self.steps = nn.Parameter(torch.zeros(()), requires_grad=False)

    def carry_spec(self) -> dict[str, tuple[int, ...]]:
        return {"prev_action": (self.act_space["n"],)}

    def initial_carry(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {"prev_action": torch.zeros(batch_size, self.act_space["n"])}

    @torch.no_grad()
    def act(self, obs, is_first, carry, mode="train"):
        action = random_action(self.act_space, is_first.shape[0])
        return action, {"prev_action": action}

    def setup_update(self, amp: bool = False, compile: bool | str = False) -> None:
        """Nothing to compute faster: the random agent has no update."""

    def train_step(self, batch) -> dict[str, float]:
        self.steps += 1
        return {}

