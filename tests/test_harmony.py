"""HarmonyDream loss balancing in the world model (worldrl.world_model, loss_balance=harmony)."""

import math

import pytest
import torch
import torch.nn.functional as F

from agents.dreamer import DreamerAgent
from worldrl.backbones import BACKBONES
from worldrl.world_model import WorldModel

torch.set_num_threads(1)

SPACE = {"pixels": ((3, 64, 64), torch.uint8), "vector": ((5,), torch.float32)}
SMALL = dict(deter=64, hidden=16, stoch=4, classes=5)
CODEC = dict(units=16, depth=2, mults=[1, 2, 2, 2], kernel=3, strided=True)


def make_wm(backbone="rssm", **kw):
    torch.manual_seed(0)
    return WorldModel(SPACE, 3, backbone, SMALL, encoder=CODEC, decoder={**CODEC, "bspace": 0},
                      reward_head={"units": 8}, cont_head={"units": 8}, **kw)


def make_batch(B=2, T=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = {
        "action": F.one_hot(torch.randint(0, 3, (B, T), generator=gen), 3).float(),
        "reward": torch.randn(B, T, generator=gen),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "terminated": torch.zeros(B, T, dtype=torch.bool),
        "pixels": torch.randint(0, 256, (B, T, 3, 64, 64), generator=gen, dtype=torch.uint8),
        "vector": torch.randn(B, T, 5, generator=gen),
    }
    b["is_first"][:, 0] = True
    return b


def test_rectified_loss_formula():
    wm = make_wm(loss_balance="harmony", loss_scales={"dyn": 0.5, "rep": 0.1, "con": 2.0})
    assert set(wm.balancer) == {"rew", "pixels", "vector", "dyn"}  # one s per task, con excluded
    with torch.no_grad():
        for i, s in enumerate(wm.balancer.values()):
            s.fill_(0.3 * i - 0.4)
    torch.manual_seed(1)
    total, terms, _, metrics = wm.loss(make_batch())
    expect = 2.0 * terms["con"].mean()
    dyn = (0.5 * terms["dyn"].mean() + 0.1 * terms["rep"].mean()) / 0.6
    for task, loss in [("rew", terms["rew"].mean()), ("pixels", terms["pixels"].mean()),
                       ("vector", terms["vector"].mean()), ("dyn", dyn)]:
        sigma = math.exp(wm.balancer[task].item())
        expect = expect + loss / sigma + math.log(1 + sigma)
        assert float(metrics[f"harmony/{task}"]) == pytest.approx(1 / sigma, rel=1e-6)
    torch.testing.assert_close(total, expect)
    # balance none: the fixed scales, no harmony parameters
    plain = make_wm()
    assert not hasattr(plain, "harmony") and not any("harmony" in n for n, _ in
                                                     plain.named_parameters())
    with pytest.raises(ValueError, match="none, harmony"):
        make_wm(loss_balance="uncertainty")


def test_minimiser_of_the_rectified_loss():
    # for a fixed task loss L the optimum is sigma^2 / (1 + sigma) = L (not sigma = L as in the
    # unrectified L / sigma + log sigma): L = 2 -> sigma = 1 + sqrt(3)
    s = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.05)
    for _ in range(600):
        loss = 2.0 * torch.exp(-s) + F.softplus(s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.exp(s.item()) == pytest.approx(1 + math.sqrt(3), rel=1e-3)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_harmony_scales_move_with_training(backbone):
    wm = make_wm(backbone, loss_balance="harmony")
    batch = make_batch()
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    for _ in range(15):
        total, terms, _, _ = wm.loss(batch)
        opt.zero_grad()
        total.backward()
        assert all(p.grad is not None and p.grad != 0 for p in wm.balancer.values())
        opt.step()
    s = {k: v.item() for k, v in wm.balancer.items()}
    assert all(abs(v) > 0.05 for v in s.values()), s
    # the pixel loss (summed over 12288 pixels) is the largest: it is weighted down the most
    assert terms["pixels"].mean() > terms["rew"].mean()
    assert s["pixels"] > s["rew"] and s["pixels"] > 0, s


def test_agent_config_turns_harmony_on():
    cfg = {
        "size": {"name": "t", "deter": 64, "hidden": 16, "stoch": 4, "classes": 5, "units": 16,
                 "depth": 2},
        "world_model": {"loss_balance": "harmony", "encoder": {"mults": [1, 2, 2, 2],
                                                                "kernel": 3, "strided": True},
                        "decoder": {"mults": [1, 2, 2, 2], "kernel": 3, "strided": True,
                                    "bspace": 0}},
        "backbone": {"name": "rssm"},
        "behavior": {"imag_horizon": 3},
        "optim": {"lr": 1e-2, "warmup": 0},
    }
    agent = DreamerAgent(SPACE, {"discrete": True, "n": 3}, cfg)
    wm_params = {id(p) for p in agent.opt.param_groups[0]["params"]}
    assert all(id(p) in wm_params for p in agent.wm.balancer.values())
    before = {k: v.item() for k, v in agent.wm.balancer.items()}
    metrics = agent.train_step(make_batch())
    assert {"harmony/rew", "harmony/pixels", "harmony/vector", "harmony/dyn"} <= set(metrics)
    assert all(agent.wm.balancer[k].item() != v for k, v in before.items())


def test_checkpoints_from_before_the_balancer_registry_load():
    """Older checkpoints keep HarmonyDream's s under ``harmony.``; they load into the balancer."""
    wm = make_wm(loss_balance="harmony")
    state = wm.state_dict()
    old = {(k.replace("balancer.", "harmony.", 1) if k.startswith("balancer.") else k): v + 0.5
           if k.startswith("balancer.") else v for k, v in state.items()}
    assert any(k.startswith("harmony.") for k in old) and not any("balancer" in k for k in old)
    fresh = make_wm(loss_balance="harmony")
    fresh.load_state_dict(old)  # strict: every key found
    for k, s in fresh.balancer.items():
        assert s.item() == pytest.approx(wm.balancer[k].item() + 0.5)
