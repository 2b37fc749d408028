"""benchmarks.learning: the study runner resumes, never retrains a finished run, stops cleanly."""

import json
import shutil

from benchmarks.learning import main

TINY = ["preset=debug", "steps=200", "eval.every=40", "eval.episodes=1", "eval.max_steps=30"]


def test_a_finished_run_is_reported_and_never_trained_again(tmp_path):
    args = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "learning"),
            "--only", "atari100k-pong-random-s0", "--extra", *TINY]
    assert main(args) == 0
    run = tmp_path / "runs" / "atari100k-pong-random-s0"
    assert json.loads((run / "summary.json").read_text())["env_steps"] >= 200
    steps = [line.split(",")[0] for line in (run / "eval.csv").read_text().splitlines()[1:]]
    assert steps[-1] == "200" and len(set(steps)) == len(steps)  # the end evaluated once
    md = (tmp_path / "learning.md").read_text()
    assert "| atari100k-pong-random-s0 | finished |" in md
    assert "| atari100k | pong | random | 1 |" in md  # worldrl report's table
    assert "| atari100k-boxing-dreamer-s0 | new |" in md  # the whole study, not --only's runs
    assert main(args) == 0
    log = [json.loads(x) for x in (tmp_path / "runs" / "study_log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["start", "exit"] and log[1]["rc"] == 0
    from benchmarks.machine import cpu_model

    assert log[0]["cpu"] == cpu_model()  # which machine: wall-clocks across hosts differ


def test_a_run_lost_with_its_machine_counts_from_its_record(tmp_path, capsys):
    """The report keeps a record of each run beside itself (results/learning_cpu_runs/RUN): when
    the run directories are gone (another machine), the run is reported from its record and not
    trained again; when the records are gone too, the study refuses to rewrite a report that
    shows the run, unless --drop-lost."""
    runs, out = tmp_path / "runs", tmp_path / "learning"
    args = ["--runs", str(runs), "--out", str(out), "--only", "atari100k-pong-random-s0",
            "--extra", *TINY]
    assert main(args) == 0
    rec = tmp_path / "learning_runs" / "atari100k-pong-random-s0"
    assert (rec / "eval.csv").read_text() == (runs / rec.name / "eval.csv").read_text()
    assert {"config.yaml", "summary.json", "study_log.jsonl"} <= {f.name for f in rec.iterdir()}
    assert not list(rec.glob("*.pt"))  # no checkpoint, no replay: small enough to commit
    before = (out.with_suffix(".md")).read_text()
    shutil.rmtree(runs)
    assert main(args) == 0
    assert not (runs / rec.name).exists()  # not trained again
    md = out.with_suffix(".md").read_text()
    assert "| atari100k-pong-random-s0 | finished |" in md
    row = next(x for x in before.splitlines() if x.startswith("| atari100k | pong | random |"))
    assert row in md  # the same numbers, from the record
    shutil.rmtree(rec)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "atari100k-pong-random-s0" in err and "--drop-lost" in err
    assert out.with_suffix(".md").read_text() == md and not (runs / rec.name).exists()
    assert main([*args, "--report-only", "--drop-lost"]) == 0
    assert "| atari100k-pong-random-s0 | new |" in out.with_suffix(".md").read_text()


def test_minutes_stops_runs_cleanly_and_they_resume(tmp_path):
    args = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "learning"),
            "--only", "atari100k-pong-random-s0", "--minutes", "0.25",
            "--extra", *TINY[:1], "steps=100000000", "eval.every=0"]
    assert main(args) == 0
    run = tmp_path / "runs" / "atari100k-pong-random-s0"
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    log = [json.loads(x) for x in (tmp_path / "runs" / "study_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "exit" and log[-1]["rc"] == 0  # SIGTERM: checkpoint, exit 0
    assert "| atari100k-pong-random-s0 | started |" in (tmp_path / "learning.md").read_text()


def test_dreamer_runs_get_a_sampled_evaluation_and_diagnostics(tmp_path):
    """After a DreamerV3 run finishes the study evaluates its last checkpoint again with sampled
    actions (the report's column) and lists what its curves show, with an open-loop still."""
    args = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "learning"),
            "--only", "atari100k-pong-dreamer-s0", "--extra", *TINY, "train.compile=false",
            "train.train_ratio=2", "train.video_every=100", "eval.every=100"]
    assert main(args) == 0
    run = tmp_path / "runs" / "atari100k-pong-dreamer-s0"
    sampled = json.loads((run / "eval_checkpoint_sample.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert sampled["policy"] == "sample" and sampled["env_steps"] == summary["env_steps"]
    (row,) = json.loads((tmp_path / "learning_figs" / "report.json").read_text())["rows"]
    assert row["sampled_final"] == {"runs": [sampled["return_mean"]],
                                    "mean": sampled["return_mean"]}
    md = (tmp_path / "learning.md").read_text()
    diag = next(x for x in md.splitlines() if x.startswith("| atari100k-pong-dreamer-s0 | 2"))
    assert "pixels" in diag and "→" in diag and "openloop_atari100k-pong-dreamer-s0.png" in diag
    assert (tmp_path / "learning_figs" / "openloop_atari100k-pong-dreamer-s0.png").exists()
    mtime = (run / "eval_checkpoint_sample.json").stat().st_mtime
    assert main([*args, "--sampled-evals"]) == 0  # up to date: not evaluated again
    assert (run / "eval_checkpoint_sample.json").stat().st_mtime == mtime
    # the run's record carries the diagnostics and the sampled evaluation past the run's loss
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "learning_figs")
    assert main([*args, "--report-only"]) == 0
    assert diag in (tmp_path / "learning.md").read_text().splitlines()
    assert (tmp_path / "learning_figs" / "openloop_atari100k-pong-dreamer-s0.png").exists()
    (row,) = json.loads((tmp_path / "learning_figs" / "report.json").read_text())["rows"]
    assert row["sampled_final"]["runs"] == [sampled["return_mean"]]


def test_the_peer_table_holds_only_runs_at_the_peers_settings(tmp_path):
    """The diagnostic arm (DreamerV3's learning rate) has cartpole and boxing dreamer runs too,
    but not at sheeprl's settings."""
    from benchmarks.learning import DIAGNOSTICS, peer_table, study

    assert [q.name for q in study()[-len(DIAGNOSTICS):]] == [q.name for q in DIAGNOSTICS]
    names = ["dmc_proprio-cartpole_swingup-dreamer-s0", "sheeprl-dmc_proprio-cartpole_swingup-s0",
             *[q.name for q in DIAGNOSTICS]]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.csv").write_text(
            "step,return_mean,return_std,episodes,wall_s\n5000,10.0,0.0,10,60.0\n")
    starts = [(names[0], "train.threads=1", None), (names[1], "--threads 1", "Xeon"),
              (names[1], "--threads 2", "Xeon"), (names[1], "--threads 2", "Xeon"),
              (names[1], "--threads 2", "EPYC")]
    (tmp_path / "study_log.jsonl").write_text("".join(
        json.dumps({"run": run, "event": "start", "command": f"-m x {threads}",
                    **({"cpu": cpu} if cpu else {})}) + "\n" for run, threads, cpu in starts))
    table = "\n".join(peer_table({q.name: tmp_path / q.name for q in study()}, study()))
    assert names[0] in table and names[1] in table
    assert not any(q.name in table for q in DIAGNOSTICS)
    rows = {r.split(" | ")[1]: r for r in table.splitlines() if r.startswith("| ")}
    assert rows[names[0]].endswith("| 1 on ? |")  # a start logged before the CPU was
    assert rows[names[1]].endswith("| 1 on Xeon, 2 on Xeon, 2 on EPYC |")


def test_the_diagnostic_arm_is_its_cells_at_dreamerv3s_optimiser_defaults():
    """Each diagnostic differs from its study cell only in the learning rate and warm-up, and
    those are the config's defaults (DreamerV3's): the study's first runs, made before the
    study set its rate, are these runs."""
    from benchmarks.learning import DIAGNOSTICS, DREAMERV3_LR, LR, study
    from worldrl.config import load_config

    cells = {q.name: q for q in study()}
    for diag in DIAGNOSTICS:
        cell = cells[diag.name.replace("-lr4e-5", "")]
        assert set(diag.overrides) ^ set(cell.overrides) == {*LR, *DREAMERV3_LR}
        plain = [o for o in diag.overrides if o not in DREAMERV3_LR]
        assert load_config(diag.overrides) == load_config(plain)
        assert load_config(cell.overrides).agent.optim.lr == 3e-4
    assert load_config(DIAGNOSTICS[0].overrides).agent.optim.lr == 4e-5


def _run(path, evals, finished=False, seed=0, metrics=0, threads=1, extra=""):
    """A hand-written run directory: config.yaml, eval.csv with evaluations at ``evals``."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\nrun_dir: {path}\ndevice: auto\n"
                                      f"env:\n  suite: dmc_proprio\n  task: cartpole_swingup\n"
                                      f"agent:\n  name: random\n"
                                      f"train:\n  threads: {threads}\n  train_ratio: 64\n"
                                      + extra)
    (path / "eval.csv").write_text("step,return_mean,return_std,episodes,wall_s\n" + "".join(
        f"{s},{s / 1000},0,10,{s / 10}\n" for s in evals))
    if finished:
        (path / "summary.json").write_text(json.dumps({"env_steps": evals[-1]}))
    if metrics:
        (path / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 8 * i, "kl/dyn": float(i)}) + "\n" for i in range(metrics)))
    return path


def test_where_the_report_reads_a_run_from_live_or_record(tmp_path):
    from benchmarks.learning import Planned, where

    q = Planned("dmc_proprio-cartpole_swingup-dreamer-s0", ())
    runs, records = tmp_path / "runs", tmp_path / "records"
    live, rec = runs / q.name, records / q.name
    assert where(q, runs, records) == live  # no record
    _run(rec, [10000, 20000])  # an unfinished record from a lost machine
    assert where(q, runs, records) == rec  # no live run
    _run(live, [10000], threads=2)  # trained afresh, not yet as far: the record still shows
    assert where(q, runs, records) == rec
    shutil.rmtree(live)
    _run(live, [10000, 20000])  # as far: a tie goes to the live run
    assert where(q, runs, records) == live
    shutil.rmtree(rec)
    _run(rec, [10000, 20000, 50000], finished=True)
    assert where(q, runs, records) == rec  # a finished record beats an unfinished run
    shutil.rmtree(live)
    _run(live, [10000], finished=True)
    assert where(q, runs, records) == live  # a finished run replaces its record
    shutil.rmtree(live)
    _run(live, [10000, 20000, 50000, 60000], finished=True, seed=1)
    assert where(q, runs, records) == rec  # other settings never take the record's place
    shutil.rmtree(live)
    # a key the record's commit did not have yet, another log interval: the same settings
    _run(live, [10000, 20000, 50000, 60000], finished=True, extra="  log_every: 7\neval:\n"
         "  envs: 4\n")
    assert where(q, runs, records) == live


def test_record_thins_metrics_and_keeps_a_record_with_other_settings(tmp_path, capsys):
    from benchmarks.learning import METRIC_ROWS, Planned, record, write_report

    q = Planned("dmc_proprio-cartpole_swingup-dreamer-s0", ())
    runs, out = tmp_path / "runs", tmp_path / "learning"
    records = tmp_path / "learning_runs"
    _run(runs / q.name, [10000, 20000], metrics=3 * METRIC_ROWS + 7)
    assert record(q, runs, records)
    kept = [json.loads(x) for x in (records / q.name / "metrics.jsonl").read_text().splitlines()]
    assert METRIC_ROWS // 2 < len(kept) <= METRIC_ROWS + 1
    assert kept[0]["step"] == 0 and kept[-1]["step"] == 8 * (3 * METRIC_ROWS + 6)  # the ends
    assert record(q, runs, records)  # again: the same record
    before = (records / q.name / "eval.csv").read_text()
    shutil.rmtree(runs / q.name)
    _run(runs / q.name, [10000, 20000, 30000], finished=True, seed=7)
    assert not record(q, runs, records)  # other settings: the record stays
    assert (records / q.name / "eval.csv").read_text() == before
    write_report(runs, out, [q])
    assert "seed" in capsys.readouterr().err
    md = out.with_suffix(".md").read_text()
    assert f"| {q.name} | started (record; the run in" in md and "seed: not taken)" in md


def test_a_started_run_without_evaluations_is_not_called_lost(tmp_path):
    from benchmarks.learning import Planned, lost_runs

    a, b, c = (Planned(f"atari100k-pong-dreamer-s{i}", ()) for i in range(3))
    runs, out = tmp_path / "runs", tmp_path / "learning"
    (tmp_path / "learning.md").write_text(
        f"| run | state |\n|---|---|\n| {a.name} | started |\n| {b.name} | started |\n"
        f"| {c.name} | finished |\n")
    figs = tmp_path / "learning_figs"
    figs.mkdir()
    (figs / "report.json").write_text(json.dumps(
        {"rows": [{"unfinished": [f"../runs/{b.name}"]}]}))
    # a had no evaluations when the report was written; b had; c was finished
    assert lost_runs(out, runs, [a, b, c]) == [b.name, c.name]
    _run(runs / b.name, [10000])
    _run(runs / c.name, [10000])  # c trained again, not finished: still lost
    assert lost_runs(out, runs, [a, b, c]) == [c.name]
    shutil.rmtree(runs / c.name)
    _run(runs / c.name, [10000], finished=True)
    assert lost_runs(out, runs, [a, b, c]) == []


def test_the_gpu_report_is_titled_and_set_as_the_gpu_run(tmp_path):
    from benchmarks.learning import gpu_run

    assert main(["--gpu", "--report-only", "--runs", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "gpu")]) == 0
    md = (tmp_path / "gpu.md").read_text()
    assert md.startswith("# Learning: one Atari100k game with the DreamerV3 recipe, on a GPU")
    assert " ".join(gpu_run().overrides) in md and "DMC proprio" not in md
    assert f"| {gpu_run().name} | new |" in md


# a stand-in for a run: SIGTERM -> write "stopped" and exit 0 (the clean stop), or ignore it
_CHILD = """
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    out.write_text("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop if sys.argv[2] == "clean" else signal.SIG_IGN)
out.write_text("running")
time.sleep(120)
"""


def _fake_runs(monkeypatch, tmp_path, behaviour):
    import sys

    import benchmarks.learning as learning

    monkeypatch.setattr(learning, "command", lambda q, run_dir, threads: [
        sys.executable, "-c", _CHILD, str(tmp_path / f"{q.name}.out"), behaviour])
    return [learning.Planned(f"fake-{i}", ()) for i in range(3)], learning.run_plan


def _log(root):
    return [json.loads(x) for x in (root / "study_log.jsonl").read_text().splitlines()]


def test_a_stop_signal_to_the_study_stops_its_runs_cleanly_and_starts_no_more(tmp_path,
                                                                             monkeypatch):
    import os
    import signal
    import threading
    import time

    plan, run_plan = _fake_runs(monkeypatch, tmp_path, "clean")
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.time()
    run_plan(plan, tmp_path / "runs", parallel=2)
    assert time.time() - t0 < 30  # not the children's 120 s
    assert [(tmp_path / f"fake-{i}.out").read_text() for i in (0, 1)] == ["stopped"] * 2
    assert not (tmp_path / "fake-2.out").exists()  # no run starts after the signal
    log = _log(tmp_path / "runs")
    assert sorted(e["run"] for e in log if e["event"] == "exit") == ["fake-0", "fake-1"]
    assert all(e["rc"] == 0 for e in log if e["event"] == "exit")
    assert signal.getsignal(signal.SIGTERM) is before  # the study's handler is taken back


def test_a_run_that_ignores_its_stop_is_killed_after_the_grace(tmp_path, monkeypatch):
    import time

    plan, run_plan = _fake_runs(monkeypatch, tmp_path, "ignore")
    t0 = time.time()
    run_plan(plan[:1], tmp_path / "runs", minutes=2 / 60, grace=2)
    assert 4 <= time.time() - t0 < 30
    assert (tmp_path / "fake-0.out").read_text() == "running"  # it never stopped by itself
    log = _log(tmp_path / "runs")
    assert [e["event"] for e in log] == ["start", "killed", "exit"]
    assert log[-1]["rc"] == -9


def test_list_says_where_a_started_run_is_and_how_long_it_has_left(tmp_path):
    """``--list`` under a started run: env steps of its budget, last evaluation, and the hours
    left at the pace of its last logged rows (an older, slower stretch does not count)."""
    from benchmarks.learning import Planned, progress_note

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1000, "wall_s": 50.0}, {"step": 2000, "wall_s": 100.0},
            {"step": 3000, "wall_s": 9000.0},  # a slow stretch, before the last 10 rows
            *({"step": 3000 + 1000 * k, "wall_s": 9000.0 + 360.0 * k} for k in range(1, 11))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                       + '{"step": 14')  # a half-written last line
    (run / "eval.csv").write_text("step,return_mean,return_std,episodes,wall_s\n"
                                  "10000,209.34,5.0,10,9000.0\n")
    q = Planned("x", ("env=dmc_proprio", "steps=50000", "seed=0"))
    # 10 rows of 1,000 steps in 360 s each: 0.36 s per step, 37,000 steps left -> 3.7 h
    assert progress_note(run, q) == ("13,000/50,000 steps, last eval 209.3 at 10,000, ~3.7 h "
                                     "left at its recent pace")
    assert progress_note(run, q, resumable=False) == (  # a record: no checkpoint to go on from
        "13,000/50,000 steps, last eval 209.3 at 10,000; a record only (its checkpoint went with "
        "another machine): trained afresh")
    assert progress_note(run, Planned("p", q.overrides, peer=True)) == ""
    assert progress_note(tmp_path / "none", q) == ""


def test_every_planned_run_is_a_config_worldrl_train_accepts():
    """One run of each kind (suite, agent, diagnostic): a random policy has no optimiser, so
    the study's learning rate must not reach it."""
    from benchmarks.learning import study
    from worldrl.config import load_config

    kinds = {}
    for q in study():
        if not q.peer:
            kinds.setdefault(tuple(o for o in q.overrides
                                   if not o.startswith(("env.task=", "seed="))), q)
    assert len(kinds) >= 5
    for q in kinds.values():
        cfg = load_config(q.overrides)
        assert (cfg.agent.name == "random") == ("agent=random" in q.overrides)
