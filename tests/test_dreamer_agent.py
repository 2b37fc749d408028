"""The DreamerV3 agent contract (agents/dreamer.py) and its config files."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from agents.dreamer import DreamerAgent, resolve_config
from agents.train import agent_config
from worldrl.config import load_config

torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "worldrl" / "configs"
A = 3
TINY = {
    "size": {"name": "tiny", "deter": 32, "hidden": 16, "stoch": 4, "classes": 4, "units": 16,
             "depth": 2},
    "backbone": {"name": "rssm", "blocks": 4},
    "world_model": {
        "encoder": {"mults": [1, 2, 2, 2], "kernel": 3, "strided": True},
        "decoder": {"mults": [1, 2, 2, 2], "kernel": 3, "strided": True, "bspace": 2},
    },
    "behavior": {"imag_horizon": 5},
    "optim": {"lr": 3e-3, "warmup": 0},
}
PIXVEC = {"pixels": ((3, 64, 64), torch.uint8), "vector": ((5,), torch.float32)}


def make_agent(discrete=True, space=PIXVEC, cfg=TINY):
    torch.manual_seed(0)
    act_space = {"discrete": discrete, "n": A, "low": -1.0, "high": 1.0}
    return DreamerAgent(space, act_space, cfg)


def make_batch(space=PIXVEC, B=3, T=8, discrete=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if discrete:
        action = F.one_hot(torch.randint(0, A, (B, T), generator=gen), A).float()
    else:
        action = torch.rand(B, T, A, generator=gen) * 2 - 1
    batch = {"action": action, "reward": torch.randn(B, T, generator=gen),
             "is_first": torch.zeros(B, T, dtype=torch.bool),
             "terminated": torch.zeros(B, T, dtype=torch.bool)}
    batch["is_first"][:, 0] = True
    batch["is_first"][0, 4] = True  # a row crossing an episode boundary
    batch["terminated"][0, 3] = True
    if "pixels" in space:
        # learnable images: a colour per frame times a fixed spatial ramp
        colour = torch.rand(B, T, 3, 1, 1, generator=gen)
        ramp = torch.linspace(0.2, 1.0, 64)[None, None, None, :, None]
        batch["pixels"] = (255 * colour * ramp).expand(B, T, 3, 64, 64).to(torch.uint8)
    if "vector" in space:
        batch["vector"] = torch.randn(B, T, 5, generator=gen)
    return batch


def obs_at(batch, t, space=PIXVEC):
    return {k: batch[k][:, t] for k in space}


def test_carry_and_act_shapes():
    agent = make_agent()
    spec = agent.carry_spec()
    assert spec == {"deter": (32,), "stoch": (16,), "prev_action": (A,)}
    carry = agent.initial_carry(3)
    assert {k: tuple(v.shape[1:]) for k, v in carry.items()} == spec
    batch = make_batch()
    action, carry = agent.act(obs_at(batch, 0), batch["is_first"][:, 0], carry)
    assert action.shape == (3, A)
    assert torch.equal(action, F.one_hot(action.argmax(-1), A).float())
    assert torch.equal(carry["prev_action"], action)
    assert {k: tuple(v.shape[1:]) for k, v in carry.items()} == spec
    with pytest.raises(ValueError, match=r"'greedy'.*train.*eval"):
        agent.act(obs_at(batch, 0), batch["is_first"][:, 0], carry, mode="greedy")


def test_continuous_actions_in_bounds():
    agent = make_agent(discrete=False)
    batch = make_batch(discrete=False)
    carry = agent.initial_carry(3)
    for t in range(3):
        action, carry = agent.act(obs_at(batch, t), batch["is_first"][:, t], carry)
        assert action.shape == (3, A) and action.abs().max() <= 1.0
    a1, c1 = agent.act(obs_at(batch, 3), batch["is_first"][:, 3], carry, mode="eval")
    # eval takes the mode of the policy at the new state (tanh of the mean, inside the bounds)
    with torch.no_grad():
        mode = agent.ac.policy(agent.wm.backbone.get_feat(c1)).mode()
    torch.testing.assert_close(a1, mode)
    assert a1.abs().max() < 1.0
    a2, c2 = agent.act(obs_at(batch, 3), batch["is_first"][:, 3], carry, mode="train")
    with torch.no_grad():
        mode2 = agent.ac.policy(agent.wm.backbone.get_feat(c2)).mode()
    assert not torch.allclose(a2, mode2)  # train samples


def test_act_resets_carry_on_is_first():
    agent = make_agent()
    batch = make_batch()
    obs = obs_at(batch, 0)
    garbage = {k: torch.randn(3, *s) * 5 for k, s in agent.carry_spec().items()}
    first = torch.tensor([True, False, True])
    torch.manual_seed(5)
    a_g, c_g = agent.act(obs, first, garbage, mode="eval")
    torch.manual_seed(5)
    a_i, c_i = agent.act(obs, first, agent.initial_carry(3), mode="eval")
    for k in ("deter", "stoch"):
        torch.testing.assert_close(c_g[k][first], c_i[k][first])
        assert not torch.allclose(c_g[k][~first], c_i[k][~first])
    torch.testing.assert_close(a_g[first], a_i[first])


def test_train_step_metrics_and_loss_decreases():
    agent = make_agent()
    batch = make_batch()
    first = agent.train_step(batch)
    # metrics stay 0-d tensors (read once per log interval, never a host sync in the update)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and torch.isfinite(v)
               for v in first.values())
    for key in ("loss/pixels", "loss/vector", "loss/rew", "loss/con", "loss/dyn", "loss/rep",
                "loss/policy", "loss/value", "loss/repval", "kl/dyn",
                "actor/entropy", "actor/return_scale", "grad/world_model/grad_norm",
                "grad/actor/grad_norm", "grad/critic/grad_norm", "wm_loss"):
        assert key in first, key
    # ... as views of one tensor made after the update: none is a compiled region's output,
    # which CUDA graphs would overwrite at the next update while the loop still holds it
    assert len({v.untyped_storage().data_ptr() for v in first.values()}) == 1
    held = {k: v.clone() for k, v in first.items()}
    losses = [float(first["wm_loss"])]
    slow0 = [p.detach().clone() for p in agent.ac.slow_critic.parameters()]
    for _ in range(29):
        losses.append(float(agent.train_step(batch)["wm_loss"]))
    assert all(torch.equal(first[k], held[k]) for k in held)  # later updates left them alone
    assert losses[-1] < 0.8 * losses[0], (losses[0], losses[-1])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert agent.updates == 30
    moved = [not torch.equal(a, b) for a, b in zip(slow0, agent.ac.slow_critic.parameters())]
    assert any(moved)  # the slow critic follows the critic


def test_train_step_continuous_vector_only_and_video():
    space = {"vector": PIXVEC["vector"]}
    agent = make_agent(discrete=False, space=space)
    batch = make_batch(space, discrete=False)
    metrics = agent.train_step(batch)
    assert np.isfinite(metrics["loss/policy"]) and "loss/pixels" not in metrics
    assert agent.diagnostics(batch) == {}  # vectors draw no picture


def test_video_grid():
    agent = make_agent()
    pictures = agent.diagnostics(make_batch(B=2, T=7))
    video = pictures["pixels"]
    assert isinstance(video, np.ndarray) and video.dtype == np.uint8
    assert video.shape == (7, 3 * 64, 2 * 64, 3)


def test_config_errors():
    with pytest.raises(ValueError, match=r"'behaviour'.*valid"):
        resolve_config({**TINY, "behaviour": {}})
    with pytest.raises(ValueError, match=r"'lamda'.*agent.behavior"):
        make_agent(cfg={**TINY, "behavior": {"lamda": 0.9}})
    with pytest.raises(ValueError, match=r"size preset"):
        resolve_config({"backbone": {"name": "rssm"}})
    with pytest.raises(ValueError, match=r"'mamba3'.*choices"):
        resolve_config({**TINY, "backbone": {"name": "mamba3"}})
    with pytest.raises(ValueError, match="act_space lacks 'n'"):
        DreamerAgent(PIXVEC, {"discrete": True}, TINY)
    cfg = resolve_config({**TINY, "critic": {"units": 7}})
    assert cfg["critic"]["units"] == 7 and cfg["actor"]["units"] == 16
    assert cfg["backbone"]["deter"] == 32 and cfg["world_model"]["encoder"]["depth"] == 2
    # older configs wrote null for "from agent.size" (worldrl.config.fill_null_sizes)
    old = resolve_config({**TINY, "backbone": {"name": "rssm", "deter": None},
                          "critic": {"units": None}})
    assert old["backbone"]["deter"] == 32 and old["critic"]["units"] == TINY["size"]["units"]


@pytest.mark.parametrize("size", ["xs", "s", "m", "l", "xl"])
def test_yaml_configs_build(size):
    agent_cfg = agent_config(load_config(["env=atari100k", f"size={size}"]))  # as `worldrl train`
    with torch.device("meta"):
        agent = DreamerAgent(PIXVEC, {"discrete": True, "n": 6}, agent_cfg)
    sizes = OmegaConf.to_container(agent_cfg.size)
    assert agent.wm.backbone.deter == sizes["deter"] and agent.wm.backbone.hidden == sizes["hidden"]
    assert agent.wm.backbone.classes == sizes["classes"]
    assert agent.ac.actor.mlp.out_features == sizes["units"]
    assert agent.ac.discount == pytest.approx(1 - 1 / 333)
    assert agent.opt.defaults["lr"] == 4e-5 and agent.opt.defaults["eps"] == 1e-20
    count = sum(p.numel() for p in agent.parameters()) / 1e6
    assert {"xs": 0.1 < count < 3, "s": 8 < count < 16, "m": 18 < count < 30,
            "l": 35 < count < 60, "xl": 80 < count < 120}[size], count


def test_laprop_agc_and_warmup():
    from worldrl.optim import LaProp

    p = torch.tensor([1.0, -2.0, 2.0], requires_grad=True)  # |p| = 3
    g = torch.tensor([30.0, -40.0, 0.0])  # |g| = 50 > 0.3 * 3: clipped to norm 0.9
    opt = LaProp([{"params": [p], "name": "w"}], lr=0.1, warmup=0, beta2=0.999)
    p.grad = g.clone()
    opt.step()
    clipped = g * (0.9 / 50.0)
    torch.testing.assert_close(opt.state[p]["nu"], (1 - 0.999) * clipped.square())
    assert opt.last_metrics["w/clipped"] == 1.0
    assert opt.last_metrics["w/grad_norm"] == pytest.approx(50.0)
    # first LaProp step: bias-corrected normalised gradient = sign(g), times lr
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 2.0]))
    # small gradients are not clipped; warm-up scales the learning rate by t / warmup
    q = torch.tensor([1.0, 1.0], requires_grad=True)
    opt = LaProp([q], lr=0.1, warmup=4)
    q.grad = torch.tensor([1e-3, -1e-3])
    opt.step()
    torch.testing.assert_close(q.detach(), torch.tensor([1.0 - 0.025, 1.0 + 0.025]))
    assert opt.last_metrics["group0/clipped"] == 0.0
    with pytest.raises(ValueError, match="lr"):
        LaProp([q], lr=0.0)


def test_group_lr_sets_one_module_learning_rate():
    """``optim.group_lr.actor`` gives the actor its own step size; the others keep ``lr``."""
    cfg = {**TINY, "optim": {"lr": 3e-3, "warmup": 0, "group_lr": {"actor": 1e-5}}}
    agent = make_agent(cfg=cfg)
    lrs = {g["name"]: g["lr"] for g in agent.opt.param_groups}
    assert lrs == {"world_model": 3e-3, "actor": 1e-5, "critic": 3e-3}
    before = {n: [p.detach().clone() for p in m.parameters()]
              for n, m in (("actor", agent.ac.actor), ("critic", agent.ac.critic))}
    agent.train_step(make_batch())
    # LaProp's first step moves every parameter with a gradient by at most lr (times AGC <= 1)
    for name, module in (("actor", agent.ac.actor), ("critic", agent.ac.critic)):
        moved = max(float((p.detach() - q).abs().max())
                    for p, q in zip(module.parameters(), before[name]))
        assert moved <= lrs[name] * 1.01, (name, moved)  # float32 rounding of p - lr
        assert moved > lrs[name] * 0.5, (name, moved)
    with pytest.raises(ValueError, match="group_lr"):
        make_agent(cfg={**TINY, "optim": {"group_lr": {"policy": 1e-4}}})
