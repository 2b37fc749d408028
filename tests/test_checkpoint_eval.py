"""agents.evaluate's helpers for evaluating a finished run's checkpoint again: a result counts
only at the run's last step, and a failed `worldrl eval` is reported, not read."""

import json

from agents.evaluate import checkpoint_eval_file, current_checkpoint_eval, evaluate_again


def _run(tmp_path, steps=5000):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"env_steps": steps}))
    return run


def test_a_result_counts_only_at_the_runs_last_step(tmp_path):
    run = _run(tmp_path)
    assert checkpoint_eval_file(run, True).name == "eval_checkpoint_sample.json"
    assert checkpoint_eval_file(run, False).name == "eval_checkpoint.json"
    assert current_checkpoint_eval(run, True) is None  # none yet
    checkpoint_eval_file(run, True).write_text(json.dumps({"env_steps": 4000,
                                                           "return_mean": 1.0}))
    assert current_checkpoint_eval(run, True) is None  # an older checkpoint's
    checkpoint_eval_file(run, True).write_text('{"env_steps": 5000, "retu')
    assert current_checkpoint_eval(run, True) is None  # cut short
    checkpoint_eval_file(run, True).write_text(json.dumps({"env_steps": 5000,
                                                           "return_mean": 2.0}))
    assert current_checkpoint_eval(run, True)["return_mean"] == 2.0
    assert current_checkpoint_eval(run, False) is None  # the other policy's file is its own
    # a current result is read, and no evaluation runs
    assert evaluate_again(run, True) == ({"env_steps": 5000, "return_mean": 2.0}, False, "")


def test_a_failed_evaluation_returns_none_with_its_error(tmp_path):
    run = _run(tmp_path)  # no checkpoint: worldrl eval fails
    result, ran, err = evaluate_again(run, False, threads=1)
    assert result is None and ran is True
    assert "checkpoint" in err.lower()
    assert not checkpoint_eval_file(run, False).exists()
