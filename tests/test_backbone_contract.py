"""The backbone contract, for every registered backbone (worldrl.backbones.BACKBONES): a backbone
added to the registry gets these tests without a line of test code.

Parallel ``observe`` equals the step-by-step recurrence and the one-step acting path; a reset
inside a sequence equals two sequences; gradients reach every parameter; imagination starts are
the posterior states (and, for backbones with a burn-in, ``imag_context``, its semantics); and a
CLI run trains on gym and atari100k."""

import pytest

from tests import ssm_checks as checks
from worldrl.backbones import BACKBONES

NAMES = sorted(BACKBONES)


CHECKS = [checks.check_parallel_equals_recurrent, checks.check_reset_equals_two_sequences,
          checks.check_gradients_reach_every_parameter, checks.check_imagination_starts,
          checks.check_step_paths_agree]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__[len("check_"):] for c in CHECKS])
@pytest.mark.parametrize("name", NAMES)
def test_backbone_checks(name, check):
    check(name)


@pytest.mark.parametrize("env", ["gym", "atari100k"])
@pytest.mark.parametrize("name", NAMES)
def test_cli_trains(tmp_path, name, env):
    checks.cli_smoke(tmp_path, name, env)


@pytest.mark.parametrize("name", NAMES)
def test_the_agent_trains_and_acts_on_every_backbone(name):
    """World model, imagination, actor and critic on each backbone: one update on pixels and a
    vector, the open-loop picture, and acting with the carry."""
    import numpy as np
    import torch

    from tests.test_dreamer_agent import TINY, make_agent, make_batch

    agent = make_agent(cfg={**TINY, "backbone": {"name": name}})
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    batch = make_batch(B=2, T=6)
    metrics = agent.train_step(batch)
    assert all(np.isfinite(float(metrics[k])) for k in ("loss/dyn", "loss/pixels", "loss/policy",
                                                         "loss/value"))
    moved = [n for n, p in agent.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("wm.backbone") for n in moved)
    assert agent.diagnostics(batch)["pixels"].shape == (6, 3 * 64, 2 * 64, 3)
    carry = agent.initial_carry(2)
    obs = {"pixels": batch["pixels"][:, 0], "vector": batch["vector"][:, 0]}
    action, carry = agent.act(obs, torch.ones(2, dtype=torch.bool), carry, mode="train")
    action, carry = agent.act(obs, torch.zeros(2, dtype=torch.bool), carry, mode="eval")
    assert action.shape == (2, 3) and set(carry) == set(agent.carry_spec())


def _toy_class():
    """A backbone of a dozen lines, defined inside the tests: an Elman RNN core with categorical
    latents (no gates, no blocks). Registered in BACKBONES by the test below, it must pass the
    same contract as the shipped backbones."""
    import torch
    from torch import nn

    from worldrl.backbones.base import Backbone
    from worldrl.dists import OneHot

    class Toy(Backbone):
        def __init__(self, embed_size, action_size, *, deter=64, hidden=16, stoch=4, classes=5):
            super().__init__()
            self.embed_size, self.action_size = embed_size, action_size
            self.deter, self.stoch, self.classes = deter, stoch, classes
            self.deter_size, self.stoch_size = deter, stoch * classes
            self.feat_size = deter + stoch * classes
            self.core = nn.Linear(deter + stoch * classes + action_size, deter)
            self.prior = nn.Linear(deter, stoch * classes)
            self.post = nn.Linear(deter + embed_size, stoch * classes)

        def state_spec(self):
            return {"deter": (self.deter,), "stoch": (self.stoch_size,)}

        def initial(self, batch_size):
            return {k: torch.zeros(batch_size, *s) for k, s in self.state_spec().items()}

        def _latent(self, logits, sample):
            logits = logits.reshape(*logits.shape[:-1], self.stoch, self.classes)
            d = OneHot(logits, 0.01, event_dims=1)
            x = d.sample() if sample else d.mode()
            return x.reshape(*x.shape[:-2], self.stoch_size), logits

        def _step(self, deter, stoch, action):
            return torch.tanh(self.core(torch.cat([deter, stoch, action], -1)))

        def observe(self, embed, action, is_first, state=None, sample=True):
            B, T = self._check_sequence(embed, action, is_first)
            state = state or self.initial(B)
            deter, stoch = state["deter"], state["stoch"]
            keep = (~is_first)[..., None].float()
            post = {"deter": [], "stoch": [], "logits": []}
            for t in range(T):
                k_t = keep[:, t]
                deter = self._step(deter * k_t, stoch * k_t, action[:, t] * k_t)
                stoch, logits = self._latent(self.post(torch.cat([deter, embed[:, t]], -1)), sample)
                for k, v in (("deter", deter), ("stoch", stoch), ("logits", logits)):
                    post[k].append(v)
            post = {k: torch.stack(v, 1) for k, v in post.items()}
            pstoch, plogits = self._latent(self.prior(post["deter"]), sample)
            prior = {"deter": post["deter"], "stoch": pstoch, "logits": plogits}
            return post, prior, {"deter": deter, "stoch": stoch}

        def imagine_step(self, state, action, sample=True):
            deter = self._step(state["deter"], state["stoch"], action)
            return {"deter": deter, "stoch": self._latent(self.prior(deter), sample)[0]}

        def kl_losses(self, post, prior, free_nats=1.0):
            def dist(x):
                return OneHot(x, 0.01, event_dims=1)

            dyn = dist(post["logits"].detach()).kl(dist(prior["logits"]))
            rep = dist(post["logits"]).kl(dist(prior["logits"].detach()))
            return dyn.clamp_min(free_nats), rep.clamp_min(free_nats)

    return Toy


def test_a_backbone_defined_in_a_test_passes_the_contract(monkeypatch):
    from worldrl import backbones

    monkeypatch.setitem(backbones.BACKBONES, "toy", _toy_class())
    for check in CHECKS:
        check("toy")
    test_the_agent_trains_and_acts_on_every_backbone("toy")
