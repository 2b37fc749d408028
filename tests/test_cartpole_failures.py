"""benchmarks.cartpole_failures: why the greedy CartPole policy's episodes end."""

import json

import numpy as np
import pytest

from agents.cli import main as worldrl
from benchmarks.cartpole_failures import main, why_ended


def test_why_ended_reads_gymnasiums_thresholds():
    assert why_ended(np.array([2.41, 0.0, 0.0, 0.0]), 300, 500) == "position"
    assert why_ended(np.array([-2.41, 0.0, 0.5, 0.0]), 300, 500) == "position"  # checked first
    assert why_ended(np.array([0.0, 0.0, -0.21, 0.0]), 30, 500) == "angle"
    assert why_ended(np.array([2.3, 0.0, 0.2, 0.0]), 500, 500) == "truncated"
    assert why_ended(np.array([2.3, 0.0, 0.2, 0.0]), 499, 500) == "running"


def test_failures_of_a_trained_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert worldrl(["train", "preset=debug", f"run_dir={run}", "train.progress=false"]) == 0
    out = tmp_path / "failures.json"
    assert main([str(run / "checkpoint.pt"), "--episodes", "3", "--trace", "--replay",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m benchmarks.cartpole_failures ")
    assert result["commit"] and result["date"].startswith("20") and "cpu" in result["machine"]
    episodes = result["episodes"]
    assert [e["seed"] for e in episodes] == [1000, 1001, 1002]
    assert sum(result["ended"].values()) == 3
    for e in episodes:  # a debug agent fails early, and the cause matches the last state
        assert e["ended"] in ("angle", "position", "truncated")
        assert e["ended"] != "position" or abs(e["x_end"]) > 2.4
    trace = episodes[0]["trace"]
    assert len(trace) == episodes[0]["return"]
    assert all(0 <= r["continue"] <= 1 and abs(sum(r["policy"]) - 1) < 1e-2 for r in trace)
    rep = result["replay"]
    assert rep["terminations"] > 0 and rep["position"] + rep["angle"] == rep["terminations"]
    assert "ended: angle" in capsys.readouterr().out
    assert main([str(run), "--episodes", "1"]) == 0  # the run directory names its checkpoint
    assert f"{run / 'checkpoint.pt'}: trained for" in capsys.readouterr().out


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*nothing.pt"):
        main([str(tmp_path / "nothing.pt")])
