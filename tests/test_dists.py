"""Distributions and transforms of the DreamerV3 recipe (worldrl.dists)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldrl.dists import (
    MSE,
    Bernoulli,
    BoundedNormal,
    OneHot,
    TwoHot,
    symexp,
    symexp_bins,
    symlog,
    twohot_encode,
)

torch.set_num_threads(1)


def test_symlog_symexp_round_trip_and_shape():
    x = torch.tensor([-1e6, -1000.0, -3.5, -1.0, -1e-4, 0.0, 1e-4, 0.5, 1.0, 42.0, 1e6],
                     dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-10, atol=1e-12)
    assert torch.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-10, atol=1e-12)
    assert symlog(torch.tensor(0.0)) == 0.0
    # odd, monotone, and log-like for large values
    assert torch.allclose(symlog(-x), -symlog(x))
    assert (symlog(x).diff() > 0).all()
    assert math.isclose(float(symlog(torch.tensor(math.e - 1))), 1.0, rel_tol=1e-6)


def test_symexp_bins_match_dreamerv3_definition():
    bins = symexp_bins(255)
    assert bins.shape == (255,) and bins.dtype == torch.float32
    ref = symexp(torch.linspace(-20, 20, 255, dtype=torch.float64)).float()
    assert torch.allclose(bins, ref, rtol=1e-5)
    assert bins[127] == 0.0
    assert torch.equal(bins, -bins.flip(0))  # exactly symmetric
    assert (bins.diff() > 0).all()
    even = symexp_bins(16)
    assert torch.equal(even, -even.flip(0)) and (even.diff() >= 0).all()  # DreamerV3: 2 zeros
    with pytest.raises(ValueError, match="symmetric"):
        symexp_bins(255, -20.0, 10.0)


@pytest.mark.parametrize("num", [255, 41])
def test_twohot_encoding_has_mean_x(num):
    bins = symexp_bins(num)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(200, generator=gen) * 3,
        symexp(torch.rand(200, generator=gen) * 30 - 15),
        bins[::7],  # exactly on bins
        torch.tensor([0.0, 1e-7, -1e-7]),
    ])
    enc = twohot_encode(x, bins)
    assert enc.shape == (x.shape[0], num)
    assert torch.allclose(enc.sum(-1), torch.ones_like(x))
    assert ((enc > 0).sum(-1) <= 2).all()
    mean = (enc.double() * bins.double()).sum(-1)
    assert torch.allclose(mean, x.double(), rtol=1e-5, atol=1e-6)


def test_twohot_outside_range_goes_to_edge_bin():
    bins = symexp_bins(11, -3.0, 3.0)
    enc = twohot_encode(torch.tensor([1e6, -1e6]), bins)
    assert enc[0, -1] == 1.0 and enc[1, 0] == 1.0


def test_twohot_distribution_pred_and_loss():
    bins = symexp_bins(255)
    # uniform probabilities predict exactly zero (symmetric summation)
    assert TwoHot(torch.zeros(3, 255), bins).pred().abs().max() == 0.0
    x = torch.tensor([-37.25, -0.3, 0.0, 2.0, 815.0])
    logits = torch.log(twohot_encode(x, bins) + 1e-30)
    dist = TwoHot(logits, bins)
    assert torch.allclose(dist.pred(), x, rtol=1e-4, atol=1e-5)
    assert torch.allclose(dist.mean(), dist.pred())
    # loss = cross-entropy with the two-hot target; its gradient is softmax - target
    logits = torch.randn(5, 255, requires_grad=True)
    loss = TwoHot(logits, bins).loss(x)
    assert loss.shape == (5,)
    loss.sum().backward()
    expected = torch.softmax(logits.detach(), -1) - twohot_encode(x, bins)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert torch.allclose(TwoHot(logits.detach(), bins).log_prob(x), -loss.detach())


def test_onehot_unimix_min_probability():
    logits = torch.tensor([[50.0, -50.0, -50.0, -50.0], [0.0, 0.0, 0.0, -1e4]])
    dist = OneHot(logits, unimix=0.01)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(2))
    assert dist.probs.min() >= 0.01 / 4 - 1e-7
    assert OneHot(logits, unimix=0.0).probs.min() < 1e-10
    latent = OneHot(torch.randn(3, 32, 32) * 30, unimix=0.01, event_dims=1)
    assert latent.probs.min() >= 0.01 / 32 - 1e-8
    with pytest.raises(ValueError, match="unimix"):
        OneHot(logits, unimix=1.0)


def test_onehot_straight_through_sample_and_mode():
    torch.manual_seed(0)
    logits = torch.randn(6, 32, 16, requires_grad=True)
    dist = OneHot(logits, unimix=0.01, event_dims=1)
    for x in (dist.sample(), dist.mode()):
        assert x.shape == (6, 32, 16)
        hard = x.detach()
        assert torch.equal(hard, F.one_hot(hard.argmax(-1), 16).float())
    sample = dist.sample()
    w = torch.randn(6, 32, 16)
    (sample * w).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the straight-through gradient equals the gradient of the (unimix) probabilities
    logits2 = logits.detach().clone().requires_grad_(True)
    (OneHot(logits2, unimix=0.01, event_dims=1).probs * w).sum().backward()
    assert torch.allclose(logits.grad, logits2.grad, atol=1e-6)


def test_onehot_sample_frequencies_follow_probs():
    torch.manual_seed(1)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(20000, 3)
    freq = OneHot(logits).sample().detach().mean(0)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)
    # classes of probability zero are never drawn, wherever they sit; many groups at once
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.5, 0.0]])
    draws = OneHot(torch.log(probs).expand(5000, 2, 4), event_dims=1).sample().detach()
    assert draws.shape == (5000, 2, 4) and torch.equal(draws.sum(-1), torch.ones(5000, 2))
    freq = draws.mean(0)
    assert freq[0, 0] == 0 and freq[0, 2] == 0 and freq[1, 3] == 0
    assert torch.allclose(freq, probs, atol=0.03)


def test_onehot_entropy_kl_logprob_match_torch():
    torch.manual_seed(2)
    a, b = torch.randn(4, 8, 5), torch.randn(4, 8, 5)
    p, q = OneHot(a, 0.01, event_dims=1), OneHot(b, 0.01, event_dims=1)
    tp = torch.distributions.Categorical(probs=p.probs)
    tq = torch.distributions.Categorical(probs=q.probs)
    assert torch.allclose(p.entropy(), tp.entropy().sum(-1), atol=1e-5)
    assert torch.allclose(p.kl(q), torch.distributions.kl_divergence(tp, tq).sum(-1), atol=1e-5)
    assert torch.allclose(p.kl(p), torch.zeros(4), atol=1e-6)
    event = F.one_hot(torch.randint(0, 5, (4, 8)), 5).float()
    assert torch.allclose(p.log_prob(event), tp.log_prob(event.argmax(-1)).sum(-1), atol=1e-5)


def test_mse_and_symlog_mse():
    mean = torch.tensor([[0.5, -1.0, 2.0]])
    target = torch.tensor([[1.0, 3.0, -2.0]])
    assert torch.allclose(MSE(mean, event_dims=1).loss(target), ((mean - target) ** 2).sum(-1))
    sl = MSE(mean, event_dims=1, squash="symlog")
    assert torch.allclose(sl.loss(target), ((mean - symlog(target)) ** 2).sum(-1))
    assert torch.allclose(sl.pred(), symexp(mean))
    with pytest.raises(TypeError, match="floating"):
        MSE(mean).loss(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="squash"):
        MSE(mean, squash="log")


def test_bernoulli_soft_targets():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    target = torch.tensor([0.0, 0.997, 0.5])
    loss = Bernoulli(logits).loss(target)
    ref = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(Bernoulli(logits).prob(), torch.sigmoid(logits))
    assert torch.equal(Bernoulli(logits).pred(), torch.tensor([0.0, 0.0, 1.0]))


def test_bounded_normal():
    torch.manual_seed(3)
    raw_mean = (torch.randn(7, 3) * 10).requires_grad_(True)
    raw_std = (torch.randn(7, 3) * 10).requires_grad_(True)
    dist = BoundedNormal(raw_mean, raw_std, minstd=0.1, maxstd=1.0)
    assert dist.pred().abs().max() <= 1.0
    assert dist.scale.min() >= 0.1 and dist.scale.max() <= 1.0
    x = dist.sample()
    assert x.shape == (7, 3)
    ref = torch.distributions.Normal(dist.loc, dist.scale).log_prob(x).sum(-1)
    assert torch.allclose(dist.log_prob(x), ref)
    assert dist.entropy().shape == (7,)
    x.sum().backward()  # reparameterised
    assert raw_mean.grad.abs().sum() > 0 and raw_std.grad.abs().sum() > 0
    assert dist.minent < float(dist.entropy().detach().mean()) < dist.maxent + 1e-5
    # zero raw inputs give mean 0 and std = 0.9 * sigmoid(2) + 0.1 (DreamerV3)
    d0 = BoundedNormal(torch.zeros(1, 2), torch.zeros(1, 2))
    assert np.allclose(d0.scale.numpy(), 0.9 / (1 + math.exp(-2)) + 0.1)
