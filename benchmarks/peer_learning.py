"""sheeprl 0.8.4's DreamerV3 trained at the learning study's settings, in a run directory that
``worldrl report`` reads beside ours.

    python -m benchmarks.peer_learning RUN_DIR --suite atari100k --task boxing --seed 0
    python -m benchmarks.peer_learning RUN_DIR --suite dmc_proprio --task cartpole_swingup \\
        --steps 50000 --train-ratio 128 --eval-every 5000 --threads 1

``benchmarks.learning`` starts it for the study's peer runs. What it does:

1. Makes sheeprl's virtual environment (``benchmarks.peer_speed.ensure_venv``) and adds the
   environment packages at our versions (``ale-py``, ``dm-control``, ``mujoco``).
2. Trains with sheeprl's own command line (``sheeprl exp=...``) in ``RUN_DIR/sheeprl``: its
   ``dreamer_v3_5`` (the DreamerV3 we implement) with our XS dimensions (deter 256, hidden 128,
   8 x 8 latent, 128 units, CNN multiplier 8: its layer graph keeps stride-1 convolutions with
   max-pooling, which no option changes), our budget in agent steps (sheeprl's ``policy_step``),
   our train ratio as its ``replay_ratio`` (ratio / (16 x 64) gradient steps per policy step),
   batch 16 x 64, 1,000 random steps first, one environment, our thread count, and the study's
   learning rate and warm-up (``--lr``, ``--warmup``: its LaProp is ours). Everything else
   is sheeprl's recipe as it ships it (``replay_context: 1``, the online queue of the Atari
   experiment). A checkpoint every ``--checkpoint-every`` steps, all kept.
3. Resumable: a new start resumes from the newest checkpoint (sheeprl's
   ``checkpoint.resume_from``, replay buffer included). sheeprl has no clean stop: SIGTERM ends
   it, and the steps after its last checkpoint are played again. The wall-clock of a checkpoint
   counts only the time that led to it: ``segments.jsonl`` holds each start and the time it
   resumed from.
4. When training is done, evaluates the checkpoints at every ``--eval-every`` steps as worldrl
   evaluates (10 episodes, the policy's mode; ``benchmarks/sheeprl_eval.py`` in sheeprl's
   environment) into ``eval.csv`` (``step,return_mean,return_std,episodes,wall_s``); the training
   episodes go to ``episodes.csv`` as sheeprl prints them; ``config.yaml`` names the method
   (``sheeprl-dreamer_v3_5-xs_dims``) and ``summary.json`` marks the run finished. Our runs'
   ``wall_s`` include their evaluations, done in the loop; sheeprl's do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks.peer_speed import DEFAULT_VENV, ensure_venv, peer_python

REPO = Path(__file__).resolve().parents[1]
ENV_PACKAGES = ("ale-py", "dm-control", "mujoco")
#: our XS dimensions in sheeprl's dreamer_v3_5 keys (worldrl/configs/size/xs.yaml)
XS_DIMS = ("algo.dense_units=128", "algo.cnn_channels_multiplier=8",
           "algo.world_model.discrete_size=8", "algo.world_model.stochastic_size=8",
           "algo.world_model.recurrent_model.recurrent_state_size=256",
           "algo.world_model.recurrent_model.hidden_size=128")
SUITES = ("atari100k", "dmc_proprio")
EPISODE = re.compile(r"policy_step=(\d+), reward_env_0=([-+0-9.eE]+|nan)")


def atari_id(task: str) -> str:
    """``road_runner`` -> ``RoadRunnerNoFrameskip-v4`` (no sticky actions, as Atari100k)."""
    return "".join(w.capitalize() for w in task.split("_")) + "NoFrameskip-v4"


def sheeprl_overrides(suite: str, task: str, seed: int, steps: int, train_ratio: float,
                      checkpoint_every: int, threads: int, prefill: int = 1000,
                      batch: int = 16, seq_len: int = 64, lr: float | None = None,
                      warmup: int | None = None) -> list[str]:
    """sheeprl's command-line overrides for one run at the study's settings; ``lr`` and
    ``warmup`` set its optimiser's (LaProp, as ours; None keeps sheeprl's 4e-5 and 1,000)."""
    if suite == "atari100k":
        env = ["exp=dreamer_v3_5_100k_ms_pacman", f"env.id={atari_id(task)}"]
    elif suite == "dmc_proprio":
        domain, _, name = task.partition("_")
        env = ["exp=dreamer_v3_5_dmc_walker_walk", "env.num_envs=1", "env.action_repeat=2",
               f"env.wrapper.domain_name={domain}", f"env.wrapper.task_name={name}",
               "env.wrapper.from_vectors=True", "env.wrapper.from_pixels=False",
               "algo.cnn_keys.encoder=[]", "algo.mlp_keys.encoder=[state]",
               "buffer.size=1000000"]
    else:
        raise ValueError(f"suite {suite!r}: the peer runs on one of {list(SUITES)}")
    return [*env, *XS_DIMS, "env.capture_video=False", f"seed={seed}",
            f"algo.total_steps={steps}", f"algo.learning_starts={prefill}",
            f"algo.replay_ratio={train_ratio / (batch * seq_len)}",
            f"algo.per_rank_batch_size={batch}", f"algo.per_rank_sequence_length={seq_len}",
            "algo.run_test=False", f"checkpoint.every={checkpoint_every}",
            "checkpoint.keep_last=1000", "buffer.checkpoint=True", "metric.log_every=1000",
            "fabric.accelerator=cpu", "fabric.devices=1", "fabric.precision=32-true",
            *([f"algo.optimizer.lr={lr}"] if lr is not None else []),
            *([f"algo.optimizer.warmup={warmup}"] if warmup is not None else []),
            *([f"num_threads={threads}"] if threads else [])]


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> the newest checkpoint of that step (a later segment's over an earlier one's)."""
    found: dict[int, tuple[int, Path]] = {}
    for ckpt in (run_dir / "sheeprl").glob("run/version_*/checkpoint/ckpt_*_0.ckpt"):
        version = int(ckpt.parents[1].name.split("_")[1])
        step = int(ckpt.name.split("_")[1])
        if step not in found or found[step][0] < version:
            found[step] = (version, ckpt)
    return {s: p for s, (_, p) in sorted(found.items())}


def _segments(run_dir: Path) -> list[dict]:
    path = run_dir / "segments.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_wall(run_dir: Path, ckpt: Path) -> float:
    """Seconds of training that led to ``ckpt``: the segment that wrote it, since its start,
    plus what it resumed from (time after an earlier segment's last checkpoint is not counted)."""
    t = ckpt.stat().st_mtime
    mine = [s for s in _segments(run_dir) if s["start"] <= t]
    if not mine:
        raise RuntimeError(f"{ckpt} is older than every segment in {run_dir}/segments.jsonl")
    seg = mine[-1]
    return seg["base_wall"] + t - seg["start"]


def ensure_env_packages(python: Path, log=print) -> None:
    """ale-py, dm-control and mujoco at our versions in sheeprl's environment."""
    want = [f"{name}=={metadata.version(name)}" for name in ENV_PACKAGES]
    check = "import ale_py, dm_control, mujoco"
    if subprocess.run([str(python), "-I", "-c", check], capture_output=True).returncode == 0:
        return
    log(f"sheeprl environment: pip install {' '.join(want)}")
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *want],
                   check=True)


def _write_csv_rows(path: Path, header: str, rows: list[str]) -> None:
    from agents.run_dir import write_atomic

    text = "\n".join([header, *rows]) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _cut_episodes(path: Path, step: int) -> None:
    """Drop training episodes after ``step`` (a killed segment's, played again on resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [r for r in lines[1:] if r and int(r.split(",")[0]) <= step]
    _write_csv_rows(path, lines[0], keep)


def train(run_dir: Path, args, python: Path) -> int:
    """Train (or resume) until sheeprl exits; 0 when it reached the budget."""
    ckpts = checkpoints(run_dir)
    done = max(ckpts, default=0)
    if done >= args.steps:
        return 0
    segs = _segments(run_dir)
    base = 0.0
    if ckpts:
        base = checkpoint_wall(run_dir, ckpts[done])
    episodes = run_dir / "episodes.csv"
    _cut_episodes(episodes, done)
    if not episodes.exists():
        episodes.write_text("step,episode,return,length\n")
    n_ep = len(episodes.read_text().splitlines()) - 1
    cmd = [str(python.parent / "sheeprl"),
           *sheeprl_overrides(args.suite, args.task, args.seed, args.steps, args.train_ratio,
                              args.checkpoint_every, args.threads, lr=args.lr,
                              warmup=args.warmup),
           f"root_dir={run_dir / 'sheeprl'}", "run_name=run", f"hydra.run.dir={run_dir / 'hydra'}",
           *([f"checkpoint.resume_from={ckpts[done]}"] if ckpts else [])]
    start = time.time()
    with open(run_dir / "segments.jsonl", "a") as f:
        f.write(json.dumps({"start": start, "base_wall": base, "resumed_from": done,
                            "segment": len(segs), "command": cmd}) + "\n")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "PYTHONUNBUFFERED": "1",
           **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    print(("resuming" if ckpts else "starting") + f" sheeprl at step {done}", flush=True)
    proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stop = {"signal": None}

    def _stop(signum, _frame):
        stop["signal"] = signal.Signals(signum).name
        proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open(episodes, "a") as ep_file:
            for line in proc.stdout:
                sys.stdout.write(line)
                m = EPISODE.search(line)
                if m:
                    n_ep += 1
                    ep_file.write(f"{m.group(1)},{n_ep},{m.group(2)},\n")
                    ep_file.flush()
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop["signal"]:
        last = max(checkpoints(run_dir), default=0)
        print(f"stopped by {stop['signal']}: sheeprl resumes from its checkpoint at step {last} "
              "(the steps after it are played again). Run the same command to resume.",
              flush=True)
        return -1
    return rc


def evaluate(run_dir: Path, args, python: Path) -> list[dict]:
    """Evaluate the checkpoints at every ``eval_every`` steps not in ``eval.csv`` yet."""
    path = run_dir / "eval.csv"
    header = "step,return_mean,return_std,episodes,wall_s"
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    have = {int(float(r.split(",")[0])) for r in rows if r}
    ckpts = checkpoints(run_dir)
    steps = [s for s in ckpts if s % args.eval_every == 0 or s == args.steps]
    todo = [s for s in steps if s not in have]
    if todo:
        cmd = [str(python), "-I", str(REPO / "benchmarks" / "sheeprl_eval.py"),
               *(str(ckpts[s]) for s in todo), "--episodes", str(args.episodes),
               "--max-steps", str(args.max_steps)]
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
               **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=run_dir)
        if out.returncode != 0:
            sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
            raise SystemExit(f"evaluating sheeprl's checkpoints failed (exit {out.returncode})")
        for line in out.stdout.splitlines():
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            ret = r["returns"]
            std = statistics.pstdev(ret) if len(ret) > 1 else 0.0
            rows.append(f"{r['step']},{statistics.fmean(ret)},{std},{len(ret)},"
                        f"{checkpoint_wall(run_dir, Path(r['checkpoint']))}")
            print(f"eval step {r['step']}: {statistics.fmean(ret):.1f}", flush=True)
    rows.sort(key=lambda r: float(r.split(",")[0]))
    _write_csv_rows(path, header, rows)
    return [dict(zip(header.split(","), map(float, r.split(",")))) for r in rows]


def write_config(run_dir: Path, args) -> None:
    """A config.yaml in worldrl's keys, so that ``worldrl report`` names and groups the run."""
    cfg = {"env": {"suite": args.suite, "task": args.task},
           "agent": {"name": "sheeprl", "size": {"name": "xs_dims"}},
           "backbone": {"name": "dreamer_v3_5"}, "seed": args.seed, "steps": args.steps,
           "train": {"train_ratio": args.train_ratio, "batch_size": 16, "seq_len": 64,
                     "prefill": 1000, "threads": args.threads},
           "eval": {"every": args.eval_every, "episodes": args.episodes,
                    "max_steps": args.max_steps},
           "peer": {"package": "sheeprl==0.8.4", "algo": "dreamer_v3_5",
                    "overrides": " ".join(sheeprl_overrides(
                        args.suite, args.task, args.seed, args.steps, args.train_ratio,
                        args.checkpoint_every, 0, lr=args.lr, warmup=args.warmup))}}
    optim = {k: v for k, v in (("lr", args.lr), ("warmup", args.warmup)) if v is not None}
    if optim:  # named as ours are, so that the report's cells tell the two settings apart
        cfg["agent"]["optim"] = optim
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50000, help="agent steps")
    p.add_argument("--train-ratio", type=float, default=64)
    p.add_argument("--eval-every", type=int, default=10000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=27000, help="cap per evaluation episode")
    p.add_argument("--checkpoint-every", type=int, default=2500)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lr", type=float, default=None,
                   help="LaProp's learning rate (default: sheeprl's, 4e-5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up updates of the learning rate (default: sheeprl's, 1000)")
    p.add_argument("--venv", default=str(DEFAULT_VENV))
    args = p.parse_args(argv)
    if args.checkpoint_every <= 0 or args.eval_every % args.checkpoint_every:
        raise SystemExit(f"--eval-every {args.eval_every} must be a multiple of "
                         f"--checkpoint-every {args.checkpoint_every} (the evaluated checkpoints)")
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_venv(args.venv)
    python = peer_python(args.venv)
    ensure_env_packages(python)
    write_config(run_dir, args)
    rc = train(run_dir, args, python)
    if rc == -1:
        return 0  # stopped: resumes next time
    if rc != 0:
        raise SystemExit(f"sheeprl exited with {rc}; its output is above")
    evals = evaluate(run_dir, args, python)
    final = evals[-1]
    summary = {"env_steps": int(final["step"]), "eval_return_mean": final["return_mean"],
               "eval_return_std": final["return_std"], "eval_episodes": int(final["episodes"]),
               "wall_s": final["wall_s"], "resumes": len(_segments(run_dir)) - 1}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
