"""kernels.bench runs end to end at tiny sizes and writes what the issue asks for; its timing
interleaves implementations and keeps only one implementation's inputs alive at a time."""

from __future__ import annotations

import importlib
import json

import torch

kb = importlib.import_module("kernels.bench")


def test_measure_interleaves_rounds_and_builds_inputs_per_round(monkeypatch):
    events = []

    def factory(name):
        def make():
            events.append(("make", name))
            return (lambda: events.append(("fwd", name)),
                    lambda: events.append(("bwd", name)))
        return make

    monkeypatch.setattr(kb, "time_call", lambda fn, *a: (fn(), (0.001, 0.002))[1])
    monkeypatch.setattr(kb, "peak_memory", lambda fn, device: 2 ** 20)
    rows = kb.measure({"x": factory("x"), "y": factory("y")}, 10, 20, torch.device("cpu"),
                      reps=1, budget_s=0.1, rounds=2)
    makes = [name for kind, name in events if kind == "make"]
    assert makes == ["x", "y", "x", "y", "x", "y"]  # two timed rounds, then one for peak memory
    assert rows["x"]["fwd"] == {"time_ms": 1.0, "median_time_ms": 2.0, "gb_per_s": 10 / 0.001 / 1e9,
                                "peak_mem_mb": 1.0}


def test_bench_writes_json_and_png(monkeypatch, tmp_path):
    monkeypatch.setattr(kb, "SEQLENS", (8, 32))
    out, png = tmp_path / "k.json", tmp_path / "k.png"
    kb.main(["--device", "cpu", "--rounds", "1", "--reps", "1", "--budget", "0.05",
             "--out", str(out), "--png", str(png)])
    res = json.loads(out.read_text())
    assert png.stat().st_size > 10_000
    for key in ("cpu", "commit", "date", "torch", "cpu_linear_scan_backend"):
        assert res["machine"][key], key
    ls_row = res["linear_scan"]["rows"][1]
    assert ls_row["T"] == 32
    for impl in ("ours", "loop", "torch_chunked"):
        for mode in ("fwd", "fwd_bwd"):
            cell = ls_row[impl][mode]
            assert cell["time_ms"] > 0 and cell["gb_per_s"] > 0 and cell["peak_mem_mb"] is not None
    ss_row = res["selective_scan"]["rows"][0]
    assert ss_row["speedup_vs_loop"]["fwd"] > 0 and "ours" in ss_row and "loop" in ss_row
    assert set(res["min_speedup_T_ge_256"]) == {"linear_scan", "selective_scan"}


def test_bench_ops_subset_keeps_the_other_ops(monkeypatch, tmp_path):
    """--ops times only the ops named; the other ops' entries of the existing --out stay, each
    with the machine (commit, date) that measured it."""
    monkeypatch.setattr(kb, "SEQLENS", (8,))
    out, png = tmp_path / "k.json", tmp_path / "k.png"
    common = ["--device", "cpu", "--rounds", "1", "--reps", "1", "--budget", "0.05",
              "--out", str(out), "--png", str(png)]
    kb.main([*common, "--ops", "linear_scan"])
    first = json.loads(out.read_text())
    assert "linear_scan" in first and "ssd_chunk_scan" not in first
    first["linear_scan"]["machine"]["date"] = "then"  # told apart from the second run's
    out.write_text(json.dumps(first))
    kb.main([*common, "--ops", "ssd_chunk_scan"])
    res = json.loads(out.read_text())
    assert res["linear_scan"]["rows"] == first["linear_scan"]["rows"]
    assert res["linear_scan"]["machine"]["date"] == "then"
    assert res["ssd_chunk_scan"]["rows"][0]["T"] == 8
    assert res["ssd_chunk_scan"]["machine"]["date"] != "then"
    assert set(res["min_speedup_T_ge_256"]) == {"linear_scan"}


def test_a_bench_stopped_in_a_later_op_keeps_the_ops_it_finished(monkeypatch, tmp_path, capsys):
    """The GPU check stops the bench at its cap: the JSON is written after each op, and the log
    names the copy bandwidth and the seconds since the start."""
    monkeypatch.setattr(kb, "SEQLENS", (8,))

    def stopped(*args):
        raise KeyboardInterrupt  # what the check's SIGTERM amounts to, mid-op

    monkeypatch.setattr(kb, "_bench_ssd", stopped)
    out, png = tmp_path / "k.json", tmp_path / "k.png"
    try:
        kb.main(["--device", "cpu", "--rounds", "1", "--reps", "1", "--budget", "0.05",
                 "--out", str(out), "--png", str(png)])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the stop did not reach main")
    res = json.loads(out.read_text())
    assert res["ops_done"] == ["linear_scan", "selective_scan"]
    assert res["linear_scan"]["rows"][0]["T"] == 8 and "ssd_chunk_scan" not in res
    assert not png.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and lines[0].endswith(" s]")
