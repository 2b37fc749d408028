"""LaProp (worldrl/optim.py) against a plain, independent reading of its update chain."""

import math

import pytest
import torch

from worldrl.optim import LaProp


def reference_step(params, state, t, lr, agc, pmin, eps, b1, b2, nesterov, wd, warmup,
                   momentum=True):
    """The update chain of the module docstring, one tensor at a time (in float32)."""
    for i, p in enumerate(params):
        g = p.grad.float()
        gnorm = torch.linalg.vector_norm(g)
        if agc:
            upper = agc * torch.clamp_min(torch.linalg.vector_norm(p.detach().float()), pmin)
            g = g / torch.clamp_min(gnorm / upper, 1.0)
        zeros = torch.zeros_like(p, dtype=torch.float32)
        nu, mu = state.setdefault(i, (zeros, zeros.clone()))
        nu = b2 * nu + (1 - b2) * g * g
        u = g / ((nu / (1 - b2**t)).sqrt() + eps)
        mu = b1 * mu + (1 - b1) * u
        state[i] = (nu, mu)
        if not momentum:
            m = u
        else:
            m = (b1 * mu + (1 - b1) * u) / (1 - b1**t) if nesterov else mu / (1 - b1**t)
        if wd and p.ndim >= 2:
            m = m + wd * p.detach().float()
        p.data.add_((-lr * min(1.0, t / warmup) * m).to(p.dtype))


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("nesterov, wd, agc", [(False, 0.0, 0.3), (True, 0.1, 0.3),
                                                (False, 0.0, 0.0)])
def test_laprop_matches_the_per_tensor_chain(nesterov, wd, agc, capturable):
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (3,), (2, 2, 2), ()]
    ours = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    kw = dict(lr=0.05, agc=agc, pmin=1e-3, eps=1e-20, beta1=0.9, beta2=0.999, nesterov=nesterov,
              wd=wd, warmup=3)
    opt = LaProp([{"params": ours[:2], "name": "a"}, {"params": ours[2:], "name": "b"}], **kw)
    opt.capturable = capturable
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


def _lrs(schedule, lr=1.0, warmup=2, anneal=6, steps=9):
    """The learning rates of updates 1..steps, read from a live param group."""
    p = torch.zeros(1, requires_grad=True)
    opt = LaProp([p], lr=lr, warmup=warmup, schedule=schedule, anneal=anneal)
    return [opt.current_lr(opt.param_groups[0], t) for t in range(1, steps + 1)]


def test_schedules_follow_dreamerv3_optax_chain():
    # warm-up t / warmup, then optax linear_schedule(lr, 0.1 lr, anneal - warmup) or
    # cosine_decay_schedule(lr, anneal - warmup, alpha=0.1) on the updates since the warm-up,
    # held at 0.1 lr after `anneal`
    # (optax's 0-based count: update warmup + 1 is the decay's first, at the full lr)
    assert _lrs("const") == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 1])
    assert _lrs("linear") == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1])
    cos = [0.1 + 0.45 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert _lrs("cosine") == pytest.approx([0.5, 1.0, *cos, 0.1, 0.1])


def test_schedule_scales_the_applied_update():
    # one tensor, one update per step: the step the parameter takes is lr_t * |m_t|; with a
    # constant gradient |m_t| = 1 exactly (LaProp normalises before the momentum)
    steps = []
    p = torch.zeros(1, requires_grad=True)
    opt = LaProp([p], lr=0.1, warmup=0, agc=0.0, schedule="linear", anneal=4, eps=0.0)
    for _ in range(6):
        before = p.detach().clone()
        p.grad = torch.ones(1)
        opt.step()
        steps.append(float(before - p.detach()))
    assert steps == pytest.approx([0.1, 0.0775, 0.055, 0.0325, 0.01, 0.01], rel=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"schedule": "exp", "anneal": 10}, "unknown schedule 'exp'; choose one of: const, linear, "
                                       "cosine"),
    ({"schedule": "cosine", "anneal": 0}, "anneal must be > warmup"),
    ({"schedule": "linear", "anneal": None}, "anneal must be > warmup"),
    ({"schedule": "linear", "anneal": 5, "warmup": 5}, "got anneal=5"),
])
def test_bad_schedule_is_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LaProp([torch.zeros(1, requires_grad=True)], lr=0.1, **kw)


def test_metrics_report_the_applied_lr():
    p = torch.zeros(1, requires_grad=True)
    opt = LaProp([{"params": [p], "name": "w"}], lr=0.1, warmup=4)
    p.grad = torch.ones(1)
    opt.step()
    assert opt.last_metrics["w/lr"] == pytest.approx(0.025)


@pytest.mark.parametrize("capturable", [False, True])
def test_each_tensor_keeps_its_own_step_count(capturable):
    """A tensor without a gradient at some update falls behind the group's count: its bias
    corrections and warm-up follow its own count, as the per-tensor chain does."""
    g = torch.Generator().manual_seed(1)
    ours = [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(5, generator=g)
            .requires_grad_()]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opt = LaProp(ours, lr=0.05, warmup=4, wd=0.1)
    opt.capturable = capturable
    states = [{}, {}]
    counts = [0, 0]
    for t in range(1, 6):
        for i, (p, q) in enumerate(zip(ours, ref)):
            if i == 1 and t == 2:
                p.grad = q.grad = None  # the second tensor sits this update out
                continue
            gr = torch.randn(p.shape, generator=g) * 3.0
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        for i, q in enumerate(ref):
            if q.grad is not None:
                counts[i] += 1
                reference_step([q], states[i], counts[i], 0.05, 0.3, 1e-3, 1e-20, 0.9, 0.999,
                               False, 0.1, 4)
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert [int(opt.state[p]["step"]) for p in ours] == [5, 4] == counts
    assert all(torch.is_tensor(opt.state[p]["step"]) == capturable for p in ours)


@pytest.mark.parametrize("schedule, anneal, warmup", [("const", 0, 5), ("linear", 12, 5),
                                                      ("cosine", 12, 5), ("cosine", 12, 0)])
def test_the_learning_rate_on_the_device_is_the_python_one(schedule, anneal, warmup):
    opt = LaProp([torch.zeros(1, requires_grad=True)], lr=0.3, warmup=warmup, schedule=schedule,
                 anneal=anneal)
    group = opt.param_groups[0]
    steps = torch.arange(1, 20)
    want = torch.tensor([opt.current_lr(group, int(t)) for t in steps])
    torch.testing.assert_close(opt.lr_tensor(group, steps), want, rtol=1e-6, atol=0)


def test_capturable_state_round_trips_with_the_plain_one():
    """A checkpoint of one mode resumes in the other: the step counts convert once, and the
    two continue as one optimiser would."""
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(5, generator=g)
         .requires_grad_()]
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_a, opt_b = LaProp(a, lr=0.05, warmup=3), LaProp(b, lr=0.05, warmup=3)
    opt_a.capturable = True
    for t in range(8):
        if t == 4:  # swap modes through state dicts
            sa, sb = opt_a.state_dict(), opt_b.state_dict()
            opt_a.load_state_dict(sb)
            opt_b.load_state_dict(sa)
            opt_a.capturable, opt_b.capturable = False, True
        for p, q in zip(a, b):
            gr = torch.randn(p.shape, generator=g)
            p.grad, q.grad = gr.clone(), gr.clone()
        opt_a.step()
        opt_b.step()
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert opt_a.state[a[0]]["step"] == 8 and float(opt_b.state[b[0]]["step"]) == 8.0
    assert float(opt_b.last_metrics["group0/lr"]) == pytest.approx(0.05)


@pytest.mark.parametrize("dtype, momentum", [(torch.float32, False), (torch.bfloat16, True)])
def test_without_momentum_and_with_bf16_parameters(dtype, momentum):
    """No momentum: the RMS-scaled gradient is the update; bf16 parameters keep float32 state
    and take the float32 update rounded to bf16."""
    g = torch.Generator().manual_seed(2)
    ours = [torch.randn(6, 4, generator=g).to(dtype).requires_grad_(),
            torch.randn(3, generator=g).to(dtype).requires_grad_()]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opt = LaProp(ours, lr=0.05, warmup=2, momentum=momentum, wd=0.1)
    state = {}
    for t in range(1, 5):
        for p, q in zip(ours, ref):
            gr = torch.randn(p.shape, generator=g).to(dtype) * 5.0
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        reference_step(ref, state, t, 0.05, 0.3, 1e-3, 1e-20, 0.9, 0.999, False, 0.1, 2,
                       momentum=momentum)
        for p, q in zip(ours, ref):
            assert p.dtype == dtype
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert all(opt.state[p]["nu"].dtype == torch.float32 for p in ours)


def test_a_copy_of_the_optimiser_steps_like_the_original():
    """Optimizer pickling keeps only defaults, state and groups: a deep copy (a checkpointed or
    copied agent) must still step, to the same numbers."""
    import copy

    g = torch.Generator().manual_seed(3)
    p = torch.randn(4, 3, generator=g).requires_grad_()
    opt = LaProp([p], lr=0.05, warmup=0)
    p.grad = torch.randn(4, 3, generator=g) * 50.0  # clipped
    opt.step()
    twin_p = p.detach().clone().requires_grad_()
    twin = copy.deepcopy(opt)
    twin.param_groups[0]["params"] = [twin_p]
    twin.state = {twin_p: copy.deepcopy(opt.state[p])}
    grad = torch.randn(4, 3, generator=g) * 50.0
    p.grad, twin_p.grad = grad.clone(), grad.clone()
    opt.step()
    twin.step()
    assert torch.equal(p, twin_p)
