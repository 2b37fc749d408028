"""Chaos: a real ``worldrl train`` killed with SIGKILL at random moments (once half-way through
a checkpoint write, with its replay wrapped), restarted after each kill, then finished
(``benchmarks/reliability.py`` does the checking; ``results/reliability.md`` is its long run)."""

import pytest

from benchmarks.reliability import CHECKPOINT_EVERY, SCENARIOS, chaos


def _check(report, kills):
    assert report["problems"] == [], report["problems"]
    events = report["events"]
    assert len(events) == kills and report["survived"] == kills
    assert any(e["moment"] == "checkpoint write" and e["partial_checkpoint_tmp"] for e in events)
    assert all(e["sampled_after_checkpoint"] == 0 for e in events if "sampled" in e)
    # a kill costs at most one checkpoint interval (and the collector batch in flight)
    assert max(e["env_steps_lost"] for e in events) <= CHECKPOINT_EVERY + 16
    assert report["summary"] and report["summary"]["resumes"] >= 1


def test_sigkill_chaos_rssm(tmp_path):
    kills = 3  # all by ~220 env steps (the replay wraps at 150); 500 leaves time for the last
    overrides = [o if not o.startswith("steps=") else "steps=500" for o in SCENARIOS["gym-rssm"]]
    report = chaos(tmp_path / "run", overrides, kills, seed=1)
    _check(report, kills)
    assert any(e.get("wrapped") and e["rows_after_checkpoint"] for e in report["events"])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["gym-s4-dfs", "gym-mamba-dfs", "atari100k-rssm"])
def test_sigkill_chaos_long(tmp_path, scenario):
    kills = 6
    _check(chaos(tmp_path / "run", SCENARIOS[scenario], kills, seed=2), kills)
