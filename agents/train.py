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
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import envs
from agents import collect, ddp, make_agent
from agents.acting import ActingModule, act_space_of, carry_primer, obs_space_of
from agents.dreamer import check_cuda_graph, compile_mode
from agents.logger import Logger
from agents.run_dir import (
    CHECKPOINT_FILE,
    CheckpointError,
    check_checkpoint_config,
    load_checkpoint,
    prepare,
    release,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomic,
)
from agents.stop import StopRequest, stop_request
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


def updates_due(step: int, t: DictConfig, ranks: int = 1) -> int:
    """Updates owed after ``step`` env steps: ``train_ratio`` replayed steps (``B*T`` per update
    and rank) per env step after ``prefill``, as DreamerV3 defines the train ratio."""
    return max(0, math.floor((step - t.prefill) * t.train_ratio
                             / (t.batch_size * ranks * t.seq_len)))


def planned_updates(cfg: DictConfig, ranks: int = 1) -> int:
    """The number of updates a run of ``cfg.steps`` env steps makes (on ``ranks`` ranks)."""
    return updates_due(cfg.steps, cfg.train, ranks)


def agent_config(cfg: DictConfig, ranks: int = 1) -> DictConfig:
    """The agent's own sub-config (a copy); ``agent.optim.anneal: null`` becomes the run's
    :func:`planned_updates` (what a ``linear`` or ``cosine`` learning-rate schedule anneals
    over)."""
    agent = OmegaConf.create(OmegaConf.to_container(cfg.agent, resolve=True))
    optim = agent.get("optim")
    if optim is not None and "anneal" in optim and optim.anneal is None:
        # a run no longer than its warm-up never reaches the decay
        warmup = int(optim.get("warmup", 0))
        optim.anneal = max(planned_updates(cfg, ranks), warmup + 1)
    return agent


def build_env(env_cfg: DictConfig, seed: int | None, num_envs: int | None = None):
    return envs.make_env(
        env_cfg.suite, env_cfg.task, num_envs=num_envs or env_cfg.num_envs,
        parallel=env_cfg.parallel, seed=seed, options=OmegaConf.to_container(env_cfg.options),
    )


def build_agent(cfg: DictConfig, env, device: torch.device, ranks: int = 1):
    obs_space = obs_space_of(env.observation_spec)
    act_space = act_space_of(env.action_spec)
    agent = make_agent(cfg.agent.name, obs_space, act_space, agent_config(cfg, ranks))
    return agent.to(device), list(obs_space)


def agent_state(agent) -> dict:
    state = {"model": agent.state_dict()}
    optim = agent.optim_state_dict()
    if optim is not None:
        state["optim"] = optim
    return state


def load_agent_state(agent, state: dict) -> None:
    agent.load_state_dict(state["model"])
    if "optim" in state:
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
    "env.num_envs": 1, "env.collectors": 1,
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
    collect.check(cfg.env)
    resolve_device(cfg.device)
    ddp.check(cfg)
    t = cfg.train
    mode = compile_mode(t.compile, "train.compile")
    check_cuda_graph(t.cuda_graph, resolve_device(cfg.device), mode, world=True if t.ddp else None,
                     name="train.cuda_graph")
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
    make_smoother(OmegaConf.to_container(r.smoothing, resolve=True), cfg.env.num_envs)
    optim = cfg.agent.get("optim")
    if optim is not None and "schedule" in optim and "anneal" in optim:  # a LaProp agent
        try:  # the optimiser's own check, before the run directory exists
            check_schedule(optim.schedule, optim.get("warmup", 0), agent_config(cfg).optim.anneal)
        except ValueError as err:
            raise ValueError(f"agent.optim: {err}") from None


@dataclass
class RunState:
    """The loop's counters, checkpointed as they are (the checkpoint's ``counters``)."""

    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    last_eval: int = 0
    last_log: int = 0
    last_checkpoint: int = 0
    last_video: int = 0
    resumes: int = 0
    wall_s: float = 0.0  # training wall-clock of the run's earlier processes, at the checkpoint

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def as_dict(self) -> dict:
        return asdict(self)


class Every:
    """Due when ``every`` env steps have passed since ``state.<last>`` (0: never); marks it."""

    def __init__(self, every: int, state: RunState, last: str):
        self.every, self.state, self.last = int(every), state, last

    def __call__(self, step: int) -> bool:
        if self.every <= 0 or step - getattr(self.state, self.last) < self.every:
            return False
        setattr(self.state, self.last, step)
        return True


class Ratio:
    """DreamerV3's train ratio: after ``step`` env steps, ``train_ratio`` replayed steps per env
    step past ``prefill`` are owed, ``batch_size * seq_len`` per update and rank
    (:func:`updates_due`)."""

    def __init__(self, t: DictConfig, ranks: int = 1):
        self.t, self.ranks = t, ranks

    def __call__(self, step: int) -> int:
        return updates_due(step, self.t, self.ranks)


class NullLogger:
    """The logger of a data-parallel rank other than 0: rank 0 writes every log."""

    def row(self, name: str, row: dict) -> None:
        pass

    def scalars(self, step: int, row: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Run:
    """Everything a run's loop touches, built by :func:`setup`; its methods are the loop's
    steps (collect, update, log, video, evaluate, checkpoint)."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    state: RunState
    env: Any
    eval_env: Any
    agent: Any
    obs_keys: list[str]
    replay: Replay
    policy: ActingModule
    world: ddp.World = field(default_factory=ddp.World)
    collector: Any = None
    logger: Logger | None = None
    pbar: Any = None
    stop: StopRequest | None = None
    train_metrics: dict = field(default_factory=lambda: defaultdict(list))
    recent_returns: list = field(default_factory=list)
    start_time: float = field(default_factory=time.time)
    start_steps: int = 0
    wall_before: float = 0.0  # what the run's earlier processes spent, up to their checkpoint
    agreed: dict = field(default_factory=dict)  # data-parallel: what the ranks agreed on

    def wall(self) -> float:
        """Training wall-clock over every process of the run (``eval.csv``'s ``wall_s``)."""
        return self.wall_before + time.time() - PROCESS_START

    def collect(self, batch) -> int:
        """Add the collector's batch to replay, log finished episodes; the new env step (over
        all ranks: they move in lockstep, one batch each). Data-parallel ranks agree here on
        the episodes, a stop request and whether replay is ready."""
        s = self.state
        s.env_steps += batch.numel() * self.world.size
        self.replay.add(batch, streams=collect.streams_of(batch))
        done = batch["next", "done"].reshape(-1)
        finished = []
        if done.any():
            finished = list(zip(batch["next", "episode_reward"].reshape(-1)[done].tolist(),
                                batch["next", "step_count"].reshape(-1)[done].tolist()))
        if self.world.parallel:
            shared = self.world.gather((finished, self.stop.signal, self.replay.ready()))
            finished = [e for f, _, _ in shared for e in f]
            self.agreed = {"stop": next((sig for _, sig, _ in shared if sig), None),
                           "ready": all(ready for _, _, ready in shared)}
        for r, n in finished:
            s.episodes += 1
            self.recent_returns.append(r)
            self.logger.row("episodes", {"step": s.env_steps, "episode": s.episodes,
                                         "return": r, "length": n})
        return s.env_steps

    def stopping(self) -> str | None:
        """The stop signal asked for (data-parallel: by any rank, as of the last batch)."""
        return self.agreed.get("stop") if self.world.parallel else self.stop.signal

    def ready(self) -> bool:
        """Replay can give a batch (data-parallel: on every rank)."""
        return self.agreed.get("ready", False) if self.world.parallel else self.replay.ready()

    def update(self, due: int) -> None:
        """Updates until ``due`` are done (or a stop is asked for)."""
        before = self.state.updates
        while self.state.updates < due and not self.stopping():
            data = self.replay.sample()
            if self.device.type == "cuda":  # pinned: the copy runs beside the queued update
                data = data.pin_memory().to(self.device, non_blocking=True)
            else:
                data = data.to(self.device)
            for k, v in self.agent.train_step(data).items():
                self.train_metrics[k].append(v)  # tensors: read once per log interval
            self.state.updates += 1
        if self.cfg.env.collectors > 1 and self.state.updates > before:
            self.collector.update_policy_weights_()  # the workers act with the new weights

    def steps_per_s(self) -> float:
        return (self.state.env_steps - self.start_steps) / max(time.time() - self.start_time,
                                                               1e-9)

    def log(self, step: int) -> None:
        row = {k: torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in v]).mean().item()
               for k, v in self.train_metrics.items()}
        row = self.world.mean(row)  # data-parallel: the mean over the ranks
        row.update({"env_steps_per_s": self.steps_per_s(), "wall_s": self.wall(),
                    "updates": self.state.updates,
                    "replay_rows": len(self.replay), "episodes": self.state.episodes})
        if self.recent_returns:
            row["episode/return"] = float(np.mean(self.recent_returns))
        self.logger.scalars(step, row)
        self.train_metrics.clear()

    def video(self, step: int) -> None:
        if self.world.main:
            _video(self.agent, self.replay, self.run_dir, step, self.device)

    def evaluate(self, step: int) -> list[float]:
        """Rank 0 evaluates (the others return ``[]``)."""
        if not self.world.main:
            return []
        return _eval(self.agent, self.obs_keys, self.eval_env, self.cfg, self.logger, step,
                     self.wall())

    def checkpoint(self, **extra) -> None:
        self.logger.flush()  # the logs hold every row up to the checkpoint's step
        # saved with it: a resumed run's next checkpoint is one interval on, not at once
        self.state.last_checkpoint = self.state.env_steps
        self.state.wall_s = self.wall()
        shards = self.world.gather({"replay": self.replay.state_dict(), "rng": rng_state()})
        if not self.world.main:
            return  # rank 0 writes every rank's replay position and RNG state
        ranks = {"world_size": self.world.size, "ranks": shards[1:]} if self.world.parallel else {}
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "agent": agent_state(self.agent), "counters": self.state.as_dict(),
            **shards[0], "config": OmegaConf.to_container(self.cfg, resolve=True), **ranks,
            **extra})

    def progress(self, batch) -> None:
        if self.pbar is not None:
            self.pbar.update(batch.numel() * self.world.size)
            post = {"sps": f"{self.steps_per_s():.0f}", "upd": self.state.updates}
            if self.recent_returns:
                post["ret"] = f"{self.recent_returns[-1]:.1f}"
            self.pbar.set_postfix(post, refresh=False)
        self.recent_returns[:] = self.recent_returns[-100:]

    def close(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()
        if self.eval_env is not None:
            self.eval_env.close()
        if self.pbar is not None:
            self.pbar.close()
        if self.logger is not None:
            self.logger.close()
        self.world.close()


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the run described by ``cfg``; returns the final summary. The run
    directory is locked to this process until it returns (:func:`agents.run_dir.lock`)."""
    try:
        return _train(cfg)
    finally:
        release(Path(cfg.run_dir))


def _train(cfg: DictConfig) -> dict:
    run = setup(cfg)
    if isinstance(run, dict):
        return run  # already trained
    s, t = run.state, cfg.train
    ratio = Ratio(t, run.world.size)
    log, video = Every(t.log_every, s, "last_log"), Every(t.video_every, s, "last_video")
    evaluate = Every(cfg.eval.every, s, "last_eval")
    save = Every(t.checkpoint_every, s, "last_checkpoint")
    stopped = None
    try:
        run.stop.start_loop()
        for batch in run.collector:
            step = run.collect(batch)
            if step >= t.prefill and run.ready():
                run.policy.mode = "train"
                run.update(ratio(step))
            if log(step):
                run.log(step)
            if run.stopping() and step < cfg.steps:  # checkpoint now: no video, no evaluation
                run.checkpoint()
                stopped = run.stopping()
                break
            if run.ready() and video(step):
                run.video(step)
            if evaluate(step) and step < cfg.steps:  # at the end: the final evaluation, below
                run.evaluate(step)
            if step < cfg.steps and save(step):  # the last checkpoint is the final one
                run.checkpoint()
            run.progress(batch)
            if step >= cfg.steps:
                break
        if not stopped:
            final = run.evaluate(s.env_steps)
            s.last_eval = s.env_steps
            run.checkpoint(final_eval=[float(x) for x in final], replay_rows=len(run.replay))
    finally:
        if not stopped:
            run.stop.restore()
        run.close()
    if stopped:
        if run.world.main:
            print(f"stopped by {stopped} at env step {s.env_steps} ({s.updates} updates); "
                  f"checkpoint written to {run.run_dir / CHECKPOINT_FILE}. Run the same command "
                  "to resume.", flush=True)
        run.stop.restore()  # only now: a second SIGTERM during the shutdown above changes nothing
        return {"stopped": stopped, "env_steps": s.env_steps, "updates": s.updates,
                "run_dir": str(run.run_dir)}
    if not run.world.main:
        return {"rank": run.world.rank, "env_steps": s.env_steps, "updates": s.updates}
    summary = _summary(s.as_dict(), final, len(run.replay))
    _write_summary(run.run_dir, summary)
    return summary


def setup(cfg: DictConfig) -> Run | dict:
    """Check ``cfg``, prepare the run directory, build the envs, agent and replay and restore a
    checkpoint: the :class:`Run` the loop drives, or the summary of a run already trained.
    Data-parallel (``train.ddp``, :mod:`agents.ddp`): every rank builds its own; rank 0 alone
    prepares the run directory and writes."""
    _check(cfg)
    world, device = ddp.init(cfg, resolve_device(cfg.device))
    rank = world.rank
    env = build_env(cfg.env, seed=None)  # fails on a missing optional dependency before any I/O
    try:
        run_dir, resuming = world.from_main(lambda: prepare(cfg))
    except Exception:
        env.close()
        world.close()
        raise
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)  # the same on every rank: the same initial weights
    np.random.seed(cfg.seed)
    try:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE) if resuming else None
        if ckpt:
            check_checkpoint_config(ckpt, cfg, run_dir / CHECKPOINT_FILE)
            if ckpt.get("world_size", 1) != world.size:
                raise CheckpointError(
                    f"{run_dir / CHECKPOINT_FILE} was trained by {ckpt.get('world_size', 1)} "
                    f"data-parallel process(es), not {world.size}: resume it with torchrun "
                    f"--nproc_per_node={ckpt.get('world_size', 1)} (the file was left as it is)")
    except CheckpointError:
        env.close()
        world.close()
        raise
    # this rank's replay position and RNG state (rank 0's are the checkpoint's own)
    shard = (ckpt if rank == 0 else ckpt["ranks"][rank - 1]) if ckpt else None
    state = RunState.from_dict(ckpt["counters"]) if ckpt else RunState()
    if ckpt and state.env_steps >= cfg.steps:
        env.close()
        world.close()
        return _already_trained(cfg, run_dir, ckpt, write=world.main)
    if ckpt:
        state.resumes += 1
    # a resumed run reseeds its envs: the episodes in flight at the kill are gone
    env_seed = cfg.seed + 1000 * state.resumes + ddp.RANK_SEED * rank
    env.set_seed(env_seed)
    agent, obs_keys = build_agent(cfg, env, device, world.size)
    if world.parallel:
        agent.setup_distributed(world)
    agent.setup_update(amp=cfg.train.amp, compile=cfg.train.compile,
                       cuda_graph=cfg.train.cuda_graph)
    env.append_transform(carry_primer(agent))
    eval_env = None
    if world.main:
        eval_env = build_env(cfg.env, cfg.seed + 10_000 + state.resumes,
                             num_envs=eval_copies(cfg.eval.episodes, cfg.eval.envs))
        eval_env.append_transform(carry_primer(agent))
    t = cfg.train
    num_envs = cfg.env.num_envs * cfg.env.collectors  # replay streams: every worker's copies
    replay = Replay(run_dir / ("replay" if rank == 0 else f"replay-rank{rank}"),
                    cfg.replay.capacity, num_envs, t.batch_size, t.seq_len,
                    sampler=cfg.replay.sampler, seed=cfg.seed + ddp.RANK_SEED * rank,
                    smoothing=OmegaConf.to_container(cfg.replay.smoothing, resolve=True),
                    dfs=OmegaConf.to_container(cfg.replay.dfs, resolve=True),
                    # this process's rows (not from the seeded RNGs: nothing else changes)
                    generation=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    if ckpt:
        try:
            load_agent_state(agent, ckpt["agent"])
        except (RuntimeError, KeyError, ValueError) as err:
            env.close()
            if eval_env is not None:
                eval_env.close()
            world.close()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{run_dir / CHECKPOINT_FILE}: its weights do not fit this "
                                  f"run's agent ({first}); the file was left as it is") from None
        replay.load_state_dict(shard["replay"])
        set_rng_state(shard["rng"])
        if world.main:
            print(f"resumed {run_dir} at env step {state.env_steps} "
                  f"({state.updates} updates, {len(replay)} replay rows)")
    elif rank:
        torch.manual_seed(cfg.seed + ddp.RANK_SEED * rank)  # the ranks' own sampling noise
        np.random.seed(cfg.seed + ddp.RANK_SEED * rank)
    world.broadcast_module(agent)  # rank 0's weights everywhere, whatever happened above
    policy = ActingModule(agent, obs_keys, env.action_spec, mode="random")
    run = Run(cfg, run_dir, device, state, env, eval_env, agent, obs_keys, replay, policy,
              world=world, start_steps=state.env_steps, wall_before=state.wall_s)
    run.collector = collect.make_collector(env, policy, cfg, env_seed, carry_primer(agent))
    run.logger = Logger(run_dir, start_step=state.env_steps) if world.main else NullLogger()
    run.pbar = _progress(cfg, state.env_steps) if world.main else None
    run.stop = stop_request(stop_signal_names(cfg))  # caught since start-up when by the CLI
    run.start_time = time.time()
    return run


def _already_trained(cfg: DictConfig, run_dir: Path, ckpt: dict, write: bool = True) -> dict:
    counters = ckpt["counters"]
    if not write:  # a data-parallel rank other than 0
        return counters
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

    pictures = agent.diagnostics(replay.sample(record=False).to(device))
    out = run_dir / "videos"
    for key, picture in pictures.items():
        out.mkdir(exist_ok=True)
        path = out / f"openloop-{step:08d}-{key}"
        if picture.ndim == 4:
            imageio.mimsave(path.with_suffix(".gif"), list(picture), duration=0.1)
        else:
            imageio.imwrite(path.with_suffix(".png"), picture)
