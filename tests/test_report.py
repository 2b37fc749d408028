"""``worldrl report``: synthetic run directories with known returns."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.cli import main
from agents.report import BASELINES, REFERENCE, bootstrap_ci, find_runs, report

BASE = json.loads(BASELINES.read_text())["games"]
GAMES = ("boxing", "krull", "road_runner", "pong")


def make_run(root, suite, task, seed, returns, steps=(10_000, 20_000, 30_000), finished=True,
             agent="dreamer", **extra):
    tag = "-".join(f"{k}{v}" for k, v in sorted(extra.items())) or "base"
    path = root / f"{suite}-{task}" / f"{agent}-s{seed}-{tag}"
    path.mkdir(parents=True)
    cfg = {"seed": seed, "steps": steps[-1], "run_dir": str(path),
           "env": {"suite": suite, "task": task},
           "agent": {"name": agent, "size": {"name": "xs"}, "backbone": {"name": "rssm"}},
           "train": {"train_ratio": extra.get("train_ratio", 64), "log_every": 1000}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = ["step,return_mean,return_std,episodes,wall_s"]
    rows += [f"{s},{r},0.0,10,{i * 100.0 + 50}" for i, (s, r) in enumerate(zip(steps, returns))]
    (path / "eval.csv").write_text("\n".join(rows) + "\n")
    if finished:
        (path / "summary.json").write_text(json.dumps({"env_steps": steps[-1]}))
    return path


def score(game, hns):
    b = BASE[game]
    return b["random"] + hns * (b["human"] - b["random"])


@pytest.mark.parametrize("level, gap", [(0.0, 1.0), (1.0, 0.0)])
def test_random_and_human_scores_are_exactly_zero_and_one(tmp_path, level, gap):
    for game in GAMES:
        for seed in range(3):
            make_run(tmp_path, "atari100k", game, seed, [0, 0, score(game, level)])
    result = report([tmp_path], tmp_path / "out", plots=False)
    for row in result["rows"]:
        assert row["hns"] == pytest.approx([level] * 3, abs=1e-12)
    (agg,) = [a for a in result["aggregates"] if a["suite"] == "atari100k"]
    assert agg["games"] == 4 and agg["runs_per_game"] == 3
    for key, want in (("mean", level), ("median", level), ("iqm", level),
                      ("optimality_gap", gap)):
        assert agg[key]["value"] == pytest.approx(want, abs=1e-12)
        assert agg[key]["ci"] == pytest.approx([want, want], abs=1e-12)


def test_known_hns_aggregates_and_cis_that_hold_the_true_value(tmp_path):
    rng = np.random.default_rng(0)
    true = {"boxing": 0.8, "krull": 0.4, "road_runner": 0.1, "pong": -0.05}
    for game, h in true.items():
        for seed in range(5):
            make_run(tmp_path, "atari100k", game, seed,
                     [0, 0, score(game, h + rng.normal(0, 0.02))])
    result = report([tmp_path], tmp_path / "out", plots=False)
    rows = {r["task"]: r for r in result["rows"]}
    for game, h in true.items():
        r = rows[game]
        assert r["hns_mean"] == pytest.approx(h, abs=0.03)
        lo, hi = r["final_ci"]
        assert lo <= r["final_mean"] <= hi
    (agg,) = result["aggregates"]
    values = np.array(list(true.values()))
    assert agg["mean"]["ci"][0] <= values.mean() <= agg["mean"]["ci"][1]
    assert agg["median"]["value"] == pytest.approx(np.median(values), abs=0.03)
    assert agg["iqm"]["ci"][0] <= agg["iqm"]["value"] <= agg["iqm"]["ci"][1]
    # optimality gap: mean of max(0, 1 - hns)
    assert agg["optimality_gap"]["value"] == pytest.approx(np.mean(1 - np.minimum(values, 1)),
                                                           abs=0.03)


def test_unfinished_runs_are_marked_and_configs_never_share_a_cell(tmp_path):
    make_run(tmp_path, "dmc_proprio", "cartpole_swingup", 0, [100, 300, 500])
    make_run(tmp_path, "dmc_proprio", "cartpole_swingup", 1, [120, 280], steps=(10_000, 20_000),
             finished=False)
    make_run(tmp_path, "dmc_proprio", "cartpole_swingup", 0, [50, 60, 70], train_ratio=512)
    for ratio in (64, 512, 1024):  # another suite numbers its own methods
        make_run(tmp_path, "atari100k", "pong", 0, [-21, -20, -19], train_ratio=ratio)
    result = report([tmp_path], tmp_path / "out")
    legend = (tmp_path / "out" / "report.md").read_text().split("differ in:\n")[1]
    for r in result["rows"]:  # each row's number is explained by its own suite's line
        assert f"- {r['suite']} {r['method']}: {r['differs']}" in legend
    assert len({(r["suite"], r["method"]) for r in result["rows"]}) == 5
    rows = {r["method"]: r for r in result["rows"] if r["suite"] == "dmc_proprio"}
    assert set(rows) == {"dreamer-rssm-xs#1", "dreamer-rssm-xs#2"}
    mixed = next(r for r in rows.values() if r["runs"] == 2)
    other = next(r for r in rows.values() if r["runs"] == 1)
    assert len(mixed["unfinished"]) == 1 and mixed["final"] == [500.0, 280.0]
    assert mixed["curve"]["x"] == [10_000.0, 20_000.0]  # steps every run reached
    assert other["final"] == [70.0] and other["differs"] == {"train.train_ratio": 512}
    assert mixed["differs"] == {"train.train_ratio": 64}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "2 (1 unfinished)" in md and "train.train_ratio" in md
    dmc = {a["method"]: a for a in result["aggregates"] if a["suite"] == "dmc_proprio"}
    assert dmc[mixed["method"]]["unfinished_runs"] == 1
    assert dmc[mixed["method"]]["mean_return"] == pytest.approx(390.0)  # (500 + 280) / 2
    assert f"| dmc_proprio | {mixed['method']} | 1 (1 unfinished runs counted at" in md
    # DreamerV3's published curve, read at our steps
    ref = json.loads(REFERENCE.read_text())["dmc_proprio"]
    curve = ref["tasks" if "tasks" in ref else "games"]["dmc_cartpole_swingup"]["mean_return"]
    # their x counts frames (action repeat 2), ours agent steps: 30k ours = 60k of theirs
    assert mixed["reference"]["at_our_steps"] == pytest.approx(
        np.interp(60_000, ref["x"], curve))
    assert all((tmp_path / "out" / p).exists() for p in  # no "#": a link would cut there
               [f"curve_dmc_proprio_cartpole_swingup_{m.replace('#', '_')}.png" for m in rows])
    assert "#" not in "".join(r["png"] for r in result["rows"])


def test_runs_moved_aside_and_other_configs_are_not_runs(tmp_path):
    make_run(tmp_path, "gym", "CartPole-v1", 0, [10, 20, 30])
    aside = make_run(tmp_path, "gym", "CartPole-v1", 1, [1, 2, 3])
    aside.rename(aside.with_name(aside.name + ".old-20260101-000000"))
    (tmp_path / "hydra").mkdir()
    (tmp_path / "hydra" / "config.yaml").write_text("hydra: {run: {dir: x}}\n")
    runs = find_runs([tmp_path])
    assert [r.seed for r in runs] == [0]


def test_report_command(tmp_path, capsys):
    for seed in range(2):
        make_run(tmp_path / "runs", "atari100k", "boxing", seed, [1, 2, score("boxing", 0.5)])
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| atari100k | boxing | dreamer-rssm-xs | 2 |" in out and "IQM" in out
    assert (tmp_path / "out" / "profile_dreamer-rssm-xs.png").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run or sweep directory" in capsys.readouterr().err


def test_the_95_percent_ci_over_seeds_covers_the_true_mean():
    """Percentile bootstrap over 5 seeds: coverage near its nominal 95% (a little below, as the
    percentile bootstrap is at n = 5), never a CI that misses as often as it hits."""
    rng = np.random.default_rng(1)
    hits = []
    for i in range(60):
        sample = rng.normal(100.0, 20.0, size=5)
        mean, lo, hi = bootstrap_ci(sample, reps=500, seed=i)
        assert lo <= mean <= hi and mean == pytest.approx(sample.mean())
        hits.append(lo <= 100.0 <= hi)
    assert 0.7 <= np.mean(hits) <= 1.0


def test_the_bootstrap_is_the_same_for_the_same_seed_whatever_numpy_drew_before():
    """rliable resamples from NumPy's global generator whatever ``random_state`` it is given: a
    report's CIs must not depend on it, and the report must not move it."""
    from agents.report import atari_aggregates

    hns = np.random.default_rng(0).normal(0.5, 0.3, size=(3, 4))
    np.random.seed(1)
    first = atari_aggregates(hns, reps=300), bootstrap_ci(hns[:, 0], reps=300)
    after = np.random.random()
    np.random.seed(1)
    np.random.random(17)  # another state going in
    again = atari_aggregates(hns, reps=300), bootstrap_ci(hns[:, 0], reps=300)
    assert first == again
    np.random.seed(1)
    atari_aggregates(hns, reps=300)
    assert np.random.random() == after  # the global generator as it was
    other = atari_aggregates(hns, reps=300, seed=5)
    assert other["mean"]["ci"] != first[0]["mean"]["ci"]


@pytest.mark.parametrize("runs", [1, 3])
def test_runs_all_alike_give_rliables_interval_without_resampling(runs):
    """One run per game, or equal runs: the report skips the resampling loop; its point and
    interval are what rliable's stratified bootstrap gives for the same scores."""
    from rliable import library as rly
    from rliable import metrics

    from agents.report import _estimates, atari_aggregates

    hns = np.repeat(np.array([[0.1, 0.7, -0.2, 1.4]]), runs, axis=0)

    def aggregate(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_iqm(x), metrics.aggregate_optimality_gap(x)])

    point, interval = rly.get_interval_estimates({"m": hns}, aggregate, reps=200)
    mine_point, mine_interval = _estimates(hns, aggregate, 200, 0)
    np.testing.assert_allclose(mine_point, point["m"])
    np.testing.assert_allclose(mine_interval, interval["m"])
    assert atari_aggregates(hns)["median"] == {"value": pytest.approx(0.4), "ci": [
        pytest.approx(0.4), pytest.approx(0.4)]}
    assert bootstrap_ci(hns[:, 1]) == pytest.approx((0.7, 0.7, 0.7))


def test_curves_line_up_seeds_that_evaluated_a_few_steps_apart():
    from agents.report import Run, curves

    def run(steps, returns):
        evals = [{"step": s, "return_mean": r} for s, r in zip(steps, returns)]
        return Run(Path("x"), {"eval.every": 10000}, evals, None)  # the first process's

    # resumed off the grid with eval.every 5000; the final evaluation a few hundred steps on
    a = run([9520, 14528, 19536, 24544, 49584, 50000], [50.0, 0.0, 210.0, 9.0, 1.0, 150.0])
    b = run([9568, 14576, 19584, 24592, 49632, 50000], [30.0, 30.0, 200.0, 9.0, 1.0, 152.0])
    c = curves([a, b])
    assert c["x"] == [10000.0, 15000.0, 20000.0, 25000.0, 50000.0]
    assert c["mean"] == pytest.approx([40.0, 15.0, 205.0, 9.0, 151.0])


def test_the_wall_clock_curve_interpolates_only_between_evaluations_and_keeps_them():
    from agents.report import Run, curves

    def run(walls, returns):
        evals = [{"step": 1000 * (i + 1), "return_mean": r, "wall_s": w}
                 for i, (w, r) in enumerate(zip(walls, returns))]
        return Run(Path("x"), {"eval.every": 1000}, evals, None)

    a, b = run([100.0, 300.0, 500.0], [0.0, 20.0, 40.0]), run([200.0, 400.0], [10.0, 30.0])
    c = curves([a, b], "wall_s")
    assert (c["x"][0], c["x"][-1]) == (200.0, 400.0)  # no flat run-in before b's first one
    assert c["mean"][0] == pytest.approx((10.0 + 10.0) / 2)  # a at 200 s: halfway, 10
    assert c["mean"][-1] == pytest.approx((30.0 + 30.0) / 2)
    assert sorted(map(tuple, c["points"])) == [(100.0, 0.0), (200.0, 10.0), (300.0, 20.0),
                                               (400.0, 30.0), (500.0, 40.0)]
    assert "points" not in curves([a, b])
    one = curves([run([50.0], [7.0])], "wall_s")
    assert one["x"] == [50.0] and one["mean"] == pytest.approx([7.0])


def test_a_run_made_before_a_key_existed_shares_the_cell_of_its_default(tmp_path):
    """A config.yaml without a key added later (run_dir.ADDED_KEYS) is the same method as one
    holding the key's default, and a different method from one holding another value."""
    paths = [make_run(tmp_path, "dmc_proprio", "walker_walk", s, [10, 20, 30]) for s in (0, 1, 2)]
    for path, collectors in zip(paths[1:], (1, 2)):
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        cfg["env"]["collectors"] = collectors
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = {r["method"]: r for r in report([tmp_path], tmp_path / "out")["rows"]}
    assert sorted(r["runs"] for r in rows.values()) == [1, 2]
    two = next(r for r in rows.values() if r["runs"] == 2)
    assert sorted(two["seeds"]) == [0, 1]


def test_a_run_of_the_older_config_layout_shares_the_cell(tmp_path):
    """Keys that moved (run_dir.upgrade_config: the root ``backbone`` node went under
    ``agent``) do not split a method: the older seed shares the newer seeds' cell."""
    paths = [make_run(tmp_path, "dmc_proprio", "walker_walk", s, [10, 20, 30]) for s in (0, 1)]
    cfg = yaml.safe_load((paths[0] / "config.yaml").read_text())
    cfg["backbone"] = cfg["agent"].pop("backbone")
    (paths[0] / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = report([tmp_path], tmp_path / "out")["rows"]
    assert len(rows) == 1 and sorted(rows[0]["seeds"]) == [0, 1]
    assert rows[0]["method"] == "dreamer-rssm-xs"


def test_training_episodes_near_the_end_like_dreamerv3s_curves(tmp_path):
    """Beside DreamerV3's curve (training episodes within +-window of x) the report puts ours the
    same way: within +-1,000 agent steps (Atari100k) of each evaluation step for the curve, and at
    the end, where nothing comes after, in the last 2,000; per run, averaged over runs."""
    from agents.report import report

    ends = {0: [(9_500, 5.0), (10_200, 7.0), (27_500, 50.0), (28_500, 1.0), (29_200, 10.0),
                (30_000, 20.0)],
            1: [(9_800, 3.0), (29_900, 30.0)]}
    for seed, eps in ends.items():
        path = make_run(tmp_path, "atari100k", "boxing", seed, [1.0, 2.0, 3.0])
        (path / "episodes.csv").write_text("step,episode,return,length\n" + "".join(
            f"{s},{i + 1},{r},100\n" for i, (s, r) in enumerate(eps)))
    make_run(tmp_path, "atari100k", "krull", 0, [1.0, 2.0, 3.0])  # no episodes.csv: no number
    result = report([tmp_path], tmp_path / "out", plots=False)
    rows = {r["task"]: r for r in result["rows"]}
    box = rows["boxing"]
    # seed 0: episodes ending at 28.5k, 29.2k and 30k (27.5k is 2.5k before the end): 31 / 3;
    # seed 1: 30
    assert box["train_end"] == {"mean": pytest.approx((31 / 3 + 30) / 2), "runs": 2,
                                "window": 1000.0}
    # at 10k: seed 0 (5 + 7) / 2 = 6, seed 1 3 -> 4.5; at 20k nobody ended an episode: left out
    assert box["train_curve"]["x"] == [10_000.0, 30_000.0]
    assert box["train_curve"]["mean"] == pytest.approx([4.5, (31 / 3 + 30) / 2])
    assert "train_end" not in rows["krull"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 20.2 |" in md and "Training episodes near the end" in md


def test_runs_evaluated_by_mode_and_by_sampling_never_share_a_cell(tmp_path):
    """eval.sample may change on resume (training is the same), but it changes what the
    evaluation measures: a greedy and a sampling run are two methods; eval.every is not."""
    from agents.report import report

    for seed, ev in ((0, {"sample": False, "every": 10_000}),
                     (1, {"sample": True, "every": 10_000}),
                     (2, {"sample": False, "every": 5_000})):
        path = make_run(tmp_path, "atari100k", "boxing", seed, [1.0, 2.0, 3.0])
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        (path / "config.yaml").write_text(yaml.safe_dump({**cfg, "eval": ev}))
    result = report([tmp_path], tmp_path / "out", plots=False)
    rows = sorted((r["runs"], r["differs"]) for r in result["rows"])
    assert rows == [(1, {"eval.sample": True}), (2, {"eval.sample": False})]


def test_sampled_evaluation_of_the_last_checkpoint_beside_the_final_one(tmp_path):
    """``worldrl eval RUN --sample`` writes eval_checkpoint_sample.json; the report shows its mean
    over the runs whose file is of the step the run ended at, and says how many runs have one."""
    from agents.report import report

    def sampled(path, steps, ret):
        (path / "eval_checkpoint_sample.json").write_text(json.dumps(
            {"env_steps": steps, "policy": "sample", "return_mean": ret}))

    sampled(make_run(tmp_path, "atari100k", "boxing", 0, [1.0, 2.0, 3.0]), 30_000, 10.0)
    sampled(make_run(tmp_path, "atari100k", "boxing", 1, [1.0, 2.0, 5.0]), 30_000, 20.0)
    sampled(make_run(tmp_path, "atari100k", "krull", 0, [1.0, 2.0, 3.0]), 30_000, 7.0)
    # of an earlier checkpoint than the run's end: not this run's final sampled evaluation
    sampled(make_run(tmp_path, "atari100k", "krull", 1, [1.0, 2.0, 3.0]), 20_000, 99.0)
    make_run(tmp_path, "atari100k", "pong", 0, [1.0, 2.0, 3.0])
    result = report([tmp_path], tmp_path / "out", plots=False)
    rows = {r["task"]: r for r in result["rows"]}
    assert rows["boxing"]["sampled_final"] == {"runs": [10.0, 20.0], "mean": 15.0}
    assert rows["krull"]["sampled_final"] == {"runs": [7.0, None], "mean": 7.0}
    assert "sampled_final" not in rows["pong"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 15 |" in md and "| 7 (1 of 2 runs) |" in md and "sampled actions" in md


def test_an_unfinished_runs_last_point_keeps_a_centred_window(tmp_path):
    """An unfinished run goes on training past its last evaluation: the episodes after it count
    (+-window), not only those before (the end rule is for finished runs)."""
    from agents.report import report

    path = make_run(tmp_path, "atari100k", "boxing", 0, [1.0, 2.0, 3.0], finished=False)
    eps = [(28_500, 1.0), (29_500, 2.0), (30_800, 9.0), (32_000, 50.0)]
    (path / "episodes.csv").write_text("step,episode,return,length\n" + "".join(
        f"{s},{i + 1},{r},100\n" for i, (s, r) in enumerate(eps)))
    (row,) = report([tmp_path], tmp_path / "out", plots=False)["rows"]
    # within +-1,000 of 30k: 29.5k and 30.8k (28.5k and 32k are outside)
    assert row["train_end"]["mean"] == pytest.approx(5.5)
    assert row["train_curve"]["mean"][-1] == pytest.approx(5.5)
