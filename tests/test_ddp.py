"""The data-parallel learner (agents/ddp.py): torchrun with gloo on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from agents.run_dir import load_checkpoint
from agents.train import updates_due

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(var, None)


def torchrun(n, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={n}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def worldrl(*args):
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_update_equals_one_process_on_the_concatenated_batch(tmp_path):
    """After each of two updates both ranks hold the same parameters and buffers, equal to one
    process's update on the whole batch (gradients averaged, the return normaliser's
    percentiles over both ranks' returns)."""
    worker = str(ROOT / "tests" / "ddp_worker.py")
    one = subprocess.run([sys.executable, worker, str(tmp_path), "single"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, worker, str(tmp_path), "ddp")
    assert two.returncode == 0, two.stderr[-2000:]
    first = torch.load(tmp_path / "single-rank0-u0.pt")
    for k in range(2):
        single = torch.load(tmp_path / f"single-rank0-u{k}.pt")
        r0 = torch.load(tmp_path / f"ddp-rank0-u{k}.pt")
        r1 = torch.load(tmp_path / f"ddp-rank1-u{k}.pt")
        assert single.keys() == r0.keys() == r1.keys()
        for name in single:
            assert torch.equal(r0[name], r1[name]), name  # bit-identical across ranks
            if single[name].is_floating_point():
                torch.testing.assert_close(r0[name], single[name], rtol=1e-4, atol=2e-6,
                                           msg=name)
            else:
                assert torch.equal(r0[name], single[name]), name
    # not vacuous: the second update moved the weights by far more than the tolerance, and the
    # normaliser holds the whole batch's percentiles
    moved = max((single[n] - first[n]).abs().max().item() for n in single
                if single[n].is_floating_point())
    assert moved > 1e-3
    assert single["ac.retnorm.hi"] > single["ac.retnorm.lo"]


def test_torchrun_trains_resumes_and_refuses_another_world_size(tmp_path):
    run = tmp_path / "run"
    args = ["-m", "agents.cli", "train", "preset=debug", "train.ddp=true", f"run_dir={run}",
            "train.progress=false"]
    first = torchrun(2, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    # rank 0 writes the run; each rank has its own replay shard
    assert (run / "replay").is_dir() and (run / "replay-rank1").is_dir()
    assert not (run / "replay-rank2").exists()
    ckpt = load_checkpoint(run / "checkpoint.pt")
    cfg = OmegaConf.load(run / "config.yaml")
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 1
    steps = ckpt["counters"]["env_steps"]
    assert steps >= cfg.steps  # both ranks' steps
    # the train ratio counts the effective batch of 2 x batch_size
    assert ckpt["counters"]["updates"] == updates_due(steps, cfg.train, ranks=2)
    assert ckpt["counters"]["updates"] < updates_due(steps, cfg.train, ranks=1)
    assert (run / "eval.csv").exists() and (run / "summary.json").exists()
    rows = [line for line in (run / "episodes.csv").read_text().splitlines()[1:] if line]
    assert len(rows) == ckpt["counters"]["episodes"] > 0  # every rank's episodes, logged once

    more = torchrun(2, *args, "steps=200")
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"resumed {run} at env step {steps}" in more.stdout
    ckpt2 = load_checkpoint(run / "checkpoint.pt")
    assert ckpt2["counters"]["env_steps"] >= 200 and ckpt2["counters"]["resumes"] == 1
    assert ckpt2["counters"]["updates"] == updates_due(ckpt2["counters"]["env_steps"],
                                                       cfg.train, ranks=2)

    before = (run / "checkpoint.pt").read_bytes()
    three = torchrun(3, *args, "steps=400")
    assert three.returncode != 0
    assert "trained by 2 data-parallel process(es), not 3" in three.stdout + three.stderr
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("how, message", [
    ("plain", "train.ddp=true needs a torchrun launch"),
    ("torchrun", "train.ddp is false"),
])
def test_ddp_without_torchrun_or_torchrun_without_ddp_is_refused(tmp_path, how, message):
    run = tmp_path / "run"
    if how == "plain":
        proc = worldrl("train", "preset=debug", "train.ddp=true", f"run_dir={run}")
    else:
        proc = torchrun(2, "-m", "agents.cli", "train", "preset=debug", f"run_dir={run}")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "worldrl train: error: " in out and message in out
    if how == "plain":  # (torchrun prints its own report of a failed worker)
        assert "Traceback" not in out
    assert not run.exists()


def test_updates_due_counts_every_ranks_batch():
    t = OmegaConf.create({"prefill": 100, "train_ratio": 64, "batch_size": 16, "seq_len": 64})
    assert updates_due(100 + 1024, t) == 64
    assert updates_due(100 + 1024, t, ranks=2) == 32
    assert updates_due(100 + 1024, t, ranks=4) == 16


def test_a_data_parallel_agent_pickles_for_collector_workers_without_its_group():
    """env.collectors > 1 sends the acting agent to worker processes; the process group (which
    cannot be pickled) stays behind, everything else goes."""
    import pickle
    import threading

    from agents.ddp import World
    from tests.test_dreamer_agent import TINY, make_agent

    agent = make_agent(space={"vector": ((5,), torch.float32)}, cfg=TINY)
    group = threading.Lock()  # stands in for a ProcessGroup: not picklable either
    agent.setup_distributed(World(0, 2, group))
    assert agent.world.group is group and agent.ac.retnorm.group is group
    copy = pickle.loads(pickle.dumps(agent))
    assert copy.world is None and copy.ac.retnorm.group is None
    assert agent.world.group is group and agent.ac.retnorm.group is group  # the original keeps it
    for (name, a), (_, b) in zip(agent.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
