"""Env steps/s through TorchRL's Collector with a random policy, per suite.

    python -m benchmarks.throughput            # writes results/throughput_cpu.{json,md}

Measures the data path of issue 2 (env + wrapper + collector + acting module + replay write),
not learning. Each suite runs with 1 env (in-process) and 2 envs (``ParallelEnv``, subprocesses).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402

import envs  # noqa: E402
from agents.acting import ActingModule, act_space_of, carry_primer, obs_space_of  # noqa: E402
from agents.random_agent import RandomAgent  # noqa: E402
from benchmarks.machine import stamp  # noqa: E402
from worldrl.replay import Replay  # noqa: E402

CASES = [
    ("Atari100k (pong, pixels)", "atari100k", "pong"),
    ("DMC vision (walker_walk, pixels)", "dmc", "walker_walk"),
    ("DMC proprio (walker_walk, vector)", "dmc_proprio", "walker_walk"),
    ("CartPole-v1 (vector)", "gym", "CartPole-v1"),
]


def measure(suite: str, task: str, num_envs: int, steps: int) -> dict:
    env = envs.make_env(suite, task, num_envs=num_envs, parallel=num_envs > 1, seed=0)
    obs_space = obs_space_of(env.observation_spec)
    agent = RandomAgent(obs_space, act_space_of(env.action_spec))
    env.append_transform(carry_primer(agent))
    policy = ActingModule(agent, list(obs_space), env.action_spec, mode="random")
    per_batch = 64 * num_envs
    collector = Collector(env, policy, frames_per_batch=per_batch, total_frames=-1,
                          auto_register_policy_transforms=False)
    tmp = tempfile.mkdtemp()
    replay = Replay(tmp, 100_000, num_envs, batch_size=1, seq_len=1)
    done, t0 = 0, None
    for batch in collector:
        replay.add(batch)
        if t0 is None:  # first batch: warm-up (process start, first reset)
            t0 = time.perf_counter()
            continue
        done += batch.numel()
        if done >= steps:
            break
    elapsed = time.perf_counter() - t0
    collector.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"suite": suite, "task": task, "num_envs": num_envs, "steps": done,
            "seconds": elapsed, "env_steps_per_s": done / elapsed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="timed env steps per case")
    p.add_argument("--out", default="results/throughput_cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for label, suite, task in CASES:
        for n in (1, 2):
            r = measure(suite, task, n, args.steps)
            r["label"] = label
            rows.append(r)
            print(f"{label:36s} envs={n}  {r['env_steps_per_s']:8.1f} env steps/s", flush=True)
    report = {**stamp("python -m benchmarks.throughput " + " ".join(sys.argv[1:])),
              "what": "env steps/s (agent steps, after action repeat) through Collector + "
                      "random acting module + replay write; first batch excluded",
              "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    m = report["machine"]
    lines = [
        "# Env throughput through the collector (CPU)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, torchrl "
        f"{m.get('torchrl')}. Commit `{report['commit']}`, {report['date']}. Load average at "
        f"start: {m['loadavg_at_start']}.",
        f"Command: `{report['command']}`. {report['what']}.", "",
        "| env | envs | env steps/s |", "|---|---:|---:|",
    ]
    lines += [f"| {r['label']} | {r['num_envs']} | {r['env_steps_per_s']:.0f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
