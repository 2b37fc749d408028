"""Sweeps (`worldrl train -m ...`): the product of the swept values through Hydra's launchers,
one run directory per job, a second invocation skipping finished runs, bad input refused first."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents import sweep as sweep_mod
from worldrl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["preset=debug", "env.task=CartPole-v1,Acrobot-v1", "seed=0,1", "train.progress=false"]
NAMES = sorted(f"env.task={t},preset=debug,seed={s}" for t in ("CartPole-v1", "Acrobot-v1")
               for s in (0, 1))


def worldrl(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def finished_runs(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def check_sweep(sweep_dir: Path, launcher: str, sweep=SWEEP, names=NAMES) -> dict[str, dict]:
    """Run a debug sweep (by default the 2 x 2 one) through ``launcher`` twice: its runs, then
    as many skips."""
    out = worldrl("train", "-m", *sweep, f"hydra/launcher={launcher}",
                  f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = finished_runs(sweep_dir)
    assert sorted(runs) == names
    assert all(r["env_steps"] == 120 and r["resumes"] == 0 for r in runs.values())
    for name in names:  # each run is the single run of its overrides
        cfg = (sweep_dir / name / "config.yaml").read_text()
        assert f"run_dir: {sweep_dir / name}" in cfg
        task, seed = name.split(",")[0].split("=")[1], name.split("=")[-1]
        assert f"task: {task}" in cfg and f"seed: {seed}\n" in cfg
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/checkpoint.pt")}
    again = worldrl("train", "-m", *sweep, f"hydra/launcher={launcher}",
                    f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"0 new, 0 to resume, {len(names)} finished (skipped)" in again.stdout
    assert again.stdout.count("skipped  ") == len(names)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/checkpoint.pt")} == stamps
    return runs


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "basic"
    return sweep_dir, check_sweep(sweep_dir, "basic")


def test_basic_launcher_runs_the_product_and_skips_finished_runs(basic_sweep):
    _, runs = basic_sweep
    assert len({json.dumps(r) for r in runs.values()}) >= 2  # different tasks, different runs


def test_joblib_launcher_gives_the_same_runs(basic_sweep, tmp_path):
    """Worker processes (joblib's loky backend) train the same seeded runs as the basic one
    (the two Acrobot seeds of its sweep: two workers, one run each)."""
    sweep = [o if not o.startswith("env.task=") else "env.task=Acrobot-v1" for o in SWEEP]
    names = [n for n in NAMES if "Acrobot" in n]
    runs = check_sweep(tmp_path / "joblib", "joblib", sweep, names)
    assert runs == {n: basic_sweep[1][n] for n in names}


@pytest.mark.slow
def test_ray_launcher_on_a_local_ray_instance(basic_sweep, tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.fail("the Ray launcher is not installed: pip install 'worldrl[ray]'")
    runs = check_sweep(tmp_path / "ray", "ray")
    assert runs == basic_sweep[1]


def test_report_reads_a_sweep_directory(basic_sweep, tmp_path):
    from agents.report import report

    sweep_dir, _ = basic_sweep
    result = report([sweep_dir], tmp_path / "report", plots=False)
    cells = {(r["task"], r["runs"]) for r in result["rows"]}
    assert cells == {("CartPole-v1", 2), ("Acrobot-v1", 2)}


def test_a_larger_budget_resumes_every_run_of_the_sweep(basic_sweep, tmp_path):
    sweep_dir, _ = basic_sweep
    jobs, _, launcher, where = sweep_mod.plan([*SWEEP, f"hydra.sweep.dir={sweep_dir}",
                                               "steps=200"])
    assert launcher == "basic" and where == sweep_dir
    assert sorted(j.run_dir.name for j in jobs) == NAMES  # steps does not name a run
    assert {j.state for j in jobs} == {"resume"}


def test_plan_names_runs_by_their_overrides_in_sorted_order(tmp_path):
    jobs, hydra, _, _ = sweep_mod.plan(["seed=3,1", "preset=debug", "env=gym",
                                        f"hydra.sweep.dir={tmp_path}", "eval.episodes=2"])
    assert hydra == [f"hydra.sweep.dir={tmp_path}"]
    assert [j.run_dir.name for j in jobs] == ["env=gym,preset=debug,seed=3",
                                              "env=gym,preset=debug,seed=1"]
    assert [j.cfg.seed for j in jobs] == [3, 1] and {j.state for j in jobs} == {"new"}
    assert not list(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize("overrides, message", [
    (["seed=0,1", "train.batch_sizee=4"], "unknown config key 'train.batch_sizee'"),
    (["seed=0,x"], "seed=x: seed must be an integer"),
    (["env.task=CartPole-v1,Pongg"], "Pongg"),
    (["seed=0,1", "eval.episodes=1,2"], "would share run directory"),
    (["seed=0,1", "hydra/launcher=slurmm"], "unknown hydra/launcher 'slurmm'; choose one of: "
                                            "basic, joblib"),
    (["seed=0,1", "hydra/sweeper=optuna"], "worldrl expands sweeps itself"),
    (["seed=0,1", "hydra.sweep.subdir=x"], "named by their overrides"),
])
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, capsys, overrides, message):
    from agents.cli import main

    code = main(["train", "-m", "preset=debug", *overrides, f"hydra.sweep.dir={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "s").exists()


def test_a_missing_launcher_plugin_names_the_extra(monkeypatch):
    monkeypatch.setitem(sweep_mod.LAUNCHERS, "ray", ("hydra_plugins.no_such_plugin", "ray"))
    with pytest.raises(ConfigError, match=r"pip install 'worldrl\[ray\]'"):
        sweep_mod.launcher_of(["hydra/launcher=ray"])


def test_a_run_directory_holding_another_config_stops_the_sweep_first(tmp_path, capsys):
    from omegaconf import OmegaConf

    from agents.cli import main

    taken = tmp_path / "s" / "env.task=CartPole-v1,preset=debug,seed=1"
    taken.mkdir(parents=True)
    OmegaConf.save(load_config(["preset=debug", "seed=7"]), taken / "config.yaml")
    assert main(["train", "-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 's'}"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different config" in err and "seed: 7 -> 1" in err
    (taken / "config.yaml").unlink()
    (taken / "notes.txt").write_text("mine")
    assert main(["train", "-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 's'}"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "s").iterdir()] == [taken.name]  # nothing started


def test_hydra_settings_without_a_sweep_are_refused():
    with pytest.raises(ConfigError, match="applies to sweeps only: worldrl train -m"):
        load_config(["hydra/launcher=joblib"])
