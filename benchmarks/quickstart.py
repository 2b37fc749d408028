"""The README's default job, measured: DreamerV3 (size XS) on CartPole-v1, several seeds.

    python -m benchmarks.quickstart                 # seeds 0 1 2 -> results/quickstart_cartpole.*
    python -m benchmarks.quickstart --seeds 100 101 102 103 104 --parallel 2 \
        --out results/quickstart_heldout train.threads=1   # seeds never used for tuning

Each seed runs the default command exactly as the README gives it (``worldrl train``, with only
``seed`` and ``run_dir`` added) in a subprocess, one after the other (``--parallel N``: N at a
time, each best given ``train.threads=1``), and is timed from process start to exit (start-up,
collection, updates, evaluations and checkpoints included). The target: mean evaluation return
>= 475 over 10 episodes within 20k env steps and 20 minutes. Seeded runs give the same returns
however many run side by side; only the minutes depend on it. Each seed's final checkpoint is
then evaluated again, greedy and with sampled actions (DreamerV3's and sheeprl's evaluation
policy), on the same episode seeds (``worldrl eval RUN [--sample]``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import speed_note, stamp

ROOT = Path(__file__).resolve().parents[1]


def start_seed(seed: int, run_root: Path, extra: list[str],
               resume: bool = False) -> tuple[subprocess.Popen, float]:
    run_dir = run_root / f"s{seed}"
    if run_dir.exists() and not resume:  # the same command would resume that run
        raise SystemExit(f"{run_dir} exists: pass a new --runs directory, or --resume to go on "
                         "with the runs there")
    cmd = [sys.executable, "-m", "agents.cli", "train", f"seed={seed}", f"run_dir={run_dir}",
           "train.progress=false", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, time.time()


def checkpoint_evals(run_dir: Path) -> dict:
    """The run's final checkpoint evaluated again with ``worldrl eval`` on the same episode
    seeds both ways: the policy's mode (``greedy``, as the in-loop evaluations play) and
    sampled actions (``sampled``, as DreamerV3 and sheeprl evaluate). A result already beside
    the checkpoint at its step is read, not evaluated again. One torch thread each."""
    from agents.evaluate import evaluate_again  # torch: only where a run is evaluated

    out = {}
    for mode, sample in (("greedy", False), ("sampled", True)):
        result, _, err = evaluate_again(run_dir, sample, threads=1)
        if result is None:
            raise RuntimeError(f"worldrl eval {run_dir}{' --sample' * sample} failed:\n{err}")
        out[mode] = {"return_mean": result["return_mean"], "return_std": result["return_std"]}
    return out


def finish_seed(seed: int, run_root: Path, proc: subprocess.Popen, started: float,
                resumed: bool = False) -> dict:
    _, err = proc.communicate()
    wall = time.time() - started
    run_dir = run_root / f"s{seed}"
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} failed:\n{err[-3000:]}")
    with open(run_dir / "eval.csv") as f:
        evals = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    summary = json.loads((run_dir / "summary.json").read_text())
    first = next((e for e in evals if e["return_mean"] >= 475), None)
    return {"seed": seed, "wall_s": None if resumed else wall, "resumed": resumed,
            "final_eval_mean": summary["eval_return_mean"],
            "final_eval_std": summary["eval_return_std"], "env_steps": summary["env_steps"],
            "updates": summary["updates"],
            "first_step_eval_ge_475": None if first is None else int(first["step"]),
            "first_wall_s_eval_ge_475": None if first is None else first["wall_s"],
            "evals": evals, "run_dir": str(run_dir), "resumes": summary.get("resumes", 0),
            "checkpoint_eval": checkpoint_evals(run_dir)}


def seconds(r: dict) -> float:
    """A seed's wall-clock: its process's, or for a resumed seed its training's over processes."""
    return r["evals"][-1]["wall_s"] if r["wall_s"] is None else r["wall_s"]


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        x = [e["step"] for e in r["evals"]]
        y = [e["return_mean"] for e in r["evals"]]
        ax.plot(x, y, "o-", label=f"seed {r['seed']} ({seconds(r) / 60:.1f} min)")
    ax.axhline(475, color="gray", ls="--", label="475")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (mean of 10)")
    ax.set_title("DreamerV3 XS on CartPole-v1 (worldrl train), CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(rows: list[dict], args, out: Path) -> None:
    solved = sum(r["first_step_eval_ge_475"] is not None and r["first_step_eval_ge_475"] <= 20000
                 and r["first_wall_s_eval_ge_475"] <= 1200 for r in rows)
    final_ok = sum(r["final_eval_mean"] >= 475 for r in rows)
    within_steps = sum(r["first_step_eval_ge_475"] is not None
                       and r["first_step_eval_ge_475"] <= 20000 for r in rows)
    again = {mode: sum(r["checkpoint_eval"][mode]["return_mean"] >= 475 for r in rows)
             for mode in ("greedy", "sampled")}
    report = {**stamp("python -m benchmarks.quickstart " + " ".join(args.argv)),
              "target": "an evaluation (mean return of 10 episodes) >= 475 within 20k env steps "
                        "and 20 minutes of wall clock from process start",
              "seeds_meeting_target": solved, "seeds_final_eval_ge_475": final_ok,
              "seeds_eval_ge_475_within_20k_steps": within_steps,
              "seeds_final_checkpoint_ge_475": again,
              "seeds": len(rows), "seeds_asked": len(args.seeds), "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(rows, out.with_suffix(".png"))
    m = report["machine"]
    done = "" if len(rows) == len(args.seeds) else (
        f" **Unfinished: {len(rows)} of the {len(args.seeds)} seeds asked for so far.**")
    lines = [
        "# Quickstart: DreamerV3 XS on CartPole-v1 (the README's default job)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores{speed_note(m)}; torch {m['torch']}. "
        "Commit "
        f"`{report['commit']}`, {report['date']}. Command: `{report['command']}`.", "",
        f"Seeds run {args.parallel} at a time.{done}", "",
        f"Target: {report['target']}. Met by **{solved} of {len(rows)}** seeds. An evaluation "
        f">= 475 within 20k env steps (whatever the minutes): {within_steps} of {len(rows)}. The "
        f"final evaluation (after 20k steps) is >= 475 for {final_ok} of {len(rows)}.", "",
        "The final checkpoint evaluated again (`worldrl eval RUN [--sample]`, 10 episodes on "
        "other episode seeds than the in-loop evaluations, the same for both ways): >= 475 "
        f"for {again['greedy']} of {len(rows)} playing the policy's mode (greedy, as the "
        f"in-loop evaluations), for {again['sampled']} of {len(rows)} sampling its actions (as "
        "DreamerV3 and sheeprl evaluate).", "",
        "| seed | first eval >= 475: step | ... minutes | final eval (10 ep) | all evals | "
        "final checkpoint again: greedy / sampled | updates | whole run |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        first_min = ("-" if r["first_wall_s_eval_ge_475"] is None
                     else f"{r['first_wall_s_eval_ge_475'] / 60:.1f}")
        curve = ", ".join(f"{e['return_mean']:.0f}" for e in r["evals"])
        whole = (f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] is not None else
                 f"resumed: {r['evals'][-1]['wall_s'] / 60:.1f} min of training over "
                 f"{r['resumes'] + 1} process(es)")
        again_row = " / ".join(f"{r['checkpoint_eval'][mode]['return_mean']:.1f}"
                               for mode in ("greedy", "sampled"))
        lines.append(f"| {r['seed']} | {r['first_step_eval_ge_475'] or '-'} | {first_min} | "
                     f"{r['final_eval_mean']:.1f} +- {r['final_eval_std']:.1f} | {curve} | "
                     f"{again_row} | {r['updates']} | {whole} |")
    if any(r["resumed"] for r in rows):
        lines += ["", "A resumed seed's minutes are its training wall-clock summed over its "
                  "processes up to each checkpoint (the time lost after the last checkpoint is "
                  "not in them); it reseeds its environments at each resume."]
    lines += ["", f"![curves]({out.with_suffix('.png').name})"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default=None,
                   help="where the runs go (default: runs/quickstart-bench/DATE-TIME, new)")
    p.add_argument("--resume", action="store_true",
                   help="go on with the runs in --runs: existing run directories are resumed "
                        "(or read, when finished)")
    p.add_argument("--out", default="results/quickstart_cartpole")
    p.add_argument("--parallel", type=int, default=1, help="seeds run side by side")
    p.add_argument("extra", nargs="*", help="extra overrides (the README job uses none)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.parallel < 1:
        raise SystemExit(f"--parallel must be >= 1, got {args.parallel}")
    if args.resume and not args.runs:
        raise SystemExit("--resume needs --runs DIR: the directory of the runs to go on with")
    runs = ROOT / (args.runs or time.strftime("runs/quickstart-bench/%Y%m%d-%H%M%S"))
    if not args.resume:  # refuse before anything runs, not at the first existing seed
        taken = [s for s in args.seeds if (runs / f"s{s}").exists()]
        if taken:
            raise SystemExit(f"{runs} has runs of seeds {taken}: pass a new --runs directory, "
                             "or --resume to go on with them")
    out = ROOT / args.out
    rows = []
    pending = list(args.seeds)
    while pending:
        batch, pending = pending[:args.parallel], pending[args.parallel:]
        started = [(seed, (runs / f"s{seed}").exists(), *start_seed(seed, runs, args.extra,
                                                                   args.resume))
                   for seed in batch]
        for seed, resumed, proc, t in started:
            r = finish_seed(seed, runs, proc, t, resumed)
            print(f"seed {seed}: final eval {r['final_eval_mean']:.1f} +- "
                  f"{r['final_eval_std']:.1f}, first >= 475 at {r['first_step_eval_ge_475']}, "
                  f"{seconds(r) / 60:.1f} min{' (resumed)' if resumed else ''}", flush=True)
            rows.append(r)
            write_report(rows, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
