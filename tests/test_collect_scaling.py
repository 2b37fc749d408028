"""benchmarks.collect_scaling: the table it writes from its measurements (runs stubbed)."""

import json

from benchmarks import collect_scaling


def test_table_takes_medians_and_speedups_against_one_collector(tmp_path, monkeypatch):
    rates = {(1, 0): 10.0, (1, 1): 12.0, (1, 2): 11.0, (2, 0): 30.0, (2, 1): 33.0, (2, 2): 3.0}
    calls = []

    def fake(suite, n, ratio, steps, prefill, skip, device, workdir):
        calls.append((suite, n))
        rate = rates[(n, sum(1 for c in calls if c == (suite, n)) - 1)]
        return {"suite": suite, "task": collect_scaling.TASKS[suite], "collectors": n,
                "train_ratio": ratio, "env_steps": 100, "updates": 4, "seconds": 100 / rate,
                "env_steps_per_s": rate, "run_seconds": 1.0}

    monkeypatch.setattr(collect_scaling, "measure", fake)
    out = tmp_path / "cs"
    assert collect_scaling.main(["--suites", "atari100k", "--ratios", "64", "--repeats", "3",
                                 "--out", str(out)]) == 0
    assert calls == [("atari100k", 1), ("atari100k", 2)] * 3  # interleaved
    table = json.loads(out.with_suffix(".json").read_text())["table"]
    assert [(r["collectors"], r["env_steps_per_s"]) for r in table] == [(1, 11.0), (2, 30.0)]
    assert abs(table[1]["speedup"] - 30 / 11) < 1e-9
    md = out.with_suffix(".md").read_text()
    assert "| atari100k | pong | 64 | 2 | 30.0 | 1.20 | 2.73x |" in md
