"""``worldrl eval CHECKPOINT``: rebuild the run's env and agent from the checkpoint and evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from agents.acting import carry_primer
from agents.run_dir import CheckpointError, load_checkpoint, upgrade_config
from agents.train import (
    build_agent,
    build_env,
    eval_copies,
    evaluate,
    load_agent_state,
    resolve_device,
)


def read_checkpoint(path: str | Path):
    """A checkpoint and its run's config in today's layout: ``(payload, cfg)``."""
    payload = load_checkpoint(path)
    if "config" not in payload:
        raise CheckpointError(f"{path} has no config entry")
    return payload, upgrade_config(payload["config"])


def trained_agent(path: str | Path, payload: dict, cfg, seed: int, num_envs: int = 1,
                  device: torch.device | None = None):
    """The checkpoint's agent with its weights, on a fresh env of its run: ``(env, agent,
    obs_keys)``. The env carries the agent's recurrent-state primer; ``device`` defaults to the
    run's. Raises :class:`CheckpointError` (the env closed) when the weights do not fit."""
    torch.manual_seed(seed)
    env = build_env(cfg.env, seed=seed, num_envs=num_envs)
    agent, obs_keys = build_agent(cfg, env, device or resolve_device(cfg.device))
    env.append_transform(carry_primer(agent))
    try:
        load_agent_state(agent, payload["agent"])
    except (RuntimeError, KeyError) as err:
        env.close()
        raise CheckpointError(
            f"{path}: the weights do not fit the agent of its config: {err}"
        ) from None
    return env, agent, obs_keys


def evaluate_checkpoint(path: str | Path, episodes: int | None = None,
                        max_steps: int | None = None, seed: int = 12345,
                        sample: bool | None = None) -> dict:
    """Evaluate a checkpoint with its run's env; ``sample`` (default: the run's ``eval.sample``)
    samples actions instead of taking the policy's mode. Writes ``eval_checkpoint.json`` (or
    ``eval_checkpoint_sample.json``) beside the checkpoint."""
    payload, cfg = read_checkpoint(path)
    episodes = episodes or cfg.eval.episodes
    # checkpoints of runs made before eval.envs / eval.sample existed lack those keys
    env, agent, obs_keys = trained_agent(path, payload, cfg, seed,
                                         eval_copies(episodes, cfg.eval.get("envs")))
    if sample is None:
        sample = bool(cfg.eval.get("sample", False))
    returns = evaluate(agent, obs_keys, env, episodes, max_steps or cfg.eval.max_steps,
                       sample=sample)
    env.close()
    result = {
        "checkpoint": str(path), "env_steps": payload["counters"]["env_steps"],
        "episodes": episodes, "policy": "sample" if sample else "mode",
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)), "returns": returns,
    }
    out = Path(path)
    out = checkpoint_eval_file(out if out.is_dir() else out.parent, sample)
    out.write_text(json.dumps(result, indent=1))
    return result


def checkpoint_eval_file(run_dir: str | Path, sample: bool) -> Path:
    """Where ``worldrl eval RUN [--sample]`` writes its result."""
    return Path(run_dir) / ("eval_checkpoint_sample.json" if sample else "eval_checkpoint.json")


def current_checkpoint_eval(run_dir: str | Path, sample: bool) -> dict | None:
    """The run's checkpoint evaluation if it was made at the finished run's last step (None when
    absent, cut short, older, or the run has no summary)."""
    run_dir = Path(run_dir)
    try:
        steps = json.loads((run_dir / "summary.json").read_text())["env_steps"]
        result = json.loads(checkpoint_eval_file(run_dir, sample).read_text())
    except (OSError, json.JSONDecodeError, KeyError):
        return None
    return result if result.get("env_steps") == steps else None


def evaluate_again(run_dir: str | Path, sample: bool, threads: int = 0,
                   stderr=None) -> tuple[dict | None, bool, str]:
    """A finished run's final checkpoint evaluated with ``worldrl eval RUN [--sample]`` in a
    subprocess (``threads``: its OMP_NUM_THREADS; 0 leaves torch's default), unless a result at
    the run's last step is there already. Returns ``(result or None when the evaluation
    failed, whether it ran, its stderr's tail when not written to the file ``stderr``)``."""
    found = current_checkpoint_eval(run_dir, sample)
    if found is not None:
        return found, False, ""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "agents.cli", "eval", str(run_dir), *(["--sample"] * sample)]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, text=True,
                          stdout=stderr if stderr is not None else subprocess.DEVNULL,
                          stderr=stderr if stderr is not None else subprocess.PIPE)
    tail = (done.stderr or "")[-3000:]
    if done.returncode != 0:
        return None, True, tail
    result = current_checkpoint_eval(run_dir, sample)
    if result is None:
        tail += (f"\nworldrl eval finished, but {checkpoint_eval_file(run_dir, sample)} is not "
                 "at the env steps of the run's summary.json (a checkpoint older than the run?)")
    return result, True, tail
