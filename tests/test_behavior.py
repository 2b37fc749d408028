"""Behaviour learning: lambda-returns, normalisers, slow critic, imagination and gradient flow."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldrl.backbones import make_backbone
from worldrl.backbones.base import Backbone
from worldrl.behavior import ActorCritic, Normalize, SlowCopy, lambda_return
from worldrl.dists import BoundedNormal, OneHot
from worldrl.heads import ContinueHead, RewardHead
from worldrl.imagination import annotate, imagine

torch.set_num_threads(1)

A = 3
SMALL_AC = dict(actor={"layers": 1, "units": 16}, critic={"layers": 1, "units": 16},
                imag_horizon=4)


def test_lambda_return_hand_computed():
    reward = torch.tensor([0.0, 1.0, 2.0, 3.0])
    cont = torch.tensor([1.0, 1.0, 0.5, 1.0])
    boot = torch.tensor([-5.0, 10.0, 20.0, 30.0])
    ret = lambda_return(reward, cont, boot, disc=0.9, lam=0.8)
    # R2 = 3 + .9*(.2*30 + .8*30); R1 = 2 + .9*.5*(.2*20 + .8*R2); R0 = 1 + .9*(.2*10 + .8*R1)
    torch.testing.assert_close(ret, torch.tensor([13.312, 14.6, 30.0]))
    # an episode boundary at step 2 cuts the recursion there and bootstraps with boot[2]
    last = torch.tensor([False, False, True, False])
    ret = lambda_return(reward, cont, boot, disc=0.9, lam=0.8, last=last)
    torch.testing.assert_close(ret[:2], torch.tensor([10.72, 11.0]))


def test_lambda_return_limits():
    gen = torch.Generator().manual_seed(0)
    T, N, g = 6, 5, 0.95
    rew, boot = torch.randn(T + 1, N, generator=gen), torch.randn(T + 1, N, generator=gen)
    cont = torch.ones(T + 1, N)
    # lam = 0: one-step TD targets
    torch.testing.assert_close(lambda_return(rew, cont, boot, g, 0.0), rew[1:] + g * boot[1:])
    # lam = 1: discounted Monte-Carlo sum bootstrapped at the end
    mc = torch.stack([
        sum(g ** (k - t - 1) * rew[k] for k in range(t + 1, T + 1)) + g ** (T - t) * boot[T]
        for t in range(T)])
    torch.testing.assert_close(lambda_return(rew, cont, boot, g, 1.0), mc)
    # a terminal step (cont 0) stops the return
    cont[3] = 0.0
    ret = lambda_return(rew, cont, boot, g, 0.95)
    torch.testing.assert_close(ret[2], rew[3])


def test_percentile_normaliser_ema():
    norm = Normalize(impl="perc", rate=0.01, limit=1.0, perclo=5.0, perchi=95.0)
    x = torch.arange(0, 101, dtype=torch.float32)  # P5 = 5, P95 = 95
    lo_p, hi_p = np.percentile(x.numpy(), 5), np.percentile(x.numpy(), 95)
    offset, scale = norm(x)
    assert np.isclose(float(norm.lo), 0.01 * lo_p) and np.isclose(float(norm.hi), 0.01 * hi_p)
    assert float(scale) == 1.0  # max(1, 0.9)
    for _ in range(199):
        offset, scale = norm(x)
    decay = 1 - 0.99**200
    assert np.isclose(float(offset), lo_p * decay, rtol=1e-4)
    assert np.isclose(float(scale), max(1.0, (hi_p - lo_p) * decay), rtol=1e-4)
    assert float(scale) > 1.0
    # a small spread keeps the scale at the lower limit 1
    small = Normalize()
    for _ in range(300):
        _, scale = small(0.1 * torch.randn(1000))
    assert float(scale) == 1.0
    # stats without update do not move the EMA
    before = float(norm.hi)
    norm(x * 100, update=False)
    assert float(norm.hi) == before
    with pytest.raises(ValueError, match="choices"):
        Normalize(impl="minmax")


def test_slow_copy_ema():
    src = torch.nn.Linear(3, 2)
    slow = SlowCopy(src, rate=0.02, every=2)
    torch.testing.assert_close(slow.model.weight, src.weight)
    assert not slow.model.weight.requires_grad
    old = slow.model.weight.detach().clone()
    with torch.no_grad():
        src.weight.add_(1.0)
    slow.update(src)  # count 0: updates
    torch.testing.assert_close(slow.model.weight, 0.98 * old + 0.02 * src.weight.detach())
    mid = slow.model.weight.detach().clone()
    slow.update(src)  # count 1: skipped (every=2)
    torch.testing.assert_close(slow.model.weight, mid)


class LinearBackbone(Backbone):
    """A minimal non-RSSM backbone: the imagination engine must work with any Backbone."""

    def __init__(self, action_size=A):
        super().__init__()
        self.deter_size, self.stoch_size, self.feat_size = 4, 2, 6
        self.lin = torch.nn.Linear(4 + action_size, 4)

    def state_spec(self):
        return {"deter": (4,), "stoch": (2,)}

    def initial(self, batch_size):
        return {"deter": torch.zeros(batch_size, 4), "stoch": torch.zeros(batch_size, 2)}

    def observe(self, embed, action, is_first, state=None, sample=True):
        raise NotImplementedError

    def imagine_step(self, state, action, sample=True):
        deter = torch.tanh(self.lin(torch.cat([state["deter"], action], -1)))
        return {"deter": deter, "stoch": deter[:, :2]}

    def kl_losses(self, post, prior, free_nats=1.0):
        raise NotImplementedError


def test_imagine_shapes_with_any_backbone():
    bb = LinearBackbone()
    start = {"deter": torch.randn(5, 4), "stoch": torch.randn(5, 2), "extra": torch.ones(5)}
    calls = []

    def policy(feat):
        calls.append(feat.shape)
        return F.one_hot(torch.randint(0, A, (feat.shape[0],)), A).float()

    traj = imagine(bb, policy, start, horizon=7)
    assert traj.feat.shape == (8, 5, 6) and traj.action.shape == (8, 5, A)
    assert traj.state["deter"].shape == (8, 5, 4) and set(traj.state) == {"deter", "stoch"}
    assert len(calls) == 8 and traj.horizon == 7 and traj.batch_size == 5
    torch.testing.assert_close(traj.feat[0], torch.cat([start["deter"], start["stoch"]], -1))
    # step t+1 is imagine_step(state t, action t)
    nxt = bb.imagine_step({k: v[2] for k, v in traj.state.items()}, traj.action[2])
    torch.testing.assert_close(nxt["deter"], traj.state["deter"][3])
    with pytest.raises(ValueError, match="lacks"):
        imagine(bb, policy, {"deter": start["deter"]}, 3)


def _parts(discrete=True, **ac_kw):
    torch.manual_seed(0)
    bb = make_backbone("rssm", 8, A, dict(deter=16, hidden=8, stoch=2, classes=3, blocks=2))
    rew = RewardHead(bb.feat_size, layers=1, units=8)
    con = ContinueHead(bb.feat_size, layers=1, units=8)
    ac = ActorCritic(bb.feat_size, A, discrete, **{**SMALL_AC, **ac_kw})
    embed = torch.randn(2, 5, 8)
    action = F.one_hot(torch.randint(0, A, (2, 5)), A).float()
    is_first = torch.zeros(2, 5, dtype=torch.bool)
    post, _, _ = bb.observe(embed, action, is_first)
    start = {k: post[k].reshape(10, *post[k].shape[2:]).detach() for k in bb.state_keys()}
    return bb, rew, con, ac, start


def test_imagination_trajectory_annotation():
    bb, rew, con, ac, start = _parts()
    assert start["deter"].shape == (10, 16) and not start["deter"].requires_grad
    traj = ac.rollout(bb, rew, con, start)
    H, N = 4, 10
    assert traj.feat.shape == (H + 1, N, bb.feat_size) and traj.action.shape == (H + 1, N, A)
    for x in (traj.reward, traj.cont, traj.weight):
        assert x.shape == (H + 1, N)
    torch.testing.assert_close(traj.weight, torch.cumprod(traj.cont, 0))  # contdisc: disc 1
    hard = traj.action
    assert torch.equal(hard, F.one_hot(hard.argmax(-1), A).float())
    again = annotate(traj, rew, con, disc=0.5)
    torch.testing.assert_close(again.weight, torch.cumprod(0.5 * again.cont, 0) / 0.5)


def _grads(*modules):
    return [p.grad for m in modules for p in m.parameters()]


@pytest.mark.parametrize("discrete", [True, False])
def test_reinforce_gradients_stay_in_their_modules(discrete):
    bb, rew, con, ac, start = _parts(discrete)
    traj = ac.rollout(bb, rew, con, start)
    assert not traj.feat.requires_grad  # REINFORCE: the trajectory is data
    losses, outs, metrics = ac.imag_loss(traj)
    assert losses["policy"].shape == (4, 10) and losses["value"].shape == (4, 10)
    assert outs["ret"].shape == (4, 10)
    losses["policy"].mean().backward(retain_graph=True)
    assert all(g is None for g in _grads(bb, rew, con, ac.critic))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(ac.actor))
    ac.actor.zero_grad(set_to_none=True)
    losses["value"].mean().backward()
    assert all(g is None for g in _grads(bb, rew, con, ac.actor))
    assert all(g is not None for g in _grads(ac.critic))
    assert all(not p.requires_grad for p in ac.slow_critic.parameters())
    for k in ("entropy", "return_scale", "ret", "adv"):
        assert torch.isfinite(metrics[k])
    dist = ac.policy(traj.feat[0])
    assert isinstance(dist, OneHot if discrete else BoundedNormal)


def test_dynamics_gradients_reach_actor_not_world_model():
    bb, rew, con, ac, start = _parts(discrete=False, actor_grad="dynamics")
    traj = ac.rollout(bb, rew, con, start)
    assert traj.feat.requires_grad
    losses, _, _ = ac.imag_loss(traj)
    losses["policy"].mean().backward(retain_graph=True)
    assert all(g is None for g in _grads(bb, rew, con, ac.critic))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(ac.actor))
    # parameters are trainable again after the frozen rollout
    assert all(p.requires_grad for p in bb.parameters())
    ac.actor.zero_grad(set_to_none=True)
    losses["value"].mean().backward()
    assert all(g is None for g in _grads(bb, rew, con, ac.actor))


def test_replay_value_loss_masks_episode_ends():
    bb, rew, con, ac, start = _parts()
    assert ac.critic.out.weight.abs().max() == 0  # zero-initialised output layer
    torch.nn.init.normal_(ac.critic.out.weight)  # else no gradient reaches the features yet
    feat = torch.randn(2, 5, bb.feat_size, requires_grad=True)
    is_first = torch.zeros(2, 5, dtype=torch.bool)
    is_first[0, 3] = True
    loss = ac.replay_value_loss(feat, torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.bool),
                                is_first, torch.randn(2, 5))
    assert loss.shape == (2, 4)
    assert loss[0, 2] == 0 and (loss[1] > 0).all()
    loss.sum().backward()
    assert feat.grad.abs().sum() > 0  # repval_grad: True trains the representation


def test_bad_options():
    with pytest.raises(ValueError, match=r"'backprop'.*reinforce.*dynamics"):
        ActorCritic(10, A, True, actor_grad="backprop")
    with pytest.raises(ValueError, match="horizon"):
        ActorCritic(10, A, True, horizon=1)
