"""DreamerV3's optimiser (``Agent._make_opt`` + ``embodied/jax/opt.py``, 2024+).

The update chain, per parameter tensor ``p`` with gradient ``g`` at update ``t`` (1-based):

1. adaptive gradient clipping: ``g <- g / max(1, |g| / (agc * max(pmin, |p|)))`` with Frobenius
   norms of the whole tensor (``agc = 0.3``, ``pmin = 1e-3``);
2. RMS scaling (LaProp: normalise *before* momentum): ``nu <- b2 nu + (1 - b2) g^2``,
   ``u = g / (sqrt(nu / (1 - b2^t)) + eps)`` with ``b2 = 0.999`` and ``eps = 1e-20``;
3. momentum: ``mu <- b1 mu + (1 - b1) u``, ``m = mu / (1 - b1^t)`` (``b1 = 0.9``; Nesterov
   optional);
4. optional decoupled weight decay (``wd``, default 0) on tensors with ``ndim >= 2``;
5. ``p <- p - lr_t m`` with ``lr = 4e-5`` and a linear warm-up over the first 1000 updates;
   ``schedule`` then keeps it constant (``const``, the default) or anneals it to ``0.1 lr`` over
   the updates from ``warmup`` to ``anneal`` (``linear`` or ``cosine``), as DreamerV3's
   ``opt.schedule`` / ``opt.anneal`` do (optax ``linear_schedule`` / ``cosine_decay_schedule``).

Deviation: optax's warm-up evaluates the schedule at the 0-based count, so DreamerV3's first update
has learning rate 0; ours uses ``lr * min(1, t / warmup)`` with the 1-based ``t``. DreamerV3's
weight decay is masked by a regex on kernel names; ours applies to tensors with ``ndim >= 2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["LaProp", "SCHEDULES", "check_schedule"]

#: Learning-rate schedules after the warm-up (DreamerV3 ``opt.schedule``).
SCHEDULES = ("const", "linear", "cosine")


def _log(beta: float) -> float:
    return math.log(beta) if beta > 0 else -math.inf  # 0^t = 0 for t >= 1


def check_schedule(schedule: str, warmup: int, anneal: int | None) -> None:
    """Raise ``ValueError`` for an unknown schedule or an ``anneal`` it cannot reach."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if schedule != "const" and not (anneal and anneal > warmup):
        raise ValueError(f"schedule={schedule!r} anneals from update warmup={warmup} to update "
                         f"anneal; anneal must be > warmup, got anneal={anneal}")


class LaProp(torch.optim.Optimizer):
    """LaProp with adaptive gradient clipping and linear warm-up (DreamerV3 defaults).

    Param groups may carry a ``name``; :attr:`last_metrics` then holds ``{name}/grad_norm`` (before
    clipping), ``{name}/clipped`` (fraction of tensors that AGC clipped), ``{name}/update_rms`` and
    ``{name}/lr`` after every :meth:`step`.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], *, lr: float = 4e-5,
                 agc: float = 0.3, pmin: float = 1e-3, eps: float = 1e-20, beta1: float = 0.9,
                 beta2: float = 0.999, momentum: bool = True, nesterov: bool = False,
                 wd: float = 0.0, warmup: int = 1000, schedule: str = "const",
                 anneal: int = 0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if agc < 0:
            raise ValueError(f"agc must be >= 0 (0 disables it), got {agc}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got beta1={beta1}, beta2={beta2}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        check_schedule(schedule, warmup, anneal)
        defaults = dict(lr=lr, agc=agc, pmin=pmin, eps=eps, beta1=beta1, beta2=beta2,
                        momentum=momentum, nesterov=nesterov, wd=wd, warmup=warmup,
                        schedule=schedule, anneal=anneal)
        super().__init__(params, defaults)
        self.last_metrics: dict[str, float] = {}
        self.capturable = False

    @property
    def capturable(self) -> bool:
        """Step counts, learning rates and bias corrections as device tensors, so that a step
        captured in a CUDA graph replays with the right ones (the agent's ``cuda_graph`` sets
        it); off, they are Python numbers, which a graph would freeze. A copy (pickled: only
        the state and groups travel) starts off."""
        return self.__dict__.get("_capturable", False)

    @capturable.setter
    def capturable(self, value: bool) -> None:
        self.__dict__["_capturable"] = bool(value)

    def lr_tensor(self, group: dict[str, Any], step: Tensor) -> Tensor:
        """:meth:`current_lr` for a tensor of (1-based) step counts, on their device."""
        lr, warmup = group["lr"], group["warmup"]
        step = step.float()
        out = torch.full_like(step, lr)
        schedule = group.get("schedule", "const")
        if schedule != "const":
            frac = ((step - 1 - warmup).clamp_min(0) / (group["anneal"] - warmup)).clamp_max(1)
            out = (lr * (1.0 - 0.9 * frac) if schedule == "linear"
                   else lr * (0.1 + 0.9 * 0.5 * (1.0 + torch.cos(math.pi * frac))))
        if warmup:
            out = torch.where(step < warmup, lr * step / warmup, out)
        return out

    def current_lr(self, group: dict[str, Any], step: int) -> float:
        """The learning rate of update ``step`` (1-based) for ``group``."""
        lr, warmup = group["lr"], group["warmup"]
        if warmup and step < warmup:
            return lr * step / warmup
        schedule = group.get("schedule", "const")  # groups saved before schedules existed
        if schedule == "const":
            return lr
        # optax evaluates the decay at the 0-based count since the warm-up: update warmup + 1
        # has the full lr (our 1-based warm-up already reached it at update `warmup`)
        frac = min(1.0, max(0, step - 1 - warmup) / (group["anneal"] - warmup))
        if schedule == "linear":
            return lr * (1.0 - 0.9 * frac)
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401
        """One update of every tensor with a gradient, group by group, with multi-tensor
        (``torch._foreach_*``) operators: ~40 per group instead of 28 per tensor (the per-tensor
        loop dispatched 2,534 for the 90 tensors of size S, each a kernel launch on a GPU). Step
        counts, learning rates and bias corrections are Python numbers (no host sync), or
        device tensors when :attr:`capturable`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        metrics: dict[str, Tensor | float] = {}
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                name = group.get("name", f"group{gi}")
                metrics.update(self._group_step(group, params, name))
        self.last_metrics = metrics
        return loss

    def _scaled(self, tensors: list[Tensor], factor: Tensor) -> list[Tensor]:
        """``[t * factor[i]]`` in a few kernels: one flat copy scaled by the factors repeated
        over each tensor's elements, then split back into views. (A foreach multiply by 0-d
        tensors of other shapes would launch one kernel per tensor on a GPU.)"""
        sizes = [t.numel() for t in tensors]
        key = (factor.device, tuple(sizes))
        # (an attribute Optimizer's pickling drops: a deep copy or a worker's copy has none)
        cache = self.__dict__.setdefault("_counts", {})
        counts = cache.get(key)
        if counts is None:  # one copy to the device per group layout, not per step
            counts = cache[key] = torch.tensor(sizes, device=factor.device)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat.mul_(torch.repeat_interleave(factor, counts, output_size=flat.numel()))
        return [x.view_as(t) for x, t in zip(flat.split(sizes), tensors)]

    def _group_step(self, group: dict[str, Any], params: list[Tensor],
                    name: str) -> dict[str, Tensor | float]:
        b1, b2, eps = group["beta1"], group["beta2"], group["eps"]
        steps = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["nu"] = torch.zeros_like(p, dtype=torch.float32)
                state["mu"] = torch.zeros_like(p, dtype=torch.float32)
            step = state["step"]
            if self.capturable and (not torch.is_tensor(step) or step.device != p.device):
                # once (a fresh state, or one loaded onto the CPU): a host copy
                state["step"] = torch.as_tensor(step, dtype=torch.float32).to(p.device)
            elif not self.capturable and torch.is_tensor(state["step"]):  # once: a host read
                state["step"] = int(state["step"])
            if not self.capturable:
                state["step"] += 1
            steps.append(state["step"])
        if self.capturable:  # [N] step counts, then per-tensor 0-d views: no host value
            torch._foreach_add_(steps, 1.0)
            t = torch.stack(steps)
            # 1 - b^t as -expm1(t log b): float32 keeps its precision where 1 - 0.999^t cancels
            bias2 = list((-torch.expm1(t * _log(b2))).unbind(0))
            bias1 = list((-torch.expm1(t * _log(b1))).unbind(0))
            lr_t = self.lr_tensor(group, t)
            lrs = list(lr_t.unbind(0))
        else:
            bias2 = [1.0 - b2**t for t in steps]
            bias1 = [1.0 - b1**t for t in steps]
            lrs = [self.current_lr(group, t) for t in steps]
        nus = [self.state[p]["nu"] for p in params]
        mus = [self.state[p]["mu"] for p in params]
        grads = [p.grad.float() for p in params]
        gnorms = torch.stack(torch._foreach_norm(grads))
        gsq = gnorms.square().sum()
        clipped = torch.zeros((), device=gnorms.device)
        if group["agc"]:
            pnorms = torch.stack(torch._foreach_norm([p.detach().float() for p in params]))
            upper = group["agc"] * torch.clamp_min(pnorms, group["pmin"])
            factor = 1.0 / torch.clamp_min(gnorms / upper, 1.0)
            clipped = (factor < 1.0).float().sum()
            grads = self._scaled(grads, factor)
        torch._foreach_mul_(nus, b2)
        torch._foreach_addcmul_(nus, grads, grads, value=1.0 - b2)
        denom = torch._foreach_div(nus, bias2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        u = torch._foreach_div(grads, denom)
        if group["momentum"]:
            torch._foreach_mul_(mus, b1)
            torch._foreach_add_(mus, u, alpha=1.0 - b1)
            if group["nesterov"]:
                m = torch._foreach_mul(mus, b1)
                torch._foreach_add_(m, u, alpha=1.0 - b1)
                torch._foreach_div_(m, bias1)
                u = m
            else:
                u = torch._foreach_div(mus, bias1)
        if group["wd"]:
            decayed = [i for i, p in enumerate(params) if p.ndim >= 2]
            if decayed:
                torch._foreach_add_([u[i] for i in decayed],
                                    [params[i].detach().float() for i in decayed],
                                    alpha=group["wd"])
        if self.capturable:  # one flat multiply by the per-tensor learning rates
            u = self._scaled(u, -lr_t)
        else:
            torch._foreach_mul_(u, [-lr for lr in lrs])  # the updates
        usq = torch.stack(torch._foreach_norm(u)).square().sum()
        usize = sum(x.numel() for x in u)
        torch._foreach_add_(params, [x.to(p.dtype) for x, p in zip(u, params)])
        # tensors: read once per log interval, not here (no host sync)
        return {f"{name}/grad_norm": gsq.sqrt(), f"{name}/clipped": clipped / len(params),
                f"{name}/update_rms": (usq / max(usize, 1)).sqrt(), f"{name}/lr": lrs[-1]}
