"""benchmarks.peer_learning: sheeprl's runs of the learning study, against a stand-in sheeprl.

The stand-in is a ``sheeprl`` executable that behaves as sheeprl's command line does where the
driver depends on it: ``root_dir/run_name/version_N`` per start, ``ckpt_<step>_0.ckpt`` every
``checkpoint.every`` policy steps, ``checkpoint.resume_from`` continuing from a checkpoint's step,
one ``policy_step=..., reward_env_0=...`` line per episode, and death on SIGTERM without a
checkpoint. Its ``python`` answers ``sheeprl_eval.py`` with returns of step / 100.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from argparse import Namespace

import pytest

from agents.report import find_runs
from benchmarks import learning, peer_learning
from benchmarks.peer_learning import (
    atari_id,
    checkpoint_wall,
    checkpoints,
    evaluate,
    sheeprl_overrides,
    train,
    write_config,
)

FAKE_SHEEPRL = r'''#!{python}
import os, re, sys, time
kv = dict(a.split("=", 1) for a in sys.argv[1:])
total, every = int(kv["algo.total_steps"]), int(kv["checkpoint.every"])
run = os.path.join(kv["root_dir"], kv["run_name"])
os.makedirs(run, exist_ok=True)
version = len([d for d in os.listdir(run) if d.startswith("version_")])
ckdir = os.path.join(run, f"version_{{version}}", "checkpoint")
os.makedirs(ckdir)
step = 0
if kv.get("checkpoint.resume_from"):
    step = int(re.search(r"ckpt_(\d+)_", kv["checkpoint.resume_from"]).group(1))
with open(os.path.join(run, "calls.txt"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
while step < total:
    step += 1
    time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
    if step % 50 == 0:
        print(f"Rank-0: policy_step={{step}}, reward_env_0={{step / 10}}", flush=True)
    if step % every == 0 or step == total:
        open(os.path.join(ckdir, f"ckpt_{{step}}_0.ckpt"), "w").write("x")
'''

FAKE_PYTHON = r'''#!{python}
import json, re, sys
args = sys.argv[1:]
assert args[0] == "-I" and args[1].endswith("sheeprl_eval.py"), args
ckpts = [a for a in args[2:args.index("--episodes")]]
n = int(args[args.index("--episodes") + 1])
for c in ckpts:
    step = int(re.search(r"ckpt_(\d+)_", c).group(1))
    print(json.dumps({{"checkpoint": c, "step": step, "returns": [step / 100] * n}}))
'''


@pytest.fixture
def fake_venv(tmp_path):
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    for name, text in (("sheeprl", FAKE_SHEEPRL), ("python", FAKE_PYTHON)):
        (bin_ / name).write_text(text.format(python=sys.executable))
        (bin_ / name).chmod(0o755)
    return bin_ / "python"


def _args(**kw) -> Namespace:
    base = dict(suite="dmc_proprio", task="cartpole_swingup", seed=0, steps=400,
                train_ratio=128.0, eval_every=200, episodes=3, max_steps=1000,
                checkpoint_every=100, threads=0, lr=None, warmup=None)
    return Namespace(**{**base, **kw})


def test_overrides_map_our_settings_onto_sheeprl_keys():
    o = dict(a.split("=", 1) for a in sheeprl_overrides("atari100k", "road_runner", 1, 50000,
                                                         64, 2500, 1))
    assert o["exp"] == "dreamer_v3_5_100k_ms_pacman"
    assert o["env.id"] == atari_id("road_runner") == "RoadRunnerNoFrameskip-v4"
    assert float(o["algo.replay_ratio"]) == 64 / (16 * 64)  # gradient steps per policy step
    assert o["algo.total_steps"] == "50000" and o["seed"] == "1" and o["num_threads"] == "1"
    assert o["algo.world_model.recurrent_model.recurrent_state_size"] == "256"
    d = dict(a.split("=", 1) for a in sheeprl_overrides("dmc_proprio", "walker_walk", 0, 50000,
                                                        128, 2500, 0))
    assert (d["env.wrapper.domain_name"], d["env.wrapper.task_name"]) == ("walker", "walk")
    assert d["algo.mlp_keys.encoder"] == "[state]" and d["env.action_repeat"] == "2"
    assert "num_threads" not in d and "algo.optimizer.lr" not in d  # sheeprl's own rate
    lr = dict(a.split("=", 1) for a in sheeprl_overrides("dmc_proprio", "walker_walk", 0, 50000,
                                                         128, 2500, 0, lr=3e-4, warmup=100))
    assert float(lr["algo.optimizer.lr"]) == 3e-4 and lr["algo.optimizer.warmup"] == "100"
    with pytest.raises(ValueError, match="'dmc'.*atari100k"):
        sheeprl_overrides("dmc", "cartpole_swingup", 0, 1, 1, 1, 0)


def test_a_run_trains_evaluates_and_reads_as_a_method(tmp_path, fake_venv):
    run = tmp_path / "run"
    run.mkdir()
    args = _args()
    write_config(run, args)
    assert train(run, args, fake_venv) == 0
    assert sorted(checkpoints(run)) == [100, 200, 300, 400]
    episodes = (run / "episodes.csv").read_text().splitlines()
    assert episodes[0] == "step,episode,return,length" and len(episodes) == 1 + 8
    rows = evaluate(run, args, fake_venv)
    assert [r["step"] for r in rows] == [200, 400]  # every eval_every steps
    assert [r["return_mean"] for r in rows] == [2.0, 4.0] and rows[0]["episodes"] == 3
    assert 0 <= rows[0]["wall_s"] <= rows[1]["wall_s"]
    (run / "summary.json").write_text(json.dumps({"env_steps": 400}))
    (found,) = find_runs([run])
    assert found.method == "sheeprl-dreamer_v3_5-xs_dims" and found.finished
    assert (found.suite, found.task, found.final) == ("dmc_proprio", "cartpole_swingup", 4.0)
    assert train(run, args, fake_venv) == 0  # at its budget: nothing more runs
    assert len((run / "sheeprl" / "run" / "calls.txt").read_text().splitlines()) == 1


def test_the_learning_rate_reaches_sheeprl_and_the_config(tmp_path, fake_venv):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    run.mkdir()
    args = _args(steps=100, lr=3e-4, warmup=100)
    write_config(run, args)
    assert train(run, args, fake_venv) == 0
    (call,) = (run / "sheeprl" / "run" / "calls.txt").read_text().splitlines()
    assert {"algo.optimizer.lr=0.0003", "algo.optimizer.warmup=100"} <= set(call.split())
    cfg = OmegaConf.load(run / "config.yaml")
    assert (cfg.agent.optim.lr, cfg.agent.optim.warmup) == (3e-4, 100)
    write_config(run, _args())  # sheeprl's own rate: no optim keys, nothing to mistake
    assert "optim" not in OmegaConf.load(run / "config.yaml").agent


def test_sigterm_stops_it_and_the_next_start_resumes_from_the_last_checkpoint(
        tmp_path, fake_venv, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    args = _args(steps=2000, checkpoint_every=200, eval_every=400)
    monkeypatch.setenv("FAKE_STEP_S", "0.002")

    def kill_after_first_checkpoint():
        while not checkpoints(run).get(400):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    assert train(run, args, fake_venv) == -1
    killer.join()
    stopped_at = max(checkpoints(run))
    assert 400 <= stopped_at < 2000
    played = [int(r.split(",")[0]) for r in (run / "episodes.csv").read_text().splitlines()[1:]]
    monkeypatch.setenv("FAKE_STEP_S", "0")
    assert train(run, args, fake_venv) == 0
    calls = (run / "sheeprl" / "run" / "calls.txt").read_text().splitlines()
    assert f"checkpoint.resume_from={checkpoints(run)[stopped_at]}" in calls[1].split()
    assert checkpoints(run)[2000].parts[-3] == "version_1"
    steps = [int(r.split(",")[0]) for r in (run / "episodes.csv").read_text().splitlines()[1:]]
    # the episodes the killed segment played after its checkpoint are cut, then played again
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 2000 // 50
    assert max(played) >= stopped_at
    segs = [json.loads(x) for x in (run / "segments.jsonl").read_text().splitlines()]
    assert segs[1]["resumed_from"] == stopped_at
    assert segs[1]["base_wall"] == pytest.approx(checkpoint_wall(run, checkpoints(run)
                                                                  [stopped_at]), abs=1e-6)


def test_checkpoint_wall_counts_only_the_time_that_led_to_it(tmp_path):
    run = tmp_path / "run"
    old = run / "sheeprl" / "run" / "version_0" / "checkpoint"
    new = run / "sheeprl" / "run" / "version_1" / "checkpoint"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    segs = [{"start": 1000.0, "base_wall": 0.0}, {"start": 2000.0, "base_wall": 300.0}]
    (run / "segments.jsonl").write_text("\n".join(json.dumps(s) for s in segs) + "\n")
    for path, t in ((old / "ckpt_100_0.ckpt", 1300.0), (old / "ckpt_200_0.ckpt", 1500.0),
                    (new / "ckpt_200_0.ckpt", 2250.0)):
        path.write_text("x")
        os.utime(path, (t, t))
    found = checkpoints(run)
    assert found[200] == new / "ckpt_200_0.ckpt"  # the later segment's copy of a step
    assert checkpoint_wall(run, found[100]) == 300.0
    assert checkpoint_wall(run, found[200]) == 300.0 + 250.0


def test_the_study_plans_the_peers_at_its_own_settings(tmp_path):
    peers = [p for p in learning.study() if p.peer]
    assert [p.name for p in peers] == ["sheeprl-dmc_proprio-cartpole_swingup-s0",
                                       "sheeprl-atari100k-boxing-s0"]
    cmd = learning.command(peers[0], tmp_path / "x", threads=1)
    assert cmd[1:3] == ["-m", "benchmarks.peer_learning"] and cmd[-2:] == ["--threads", "1"]
    kv = dict(zip(cmd[4::2], cmd[5::2]))
    ours = dict(o.split("=", 1) for o in learning.DMC_PROPRIO)
    assert (kv["--steps"], kv["--train-ratio"], kv["--eval-every"]) == (
        ours["steps"], ours["train.train_ratio"], ours["eval.every"])
    assert (kv["--lr"], kv["--warmup"]) == (ours["agent.optim.lr"], ours["agent.optim.warmup"])
    assert learning.state(tmp_path / "x") == "new"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "segments.jsonl").write_text("{}\n")
    assert learning.state(tmp_path / "x") == "started"
    with pytest.raises(SystemExit, match="multiple of"):
        peer_learning.main([str(tmp_path / "y"), "--suite", "atari100k", "--task", "boxing",
                            "--eval-every", "1000", "--checkpoint-every", "300"])
    assert not (tmp_path / "y").exists()
