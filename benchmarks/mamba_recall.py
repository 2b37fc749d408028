"""Why the Mamba-1 world model missed the K=16 recall (issue 19 item 1): the world-model-only cell
of ``benchmarks.memory`` for several backbones and Mamba-1 variants, over seeds.

    python -m benchmarks.mamba_recall --updates 800 --seeds 0 1 2 --every 100 \
        --runs s4 mamba2 mamba mamba+drama mamba+drama+bcnorm mamba+drama+norm

Each cell is ``benchmarks.memory.world_model_run(backbone, K, batch, max_updates=updates)`` and
prints its separation (1: the reward of the answer is predicted from the remembered cue; 0: no
memory), with ``--every N`` also along the way (the onset). ``mamba`` is our Mamba-1 mixer as
configured by default (``bc_norm`` and ``gated_norm`` on); variants, applied left to right:

* ``+drama``: both off, ``mamba_ssm``'s Mamba-1 as Drama uses it (what ``mamba`` was before).
* ``+bcnorm`` / ``+norm``: ``bc_norm`` / ``gated_norm`` on again (after ``+drama``: one alone).
  ``bc_norm`` RMS-normalises ``B`` and ``C`` over ``d_state`` (Jamba, Falcon-Mamba): at init
  ``x_proj`` gives them an RMS of ~0.07, so a one-step pulse adds only ``dt B x ~ 1e-4`` to the
  state and the readout ``C h`` is ~1e3 below the ``D x`` skip. ``gated_norm`` is Mamba-2's
  RMSNorm of the gated output ``(y + D x) * silu(z)`` before ``out_proj``.
* ``+ainit``: ``A`` a scalar per channel drawn from ``U[1, 16]`` (Mamba-2's init) instead of
  ``1 .. d_state`` per state (S4D-real).
* ``+fullrank``: ``dt_rank`` = ``d_inner`` (64) instead of ``ceil(d_model / 16)`` (2).
* ``+dt01``: ``dt`` initialised in ``U_log[0.01, 0.1]`` instead of ``U_log[0.001, 0.1]``.

An exploration script: it prints, it writes nothing to ``results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

import benchmarks.memory as memory
from worldrl.backbones import mamba as mamba_module

#: variants that set the backbone's config keys
CONFIG_VARIANTS = {"drama": {"bc_norm": False, "gated_norm": False}, "bcnorm": {"bc_norm": True},
                   "norm": {"gated_norm": True}}
VARIANTS = (*CONFIG_VARIANTS, "ainit", "fullrank", "dt01")


@contextlib.contextmanager
def variant(names: str | None):
    """Patch the memory config (and ``MambaMixer``'s init) for the variants ``names`` (``"a+b"``:
    both, left to right), restoring them after."""
    mixer = mamba_module.MambaMixer
    init, cfg = mixer.__init__, dict(memory.BACKBONE_CFG["mamba"])
    chosen = names.split("+") if names else []
    new = dict(cfg)
    for name in chosen:
        new.update(CONFIG_VARIANTS.get(name, {}))
    if "fullrank" in chosen:
        new["dt_rank"] = 2 * cfg["d_model"]

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        with torch.no_grad():
            if "ainit" in chosen:
                a = torch.empty(self.d_inner).uniform_(1.0, 16.0)
                self.A_log.copy_(a.log()[:, None].expand_as(self.A_log))
            if "dt01" in chosen:
                self.dt_proj.bias.copy_(mamba_module.dt_bias_init(self.d_inner, 0.01, 0.1, 1e-4))

    memory.BACKBONE_CFG["mamba"] = new
    mixer.__init__ = patched
    try:
        yield
    finally:
        mixer.__init__ = init
        memory.BACKBONE_CFG["mamba"] = cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*memory.BACKBONES, *(f"mamba+{v}" for v in VARIANTS)]
    p.add_argument("--runs", nargs="+", default=choices,
                   help=f"of {choices}; variants combine: mamba+bcnorm+norm")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--updates", type=int, default=800)
    p.add_argument("--gap", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--every", type=int, default=None,
                   help="also print the separation every that many updates (the onset)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="with --every: stop a cell once its separation reaches this")
    args = p.parse_args(argv)
    for run in args.runs:
        backbone, _, var = run.partition("+")
        bad = [v for v in var.split("+") if var and v not in VARIANTS]
        if backbone not in memory.BACKBONES or (var and backbone != "mamba") or bad:
            p.error(f"--runs {run!r}: choose from {choices}, variants joined by '+'")
    torch.set_num_threads(1)
    for run in args.runs:
        backbone, _, var = run.partition("+")
        for seed in args.seeds:
            with variant(var or None):
                t0 = time.perf_counter()
                r = memory.world_model_run(backbone, args.gap, float("inf"), args.batch,
                                           seed=seed, max_updates=args.updates,
                                           curve_every=args.every, stop_at=args.stop_at)
            print(f"{run:16s} seed {seed}: separation {r['separation']:+.3f} accuracy "
                  f"{r['accuracy']:.3f} after {r['updates']} updates "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if r.get("curve"):
                print("    separation at " + ", ".join(f"{u}: {v:+.2f}" for u, v in r["curve"]),
                      flush=True)


if __name__ == "__main__":
    main()
