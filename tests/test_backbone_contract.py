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


@pytest.mark.parametrize("name", NAMES)
def test_parallel_equals_recurrent(name):
    checks.check_parallel_equals_recurrent(name)


@pytest.mark.parametrize("name", NAMES)
def test_reset_equals_two_sequences(name):
    checks.check_reset_equals_two_sequences(name)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    checks.check_gradients_reach_every_parameter(name)


@pytest.mark.parametrize("name", NAMES)
def test_imagination_starts(name):
    checks.check_imagination_starts(name)


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
