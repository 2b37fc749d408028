"""The acting module: the agent's policy as a TensorDict module for TorchRL collectors.

It reads the observation keys, ``is_first`` and the recurrent carry ``("carry", name)`` from the
tensordict, and writes ``action`` and the new carry under ``("next", "carry", name)``, as TorchRL's
recurrent modules do; a ``TensorDictPrimer`` on the env declares the carry so that the collector
moves it to the root at every step. The carry is reset wherever ``is_first`` is set (the
``InitTracker`` key). Modes: ``random`` (uniform actions; the carry is left at its initial value),
``train`` (sample) and ``eval`` (the policy's mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

MODES = ("random", "train", "eval")


def act_space_of(action_spec) -> dict:
    """``{'discrete': bool, 'n': action size, 'low', 'high'}`` from a TorchRL action spec."""
    from torchrl.data import OneHot

    discrete = isinstance(action_spec, OneHot)
    n = int(action_spec.shape[-1])
    space = {"discrete": discrete, "n": n}
    if not discrete:
        space["low"] = action_spec.space.low.reshape(-1)[:n].clone()
        space["high"] = action_spec.space.high.reshape(-1)[:n].clone()
    return space


def random_action(act_space: dict, batch: int, generator: torch.Generator | None = None):
    """Uniform actions ``[batch, n]``: one-hot for discrete spaces, in [low, high] otherwise."""
    n = act_space["n"]
    if act_space["discrete"]:
        index = torch.randint(0, n, (batch,), generator=generator)
        return torch.nn.functional.one_hot(index, n).float()
    low, high = act_space["low"], act_space["high"]
    return low + torch.rand(batch, n, generator=generator) * (high - low)


def obs_space_of(observation_spec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of the keys a model may encode: every observation of the env but
    bookkeeping and signals (:mod:`worldrl.obs`; the model checks that each has a kind)."""
    from worldrl.obs import model_space, space_of

    return model_space(space_of(observation_spec))


class ActingModule(TensorDictModuleBase):
    """Wraps an agent with ``act(obs, is_first, carry, mode)`` for a TorchRL collector."""

    def __init__(self, agent, obs_keys: Sequence[str], action_spec, mode: str = "random"):
        super().__init__()
        self.agent = agent
        self.obs_keys = list(obs_keys)
        self.action_dtype = action_spec.dtype
        self.act_space = act_space_of(action_spec)
        self.carry_keys = list(agent.carry_spec())
        self.in_keys = [*self.obs_keys, "is_first", *[("carry", k) for k in self.carry_keys]]
        self.out_keys = ["action", *[("next", "carry", k) for k in self.carry_keys]]
        # a buffer, not an attribute: collector workers' copies follow it with the weights
        self.register_buffer("mode_index", torch.zeros((), dtype=torch.long), persistent=False)
        self.mode = mode

    @property
    def mode(self) -> str:
        return MODES[int(self.mode_index)]

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown acting mode {value!r}; choose one of: {', '.join(MODES)}")
        self.mode_index.fill_(MODES.index(value))

    @torch.no_grad()
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        batch_shape = td.batch_size
        flat = td.reshape(-1) if len(batch_shape) != 1 else td
        is_first = flat["is_first"].reshape(-1)
        carry = {k: flat["carry", k] for k in self.carry_keys}
        mode = self.mode
        if mode == "random":
            action = random_action(self.act_space, flat.shape[0])
            new_carry = carry
        else:
            obs = {k: flat[k] for k in self.obs_keys}
            action, new_carry = self.agent.act(obs, is_first, carry, mode=mode)
        dev = flat.device if flat.device is not None else is_first.device  # the envs' device:
        flat.set("action", action.to(dev, self.action_dtype))  # a GPU agent acts for CPU envs
        for k in self.carry_keys:
            flat.set(("next", "carry", k), new_carry[k].to(dev))
        if flat is not td:
            td.update(flat.reshape(batch_shape))
        return td


def carry_primer(agent):
    """A ``TensorDictPrimer`` that declares the agent's carry on the env (zeros at reset)."""
    from torchrl.data import Composite, Unbounded
    from torchrl.envs import TensorDictPrimer

    specs = {
        ("carry", k): Unbounded(shape=torch.Size(shape), dtype=torch.float32)
        for k, shape in agent.carry_spec().items()
    }
    return TensorDictPrimer(Composite(specs), default_value=0.0, expand_specs=True)
