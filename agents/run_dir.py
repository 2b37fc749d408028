"""Run directories: the config a run was started with, checkpoints, and never losing either.

A run directory holds ``config.yaml``, ``checkpoint.pt``, ``replay/`` (the on-disk buffer),
``metrics.jsonl``, ``episodes.csv``, ``eval.csv`` and ``videos/``. Starting a command in a
directory that holds a run with the *same* config resumes it; a *different* config is refused
unless ``overwrite=true``, which moves the old run aside (``RUN_DIR.old-TIMESTAMP``) rather than
deleting it.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from worldrl.replay import DFSSampler

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1

#: keys that may change between a run and its resumption without making it a different run
RESUMABLE_KEYS = (
    "steps", "overwrite", "device", "run_dir", "train.log_every", "train.checkpoint_every",
    "train.video_every", "train.threads", "train.progress", "eval.every", "eval.episodes",
    "eval.envs", "eval.sample", "eval.max_steps", "env.parallel",
)  # fmt: skip


#: keys added to the config after runs were already being made, with the value that reproduces
#: what those runs did: a run whose config.yaml lacks such a key still resumes when the new
#: config has exactly this value (any other value is a difference, as usual)
ADDED_KEYS = {
    "train.amp": False,
    "agent.optim.schedule": "const",
    "agent.optim.anneal": None,
    **{f"agent.optim.group_lr.{k}": None for k in ("world_model", "actor", "critic")},
    **{f"replay.dfs.{k}": v for k, v in DFSSampler.defaults().items()},
}


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked; nothing on disk was changed."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what is wrong."""


def _flat(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def config_diff(old: DictConfig, new: DictConfig) -> list[str]:
    """Differences that matter for resumption, as ``key: old -> new`` lines."""
    a, b = _flat(old), _flat(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_KEYS:
            continue
        if key not in a and key in ADDED_KEYS and b.get(key) == ADDED_KEYS[key]:
            continue  # made before the key existed; the new value does what the run did
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return lines


def prepare(cfg: DictConfig) -> tuple[Path, bool]:
    """Make or reopen ``cfg.run_dir``; returns ``(path, resuming)``.

    Raises :class:`RunDirError` when the directory holds a different run and ``overwrite`` is off.
    """
    path = Path(cfg.run_dir)
    config_file = path / CONFIG_FILE
    if config_file.exists():
        old = OmegaConf.load(config_file)
        diff = config_diff(old, cfg)
        if not diff:
            return path, (path / CHECKPOINT_FILE).exists()
        if not cfg.overwrite:
            raise RunDirError(
                f"run directory {path} holds a run with a different config:\n  "
                + "\n  ".join(diff)
                + "\nPass run_dir=... for a new run, or overwrite=true to start over "
                "(the old run is moved aside, not deleted)."
            )
        aside = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        print(f"moved the previous run in {path} to {aside}")
    elif path.exists() and any(path.iterdir()):
        raise RunDirError(
            f"run directory {path} is not empty and holds no {CONFIG_FILE}; "
            "pick another run_dir (nothing was changed)"
        )
    path.mkdir(parents=True, exist_ok=True)
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path, False


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    payload = {"version": CHECKPOINT_VERSION, **payload}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a worldrl checkpoint ({type(err).__name__}: "
            f"{err}); the file was left as it is"
        ) from None
    if not isinstance(payload, dict) or "version" not in payload or "agent" not in payload:
        raise CheckpointError(f"{path} is not a worldrl checkpoint (no version/agent entries)")
    if payload["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {payload['version']}, this worldrl "
                              f"reads version {CHECKPOINT_VERSION}")
    return payload
