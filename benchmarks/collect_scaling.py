"""Env steps/s of training runs with 1, 2, ... collector worker processes (``env.collectors``).

    python -m benchmarks.collect_scaling                    # here: 1 and 2 collectors
    python -m benchmarks.collect_scaling --collectors 1 4 8 16 --out results/collect_scaling_gpu

Each measurement is a real ``worldrl train`` run (DreamerV3, size XS, batch 16 x 64, one env copy
per collector) on DMC vision ``cartpole_swingup`` (rendered with ``MUJOCO_GL=egl``) and Atari100k
``pong``, with the learner training at the same time at each train ratio asked for: the env
steps/s are measured over the training phase only (between the first metric row after
``--skip`` steps past the prefill and the last one, from ``metrics.jsonl``'s ``wall_s``), so
start-up and the random prefill are left out. At a fixed train ratio the learner's updates bound
the rate; worker processes help as far as stepping and rendering the envs ran in series with the
updates before. The settings are interleaved (each repetition runs every setting once, in turn).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import stamp, write_report

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"dmc": "cartpole_swingup", "atari100k": "pong"}


def measure(suite: str, collectors: int, ratio: int, steps: int, prefill: int, skip: int,
            device: str, workdir: Path) -> dict:
    run = workdir / f"{suite}-c{collectors}-r{ratio}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "agents.cli", "train", f"env={suite}",
           f"env.task={TASKS[suite]}", "size=xs", f"env.collectors={collectors}",
           f"train.train_ratio={ratio}", f"train.prefill={prefill}", f"steps={prefill + steps}",
           "train.log_every=64", "train.checkpoint_every=1000000", "eval.every=0",
           "eval.episodes=1", "eval.max_steps=10", "train.progress=false", f"device={device}",
           f"run_dir={run}"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    t = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "wall_s" in r and r["step"] >= prefill + skip]
    if len(rows) < 2:
        raise RuntimeError(f"{run}: fewer than two metric rows after step {prefill + skip}")
    a, b = rows[0], rows[-1]
    shutil.rmtree(run, ignore_errors=True)
    return {"suite": suite, "task": TASKS[suite], "collectors": collectors, "train_ratio": ratio,
            "env_steps": b["step"] - a["step"], "updates": b["updates"] - a["updates"],
            "seconds": b["wall_s"] - a["wall_s"],
            "env_steps_per_s": (b["step"] - a["step"]) / (b["wall_s"] - a["wall_s"]),
            "run_seconds": time.time() - t}


def markdown(report: dict) -> str:
    s = report["stamp"]
    lines = [
        "# Collection in worker processes: env steps/s while the learner trains",
        "",
        f"`{s['command']}` at commit `{s['commit']}`, {s['date']}, on {s['machine']['cpu']} "
        f"({s['machine']['cores']} cores, torch {s['machine']['torch']}, "
        f"GPU: {s['machine']['gpu'] or 'none'}). Load average at the start: "
        f"{s['machine']['loadavg_at_start']}.",
        "",
        "DreamerV3 size XS, batch 16 x 64, one env copy per collector, `train.compile=false`; env "
        f"steps/s over {report['steps']} training steps after a {report['prefill']}-step random "
        f"prefill (the first {report['skip']} training steps left out), medians over "
        f"{report['repeats']} interleaved repetition(s). `env.collectors=1` steps the envs in the "
        "learner's process between updates; N > 1 runs N TorchRL worker processes "
        "(asynchronous) while the learner trains.",
        "",
        "| suite | task | train ratio | collectors | env steps/s | updates/s | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["table"]:
        lines.append(f"| {row['suite']} | {row['task']} | {row['train_ratio']} | "
                     f"{row['collectors']} | {row['env_steps_per_s']:.1f} | "
                     f"{row['updates_per_s']:.2f} | {row['speedup']:.2f}x |")
    lines += ["", "Speed-up: against one collector at the same suite and train ratio."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--collectors", nargs="+", type=int, default=[1, 2])
    p.add_argument("--ratios", nargs="+", type=int, default=[64, 16])
    p.add_argument("--steps", type=int, default=1024, help="training steps measured per run")
    p.add_argument("--prefill", type=int, default=256)
    p.add_argument("--skip", type=int, default=128, help="training steps left out at the start")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/collect_scaling")
    args = p.parse_args(argv)
    report = {"stamp": stamp("python -m benchmarks.collect_scaling " + " ".join(
        sys.argv[1:] if argv is None else argv)), "steps": args.steps, "prefill": args.prefill,
        "skip": args.skip, "repeats": args.repeats, "runs": []}
    settings = [(s, r, c) for s in args.suites for r in args.ratios for c in args.collectors]
    with tempfile.TemporaryDirectory(prefix="collect_scaling-") as tmp:
        for rep in range(args.repeats):
            for suite, ratio, n in settings:
                m = measure(suite, n, ratio, args.steps, args.prefill, args.skip, args.device,
                            Path(tmp))
                m["repeat"] = rep
                report["runs"].append(m)
                print(json.dumps(m), flush=True)
    table = []
    for suite, ratio, n in settings:
        runs = [m for m in report["runs"] if (m["suite"], m["train_ratio"], m["collectors"])
                == (suite, ratio, n)]
        rate = sorted(m["env_steps_per_s"] for m in runs)[len(runs) // 2]
        ups = sorted(m["updates"] / m["seconds"] for m in runs)[len(runs) // 2]
        table.append({"suite": suite, "task": TASKS[suite], "train_ratio": ratio,
                      "collectors": n, "env_steps_per_s": rate, "updates_per_s": ups})
    for row in table:
        base = next(r for r in table if (r["suite"], r["train_ratio"]) ==
                    (row["suite"], row["train_ratio"]) and r["collectors"] == min(args.collectors))
        row["speedup"] = row["env_steps_per_s"] / base["env_steps_per_s"]
    report["table"] = table
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
