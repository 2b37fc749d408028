"""The training loop: collect with a TorchRL ``Collector``, replay, learn at a fixed train ratio.

Reads like DreamerV3's ``run/train.py``::

    prefill with the random policy
    for each collected batch:
        add it to replay
        while replayed steps < train_ratio * env steps: one update on a replayed [B, T] batch
        every N steps: log, evaluate, write a video, checkpoint

The same command after a kill resumes from the last checkpoint with the replay on disk intact:
a kill costs at most one checkpoint interval of env steps and updates, and every log continues
from the checkpoint's step. SIGTERM, SIGINT (Ctrl-C) and ``train.warning_signal`` (SLURM's
pre-emption warning) stop the run cleanly instead: the update in flight finishes, a checkpoint is
written, the envs are closed, and the process exits 0 saying how to resume.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import envs
from agents import make_agent
from agents.acting import ActingModule, act_space_of, carry_primer, obs_space_of
from agents.dreamer import compile_mode
from agents.logger import Logger
from agents.run_dir import (
    CHECKPOINT_FILE,
    CheckpointError,
    check_checkpoint_config,
    load_checkpoint,
    prepare,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomic,
)
from worldrl.optim import check_schedule
from worldrl.replay import Replay
from worldrl.smoothing import make_smoother

#: When this process started (the CLI imports this module first): eval rows record the seconds
#: since then, so "solved within N minutes" can be read off eval.csv.
PROCESS_START = time.time()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; choose one of: auto, cpu, cuda")
    return torch.device(name)


def updates_due(step: int, t: DictConfig) -> int:
    """Updates owed after ``step`` env steps: ``train_ratio`` replayed steps (``B*T`` per update)
    per env step after ``prefill``, as DreamerV3 defines the train ratio."""
    return max(0, math.floor((step - t.prefill) * t.train_ratio / (t.batch_size * t.seq_len)))


def planned_updates(cfg: DictConfig) -> int:
    """The number of updates a run of ``cfg.steps`` env steps makes."""
    return updates_due(cfg.steps, cfg.train)


def agent_config(cfg: DictConfig) -> DictConfig:
    """The agent's own sub-config with its backbone sub-config merged in; ``agent.optim.anneal:
    null`` becomes the run's :func:`planned_updates` (what a ``linear`` or ``cosine`` learning-rate
    schedule anneals over)."""
    agent = OmegaConf.create(OmegaConf.to_container(cfg.agent, resolve=True))
    agent.backbone = OmegaConf.create(OmegaConf.to_container(cfg.backbone, resolve=True))
    optim = agent.get("optim")
    if optim is not None and "anneal" in optim and optim.anneal is None:
        # a run no longer than its warm-up never reaches the decay
        warmup = int(optim.get("warmup", 0))
        optim.anneal = max(planned_updates(cfg), warmup + 1)
    return agent


def build_env(env_cfg: DictConfig, seed: int | None, num_envs: int | None = None):
    return envs.make_env(
        env_cfg.suite, env_cfg.task, num_envs=num_envs or env_cfg.num_envs,
        parallel=env_cfg.parallel, seed=seed, options=OmegaConf.to_container(env_cfg.options),
    )


def build_agent(cfg: DictConfig, env, device: torch.device):
    obs_space = obs_space_of(env.observation_spec)
    act_space = act_space_of(env.action_spec)
    agent = make_agent(cfg.agent.name, obs_space, act_space, agent_config(cfg))
    return agent.to(device), list(obs_space)


def agent_state(agent) -> dict:
    state = {"model": agent.state_dict()}
    if hasattr(agent, "optim_state_dict"):
        state["optim"] = agent.optim_state_dict()
    return state


def load_agent_state(agent, state: dict) -> None:
    agent.load_state_dict(state["model"])
    if "optim" in state and hasattr(agent, "load_optim_state_dict"):
        agent.load_optim_state_dict(state["optim"])


def evaluate(agent, obs_keys, env, episodes: int, max_steps: int,
             sample: bool = False) -> list[float]:
    """Returns of ``episodes`` episodes with the policy's mode (``eval``), or sampled actions as
    in training with ``sample`` (DreamerV3's own evaluation samples), each capped at
    ``max_steps``. The env's copies play one episode each per round, side by side (one batched
    policy call per step; a copy whose episode ended stops stepping), for as many rounds as it
    takes; the first ``episodes`` returns are kept."""
    policy = ActingModule(agent, obs_keys, env.action_spec, mode="train" if sample else "eval")
    returns: list[float] = []
    while len(returns) < episodes:
        td = env.rollout(max_steps, policy, break_when_any_done=False, break_when_all_done=True,
                         auto_cast_to_device=True)
        td = td.reshape(-1, td.shape[-1])  # [copies, T]; a single env has no batch dims
        reward = td["next", "reward"].reshape(td.shape).float()
        done = td["next", "done"].reshape(td.shape).int()
        # a stopped copy repeats its last row: count only rows up to its first done
        ended = (done.cumsum(1) - done) > 0
        returns += reward.masked_fill(ended, 0.0).sum(1).tolist()
    return returns[:episodes]


def eval_copies(episodes: int, envs: int | None) -> int:
    """Env copies for evaluation: ``eval.envs``, or one per episode when unset (0 / None)."""
    return max(1, min(int(envs or episodes), int(episodes)))


#: the least value of each numeric key of a run (checked before anything touches the disk)
MINIMUM = {
    "seed": 0, "steps": 1, "train.train_ratio": 0, "train.prefill": 0, "train.batch_size": 1,
    "train.seq_len": 1, "train.steps_per_batch": 1, "train.log_every": 1,
    "train.video_every": 0, "train.checkpoint_every": 1, "train.threads": 0, "eval.every": 0,
    "eval.episodes": 1, "eval.envs": 0, "eval.max_steps": 1, "replay.capacity": 1,
    "env.num_envs": 1,
}  # fmt: skip


def stop_signal_names(cfg: DictConfig) -> list[str]:
    """SIGTERM and SIGINT, and ``train.warning_signal`` when set (``SIGUSR1``, ``USR1`` ...)."""
    names = ["SIGTERM", "SIGINT"]
    extra = cfg.train.get("warning_signal")
    if extra:
        name = str(extra).upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        valid = sorted(s.name for s in signal.Signals
                       if s.name not in ("SIGKILL", "SIGSTOP") and not s.name.startswith("SIGRT"))
        if name not in valid:
            raise ValueError(f"train.warning_signal {extra!r} is not a signal this system can "
                             f"catch; choose one of: {', '.join(valid)} (or null)")
        names.append(name)
    return names


def _check(cfg: DictConfig) -> None:
    """Validate every value before anything touches the disk."""
    envs.check_task(cfg.env.suite, cfg.env.task)
    resolve_device(cfg.device)
    t = cfg.train
    compile_mode(t.compile, "train.compile")
    for key, least in MINIMUM.items():
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if value < least:
            raise ValueError(f"{key} must be >= {least}, got {value}")
    stop_signal_names(cfg)
    r = cfg.replay
    Replay.check_args(r.capacity, cfg.env.num_envs, t.seq_len, r.sampler,
                      OmegaConf.to_container(r.dfs, resolve=True))
    make_smoother(r, cfg.env.num_envs)  # the smoothing mode, edge and parameters
    optim = cfg.agent.get("optim")
    if optim is not None and "schedule" in optim and "anneal" in optim:  # a LaProp agent
        try:  # the optimiser's own check, before the run directory exists
            check_schedule(optim.schedule, optim.get("warmup", 0), agent_config(cfg).optim.anneal)
        except ValueError as err:
            raise ValueError(f"agent.optim: {err}") from None


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the run described by ``cfg``; returns the final summary."""
    _check(cfg)
    device = resolve_device(cfg.device)
    env = build_env(cfg.env, seed=None)  # fails on a missing optional dependency before any I/O
    run_dir, resuming = prepare(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    try:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE) if resuming else None
        if ckpt:
            check_checkpoint_config(ckpt, cfg, run_dir / CHECKPOINT_FILE)
    except CheckpointError:
        env.close()
        raise
    counters = dict(ckpt["counters"]) if ckpt else {
        "env_steps": 0, "updates": 0, "episodes": 0, "last_eval": 0, "last_log": 0,
        "last_checkpoint": 0, "last_video": 0, "resumes": 0,
    }
    if ckpt and counters["env_steps"] >= cfg.steps:
        env.close()
        print(f"{run_dir} already trained for {counters['env_steps']} steps (steps={cfg.steps}); "
              "raise steps=... to train further")
        summary_file = run_dir / "summary.json"
        if summary_file.exists():
            return json.loads(summary_file.read_text())
        if "final_eval" not in ckpt:  # a checkpoint from before the summary was kept in it
            return counters
        summary = _summary(counters, ckpt["final_eval"], ckpt.get("replay_rows", 0))
        _write_summary(run_dir, summary)  # killed after the final checkpoint: write it now
        return summary
    if ckpt:
        counters["resumes"] += 1
    # a resumed run reseeds its envs: the episodes in flight at the kill are gone
    env.set_seed(cfg.seed + 1000 * counters["resumes"])
    agent, obs_keys = build_agent(cfg, env, device)
    agent.setup_update(amp=cfg.train.amp, compile=cfg.train.compile)
    env.append_transform(carry_primer(agent))
    eval_env = build_env(cfg.env, cfg.seed + 10_000 + counters["resumes"],
                         num_envs=eval_copies(cfg.eval.episodes, cfg.eval.envs))
    eval_env.append_transform(carry_primer(agent))

    t = cfg.train
    num_envs = cfg.env.num_envs
    replay = Replay(run_dir / "replay", cfg.replay.capacity, num_envs, t.batch_size, t.seq_len,
                    sampler=cfg.replay.sampler, seed=cfg.seed, reward_smoothing=cfg.replay,
                    dfs=OmegaConf.to_container(cfg.replay.dfs, resolve=True),
                    # this process's rows (not from the seeded RNGs: nothing else changes)
                    generation=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    if ckpt:
        try:
            load_agent_state(agent, ckpt["agent"])
        except (RuntimeError, KeyError, ValueError) as err:
            env.close()
            eval_env.close()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{run_dir / CHECKPOINT_FILE}: its weights do not fit this "
                                  f"run's agent ({first}); the file was left as it is") from None
        replay.load_state_dict(ckpt["replay"])
        set_rng_state(ckpt["rng"])
        print(f"resumed {run_dir} at env step {counters['env_steps']} "
              f"({counters['updates']} updates, {len(replay)} replay rows)")

    policy = ActingModule(agent, obs_keys, env.action_spec, mode="random")
    from torchrl.collectors import Collector

    collector = Collector(env, policy, frames_per_batch=num_envs * t.steps_per_batch,
                          total_frames=-1, auto_register_policy_transforms=False)
    logger = Logger(run_dir, start_step=counters["env_steps"])
    pbar = _progress(cfg, counters["env_steps"])
    stop = StopRequest(stop_signal_names(cfg))
    train_metrics: dict[str, list] = defaultdict(list)
    recent_returns: list[float] = []
    start_time, start_steps = time.time(), counters["env_steps"]
    # training wall-clock over every process of the run (eval.csv's wall_s): what earlier
    # processes had spent up to their last checkpoint, plus this process's time
    wall_before = float(counters.get("wall_s", 0.0))

    def wall() -> float:
        return wall_before + time.time() - PROCESS_START

    def checkpoint(**extra):
        logger.flush()  # the logs hold every row up to the checkpoint's step
        # saved with it: a resumed run's next checkpoint is one interval on, not at once
        counters["last_checkpoint"] = counters["env_steps"]
        counters["wall_s"] = wall()
        save_checkpoint(run_dir / CHECKPOINT_FILE, {
            "agent": agent_state(agent), "counters": counters, "replay": replay.state_dict(),
            "rng": rng_state(), "config": OmegaConf.to_container(cfg, resolve=True), **extra,
        })

    stopped = None
    try:
        stop.install()
        for batch in collector:
            counters["env_steps"] += batch.numel()
            step = counters["env_steps"]
            replay.add(batch)
            done = batch["next", "done"].reshape(-1)
            if done.any():
                rets = batch["next", "episode_reward"].reshape(-1)[done].tolist()
                lens = batch["next", "step_count"].reshape(-1)[done].tolist()
                for r, n in zip(rets, lens):
                    counters["episodes"] += 1
                    recent_returns.append(r)
                    logger.row("episodes", {"step": step, "episode": counters["episodes"],
                                            "return": r, "length": n})

            if step >= t.prefill and replay.ready():
                policy.mode = "train"
                due = updates_due(step, t)
                while counters["updates"] < due and not stop.signal:
                    data = replay.sample()
                    if device.type == "cuda":  # pinned: the copy runs beside the queued update
                        data = data.pin_memory().to(device, non_blocking=True)
                    else:
                        data = data.to(device)
                    for k, v in agent.train_step(data).items():
                        train_metrics[k].append(v)  # tensors: read once per log interval
                    counters["updates"] += 1

            if step - counters["last_log"] >= t.log_every:
                sps = (step - start_steps) / max(time.time() - start_time, 1e-9)
                row = {k: torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in v])
                           .mean().item() for k, v in train_metrics.items()}
                row.update({"env_steps_per_s": sps, "updates": counters["updates"],
                            "replay_rows": len(replay), "episodes": counters["episodes"]})
                if recent_returns:
                    row["episode/return"] = float(np.mean(recent_returns))
                logger.scalars(step, row)
                train_metrics.clear()
                counters["last_log"] = step
            if stop.signal and step < cfg.steps:  # checkpoint now: no video, no evaluation
                checkpoint()
                stopped = stop.signal
                break
            if t.video_every and step - counters["last_video"] >= t.video_every and replay.ready():
                _video(agent, replay, run_dir, step, device)
                counters["last_video"] = step
            if cfg.eval.every and step - counters["last_eval"] >= cfg.eval.every:
                _eval(agent, obs_keys, eval_env, cfg, logger, step, wall())
                counters["last_eval"] = step
            # the last checkpoint is the final one, after the final evaluation
            if step - counters["last_checkpoint"] >= t.checkpoint_every and step < cfg.steps:
                checkpoint()
            if pbar is not None:
                pbar.update(batch.numel())
                post = {"sps": f"{(step - start_steps) / max(time.time() - start_time, 1e-9):.0f}",
                        "upd": counters["updates"]}
                if recent_returns:
                    post["ret"] = f"{recent_returns[-1]:.1f}"
                pbar.set_postfix(post, refresh=False)
            recent_returns = recent_returns[-100:]
            if step >= cfg.steps:
                break
        if not stopped:
            final = _eval(agent, obs_keys, eval_env, cfg, logger, counters["env_steps"], wall())
            counters["last_eval"] = counters["env_steps"]
            checkpoint(final_eval=[float(x) for x in final], replay_rows=len(replay))
    finally:
        if not stopped:
            stop.restore()
        collector.shutdown()
        eval_env.close()
        if pbar is not None:
            pbar.close()
        logger.close()
    if stopped:
        print(f"stopped by {stopped} at env step {counters['env_steps']} "
              f"({counters['updates']} updates); checkpoint written to {run_dir / CHECKPOINT_FILE}."
              " Run the same command to resume.", flush=True)
        stop.restore()  # only now: a second SIGTERM during the shutdown above changes nothing
        return {"stopped": stopped, "env_steps": counters["env_steps"],
                "updates": counters["updates"], "run_dir": str(run_dir)}
    summary = _summary(counters, final, len(replay))
    _write_summary(run_dir, summary)
    return summary


def _summary(counters: dict, final: list[float], replay_rows: int) -> dict:
    return {
        "env_steps": counters["env_steps"], "updates": counters["updates"],
        "episodes": counters["episodes"], "replay_rows": replay_rows,
        "eval_return_mean": float(np.mean(final)), "eval_return_std": float(np.std(final)),
        "eval_episodes": len(final), "resumes": counters["resumes"],
    }


def _write_summary(run_dir: Path, summary: dict) -> None:
    text = json.dumps(summary, indent=1)
    write_atomic(run_dir / "summary.json", lambda tmp: tmp.write_text(text))


class StopRequest:
    """Catches the stop signals; the training loop polls :attr:`signal` (the first one's name),
    finishes the update in flight, checkpoints and returns. After the first signal a second
    Ctrl-C interrupts at once (the previous SIGINT handler); SIGTERM and the warning signal keep
    asking for the clean stop (SLURM sends SIGTERM after its warning signal)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread; the caller owns signals
        for name in self.names:
            sig = signal.Signals[name]
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = self.signal or signal.Signals(signum).name
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _progress(cfg, initial: int):
    if not cfg.train.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=initial, unit="step", dynamic_ncols=True,
                desc=f"{cfg.env.suite}/{cfg.env.task}")


def _eval(agent, obs_keys, eval_env, cfg, logger, step, wall_s: float) -> list[float]:
    returns = evaluate(agent, obs_keys, eval_env, cfg.eval.episodes, cfg.eval.max_steps,
                       sample=cfg.eval.sample)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    logger.row("eval", {"step": step, "return_mean": mean, "return_std": std,
                        "episodes": len(returns), "wall_s": wall_s})
    logger.scalars(step, {"eval/return": mean})
    return returns


def _video(agent, replay, run_dir: Path, step: int, device) -> None:
    """Open-loop diagnostics, one file per key that draws a picture: frames as a GIF
    (``videos/openloop-STEP-pixels.gif``), a single image as a PNG (``...-audio.png``)."""
    import imageio

    if not hasattr(agent, "diagnostics"):
        return
    pictures = agent.diagnostics(replay.sample(record=False).to(device))
    out = run_dir / "videos"
    for key, picture in pictures.items():
        out.mkdir(exist_ok=True)
        path = out / f"openloop-{step:08d}-{key}"
        if picture.ndim == 4:
            imageio.mimsave(path.with_suffix(".gif"), list(picture), duration=0.1)
        else:
            imageio.imwrite(path.with_suffix(".png"), picture)
