"""LaProp (worldrl/optim.py) against a plain, independent reading of its update chain."""

import math

import pytest
import torch

from worldrl.optim import LaProp


def reference_step(params, state, t, lr, agc, pmin, eps, b1, b2, nesterov, wd, warmup):
    """The update chain of the module docstring, one tensor at a time."""
    for i, p in enumerate(params):
        g = p.grad.float()
        gnorm = torch.linalg.vector_norm(g)
        if agc:
            upper = agc * torch.clamp_min(torch.linalg.vector_norm(p.detach()), pmin)
            g = g / torch.clamp_min(gnorm / upper, 1.0)
        nu, mu = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
        nu = b2 * nu + (1 - b2) * g * g
        u = g / ((nu / (1 - b2**t)).sqrt() + eps)
        mu = b1 * mu + (1 - b1) * u
        state[i] = (nu, mu)
        m = (b1 * mu + (1 - b1) * u) / (1 - b1**t) if nesterov else mu / (1 - b1**t)
        if wd and p.ndim >= 2:
            m = m + wd * p.detach()
        p.data.add_(-lr * min(1.0, t / warmup) * m)


@pytest.mark.parametrize("nesterov, wd, agc", [(False, 0.0, 0.3), (True, 0.1, 0.3),
                                                (False, 0.0, 0.0)])
def test_laprop_matches_the_per_tensor_chain(nesterov, wd, agc):
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (3,), (2, 2, 2), ()]
    ours = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    kw = dict(lr=0.05, agc=agc, pmin=1e-3, eps=1e-20, beta1=0.9, beta2=0.999, nesterov=nesterov,
              wd=wd, warmup=3)
    opt = LaProp([{"params": ours[:2], "name": "a"}, {"params": ours[2:], "name": "b"}], **kw)
    state = {}
    clipped_any = False
    for t in range(1, 7):
        grads = [torch.randn(s, generator=g) * (10.0 if t % 2 else 0.01) for s in shapes]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        reference_step(ref, state, t, kw["lr"], agc, 1e-3, 1e-20, 0.9, 0.999, nesterov, wd, 3)
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        clipped_any |= opt.last_metrics["a/clipped"] > 0
        norm = math.sqrt(sum(float(x.square().sum()) for x in grads[:2]))
        assert opt.last_metrics["a/grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert clipped_any == bool(agc)


def test_laprop_skips_tensors_without_gradients():
    p, q = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = LaProp([p, q], lr=0.1, warmup=0)
    p.grad = torch.tensor([1.0, -1.0, 0.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.1, 1.0]))
    assert torch.equal(q.detach(), torch.ones(2)) and q not in opt.state
