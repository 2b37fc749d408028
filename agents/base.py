"""The agent contract: what the training loop, the acting module and the checkpoints use.

An agent is a ``torch.nn.Module`` with

* ``carry_spec()`` / ``initial_carry(batch_size)``: the recurrent state the acting module keeps
  in the collector's tensordict (``("carry", name)``), with its shapes;
* ``act(obs, is_first, carry, mode)`` -> ``(action, new carry)``; ``mode``: ``train`` (sample)
  or ``eval`` (the policy's mode);
* ``setup_update(amp, compile)`` and ``train_step(batch)`` -> metrics (the update);
* ``optim_state_dict()`` / ``load_optim_state_dict(state)``: optimiser state for checkpoints
  (``None``: none);
* ``diagnostics(batch)`` -> ``{key: picture}`` (open-loop predictions; ``{}``: none);
* ``setup_distributed(world)``: train data-parallel (:mod:`agents.ddp`); by default refused.

:class:`Agent` gives the defaults of the optional parts; register a new agent in
:data:`agents.AGENTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class Agent(nn.Module):
    """Base class of agents; subclasses implement ``carry_spec``, ``act`` and ``train_step``."""

    def carry_spec(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def initial_carry(self, batch_size: int) -> dict[str, Tensor]:
        return {k: torch.zeros(batch_size, *shape) for k, shape in self.carry_spec().items()}

    def act(self, obs: Mapping[str, Tensor], is_first: Tensor, carry: Mapping[str, Tensor],
            mode: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def setup_update(self, amp: bool = False, compile: bool | str = False,
                     cuda_graph: bool = False) -> None:
        """Prepare the update (precision, compilation, a whole-update CUDA graph); nothing by
        default, and no graph."""
        if cuda_graph:
            raise ValueError(f"{type(self).__name__} cannot capture its update as a CUDA graph "
                             "(train.cuda_graph=true)")

    def train_step(self, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def setup_distributed(self, world: Any) -> None:
        """Average gradients (and batch statistics) over ``world``'s ranks in each update."""
        raise ValueError(f"{type(self).__name__} cannot train data-parallel (train.ddp=true)")

    def optim_state_dict(self) -> dict[str, Any] | None:
        return None

    def load_optim_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optim_state_dict`; nothing by default."""

    def diagnostics(self, batch: Mapping[str, Tensor], context: int = 5
                    ) -> dict[str, np.ndarray]:
        return {}
