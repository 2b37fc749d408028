"""Sweeps: ``worldrl train -m KEY=A,B KEY2=C,D ...`` trains the product of the swept values.

The jobs run through Hydra's launcher plugins, chosen with ``hydra/launcher=...``:

- ``basic`` (default): one after another in this process;
- ``joblib``: side by side in local worker processes (``hydra.launcher.n_jobs``);
- ``submitit_slurm`` / ``submitit_local``: a SLURM job array (or local submitit processes);
- ``ray``: tasks on a Ray cluster (``hydra.launcher.ray.init.address``; none starts a local one).

Each job is exactly the single run ``worldrl train`` would make from its own overrides, in the run
directory ``SWEEP_DIR/KEY=VALUE,...`` (``hydra.sweep.dir``, default ``runs/sweep``; the name lists
the job's overrides, sorted, without the keys a run may change when it resumes, such as ``steps``).
So running the same sweep again resumes the unfinished runs and skips the finished ones, and
raising ``steps`` extends them all. Every job's config and run directory is checked before any job
starts or anything is written. ``worldrl report SWEEP_DIR`` reads the whole sweep.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from agents.run_dir import RESUMABLE_KEYS, RunDirError, inspect
from worldrl.config import CONFIG_DIR, ConfigError, load_config

DEFAULT_SWEEP_DIR = "runs/sweep"
#: hydra/launcher choices -> (the plugin's module, the worldrl extra that installs it)
LAUNCHERS = {
    "basic": (None, None),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}
#: set by a job that was stopped by a signal: the jobs after it in this process do not start
_stopped: str | None = None


@dataclass
class Job:
    overrides: list[str]
    run_dir: Path
    state: str  # new | resume | finished
    cfg: DictConfig


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``(task overrides, Hydra's own)``: ``hydra/launcher=joblib`` and ``hydra.*`` are Hydra's."""
    hydra = [o for o in overrides if re.match(r"^[+~]?hydra[./]", o)]
    return [o for o in overrides if o not in hydra], hydra


def launcher_of(hydra_overrides: list[str]) -> str:
    """The launcher a sweep asks for; refuses unknown ones and missing plugins with the extra."""
    name = "basic"
    for item in hydra_overrides:
        m = re.match(r"^[+~]?hydra/(\w+)=(.*)$", item)
        if not m:
            continue
        group, value = m.groups()
        if group == "launcher":
            name = value
        elif group == "sweeper":
            raise ConfigError(f"{item}: worldrl expands sweeps itself (the product of the swept "
                              "values); pick how the jobs run with hydra/launcher=... instead")
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown hydra/launcher {name!r}; choose one of: "
                          f"{', '.join(LAUNCHERS)}")
    module, extra = LAUNCHERS[name]
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"hydra/launcher={name} needs Hydra's {name.split('_')[0]} launcher "
                          f"plugin, which is not installed: pip install 'worldrl[{extra}]'")
    return name


def expand(task_overrides: list[str]) -> list[list[str]]:
    """Each job's overrides: the product of the swept values (``a=1,2``, ``range(3)``, ...)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(task_overrides))
        return BasicSweeper.split_arguments(parsed, None)[0]
    except (HydraException, OverrideParseException) as err:
        raise ConfigError(f"cannot expand the sweep: {str(err).splitlines()[0]}") from None


def dir_name(job_overrides: list[str]) -> str:
    """The run directory's name within the sweep: Hydra's ``override_dirname`` of the job, with
    the keys a run may change on resume (``steps``, ``eval.*`` ...) left out."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(job_overrides))
    return get_overrides_dirname(parsed, exclude_keys=list(RESUMABLE_KEYS), item_sep=",",
                                 kv_sep="=") or "defaults"


def _given(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def plan(overrides: list[str]) -> tuple[list[Job], list[str], str, Path]:
    """Check every job before anything runs or is written: ``(jobs, Hydra overrides, launcher,
    sweep dir)``. Raises :class:`ConfigError` / :class:`RunDirError` naming the job."""
    from agents.train import _check

    task, hydra = split_overrides(overrides)
    launcher = launcher_of(hydra)
    sweep_dir = Path(DEFAULT_SWEEP_DIR)
    for item in hydra:
        if item.split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir":
            sweep_dir = Path(item.split("=", 1)[1])
        elif item.split("=", 1)[0].lstrip("+~") == "hydra.sweep.subdir":
            raise ConfigError(f"{item}: a sweep's run directories are named by their overrides "
                              "(so that a second run of the sweep finds them); set "
                              "hydra.sweep.dir, or run_dir=... with interpolations like "
                              "runs/${env.task}-s${seed}")
    sweep_dir = sweep_dir.absolute()
    jobs, seen = [], {}
    for job in expand(task):
        where = f"sweep job {' '.join(job) or '(defaults)'}"
        try:
            cfg = load_config(job)
            _check(cfg)
        except (ConfigError, ValueError, ImportError) as err:
            raise ConfigError(f"{where}: {err}") from None
        run_dir = Path(cfg.run_dir) if _given(job, "run_dir") else sweep_dir / dir_name(job)
        run_dir = run_dir.absolute()
        if run_dir in seen:
            raise ConfigError(
                f"sweep jobs '{' '.join(seen[run_dir])}' and '{' '.join(job)}' would share run "
                f"directory {run_dir}: a swept key that a resumed run may change ("
                f"{', '.join(k for k in RESUMABLE_KEYS if k not in ('run_dir', 'overwrite'))}) "
                "does not name a run; sweep it in separate sweeps (hydra.sweep.dir=...)")
        seen[run_dir] = job
        cfg.run_dir = str(run_dir)
        jobs.append(Job(job, run_dir, _state(cfg, run_dir, where), cfg))
    return jobs, hydra, launcher, sweep_dir


def _state(cfg: DictConfig, run_dir: Path, where: str) -> str:
    try:
        diff = inspect(cfg)  # cfg.run_dir is run_dir
    except RunDirError as err:
        raise RunDirError(f"{where}: {err}") from None
    if diff and not cfg.overwrite:
        raise RunDirError(f"{where}: run directory {run_dir} holds a run with a different "
                          "config:\n  " + "\n  ".join(diff) + "\nNothing was started. Pick "
                          "another hydra.sweep.dir, or add overwrite=true to start those runs "
                          "over (old runs are moved aside, not deleted).")
    if diff is None or diff:
        return "new"
    summary = run_dir / "summary.json"
    try:
        done = summary.exists() and json.loads(summary.read_text())["env_steps"] >= cfg.steps
    except (ValueError, KeyError, TypeError):
        done = False
    return "finished" if done else "resume"


def sweep(overrides: list[str]) -> list[dict]:
    """Run the sweep; one outcome per job (``status``: finished, skipped, stopped, failed,
    not started), in the order of the product."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    jobs, hydra_overrides, launcher, sweep_dir = plan(overrides)
    pending = [j for j in jobs if j.state != "finished"]
    counts = {s: sum(j.state == s for j in jobs) for s in ("new", "resume", "finished")}
    print(f"sweep of {len(jobs)} runs in {sweep_dir} ({launcher} launcher): {counts['new']} new, "
          f"{counts['resume']} to resume, {counts['finished']} finished (skipped)", flush=True)
    outcomes = {id(j): {"status": "skipped", "run_dir": str(j.run_dir), "overrides": j.overrides,
                        "summary": json.loads((j.run_dir / "summary.json").read_text())}
                for j in jobs if j.state == "finished"}
    if pending:
        settings = [f"hydra.sweep.dir='{sweep_dir}'", "hydra.output_subdir=null",
                    "hydra.sweep.subdir=${hydra.job.override_dirname}",
                    "hydra/job_logging=none", "hydra.job.name=worldrl",
                    "hydra.job.config.override_dirname.exclude_keys="
                    f"[{','.join(RESUMABLE_KEYS)}]"]
        settings += [o for o in hydra_overrides if not o.startswith("hydra.sweep.dir=")]
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="worldrl"):
            hydra = GlobalHydra.instance().hydra
            try:
                cfg = hydra.compose_config("config", settings, run_mode=RunMode.MULTIRUN,
                                           with_log_configuration=True)
            except Exception as err:  # a bad hydra.* key: Hydra's own message names it
                raise ConfigError(f"sweep settings: {str(err).splitlines()[0]}") from None
            HydraConfig.instance().set_config(cfg)
            context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
            runner = Plugins.instance().instantiate_launcher(
                hydra_context=context, task_function=run_job, config=cfg)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, sweep_dir / "multirun.yaml")  # as Hydra's sweeper records it
            results = runner.launch([j.overrides for j in pending], initial_job_idx=0)
        GlobalHydra.instance().clear()
        for job, ret in zip(pending, results):
            if ret.status == JobStatus.COMPLETED:
                outcomes[id(job)] = ret.return_value
            else:
                err = ret._return_value
                outcomes[id(job)] = {"status": "failed", "run_dir": str(job.run_dir),
                                     "overrides": job.overrides,
                                     "error": f"{type(err).__name__}: {err}"}
    done = [outcomes[id(j)] for j in jobs]
    for job, out in zip(jobs, done):
        line = out.get("error") or _describe(out.get("summary") or {})
        print(f"  {out['status']:>11}  {job.run_dir}  {line}", flush=True)
    return done


def _describe(summary: dict) -> str:
    if "eval_return_mean" in summary:
        return (f"{summary['env_steps']} env steps, final eval "
                f"{summary['eval_return_mean']:.1f} +- {summary['eval_return_std']:.1f}")
    return f"{summary.get('env_steps', '?')} env steps" if summary else ""


def run_job(cfg: DictConfig) -> dict:
    """One sweep job (Hydra's task function; runs in the launcher's process, worker or node):
    the single run its overrides describe, composed the same way ``worldrl train`` composes it.
    Expected failures come back as an outcome, so the other jobs go on."""
    global _stopped
    from hydra.core.hydra_config import HydraConfig

    from agents.run_dir import CheckpointError, StorageError
    from agents.train import train

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    run_dir = hc.runtime.output_dir  # SWEEP_DIR/NAME, as plan() named it
    if _given(overrides, "run_dir"):
        if Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
            Path(run_dir).rmdir()  # made by Hydra for the job; the run lives elsewhere
        run_dir = str(Path(cfg.run_dir).absolute())
    out = {"run_dir": str(run_dir), "overrides": overrides}
    if _stopped:
        return {**out, "status": "not started", "error": f"the sweep was stopped by {_stopped}"}
    try:
        job_cfg = load_config([o for o in overrides if not o.startswith("run_dir=")]
                              + [f"run_dir='{run_dir}'"])
        summary = train(job_cfg)
    except (ConfigError, RunDirError, CheckpointError, StorageError, ValueError, ImportError,
            OSError) as err:
        if os.environ.get("WORLDRL_DEBUG", "") == "1":
            raise
        return {**out, "status": "failed", "error": f"{err}"}
    except Exception as err:  # a bug: its traceback goes to the job's stderr, the sweep goes on
        traceback.print_exc(file=sys.stderr)
        return {**out, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    if "stopped" in summary:
        import signal

        _stopped = summary["stopped"]
        for sig in (signal.SIGTERM, signal.SIGUSR1):  # as a single run: later signals wait
            signal.signal(sig, signal.SIG_IGN)
        return {**out, "status": "stopped", "summary": summary}
    return {**out, "status": "finished", "summary": summary}
