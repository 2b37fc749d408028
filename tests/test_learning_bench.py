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
            "train.train_ratio=2", "train.video_every=100"]
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
    """The ratio-512 diagnostic is a cartpole dreamer run too, but not at sheeprl's settings."""
    from benchmarks.learning import RATIO_DIAGNOSTIC, peer_table, study

    names = ["dmc_proprio-cartpole_swingup-dreamer-s0", RATIO_DIAGNOSTIC.name,
             "sheeprl-dmc_proprio-cartpole_swingup-s0"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.csv").write_text(
            "step,return_mean,return_std,episodes,wall_s\n5000,10.0,0.0,10,60.0\n")
    table = "\n".join(peer_table({q.name: tmp_path / q.name for q in study()}, study()))
    assert names[0] in table and names[2] in table and RATIO_DIAGNOSTIC.name not in table
