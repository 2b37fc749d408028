"""Why the Mamba-1 world model misses the K=16 recall (issue 19 item 1): the world-model-only cell
of ``benchmarks.memory`` for several backbones and Mamba-1 variants, over seeds.

    python -m benchmarks.mamba_recall --updates 800 --seeds 0 1 2 \\
        --runs s4 mamba mamba2 mamba+norm mamba+ainit mamba+fullrank

Each cell is ``benchmarks.memory.world_model_run(backbone, K, batch, max_updates=updates)`` and
prints its separation (1: the reward of the answer is predicted from the remembered cue; 0: no
memory). The Mamba-1 variants change one thing each, the rest as ``mamba``:

* ``mamba+norm``: an RMSNorm of the gated output ``(y + D x) * silu(z)`` before ``out_proj`` (as
  Mamba-2's gated norm); the initialisation and the batches are those of ``mamba``.
* ``mamba+ainit``: ``A`` a scalar per channel drawn from ``U[1, 16]`` (Mamba-2's init) instead of
  ``1 .. d_state`` per state (S4D-real).
* ``mamba+fullrank``: ``dt_rank`` = ``d_inner`` (64) instead of ``ceil(d_model / 16)`` (2).

An exploration script: it prints, it writes nothing to ``results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

import benchmarks.memory as memory
from worldrl.backbones import mamba as mamba_module

VARIANTS = ("norm", "ainit", "fullrank")


class _NormalisedOut(torch.nn.Module):
    """``out_proj`` reading the RMS-normalised gated output (no new parameters or RNG draws)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear
        self.weight = linear.weight  # the stack's out_proj init reaches it

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5))


@contextlib.contextmanager
def variant(name: str | None):
    """Patch ``MambaMixer`` (and the memory config) for one variant, restoring them after."""
    mixer = mamba_module.MambaMixer
    init, cfg = mixer.__init__, dict(memory.BACKBONE_CFG["mamba"])

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if name == "norm":
            self.out_proj = _NormalisedOut(self.out_proj)
        elif name == "ainit":
            with torch.no_grad():
                a = torch.empty(self.d_inner).uniform_(1.0, 16.0)
                self.A_log.copy_(a.log()[:, None].expand_as(self.A_log))

    if name == "fullrank":
        memory.BACKBONE_CFG["mamba"] = {**cfg, "dt_rank": 2 * cfg["d_model"]}
    mixer.__init__ = patched
    try:
        yield
    finally:
        mixer.__init__ = init
        memory.BACKBONE_CFG["mamba"] = cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*memory.BACKBONES, *(f"mamba+{v}" for v in VARIANTS)]
    p.add_argument("--runs", nargs="+", default=choices, choices=choices)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--updates", type=int, default=800)
    p.add_argument("--gap", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for run in args.runs:
        backbone, _, var = run.partition("+")
        for seed in args.seeds:
            with variant(var or None):
                t0 = time.perf_counter()
                r = memory.world_model_run(backbone, args.gap, float("inf"), args.batch,
                                           seed=seed, max_updates=args.updates)
            print(f"{run:16s} seed {seed}: separation {r['separation']:+.3f} accuracy "
                  f"{r['accuracy']:.3f} after {r['updates']} updates "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
