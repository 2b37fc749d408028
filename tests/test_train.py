"""The training loop and the CLI: smoke runs, resume after a kill, run-dir safety, bad input."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from agents.cli import main
from agents.run_dir import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["train.progress=false"]


def worldrl(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("env", ["gym", "atari100k", "dmc", "dmc_proprio", "popgym"])
def test_cli_debug_preset_on_each_suite(tmp_path, env):
    run = tmp_path / "run"
    out = worldrl("train", "preset=debug", f"env={env}", f"run_dir={run}", *QUIET)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= 120 and summary["updates"] > 0
    assert summary["replay_rows"] >= summary["env_steps"]
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "eval.csv", "summary.json"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "updates" in r]
    assert [r["step"] for r in train_rows] == sorted(r["step"] for r in train_rows)
    assert any("loss/dyn" in r for r in train_rows)  # the DreamerV3 learner ran
    if env in ("atari100k", "dmc"):  # pixels: an open-loop video was written
        assert list((run / "videos").glob("openloop-*.gif"))


def test_resume_after_kill(tmp_path):
    run = tmp_path / "run"
    # a replay that cannot fill up before the kill, however fast the machine collects
    args = ["train", "preset=debug", "agent=random", f"run_dir={run}", "train.checkpoint_every=40",
            "replay.capacity=1000000", *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", *args, "steps=1000000"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt_file = run / "checkpoint.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt_file.exists():
                try:
                    if load_checkpoint(ckpt_file)["counters"]["env_steps"] >= 160:
                        break
                except Exception:  # mid-replace; look again
                    pass
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint after 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(ckpt_file)
    at, rows = ckpt["counters"]["env_steps"], ckpt["replay"]["len"]
    assert rows > 0
    out = worldrl(*args, f"steps={at + 80}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed {run} at env step {at}" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= at + 80 and summary["resumes"] == 1
    # replay kept what it had at the checkpoint, and grew
    assert summary["replay_rows"] >= rows + 80
    after = load_checkpoint(ckpt_file)
    assert after["counters"]["updates"] > ckpt["counters"]["updates"]
    # metrics continue from the checkpoint: the resumed rows all lie past it
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = steps[steps.index(max(s for s in steps if s <= at)) + 1:]
    assert resumed and min(resumed) > at


def test_same_seed_same_run(tmp_path):
    """Seeded runs of the learner reproduce on CPU: episodes, losses and evaluation."""
    summaries, episodes, losses = [], [], []
    for name in ("a", "b", "c"):
        seed = 6 if name == "c" else 5
        assert main(["train", "preset=debug", f"run_dir={tmp_path / name}", f"seed={seed}",
                     *QUIET]) == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
        episodes.append(read_csv(tmp_path / name / "episodes.csv"))
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(r).get("wm_loss") for r in rows])
    assert summaries[0] == summaries[1]
    assert episodes[0] == episodes[1] and len(episodes[0]) > 2
    assert losses[0] == losses[1] and any(v is not None for v in losses[0])
    assert losses[0] != losses[2]  # and the seed matters


def test_different_config_is_refused_and_overwrite_moves_aside(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", *QUIET]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", "seed=1",
                 *QUIET]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "seed: 0 -> 1" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", "seed=1",
                 "overwrite=true", *QUIET]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint.pt").read_bytes() == before
    assert not (aside[0] / ".lock").exists()  # no lock file travels with the old run
    assert not (run / ".lock").read_text().strip() == ""  # the new run's holder wrote its pid
    # a refused config leaves no lock file in the other run's directory
    (run / ".lock").unlink()
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", "seed=2",
                 *QUIET]) == 2
    assert not (run / ".lock").exists()


_HOLD = """
import sys, time
from pathlib import Path
from agents.run_dir import lock
lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_one_process_per_run_directory(tmp_path, capsys):
    """A second process on a run directory in use is refused with the holder's pid and changes
    nothing; the lock goes with its holder, even killed with SIGKILL."""
    run = tmp_path / "run"
    args = ["train", "preset=debug", "agent=random", f"run_dir={run}", *QUIET]
    assert main([*args, "steps=200"]) == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*args, "steps=400"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another process (pid {holder.pid})" in err
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == files
        out = worldrl(*args, "steps=400")  # the CLI in a process of its own: the same refusal
        assert out.returncode == 2 and f"pid {holder.pid}" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        holder.kill()
        holder.wait()
    assert main([*args, "steps=400"]) == 0  # no stale lock after the kill: it resumes
    assert json.loads((run / "summary.json").read_text())["env_steps"] >= 400


@pytest.mark.parametrize("override,message", [
    ("env=atari", "unknown env 'atari'; choose one of: atari100k, "),
    ("backbone=lstm", "unknown backbone 'lstm'; choose one of: "),
    ("size=huge", "unknown size 'huge'; choose one of: "),
    ("env.task=pongg", "unknown task 'pongg' for env suite 'gym'; choose one of: CartPole-v1"),
    ("train.batchsize=3", "unknown config key 'train.batchsize'; valid keys under 'train': "),
    ("device=tpu", "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    ("agent.optim.schedule=exp", "unknown schedule 'exp'; choose one of: const, linear, cosine"),
    ("agent.optim.anneal=50", "anneal must be > warmup, got anneal=50"),
    ("train.compile=fast", "unknown train.compile 'fast'; choices: [False, True, 'default', "
                           "'reduce-overhead'"),
    ("train.cuda_graph=true", "train.cuda_graph=true captures the update as a CUDA graph and "
                              "needs a CUDA device; the agent is on 'cpu'"),
    ("train.cuda_graph=yes", "train.cuda_graph must be a boolean (true/false) like its default "
                             "False, got 'yes'"),
    ("env.collectors=0", "env.collectors must be >= 1, got 0"),
    ("env.collectors=1.5", "env.collectors must be an integer like its default 1, got 1.5"),
    ("env.collector_backend=mpi", "unknown env.collector_backend 'mpi'; choose one of: process, "
                                  "ray"),
    ("hydra/launcher=joblib", "applies to sweeps only: worldrl train -m"),
])
def test_bad_names_fail_at_start_and_write_nothing(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    assert main(["train", "preset=debug", f"run_dir={run}", override]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", *QUIET]) == 0
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a full disk
    damaged = ckpt.read_bytes()
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", "steps=400",
                 *QUIET]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert ckpt.read_bytes() == damaged and (run / "replay" / "meta.json").exists()
    assert main(["eval", str(ckpt)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_weights_that_do_not_fit_their_config_are_reported_and_left_alone(tmp_path, capsys):
    from agents.run_dir import save_checkpoint

    run = tmp_path / "run"
    assert main(["train", "preset=debug", "steps=40", "train.prefill=16", f"run_dir={run}",
                 *QUIET]) == 0
    ckpt = load_checkpoint(run)
    ckpt["config"]["agent"]["actor"]["units"] = 48  # the weights were made with 32
    save_checkpoint(run / "checkpoint.pt", {k: v for k, v in ckpt.items() if k != "version"})
    saved = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1", "--max-steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "do not fit the agent of its config" in err and "Traceback" not in err
    assert (run / "checkpoint.pt").read_bytes() == saved
    assert not (run / "eval_checkpoint.json").exists()


def test_eval_and_plot_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "preset=debug", "agent=random", f"run_dir={run}", *QUIET]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--max-steps", "15"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert all(0 < r <= 15 for r in result["returns"])
    assert result["policy"] == "mode" and (run / "eval_checkpoint.json").exists()
    assert main(["eval", str(run), "--episodes", "3", "--max-steps", "15", "--sample"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["policy"] == "sample" and len(result["returns"]) == 3
    assert json.loads((run / "eval_checkpoint_sample.json").read_text()) == result
    assert main(["plot", str(run)]) == 0
    png = run / "curve.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "nope")]) == 2


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    import builtins

    import envs.atari

    real_import = builtins.__import__

    def no_ale(name, *args, **kwargs):
        if name == "ale_py":
            raise ImportError("No module named 'ale_py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ale)
    with pytest.raises(ImportError, match=r"pip install 'worldrl\[atari\]'"):
        envs.atari.make_ale("pong")


def test_checkpoint_holds_model_optimiser_rng_and_counters(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "preset=debug", f"run_dir={run}", *QUIET]) == 0
    ckpt = load_checkpoint(run)
    assert set(ckpt["rng"]) == {"torch", "numpy", "python"}
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    assert ckpt["counters"]["env_steps"] >= 120 and ckpt["config"]["seed"] == 0
    assert ckpt["counters"]["updates"] > 0
    assert any(k.startswith("wm.") for k in ckpt["agent"]["model"])
    optim = ckpt["agent"]["optim"]["state"]
    assert optim and all(torch.isfinite(t).all() for s in optim.values() for t in s.values()
                         if isinstance(t, torch.Tensor))


def test_bf16_autocast_updates(tmp_path):
    """train.amp=true runs the updates under bf16 autocast: finite losses, different numerics."""
    losses = {}
    for amp in ("false", "true"):
        run = tmp_path / amp
        assert main(["train", "preset=debug", f"run_dir={run}", f"train.amp={amp}", *QUIET]) == 0
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        losses[amp] = [r["loss/total"] for r in rows if "loss/total" in r]
        assert losses[amp] and all(math.isfinite(v) for v in losses[amp])
    assert losses["true"] != losses["false"]


def test_runs_made_before_a_key_existed_still_resume():
    """A config.yaml without keys added later (ADDED_KEYS) is the same run when the new config
    holds the values that reproduce it, and a different one otherwise."""
    from agents.run_dir import ADDED_KEYS, config_diff
    from worldrl.config import load_config

    new = load_config(["preset=debug"])
    old = OmegaConf.create(OmegaConf.to_container(new, resolve=True))
    del old.train["amp"]
    del old.replay["dfs"]
    del old.agent.optim["group_lr"]
    del old.env["collectors"]
    del old.env["collector_backend"]
    del old.train["cuda_graph"]
    assert set(ADDED_KEYS) >= {"train.amp", "replay.dfs.tau", "agent.optim.group_lr.actor",
                               "env.collectors", "train.cuda_graph"}
    assert config_diff(old, new) == []
    assert config_diff(old, load_config(["preset=debug", "env.collectors=2"])) == [
        "env.collectors: '<unset>' -> 2"]
    assert config_diff(old, load_config(["preset=debug", "agent.optim.group_lr.actor=1e-4"])) == [
        "agent.optim.group_lr.actor: '<unset>' -> 0.0001"]
    assert config_diff(old, load_config(["preset=debug", "train.amp=true"])) == [
        "train.amp: '<unset>' -> True"]
    assert config_diff(old, load_config(["preset=debug", "replay.dfs.tau=3"])) == [
        "replay.dfs.tau: '<unset>' -> 3"]


def test_configs_of_the_older_layout_still_resume():
    """A config.yaml written before keys moved (root ``backbone``, flat ``replay.smoothing_*``,
    DFS's imagination knobs, ``null`` sizes; a real one, from commit 3aaf40e's same_numbers
    run) is read in the current layout: the same run, and a changed value still shows."""
    from agents.run_dir import config_diff, upgrade_config
    from worldrl.config import load_config

    old = OmegaConf.load(Path(__file__).parent / "data" / "config_before_17.yaml")
    same = ["preset=debug", "seed=0", "train.threads=1", "train.log_every=8", "steps=64",
            "train.progress=false", "env=atari100k_av", "backbone=rssm",
            "replay.smoothing.mode=gaussian", "agent.world_model.loss_balance=harmony"]
    assert config_diff(old, load_config(same)) == []
    up = upgrade_config(old)
    assert "backbone" not in up and up.agent.backbone.name == "rssm"
    assert up.agent.backbone.deter == 64 and up.agent.world_model.encoder.units == 32
    assert dict(up.replay.smoothing) == {"mode": "gaussian", "sigma": 3.0, "window": 9,
                                         "alpha": 0.33, "edge": "nearest"}
    assert dict(up.replay.dfs) == {"tau": 10.0}
    assert config_diff(old, load_config([*same, "replay.smoothing.sigma=2"])) == [
        "replay.smoothing.sigma: 3.0 -> 2"]
    assert config_diff(old, load_config([*same, "agent.backbone.blocks=4"])) == [
        "agent.backbone.blocks: 8 -> 4"]
    assert upgrade_config(load_config(same)) == load_config(same)  # the current layout: as is


def test_old_mamba_run_keeps_its_mixer():
    """A mamba run made before bc_norm / gated_norm existed is read with both off (what it
    computed, so its checkpoint loads and acts as before); resuming it with the new defaults is a
    difference, and resuming it with both off is not."""
    from agents.run_dir import config_diff, upgrade_config
    from worldrl.config import load_config

    base = ["preset=debug", "backbone=mamba", "train.progress=false"]
    old = OmegaConf.create(OmegaConf.to_container(load_config(base)))  # as read from disk
    assert old.agent.backbone.bc_norm is True and old.agent.backbone.gated_norm is True
    del old.agent.backbone["bc_norm"], old.agent.backbone["gated_norm"]
    up = upgrade_config(old)
    assert up.agent.backbone.bc_norm is False and up.agent.backbone.gated_norm is False
    assert config_diff(old, load_config(base)) == ["agent.backbone.bc_norm: False -> True",
                                                   "agent.backbone.gated_norm: False -> True"]
    drama = ["agent.backbone.bc_norm=false", "agent.backbone.gated_norm=false"]
    assert config_diff(old, load_config([*base, *drama])) == []
    m2 = OmegaConf.create(OmegaConf.to_container(load_config(["preset=debug", "backbone=mamba2"])))
    del m2.agent.backbone["bc_norm"]
    assert upgrade_config(m2).agent.backbone.bc_norm is False
    s4 = load_config(["preset=debug", "backbone=s4"])
    assert "bc_norm" not in upgrade_config(s4).agent.backbone  # other backbones: untouched


class _Countdown:
    """Gymnasium env factory: the ``i``-th env made ends after ``3 + 2 i`` steps and pays ``i + 1``
    per step, so every copy's episode return is known."""

    def __init__(self):
        self.made = 0

    def __call__(self):
        import gymnasium as gym
        import numpy as np

        index = self.made
        self.made += 1

        class Countdown(gym.Env):
            observation_space = gym.spaces.Dict(
                {"vector": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return {"vector": np.zeros(2, np.float32)}, {}

            def step(self, action):
                self.t += 1
                obs = {"vector": np.full(2, self.t / 10, np.float32)}
                return obs, float(index + 1), self.t >= 3 + 2 * index, False, {}

        return Countdown()


@pytest.mark.parametrize("copies, episodes, max_steps", [
    (3, 3, 100),   # one round: each copy counted to its own end, not to the longest one's
    (3, 5, 100),   # two rounds, the first five returns kept
    (3, 3, 4),     # capped at max_steps
    (1, 2, 100),   # a single env: one episode per round
])
def test_evaluate_plays_copies_side_by_side(copies, episodes, max_steps):
    import envs
    from agents.acting import carry_primer
    from agents.random_agent import RandomAgent
    from agents.train import evaluate

    factory = _Countdown()
    env = envs.wrap(factory, num_envs=copies, seed=0)
    first = factory.made - copies  # TorchRL may build one more copy to read the specs
    lengths = [min(3 + 2 * i, max_steps) for i in range(first, first + copies)]
    one_round = [n * (i + 1) for n, i in zip(lengths, range(first, first + copies))]
    agent = RandomAgent({}, {"discrete": True, "n": 2})
    env.append_transform(carry_primer(agent))
    returns = evaluate(agent, ["vector"], env, episodes, max_steps)
    assert returns == (one_round * episodes)[:episodes]
    if copies > 1:
        assert len(set(returns[:copies])) == copies
    env.close()


@pytest.mark.parametrize("sample, mode", [(False, "eval"), (True, "train")])
def test_evaluate_takes_the_mode_or_samples(sample, mode):
    """Evaluation asks the agent for the policy's mode by default, for samples with ``sample``."""
    import envs
    from agents.acting import carry_primer
    from agents.random_agent import RandomAgent
    from agents.train import evaluate

    class Spy(RandomAgent):
        modes = set()

        def act(self, obs, is_first, carry, mode="train"):
            self.modes.add(mode)
            return super().act(obs, is_first, carry, mode)

    env = envs.wrap(_Countdown(), num_envs=2, seed=0)
    agent = Spy({}, {"discrete": True, "n": 2})
    env.append_transform(carry_primer(agent))
    evaluate(agent, ["vector"], env, 2, 10, sample=sample)
    assert agent.modes == {mode}
    env.close()


def test_lr_schedule_anneals_over_the_run():
    """``agent.optim.anneal: null`` is the number of updates the run makes, so the quickstart's
    cosine reaches 0.1 lr at its last update; a run shorter than its warm-up still builds."""
    from agents.train import agent_config, build_agent, planned_updates
    from envs import make_env
    from worldrl.config import load_config

    cfg = load_config([])
    assert cfg.env.task == "CartPole-v1" and cfg.agent.optim.schedule == "cosine"
    assert planned_updates(cfg) == (20000 - 1000) * 64 // (16 * 16) == 4750
    assert agent_config(cfg).optim.anneal == 4750
    assert agent_config(load_config(["agent.optim.anneal=300"])).optim.anneal == 300
    debug = load_config(["preset=debug"])
    assert planned_updates(debug) == 40 and agent_config(debug).optim.anneal == 101
    env = make_env("gym", "CartPole-v1")
    agent, _ = build_agent(debug, env, torch.device("cpu"))
    env.close()
    group = agent.opt.param_groups[0]
    assert (group["schedule"], group["anneal"]) == ("cosine", 101)
    assert agent.opt.current_lr(group, 100) == pytest.approx(3e-4)
    assert agent.opt.current_lr(group, 102) == pytest.approx(0.1 * 3e-4)


def test_schedules_and_run_state():
    from omegaconf import OmegaConf

    from agents.train import Every, Ratio, RunState, updates_due

    s = RunState()
    every = Every(10, s, "last_eval")
    assert [step for step in range(0, 35, 5) if every(step)] == [10, 20, 30]
    assert s.last_eval == 30
    assert not any(Every(0, s, "last_video")(step) for step in range(100))  # 0: never
    t = OmegaConf.create(dict(prefill=100, train_ratio=64, batch_size=16, seq_len=64))
    ratio = Ratio(t)
    assert [ratio(x) for x in (0, 100, 115, 116, 1124)] == [0, 0, 0, 1, 64]
    assert ratio(5000) == updates_due(5000, t)
    old = {"env_steps": 7, "updates": 3, "episodes": 1, "last_eval": 0, "last_log": 5,
           "last_checkpoint": 5, "last_video": 0, "resumes": 2}  # a checkpoint without wall_s
    state = RunState.from_dict(old)
    assert state.as_dict() == {**old, "wall_s": 0.0}


@pytest.mark.parametrize("backend", ["process", pytest.param("ray", marks=pytest.mark.slow)])
def test_collector_workers_train_and_resume(tmp_path, backend):
    """env.collectors=2: two worker processes (or Ray actors) step the envs; replay keeps one
    stream per worker and a second command with a larger budget resumes the run."""
    run = tmp_path / "run"
    workers = ["env.collectors=2", f"env.collector_backend={backend}"]
    out = worldrl("train", "preset=debug", *workers, f"run_dir={run}", *QUIET)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= 120 and summary["updates"] > 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["replay"]["carry_reward"].shape == (2,)  # one replay stream per worker
    out = worldrl("train", "preset=debug", *workers, f"run_dir={run}", "steps=200", *QUIET)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= 200 and summary["resumes"] == 1
