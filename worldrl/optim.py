"""DreamerV3's optimiser (``Agent._make_opt`` + ``embodied/jax/opt.py``, 2024+).

The update chain, per parameter tensor ``p`` with gradient ``g`` at update ``t`` (1-based):

1. adaptive gradient clipping: ``g <- g / max(1, |g| / (agc * max(pmin, |p|)))`` with Frobenius
   norms of the whole tensor (``agc = 0.3``, ``pmin = 1e-3``);
2. RMS scaling (LaProp: normalise *before* momentum): ``nu <- b2 nu + (1 - b2) g^2``,
   ``u = g / (sqrt(nu / (1 - b2^t)) + eps)`` with ``b2 = 0.999`` and ``eps = 1e-20``;
3. momentum: ``mu <- b1 mu + (1 - b1) u``, ``m = mu / (1 - b1^t)`` (``b1 = 0.9``; Nesterov
   optional);
4. optional decoupled weight decay (``wd``, default 0) on tensors with ``ndim >= 2``;
5. ``p <- p - lr_t m`` with ``lr = 4e-5`` and a linear warm-up over the first 1000 updates.

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

__all__ = ["LaProp"]


class LaProp(torch.optim.Optimizer):
    """LaProp with adaptive gradient clipping and linear warm-up (DreamerV3 defaults).

    Param groups may carry a ``name``; :attr:`last_metrics` then holds ``{name}/grad_norm`` (before
    clipping), ``{name}/clipped`` (fraction of tensors that AGC clipped) and ``{name}/update_rms``
    after every :meth:`step`.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 4e-5,
                 agc: float = 0.3, pmin: float = 1e-3, eps: float = 1e-20, beta1: float = 0.9,
                 beta2: float = 0.999, momentum: bool = True, nesterov: bool = False,
                 wd: float = 0.0, warmup: int = 1000):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if agc < 0:
            raise ValueError(f"agc must be >= 0 (0 disables it), got {agc}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got beta1={beta1}, beta2={beta2}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        defaults = dict(lr=lr, agc=agc, pmin=pmin, eps=eps, beta1=beta1, beta2=beta2,
                        momentum=momentum, nesterov=nesterov, wd=wd, warmup=warmup)
        super().__init__(params, defaults)
        self.last_metrics: dict[str, float] = {}

    def current_lr(self, group: dict[str, Any], step: int) -> float:
        warmup = group["warmup"]
        return group["lr"] * (min(1.0, step / warmup) if warmup else 1.0)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401
        """One update of every parameter with a gradient. Each stage is one ``torch._foreach_*``
        call over a group's tensors (a model has ~100 of them: a per-tensor loop costs more in
        op dispatch than in arithmetic on a CPU)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        metrics: dict[str, float] = {}
        for gi, group in enumerate(self.param_groups):
            name = group.get("name", f"group{gi}")
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            b1, b2, eps = group["beta1"], group["beta2"], group["eps"]
            grads = [p.grad.float() for p in params]
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    state["step"] = 0
                    state["nu"] = torch.zeros_like(p, dtype=torch.float32)
                    state["mu"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
            steps = [state["step"] for state in states]
            gnorms = torch.stack(torch._foreach_norm(grads))
            gsq = float(gnorms.square().sum())
            clipped = 0.0
            if group["agc"]:
                pnorms = torch.stack(torch._foreach_norm([p.detach().float() for p in params]))
                upper = group["agc"] * torch.clamp_min(pnorms, group["pmin"])
                factor = 1.0 / torch.clamp_min(gnorms / upper, 1.0)
                clipped = float((factor < 1.0).sum())
                grads = torch._foreach_mul(grads, factor.tolist())
            nus = [state["nu"] for state in states]
            torch._foreach_mul_(nus, b2)
            torch._foreach_addcmul_(nus, grads, grads, value=1.0 - b2)
            denom = torch._foreach_div(nus, [1.0 - b2**t for t in steps])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            u = torch._foreach_div(grads, denom)
            if group["momentum"]:
                mus = [state["mu"] for state in states]
                torch._foreach_mul_(mus, b1)
                torch._foreach_add_(mus, u, alpha=1.0 - b1)
                if group["nesterov"]:
                    torch._foreach_mul_(u, 1.0 - b1)
                    torch._foreach_add_(u, mus, alpha=b1)
                    torch._foreach_div_(u, [1.0 - b1**t for t in steps])
                else:
                    u = torch._foreach_div(mus, [1.0 - b1**t for t in steps])
            if group["wd"]:
                decayed = [i for i, p in enumerate(params) if p.ndim >= 2]
                torch._foreach_add_([u[i] for i in decayed],
                                    [params[i].detach().float() for i in decayed],
                                    alpha=group["wd"])
            update = torch._foreach_mul(u, [-self.current_lr(group, t) for t in steps])
            usq = float(torch.stack(torch._foreach_norm(update)).square().sum())
            usize = sum(x.numel() for x in update)
            if all(p.dtype == torch.float32 for p in params):
                torch._foreach_add_(params, update)
            else:
                for p, x in zip(params, update):
                    p.add_(x.to(p.dtype))
            metrics[f"{name}/grad_norm"] = math.sqrt(gsq)
            metrics[f"{name}/clipped"] = clipped / len(params)
            metrics[f"{name}/update_rms"] = math.sqrt(usq / max(usize, 1))
        self.last_metrics = metrics
        return loss
