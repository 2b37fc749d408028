"""Run directories: the config a run was started with, checkpoints, and never losing either.

A run directory holds ``config.yaml``, ``checkpoint.pt``, ``replay/`` (the on-disk buffer),
``metrics.jsonl``, ``episodes.csv``, ``eval.csv`` and ``videos/``. Starting a command in a
directory that holds a run with the *same* config resumes it; a *different* config is refused
unless ``overwrite=true``, which moves the old run aside (``RUN_DIR.old-TIMESTAMP``) rather than
deleting it.

**Checkpoints load without running code.** They hold only tensors and plain data (dicts, lists,
tuples, numbers, strings): numpy arrays and TensorDicts are stored as tensors with a tag
(:func:`encode`), and :func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``,
which refuses any other pickled object. Version-1 checkpoints (worldrl before this format) pickled
such objects; they load only with ``WORLDRL_TRUST_CHECKPOINTS=1`` in the environment, for files
you made yourself.

**Writes are atomic.** ``config.yaml`` and ``checkpoint.pt`` are written to a temporary file,
synced and renamed over the old one: a kill, a full disk or a read-only file system leaves the
previous file intact, removes the partial one and raises :class:`StorageError`, one line naming
the path and the cause.

**One process per run directory.** ``worldrl train`` holds a lock on ``RUN_DIR/.lock``
(``fcntl.flock``) from before it reads the directory until it returns; a second process started
on the same directory (the same command twice, a sweep launched again while a job still runs)
is refused with the holder's pid, before it changes anything. The system releases the lock when
the process ends in any way, SIGKILL included, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase

from worldrl.config import MOVED_KEYS, fill_null_sizes

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
CHECKPOINT_VERSION = 2
#: set to 1 to load version-1 checkpoints (pickled objects; only for files you trust)
TRUST_ENV = "WORLDRL_TRUST_CHECKPOINTS"

#: keys that may change between a run and its resumption without making it a different run
RESUMABLE_KEYS = (
    "steps", "overwrite", "device", "run_dir", "train.log_every", "train.checkpoint_every",
    "train.video_every", "train.threads", "train.progress", "train.warning_signal", "eval.every",
    "eval.episodes", "eval.envs", "eval.sample", "eval.max_steps", "env.parallel",
)  # fmt: skip


#: keys added to the config after runs were already being made, with the value that reproduces
#: what those runs did: a run whose config.yaml lacks such a key still resumes when the new
#: config has exactly this value (any other value is a difference, as usual)
ADDED_KEYS = {
    "train.amp": False,
    "agent.optim.schedule": "const",
    "agent.optim.anneal": None,
    **{f"agent.optim.group_lr.{k}": None for k in ("world_model", "actor", "critic")},
    "replay.dfs.tau": 10.0,
    "env.collectors": 1,
    "env.collector_backend": "process",
    "train.ddp": False,
    "train.cuda_graph": False,
}


#: backbone keys added with a default that changes what the backbone computes, per backbone
#: name: a run made before them had these values (``upgrade_config`` fills them in, so its
#: checkpoint loads and acts as it did; resuming it with the new default is a difference)
ADDED_BACKBONE_KEYS = {"mamba": {"bc_norm": False, "gated_norm": False},
                       "mamba2": {"bc_norm": False}}


#: keys that were removed; what they set never changed what a run did (DFS's imagination
#: weights: the loop never drew an imagination batch)
REMOVED_KEYS = ("replay.dfs.imag_tau", "replay.dfs.alpha", "replay.dfs.beta",
                "replay.dfs.imag_scale")


def upgrade_config(cfg: Any) -> DictConfig:
    """A run's config (``config.yaml``, a checkpoint's ``config``) in the current layout: moved
    keys (:data:`MOVED_KEYS`) at their new place, removed ones (:data:`REMOVED_KEYS`) gone,
    backbone keys added since (:data:`ADDED_BACKBONE_KEYS`) at what the run did, and
    size keys written as ``null`` (filled from ``agent.size`` by the agent then) set to their
    ``agent.size`` value. A current config comes back unchanged (as a copy)."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    missing = object()
    for old, new in [*MOVED_KEYS.items(), *((k, None) for k in REMOVED_KEYS)]:
        value = OmegaConf.select(cfg, old, default=missing)
        if value is missing:
            continue
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        del node[leaf]
        if new is not None:
            OmegaConf.update(cfg, new, value, force_add=True)
    backbone = OmegaConf.select(cfg, "agent.backbone")
    if isinstance(backbone, DictConfig):
        for key, value in ADDED_BACKBONE_KEYS.get(backbone.get("name"), {}).items():
            if key not in backbone:
                backbone[key] = value
    if isinstance(cfg.get("agent"), DictConfig):
        cfg.agent = fill_null_sizes(OmegaConf.to_container(cfg.agent))
    return cfg


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked; nothing on disk was changed."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what is wrong."""


class StorageError(RuntimeError):
    """A write that failed (disk full, read-only, permission); the previous file is intact."""


_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted"}


#: OS errors that mean "this path cannot be written" (said as one line naming the path)
DISK_ERRNOS = tuple(_CAUSES)


def storage_error(path: Path, err: BaseException) -> StorageError:
    """One line naming ``path`` and why writing it failed."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code is None and "unexpected pos" in text:  # torch.save's zip writer on a full disk
        cause = "the write stopped short (no space left on the device?)"
    else:
        cause = _CAUSES.get(code, getattr(err, "strerror", None) or text)
    return StorageError(f"cannot write {path}: {cause}")


def write_atomic(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``; on failure the partial temporary
    file is removed, ``path`` is untouched, and :class:`StorageError` says why."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise storage_error(path, err) from None


def encode(obj: Any) -> Any:
    """Plain data and tensors only (what ``torch.load(weights_only=True)`` reads): numpy arrays
    and TensorDicts become tagged dicts of tensors; :func:`decode` undoes it."""
    if isinstance(obj, TensorDictBase):
        return {"__tensordict__": {k: encode(v) for k, v in obj.items()},
                "batch_size": list(obj.batch_size)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj and len(obj) == 1:
            return obj["__ndarray__"].numpy()
        if "__tensordict__" in obj:
            return TensorDict({k: decode(v) for k, v in obj["__tensordict__"].items()},
                              batch_size=obj["batch_size"])
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """``{"train.batch_size": 16, ...}``: every leaf of a config by its dotted key."""
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
    """Differences that matter for resumption, as ``key: old -> new`` lines (``old`` is read in
    the current layout: :func:`upgrade_config`)."""
    a, b = flat_config(upgrade_config(old)), flat_config(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_KEYS:
            continue
        if key not in a and key in ADDED_KEYS and b.get(key) == ADDED_KEYS[key]:
            continue  # made before the key existed; the new value does what the run did
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return lines


def inspect(cfg: DictConfig) -> list[str] | None:
    """What ``cfg.run_dir`` holds, read only: ``None`` (nothing: a new run), ``[]`` (this run) or
    the config lines that differ (another run).

    Raises :class:`RunDirError` for a ``config.yaml`` that cannot be read and for a non-empty
    directory without one."""
    path = Path(cfg.run_dir)
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
            raise RunDirError(f"run directory {path} is not empty and holds no {CONFIG_FILE}; "
                              "pick another run_dir (nothing was changed)")
        return None
    try:
        old = OmegaConf.load(config_file)
        if not isinstance(old, DictConfig):
            raise ValueError(f"a YAML {type(old).__name__}, not a mapping")
    except Exception as err:  # a truncated or hand-edited file: yaml raises many types
        raise RunDirError(
            f"{config_file} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); nothing was changed. Fix or "
            "remove it, or pick another run_dir.") from None
    return config_diff(old, cfg)


_held: dict[Path, Any] = {}  # run directory -> the open lock file this process holds


def lock(path: Path) -> None:
    """Hold ``path``'s lock (``path/.lock``) for this process, making ``path`` if needed; raises
    :class:`RunDirError` naming the holder's pid when another process holds it."""
    key = Path(os.path.abspath(path))
    if key in _held:
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no guard
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        f = open(path / LOCK_FILE, "a+")
    except OSError as err:
        raise storage_error(path, err) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(
            f"run directory {path} is in use by another process (pid {holder}): one process "
            "per run. Wait for it to end, or stop it (SIGTERM: it checkpoints and exits) and "
            "run the command again to resume; nothing was changed.") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = f


def release(path: Path, remove: bool = False) -> None:
    """Let go of ``path``'s lock if this process holds it (``remove``: delete the file too)."""
    f = _held.pop(Path(os.path.abspath(path)), None)
    if f is None:
        return
    if remove:
        Path(f.name).unlink(missing_ok=True)
    f.close()


def prepare(cfg: DictConfig) -> tuple[Path, bool]:
    """Make or reopen ``cfg.run_dir``, holding its lock (:func:`lock`; :func:`release` lets it
    go); returns ``(path, resuming)``.

    Raises :class:`RunDirError` when the directory holds a different run and ``overwrite`` is off,
    or is in use by another process.
    """
    path = Path(cfg.run_dir)
    existed = path.exists()
    fresh_lock = not (path / LOCK_FILE).exists()
    lock(path)
    try:
        return _prepare(cfg, path)
    except BaseException:
        release(path, remove=fresh_lock)  # leave the directory as it was
        if not existed:
            try:
                path.rmdir()
            except OSError:
                pass
        raise


def _prepare(cfg: DictConfig, path: Path) -> tuple[Path, bool]:
    config_file = path / CONFIG_FILE
    diff = inspect(cfg)
    if diff == []:
        for stale in (CHECKPOINT_FILE, CONFIG_FILE):  # left by a process killed mid-write
            (path / f"{stale}.tmp").unlink(missing_ok=True)
        return path, (path / CHECKPOINT_FILE).exists()
    if diff:
        if not cfg.overwrite:
            raise RunDirError(
                f"run directory {path} holds a run with a different config:\n  "
                + "\n  ".join(diff)
                + "\nPass run_dir=... for a new run, or overwrite=true to start over "
                "(the old run is moved aside, not deleted)."
            )
        aside = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.rename(aside)
        except OSError as err:
            raise storage_error(aside, err) from None
        release(path, remove=False)  # the lock file went aside with the old run
        (aside / LOCK_FILE).unlink(missing_ok=True)
        print(f"moved the previous run in {path} to {aside}")
        lock(path)  # makes the directory again
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(path, err) from None
    text = OmegaConf.to_yaml(cfg, resolve=True)
    write_atomic(config_file, lambda tmp: tmp.write_text(text))
    return path, False


def check_checkpoint_config(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse a checkpoint made by a different run (another seed, agent, env ...)."""
    if "config" not in ckpt:
        return
    diff = config_diff(ckpt["config"], cfg)
    if diff:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with a different config:\n  "
            + "\n  ".join(diff)
            + "\nIt was left as it is; move it away or use the run directory it came from.")


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
    """Write atomically (:func:`write_atomic`): a kill, a full disk or a read-only file system
    during the write leaves the previous checkpoint intact."""
    payload = encode({"version": CHECKPOINT_VERSION, **payload})
    write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    trusted = os.environ.get(TRUST_ENV, "") == "1"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"refused to load {path}: it holds pickled objects other than tensors and plain "
                f"data ({first[:160]}), and loading those could run code. A worldrl checkpoint "
                f"from before version {CHECKPOINT_VERSION} looks like this; if you made the file "
                f"yourself, load it with {TRUST_ENV}=1. The file was left as it is.") from None
        payload = _load_any(path)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a worldrl checkpoint ({type(err).__name__}: "
            f"{err}); the file was left as it is"
        ) from None
    if not isinstance(payload, dict) or "version" not in payload or "agent" not in payload:
        raise CheckpointError(f"{path} is not a worldrl checkpoint (no version/agent entries)")
    readable = (1, CHECKPOINT_VERSION) if trusted else (CHECKPOINT_VERSION,)
    if payload["version"] not in readable:
        raise CheckpointError(f"checkpoint {path} has version {payload['version']}, this worldrl "
                              f"reads version {CHECKPOINT_VERSION}")
    return decode(payload)


def _load_any(path: Path) -> Any:
    """Full unpickling, for a file the user said they trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__}: {err}); "
                              "the file was left as it is") from None
