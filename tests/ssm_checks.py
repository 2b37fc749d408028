"""The backbone contract's checks (tests/test_backbone_contract.py runs them on every registered
backbone; the per-backbone tests use the helpers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from worldrl.backbones import make_backbone

ROOT = Path(__file__).resolve().parents[1]
E, A = 12, 3
SMALL = dict(deter=64, hidden=16, stoch=4, classes=5)  # d_model = 16
TOL = dict(atol=2e-5, rtol=2e-4)


def make(name: str, **kw):
    torch.manual_seed(0)
    return make_backbone(name, E, A, {**SMALL, **kw})


def inputs(B=3, T=9, seed=1, resets=((1, 4),)):
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(B, T, E, generator=gen)
    action = F.one_hot(torch.randint(0, A, (B, T), generator=gen), A).float()
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    for b, t in resets:
        is_first[b, t] = True
    return embed, action, is_first


def recurrent(m, post, action, is_first):
    """Step-by-step recurrence (``imagine_step`` fed with the posterior latents), resetting the
    state and the previous action where ``is_first``: ``deter [B, T, d]`` and prior modes."""
    B, T = is_first.shape
    init = m.initial(B)
    state = init
    deters, priors = [], []
    for t in range(T):
        if t > 0:
            state = {**state, "stoch": post["stoch"][:, t - 1]}
        first = is_first[:, t]
        state = {k: torch.where(first.view(B, *[1] * (v.dim() - 1)), init[k], v)
                 for k, v in state.items()}
        act = action[:, t] * (~first)[:, None]
        state = m.imagine_step(state, act, sample=False)
        deters.append(state["deter"])
        priors.append(state["stoch"])
    return torch.stack(deters, 1), torch.stack(priors, 1)


def check_parallel_equals_recurrent(name, **kw):
    m = make(name, **kw)
    embed, action, is_first = inputs()
    with torch.no_grad():
        post, prior, last = m.observe(embed, action, is_first, sample=False)
        deter, prior_stoch = recurrent(m, post, action, is_first)
    torch.testing.assert_close(deter, post["deter"], **TOL)
    torch.testing.assert_close(prior_stoch, prior["stoch"])
    # the acting path: one step at a time through observe, carrying the last state
    state, steps = m.initial(3), []
    with torch.no_grad():
        for t in range(embed.shape[1]):
            p, _, state = m.observe(embed[:, t:t + 1], action[:, t:t + 1], is_first[:, t:t + 1],
                                    state, sample=False)
            steps.append(p["deter"][:, 0])
    torch.testing.assert_close(torch.stack(steps, 1), post["deter"], **TOL)
    for k, v in last.items():
        torch.testing.assert_close(state[k], v, **TOL)


def check_reset_equals_two_sequences(name, **kw):
    m = make(name, **kw)
    embed, action, is_first = inputs(B=2, T=10, resets=())
    is_first[:, 6] = True
    action[:, 6] = torch.tensor([5.0, -3.0, 2.0])  # the action before a reset must be ignored
    with torch.no_grad():
        post, prior, _ = m.observe(embed, action, is_first, sample=False)
        post_a, _, _ = m.observe(embed[:, :6], action[:, :6], is_first[:, :6], sample=False)
        act_b = action[:, 6:].clone()
        act_b[:, 0] = 0.0
        garbage = {k: torch.randn_like(v) for k, v in m.initial(2).items()}  # must be discarded
        post_b, prior_b, _ = m.observe(embed[:, 6:], act_b, is_first[:, 6:], garbage,
                                       sample=False)
    for k in ("deter", "stoch", "logits"):
        torch.testing.assert_close(post[k][:, :6], post_a[k], **TOL)
        torch.testing.assert_close(post[k][:, 6:], post_b[k], **TOL)
        torch.testing.assert_close(prior[k][:, 6:], prior_b[k], **TOL)


def check_gradients_reach_every_parameter(name, **kw):
    m = make(name, **kw)
    embed, action, is_first = inputs()
    embed.requires_grad_(True)
    post, prior, last = m.observe(embed, action, is_first)
    dyn, rep = m.kl_losses(post, prior, free_nats=0.0)
    nxt = m.imagine_step(last, action[:, -1])
    loss = (dyn.mean() + rep.mean() + post["deter"].square().mean()
            + nxt["deter"].square().mean())
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert embed.grad is not None and embed.grad.abs().sum() > 0


def check_imagination_starts(name, **kw):
    m = make(name, **kw)
    embed, action, is_first = inputs(T=10)
    B, T, K = 3, 10, 4
    with torch.no_grad():
        post, _, _ = m.observe(embed, action, is_first, sample=False)
    keys = set(m.state_keys())
    burn_in = hasattr(m, "imag_context")  # the SSMs' (Drama's burn-in); the RSSM has none
    # exact (R2I): the states of the whole sequence at the last K steps
    m.imag_context = 0
    start = m.imagination_starts(post, action, is_first, K)
    assert set(start) == keys and all(not v.requires_grad for v in start.values())
    assert all(v.shape[0] == B * K for v in start.values())
    torch.testing.assert_close(start["deter"], post["deter"][:, T - K:].reshape(B * K, -1), **TOL)
    torch.testing.assert_close(start["stoch"], post["stoch"][:, T - K:].reshape(B * K, -1))
    # stepping a start with the next replayed action gives the next posterior step's deter
    s = {k: v.reshape(B, K, *v.shape[1:])[:, 0] for k, v in start.items()}
    with torch.no_grad():
        nxt = m.imagine_step(s, action[:, T - K + 1], sample=False)
    torch.testing.assert_close(nxt["deter"], post["deter"][:, T - K + 1], **TOL)
    if not burn_in:
        return  # the starts are the posterior states
    # burn-in (Drama) over a context covering the whole sequence is the exact state
    m.imag_context = T
    burnt = m.imagination_starts(post, action, is_first, K)
    for k in keys:
        torch.testing.assert_close(burnt[k], start[k], **TOL)
    # a short burn-in equals observing the C steps before each start from a fresh SSM state,
    # the first of them fed with the replayed previous latent and action
    C = 3
    m.imag_context = C
    burnt = m.imagination_starts(post, action, is_first, 0)
    assert all(v.shape[0] == B * T for v in burnt.values())
    t = T - 1
    with torch.no_grad():
        prev = {**m.initial(B), "stoch": post["stoch"][:, t - C]}
        _, _, ref = m.observe(embed[:, t - C + 1:t + 1], action[:, t - C + 1:t + 1],
                              is_first[:, t - C + 1:t + 1], prev, sample=False)
    got = {k: v.reshape(B, T, *v.shape[1:])[:, t] for k, v in burnt.items()}
    for k in keys:
        torch.testing.assert_close(got[k], ref[k], **TOL)


def check_step_paths_agree(name, **kw):
    """``imagine_step`` without autograd (where a backbone steps through an in-place kernel)
    equals the same step with autograd recording, and leaves its input state untouched."""
    m = make(name, **kw)
    state = {k: torch.randn_like(v) for k, v in m.initial(3).items()}
    before = {k: v.clone() for k, v in state.items()}
    action = torch.eye(3)
    with torch.no_grad():
        a = m.imagine_step(state, action, sample=False)
    b = m.imagine_step(state, action, sample=False)
    for k in a:
        torch.testing.assert_close(a[k], b[k].detach(), **TOL)
    assert all(torch.equal(v, before[k]) for k, v in state.items())


def cli_smoke(tmp_path, backbone, env):
    run = tmp_path / f"{backbone}-{env}"
    args = ["train", "preset=debug", f"backbone={backbone}", f"env={env}", f"run_dir={run}",
            "steps=56", "train.prefill=24", "train.checkpoint_every=1000", "eval.max_steps=8",
            "train.progress=false"]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, env=environ,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= 56 and summary["updates"] > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/dyn" in r for r in rows)
    assert (run / "checkpoint.pt").exists()
