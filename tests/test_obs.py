"""worldrl.obs: keys found by kind, never dropped in silence; a new kind is one registry entry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrl.data import Binary, Composite, Unbounded

from agents.acting import obs_space_of
from worldrl.dists import MSE
from worldrl.nets import MLP, Linear
from worldrl.obs import (
    MODALITIES,
    RESERVED,
    Modality,
    MultiDecoder,
    MultiEncoder,
    kind_of,
    space_of,
    split,
    vector_picture,
)
from worldrl.world_model import WorldModel

CODEC = dict(units=16, depth=4, mults=(1, 2, 2, 2), layers=1, kernel=3, strided=True)
WM = dict(backbone="rssm", backbone_cfg=dict(deter=32, hidden=16, stoch=4, classes=4),
          encoder=CODEC, decoder={**CODEC, "bspace": 2},
          reward_head=dict(units=16, layers=1), cont_head=dict(units=16, layers=1))


def spec(**keys) -> Composite:
    """A TorchRL observation spec of 2 env copies: ``name=(shape, dtype)``, plus bookkeeping."""
    parts = {k: Unbounded(shape=(2, *shape), dtype=dtype) for k, (shape, dtype) in keys.items()}
    parts["is_first"] = Binary(n=1, shape=(2, 1), dtype=torch.bool)
    parts["episode_reward"] = Unbounded(shape=(2, 1))
    parts["step_count"] = Unbounded(shape=(2, 1), dtype=torch.int64)
    return Composite(parts, shape=(2,))


def test_kinds_from_shape_and_dtype():
    assert kind_of((3, 64, 64), torch.uint8) == "image"
    assert kind_of((17,), torch.float32) == "vector"
    assert kind_of((7, 40), torch.float32) == "audio"
    assert kind_of((64, 64), torch.uint8) is None
    assert {"is_first", "episode_reward", "step_count", "carry"} <= RESERVED


def test_a_new_key_of_a_known_kind_needs_no_code():
    s = spec(pixels=((3, 64, 64), torch.uint8), depth=((1, 64, 64), torch.uint8),
             proprio=((5,), torch.float32), life_loss=((1,), torch.bool))
    space = space_of(s)
    assert set(space) == {"pixels", "depth", "proprio", "life_loss"}  # all replayed
    assert space["depth"] == ((1, 64, 64), torch.uint8)  # env copies removed
    model = obs_space_of(s)
    assert set(model) == {"pixels", "depth", "proprio"}  # life_loss: a signal, not encoded
    assert split(model) == {"image": {"depth": (1, 64, 64), "pixels": (3, 64, 64)},
                            "vector": {"proprio": (5,)}}
    wm = WorldModel(model, 3, **WM)
    assert wm.obs_keys == ["depth", "pixels", "proprio"]
    B, T = 2, 4
    batch = {"depth": torch.randint(0, 256, (B, T, 1, 64, 64), dtype=torch.uint8),
             "pixels": torch.randint(0, 256, (B, T, 3, 64, 64), dtype=torch.uint8),
             "proprio": torch.randn(B, T, 5), "action": F.one_hot(torch.zeros(B, T).long(), 3)
             .float(), "reward": torch.zeros(B, T), "is_first": torch.zeros(B, T).bool(),
             "terminated": torch.zeros(B, T).bool()}
    total, terms, _, _ = wm.loss(batch)
    assert {"depth", "pixels", "proprio"} <= set(terms)
    total.backward()
    assert wm.encoder.parts.image.cnn.net[0].weight.grad.abs().sum() > 0


def test_a_key_of_no_kind_is_an_error_that_names_it():
    space = obs_space_of(spec(pixels=((3, 64, 64), torch.uint8), depth=((64, 64), torch.uint8)))
    with pytest.raises(ValueError, match=r"'depth' has shape \(64, 64\).*image: uint8"):
        WorldModel(space, 3, **WM)
    wm = WorldModel(space, 3, obs_keys=["pixels"], **WM)  # or leave it out
    assert wm.obs_keys == ["pixels"]


class _BoardMSE(MSE):
    def loss(self, target):
        return super().loss(target.float())


class _Grid(nn.Module):
    """A toy kind: int64 [H, W] boards, one-hot over 3 values, an MLP each way."""

    def __init__(self, shapes, *args, units=16, **_):
        super().__init__()
        self.keys = sorted(shapes)
        self.shapes = dict(shapes)
        size = sum(math.prod(s) for s in shapes.values())
        if args:  # decoder: (shapes, deter, stoch)
            deter, stoch = args
            self.mlp = MLP(deter + stoch, 1, units)
            self.out = Linear(units, size)
        else:
            self.mlp = MLP(size * 3, 1, units)
            self.out_features = self.mlp.out_features

    def forward(self, x, bshape=None):
        if bshape is None:  # encoder
            flat = torch.cat([F.one_hot(x[k].long(), 3).flatten(1).float() for k in self.keys],
                             -1)
            return self.mlp(flat)
        y = self.out(self.mlp(x)).reshape(*bshape, -1)
        out, start = {}, 0
        for k in self.keys:
            n = math.prod(self.shapes[k])
            out[k] = _BoardMSE(y[..., start:start + n].reshape(*bshape, *self.shapes[k]),
                               event_dims=2)
            start += n
        return out


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    grid = Modality("grid", lambda s, d: len(s) == 2 and d == torch.int64, _Grid, _Grid,
                    "int64 [H, W]", vector_picture)
    monkeypatch.setitem(MODALITIES, "grid", grid)
    space = obs_space_of(spec(board=((4, 4), torch.int64), vector=((3,), torch.float32)))
    assert split(space) == {"vector": {"vector": (3,)}, "grid": {"board": (4, 4)}}
    wm = WorldModel(space, 2, **WM)
    B, T = 2, 5
    batch = {"board": torch.randint(0, 3, (B, T, 4, 4)), "vector": torch.randn(B, T, 3),
             "action": torch.zeros(B, T, 2), "reward": torch.zeros(B, T),
             "is_first": torch.zeros(B, T).bool(), "terminated": torch.zeros(B, T).bool()}
    total, terms, _, _ = wm.loss(batch)
    assert terms["board"].shape == (B, T)
    total.backward()
    assert all(p.grad is not None for p in wm.encoder.parts.grid.parameters())
    assert all(p.grad is not None for p in wm.decoder.parts.grid.parameters())
    _, metrics = wm.open_loop(batch, context=2)
    assert "openloop/board_mse" in metrics


def test_checkpoints_from_before_the_registry_load():
    space = {"pixels": ((3, 64, 64), torch.uint8), "vector": ((4,), torch.float32),
             "audio": ((7, 40), torch.float32)}
    enc, dec = MultiEncoder(space, **CODEC), MultiDecoder(space, 32, 16, **CODEC, bspace=2)
    old_names = {"parts.image.cnn.": "cnn.", "parts.vector.mlp.": "mlp.",
                 "parts.vector.out.": "vec_out.", "parts.audio.": "audio."}

    def as_old(state):
        out = {}
        for k, v in state.items():
            new = next((k.replace(n, o, 1) for n, o in old_names.items() if k.startswith(n)), k)
            out[new] = v + 1.0
        return out

    for module in (enc, dec):
        state = {k: v.clone() for k, v in module.state_dict().items()}
        old = as_old(state)
        assert set(old) != set(state)
        module.load_state_dict(old)  # renamed on load
        assert all(torch.equal(module.state_dict()[k], state[k] + 1.0) for k in state)
