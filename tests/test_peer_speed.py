"""benchmarks.peer_speed without sheeprl and without timing: argument parsing, the interleaved
orchestration of two workers (fake ones, tiny Python programs), the rows, ratios and report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import peer_speed as ps

# A fake worker: says ready with fixed parameter counts, then answers every "step" with a fixed
# time, logging "<side> start" / "<side> end" around a short sleep to a shared file.
FAKE = r"""
import json, sys, time
side, t, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
print("a library's chatter on stdout", flush=True)
print(json.dumps({"ready": True, "params": {"world_model": 10, "actor": 2, "critic": 3},
                  "info": {"side": side}}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    with open(log, "a") as f:
        f.write(side + " start\n")
    time.sleep(0.05)
    with open(log, "a") as f:
        f.write(side + " end\n")
    print(json.dumps({"time": t}), flush=True)
"""

FAILS_AT_BUILD = ("import json; print(json.dumps({'error': "
                  "'NotImplementedError: compile: not yet'}), flush=True)")
DIES = "import sys; sys.stderr.write('boom: no module named sheeprl\\n'); sys.exit(3)"


def fake(side: str, t: float, log) -> list[str]:
    return [sys.executable, "-c", FAKE, side, str(t), str(log)]


def test_parse_args_defaults_and_choices():
    a = ps.parse_args([])
    assert a.sizes == ["s", "xs"] and a.precisions == ["fp32", "bf16"] and a.threads == [1, 2]
    assert a.rounds == 3 and a.warmup == 1 and not a.compile and not a.setup_only
    assert a.out == "results/peer_speed_cpu"
    a = ps.parse_args(["--sizes", "xs", "--precisions", "bf16", "--threads", "2", "--rounds",
                       "1", "--compile", "--venv", "/tmp/v"])
    assert (a.sizes, a.precisions, a.threads, a.rounds, a.compile, a.venv) == \
        (["xs"], ["bf16"], [2], 1, True, "/tmp/v")
    for bad in (["--precisions", "fp16"], ["--sizes", "m"], ["--rounds", "0"],
                ["--threads", "0"]):
        with pytest.raises(SystemExit):
            ps.parse_args(bad)


def test_configs_cover_the_grid():
    cs = ps.configs(ps.parse_args(["--sizes", "s", "xs", "--precisions", "fp32", "bf16",
                                   "--threads", "1", "2"]))
    assert len(cs) == 8
    assert {(c["size"], c["precision"], c["threads"]) for c in cs} == {
        (s, p, t) for s in ("s", "xs") for p in ("fp32", "bf16") for t in (1, 2)}
    assert all(c["batch"] == 16 and c["seq"] == 64 and c["compile"] is False for c in cs)


def test_worker_env_sets_every_thread_variable():
    env = ps.worker_env(2, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env["PATH"] == "/bin"
    assert all(env[v] == "2" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


def test_worker_commands_use_each_sides_python(tmp_path):
    spec = {"size": "xs", "precision": "bf16", "threads": 1, "compile": False, "batch": 16,
            "seq": 64, "warmup": 1}
    cmds = ps.worker_commands(spec, tmp_path / "bin" / "python")
    assert cmds["ours"][:3] == [sys.executable, "-m", "benchmarks.peer_speed"]
    assert cmds["sheeprl"][0] == str(tmp_path / "bin" / "python")
    assert json.loads(cmds["ours"][-1])["side"] == "ours"
    assert json.loads(cmds["sheeprl"][-1]) == {**spec, "side": "sheeprl"}


def test_sheeprl_overrides_pick_the_config_and_precision():
    spec = {"size": "s", "precision": "bf16", "threads": 2, "compile": False, "batch": 16,
            "seq": 64}
    o = ps.sheeprl_overrides(spec)
    assert "algo=dreamer_v3_5_12M" in o and f"exp={ps.PEER_EXP}" in o
    assert "fabric.precision=bf16-mixed" in o and "fabric.accelerator=cpu" in o
    assert "algo.per_rank_batch_size=16" in o and "algo.per_rank_sequence_length=64" in o
    assert "algo.compile.enabled=False" in o
    # --compile compiles ours only; sheeprl's own compile is --peer-compile
    o = ps.sheeprl_overrides({**spec, "size": "xs", "precision": "fp32", "compile": True})
    assert "algo=dreamer_v3_5_1M" in o and "fabric.precision=32-true" in o
    assert "algo.compile.enabled=False" in o
    o = ps.sheeprl_overrides({**spec, "peer_compile": True})
    assert "algo.compile.enabled=True" in o


def test_sheeprl_batch_is_time_first_with_context():
    torch = pytest.importorskip("torch")
    d = ps.sheeprl_batch(batch=3, seq=5, context=1, deter=16, stoch=4)
    assert d["rgb"].shape == (6, 3, 3, 64, 64) and d["rgb"].dtype == torch.uint8
    assert d["actions"].shape == (6, 3, ps.ACTIONS)
    assert torch.equal(d["actions"].sum(-1), torch.ones(6, 3))  # one-hot
    for k in ("rewards", "terminated", "truncated", "is_first"):
        assert d[k].shape == (6, 3, 1) and d[k].dtype == torch.float32
    assert d["deter"].shape == (6, 3, 16) and d["deter"].dtype == torch.float16
    assert d["stoch"].shape == (6, 3, 4) and d["stoch"].dtype == torch.uint8


def test_interleave_alternates_and_never_overlaps(tmp_path):
    log = tmp_path / "order.txt"
    out = ps.interleave({"ours": fake("ours", 0.1, log), "sheeprl": fake("sheeprl", 0.25, log)},
                        rounds=4, timeout=60, log=lambda *_: None)
    assert out["ours"]["times"] == [0.1] * 4 and out["sheeprl"]["times"] == [0.25] * 4
    assert out["ours"]["error"] is None and out["sheeprl"]["error"] is None
    assert out["ours"]["params"] == {"world_model": 10, "actor": 2, "critic": 3}
    events = log.read_text().split("\n")[:-1]
    # one worker at a time: every start is followed by the same side's end
    assert all(events[i].endswith("start") and events[i + 1] == events[i].split()[0] + " end"
               for i in range(0, len(events), 2))
    firsts = [events[i].split()[0] for i in range(0, len(events), 4)]
    assert firsts == ["ours", "sheeprl", "ours", "sheeprl"]  # the first side alternates
    assert len(events) == 16


def test_interleave_keeps_going_when_a_side_fails(tmp_path):
    log = tmp_path / "order.txt"
    out = ps.interleave({"ours": [sys.executable, "-c", FAILS_AT_BUILD],
                         "sheeprl": fake("sheeprl", 0.2, log)},
                        rounds=2, timeout=60, log=lambda *_: None)
    assert out["ours"]["error"] == "NotImplementedError: compile: not yet"
    assert out["ours"]["times"] == [] and out["sheeprl"]["times"] == [0.2, 0.2]
    out = ps.interleave({"ours": fake("ours", 0.1, log),
                         "sheeprl": [sys.executable, "-c", DIES]},
                        rounds=1, timeout=60, log=lambda *_: None)
    assert "exited (3)" in out["sheeprl"]["error"] and "no module named sheeprl" in \
        out["sheeprl"]["error"]
    assert out["ours"]["times"] == [0.1]


def test_interleave_times_out_a_silent_worker(tmp_path):
    silent = [sys.executable, "-c", "import time; time.sleep(30)"]
    out = ps.interleave({"ours": silent}, rounds=1, timeout=0.5, log=lambda *_: None)
    assert out["ours"]["error"].startswith("TimeoutError")


def test_summaries_and_ratios():
    assert ps.summarize([3.0, 1.0, 2.0, 10.0]) == {"median_s": 2.5, "min_s": 1.0, "n": 4}
    assert ps.summarize([]) == {"median_s": None, "min_s": None, "n": 0}
    assert ps.ratio(3.0, 1.5) == 2.0
    assert ps.ratio(None, 1.0) is None and ps.ratio(1.0, None) is None
    spec = {"size": "s", "precision": "fp32", "threads": 1, "compile": False}
    p = {"world_model": 10, "actor": 2, "critic": 3}
    row = ps.make_row(spec, {
        "ours": {"times": [1.0, 2.0, 4.0], "params": p, "info": None, "error": None},
        "sheeprl": {"times": [3.0, 4.0, 5.0], "params": p, "info": None, "error": None}})
    assert row["ours"]["median_s"] == 2.0 and row["sheeprl"]["median_s"] == 4.0
    assert row["ratio_median"] == 2.0 and row["ratio_min"] == 3.0
    assert row["peer_config"] == f"exp={ps.PEER_EXP} algo=dreamer_v3_5_12M"
    row = ps.make_row(spec, {"ours": {"times": [], "params": None, "info": None,
                                      "error": "NotImplementedError: x"},
                             "sheeprl": {"times": [3.0], "params": p, "info": None,
                                         "error": None}})
    assert row["ratio_median"] is None and row["sheeprl"]["min_s"] == 3.0


def test_main_writes_json_and_markdown(tmp_path, monkeypatch):
    log = tmp_path / "order.txt"
    monkeypatch.setattr(ps, "ensure_venv", lambda venv: {"torch": "2.13.0", "sheeprl": "0.8.4"})
    monkeypatch.setattr(ps, "worker_commands", lambda spec, py: {
        "ours": fake("ours", 0.5, log),
        "sheeprl": fake("sheeprl", 1.5 if spec["size"] == "s" else 0.25, log)})
    out = tmp_path / "res" / "peer"
    assert ps.main(["--sizes", "s", "xs", "--precisions", "fp32", "--threads", "1",
                    "--rounds", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["size"] for r in report["results"]] == ["s", "xs"]
    assert [r["ratio_median"] for r in report["results"]] == [3.0, 0.5]
    assert report["rounds"] == 2 and report["peer_versions"]["sheeprl"] == "0.8.4"
    assert "machine" in report and "commit" in report
    md = out.with_suffix(".md").read_text()
    assert ("| s / dreamer_v3_5_12M | fp32 | 1 | False / False | 0.500 | 0.500 | 1.500 | 1.500 "
            "| 3.00 |") in md
    assert "| xs / dreamer_v3_5_1M | fp32 | 1 | False / False |" in md and "| 0.50 | 0.50 |" in md
    assert "0.00M (0.00 / 0.00 / 0.00)" in md  # the fake's 15 parameters
    assert "Architecture" in md


def test_main_reports_an_error_row_instead_of_crashing(tmp_path, monkeypatch):
    log = tmp_path / "order.txt"
    monkeypatch.setattr(ps, "ensure_venv", lambda venv: None)
    monkeypatch.setattr(ps, "worker_commands", lambda spec, py: {
        "ours": [sys.executable, "-c", FAILS_AT_BUILD], "sheeprl": fake("sheeprl", 1.0, log)})
    out = tmp_path / "peer"
    assert ps.main(["--sizes", "xs", "--precisions", "fp32", "--threads", "1", "--rounds", "1",
                    "--compile", "--out", str(out)]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert row["compile"] is True and row["ratio_median"] is None
    assert row["ours"]["error"] == "NotImplementedError: compile: not yet"
    md = out.with_suffix(".md").read_text()
    assert "ours: NotImplementedError: compile: not yet" in md


def test_setup_only_stops_after_the_environment(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ps, "ensure_venv", lambda venv: calls.append(venv))
    monkeypatch.setattr(ps, "interleave", lambda *a, **k: pytest.fail("timed in --setup-only"))
    assert ps.main(["--setup-only", "--venv", str(tmp_path / "v")]) == 0
    assert calls == [str(tmp_path / "v")]


def test_ensure_venv_skips_a_ready_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(ps, "peer_versions", lambda py: {"torch": "2.13.0+cpu",
                                                         "sheeprl": "0.8.4"})
    monkeypatch.setattr(ps.subprocess, "run",
                        lambda *a, **k: pytest.fail(f"ran {a} on a ready environment"))
    assert ps.ensure_venv(tmp_path / "v", log=lambda *_: None)["sheeprl"] == "0.8.4"
    assert not ps.versions_ok({"torch": "2.12.0", "sheeprl": "0.8.4"})
    assert not ps.versions_ok({"torch": "2.13.0", "sheeprl": "0.8.3"})
    assert not ps.versions_ok(None)


# The real worker loop (worker_main) with a fake builder: library output printed while building
# or stepping must not break the protocol, warm-up steps are not timed, and the times are real.
REAL_WORKER = r"""
import sys, time
from benchmarks import peer_speed as ps
calls = []
def build(spec):
    print("chatter while building")
    def step():
        calls.append(1)
        print("chatter while stepping")
        time.sleep(0.02 * len(calls))
    return {"world_model": 1, "actor": 1, "critic": 1}, {}, step
ps.BUILDERS["fake"] = build
sys.exit(ps.worker_main({"side": "fake", "threads": 1, "warmup": 2}))
"""


def test_worker_main_protocol():
    repo = Path(ps.__file__).resolve().parents[1]
    out = ps.interleave({"ours": [sys.executable, "-c", REAL_WORKER]}, rounds=2, cwd=repo,
                        timeout=60, log=lambda *_: None)
    assert out["ours"]["error"] is None and out["ours"]["params"]["actor"] == 1
    # the two warm-up calls slept 0.02 and 0.04 s; the timed ones 0.06 and 0.08 s
    t = out["ours"]["times"]
    assert len(t) == 2 and 0.055 < t[0] < t[1] and t[1] > 0.075
