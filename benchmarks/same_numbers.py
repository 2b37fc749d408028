"""Same numbers before and after a restructuring: seeded ``preset=debug`` runs, kept and compared.

    python -m benchmarks.same_numbers --record results/behaviour    # before the change
    python -m benchmarks.same_numbers --compare results/behaviour   # after: exit 1 on a difference

Each run is ``worldrl train preset=debug seed=0 train.threads=1 train.log_every=8`` with one of
the combinations below (every backbone on gym and atari100k; atari100k_av with DreamSmooth and
HarmonyDream): 120 env steps, 40 updates, a metric row every 8 steps. What is kept per run
(``NAME.json``): every metric row without its timings (``*_per_s``), the evaluation, and
per-tensor statistics of the final checkpoint's weights and optimiser state (float64 sum, sum of
absolute values, sum of squares, first values: a difference above 1e-9 in any entry shows).
``--compare`` runs the same commands and prints, per run, the largest absolute difference of any
metric and of any weight statistic, against ``--tolerance`` (default 1e-6).

Old checkpoints: ``--checkpoints DIR`` writes the runs stopped at 64 steps (their checkpoints)
into DIR; with ``--resume DIR``, ``--record``/``--compare`` continue copies of those to 120 steps
(kept as ``NAME-resumed.json``). Made with the code before a change, they show that its
checkpoints still resume after it, to the same numbers (a resumed run is not the uninterrupted
one: the episode in flight is lost; it is compared with itself). Without such a directory, the
code before the change is one ``git worktree add`` away.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ("preset=debug", "seed=0", "train.threads=1", "train.log_every=8", "train.progress=false")
RUNS = {
    "gym-rssm": ("env=gym", "backbone=rssm"),
    "gym-s4": ("env=gym", "backbone=s4"),
    "gym-mamba": ("env=gym", "backbone=mamba"),
    "atari100k-rssm": ("env=atari100k", "backbone=rssm"),
    "atari100k-s4": ("env=atari100k", "backbone=s4"),
    "atari100k-mamba": ("env=atari100k", "backbone=mamba"),
    # Drama's Mamba-1 mixer, the default before bc_norm / gated_norm (issue 19): its records are
    # those of the mamba runs made before
    "gym-mamba-drama": ("env=gym", "backbone=mamba", "agent.backbone.bc_norm=false",
                        "agent.backbone.gated_norm=false"),
    "atari100k-mamba-drama": ("env=atari100k", "backbone=mamba", "agent.backbone.bc_norm=false",
                              "agent.backbone.gated_norm=false"),
    "atari100k_av-rssm-smooth-harmony": ("env=atari100k_av", "backbone=rssm",
                                         "replay.smoothing.mode=gaussian",
                                         "agent.world_model.loss_balance=harmony"),
}
TIMING = ("_per_s", "wall")


def _stats(tree, prefix="") -> dict[str, list[float]]:
    import torch

    out = {}
    if isinstance(tree, torch.Tensor):
        t = tree.detach().double().flatten()
        out[prefix] = [t.sum().item(), t.abs().sum().item(), t.square().sum().item(),
                       *t[:4].tolist()]
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_stats(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_stats(v, f"{prefix}.{i}"))
    return out


def run_one(name: str, workdir: Path, resume: Path | None = None, steps: int | None = None
            ) -> dict:
    from agents.run_dir import load_checkpoint

    run_dir = workdir / name
    if resume is not None:
        shutil.copytree(resume / name, run_dir)
    cmd = [sys.executable, "-m", "agents.cli", "train", *COMMON, *RUNS[name], f"run_dir={run_dir}",
           *([f"steps={steps}"] if steps else [])]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name}: exit {r.returncode}\n{r.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    rows = [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return {"command": " ".join(["worldrl train", *COMMON, *RUNS[name]]), "metrics": rows,
            "summary": json.loads((run_dir / "summary.json").read_text()),
            "weights": _stats(ckpt["agent"])}


def _diff(a, b, notes: list[str] | None = None, dropped: tuple[str, ...] = ()
          ) -> tuple[float, list[str]]:
    """Largest absolute difference between two records, and what does not line up. Renamed
    weights are lined up by order (a rename is not a difference; a reordering shows as one) and
    reported in ``notes``."""
    worst, problems = 0.0, []
    notes = [] if notes is None else notes
    if len(a["metrics"]) != len(b["metrics"]):
        problems.append(f"metric rows {len(a['metrics'])} -> {len(b['metrics'])}")
    for ra, rb in zip(a["metrics"], b["metrics"]):
        # metrics removed on purpose (a resumed run's rows before its checkpoint were written by
        # the old code, so they may still hold them)
        ra = {k: v for k, v in ra.items() if k not in dropped}
        rb = {k: v for k, v in rb.items() if k not in dropped}
        if set(ra) != set(rb):
            problems.append(f"step {ra.get('step')}: keys {sorted(set(ra) ^ set(rb))}")
        for k in set(ra) & set(rb):
            worst = max(worst, abs(float(ra[k]) - float(rb[k])))
    wa, wb = a["weights"], b["weights"]
    if set(wa) != set(wb):  # renamed: line up by order
        if len(wa) != len(wb):
            problems.append(f"{len(wa)} weight tensors -> {len(wb)}")
        renamed = [(x, y) for x, y in zip(wa, wb) if x != y]
        notes.append(f"{len(renamed)} tensors renamed, e.g. {renamed[0][0]} -> {renamed[0][1]}")
        pairs = zip(wa.values(), wb.values())
    else:
        pairs = ((wa[k], wb[k]) for k in wa)
    for sa, sb in pairs:
        if len(sa) != len(sb):
            problems.append("weight shapes differ")
            continue
        worst = max(worst, *(abs(x - y) / max(1.0, abs(x)) for x, y in zip(sa, sb)))
    for k in ("eval_return_mean", "updates", "env_steps", "episodes"):
        if a["summary"].get(k) != b["summary"].get(k):
            problems.append(f"summary {k}: {a['summary'].get(k)} -> {b['summary'].get(k)}")
    return worst, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", metavar="DIR")
    g.add_argument("--compare", metavar="DIR")
    g.add_argument("--checkpoints", metavar="DIR", help="write runs stopped at 64 steps")
    p.add_argument("--resume", metavar="DIR", help="continue the runs of --checkpoints DIR")
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--dropped", nargs="*", default=["kl/rep"],
                   help="metric keys removed on purpose since the record (kl/rep: it logged "
                        "kl/dyn's value again)")
    args = p.parse_args(argv)
    from benchmarks.machine import commit, machine

    if args.checkpoints:
        out = Path(args.checkpoints)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            run_one(name, out, steps=64)
            print(f"{name}: checkpoint at 64 steps in {out / name}", flush=True)
        (out / "COMMIT").write_text(commit() + "\n")
        return 0
    base = Path(args.record or args.compare)
    resume = Path(args.resume) if args.resume else None
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rec = run_one(name, Path(tmp), resume)
            rec["commit"] = commit()
            rec["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            rec["machine"] = machine()
            if resume is not None:
                rec["checkpoints_from"] = (resume / "COMMIT").read_text().strip()
            kept = f"{name}-resumed" if resume is not None else name
            if args.record:
                base.mkdir(parents=True, exist_ok=True)
                (base / f"{kept}.json").write_text(json.dumps(rec, indent=0) + "\n")
                print(f"{name}: recorded {len(rec['metrics'])} metric rows, "
                      f"{len(rec['weights'])} tensors", flush=True)
                continue
            old = json.loads((base / f"{kept}.json").read_text())
            notes: list[str] = []
            worst, problems = _diff(old, rec, notes, tuple(args.dropped))
            ok = worst <= args.tolerance and not problems
            failed += not ok
            made = ", ".join(x for x in (old["commit"][:7], old.get("date"),
                                         old.get("machine", {}).get("cpu")) if x)
            print(f"{kept}: largest difference {worst:.3g} (recorded at {made})"
                  f"{'' if ok else ' FAIL'}" + "".join(f"\n  {x}" for x in [*problems, *notes]),
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
