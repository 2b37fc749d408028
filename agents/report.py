"""``worldrl report PATH ... [--out DIR]``: what a set of runs learned, over seeds.

Reads every run directory below the paths (a directory with ``config.yaml``) and writes
``report.md`` (tables), ``report.json`` (every number) and PNGs into ``--out``:

- per task and method: the final evaluation (the last row of ``eval.csv``: mean and 95% CI over
  seeds, percentile bootstrap), and its learning curve (mean and CI band over seeds against env
  steps, and against wall-clock), with DreamerV3's published curve beside it where
  ``agents/data/dreamerv3_curves.json`` has the task; beside the final evaluation, the mean
  return of the training episodes near the end (DreamerV3's curves are training episodes) and,
  where ``worldrl eval RUN --sample`` wrote ``eval_checkpoint_sample.json`` at the run's last
  step, the last checkpoint's evaluation with sampled actions (DreamerV3's evaluation policy);
- Atari100k: the human-normalised score ``(score - random) / (human - random)`` per game and, over
  games, the mean, median, IQM and optimality gap with stratified-bootstrap 95% CIs and a
  performance profile, computed with ``rliable`` (Agarwal et al., 2021);
- DMC: the mean return over tasks.

A *method* is a run's config without its seed, task and the keys that do not change what a run
does (``RESUMABLE_KEYS``, but ``EVAL_MEANING``: greedy and sampled evaluations are two methods):
runs that differ in anything else never share a cell; methods that share
a name (agent-backbone-size) get a suffix and the report lists what differs. A run without
``summary.json`` is unfinished: it counts with its last evaluation and is marked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.logger import read_csv

#: Atari100k random/human scores, and DreamerV3's published training curves (binned; each file
#: says where its numbers come from), shipped with the package
DATA = Path(__file__).resolve().parent / "data"
BASELINES = DATA / "atari100k_baselines.json"
REFERENCE = DATA / "dreamerv3_curves.json"
#: keys that never make two runs different methods (besides RESUMABLE_KEYS)
PER_RUN = ("seed", "run_dir", "env.task", "overwrite")
#: resumable keys that still change what an evaluation measures (the policy's mode or samples, the
#: episode cap): runs that differ in them never share a cell
EVAL_MEANING = ("eval.sample", "eval.max_steps")
BOOTSTRAP_REPS = 2000


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    evals: list[dict[str, float]]
    summary: dict | None
    method: str = ""
    method_key: str = ""
    extra: dict = field(default_factory=dict)
    episodes: list[tuple[float, float]] = field(default_factory=list)  # training (step, return)
    sampled: dict | None = None  # eval_checkpoint_sample.json: `worldrl eval RUN --sample`

    @property
    def sampled_final(self) -> float | None:
        """The sampled-action evaluation of the run's last checkpoint, when it is of the step the
        run ended at (else it belongs to another point of the run and is not shown)."""
        if self.sampled and self.sampled.get("env_steps") == self.env_steps:
            return float(self.sampled["return_mean"])
        return None

    @property
    def suite(self) -> str:
        return str(self.config.get("env.suite"))

    @property
    def task(self) -> str:
        return str(self.config.get("env.task"))

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def env_steps(self) -> float:
        if self.summary:
            return float(self.summary["env_steps"])
        return max([0.0, *(r["step"] for r in self.evals)])

    @property
    def final(self) -> float | None:
        return self.evals[-1]["return_mean"] if self.evals else None


def _read_evals(path: Path) -> list[dict[str, float]]:
    """``eval.csv``'s complete rows as numbers (rows that are not, skipped)."""
    rows = []
    for row in read_csv(path):
        try:
            rows.append({k: float(v) for k, v in row.items() if v not in (None, "")})
        except ValueError:
            continue
    return [r for r in rows if "step" in r and "return_mean" in r]


def _read_episodes(path: Path) -> list[tuple[float, float]]:
    """``episodes.csv``'s training episodes as ``(step it ended at, return)``."""
    out = []
    for row in read_csv(path):
        try:
            out.append((float(row["step"]), float(row["return"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run directory at or below ``paths`` (one with ``config.yaml``)."""
    from omegaconf import OmegaConf

    from agents.run_dir import flat_config, upgrade_config

    found: dict[Path, Run] = {}
    for base in map(Path, paths):
        if not base.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {base}")
        for cfg_file in sorted([base / "config.yaml"] if (base / "config.yaml").exists()
                               else base.rglob("config.yaml")):
            run_dir = cfg_file.parent.resolve()
            if run_dir in found or ".old-" in run_dir.name:
                continue  # a run moved aside by overwrite=true is history, not a result
            try:
                config = flat_config(upgrade_config(OmegaConf.load(cfg_file)))
            except Exception:  # not YAML, or not a mapping: not a run's config
                continue
            if "env.suite" not in config:
                continue  # a Hydra output folder or another tool's config
            summary_file = run_dir / "summary.json"
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
            sampled_file = run_dir / "eval_checkpoint_sample.json"
            try:
                sampled = json.loads(sampled_file.read_text()) if sampled_file.exists() else None
            except json.JSONDecodeError:
                sampled = None
            found[run_dir] = Run(run_dir, config, _read_evals(run_dir / "eval.csv"), summary,
                                 episodes=_read_episodes(run_dir / "episodes.csv"),
                                 sampled=sampled)
    runs = list(found.values())
    _name_methods(runs)
    return runs


def _name_methods(runs: list[Run]) -> None:
    from agents.run_dir import ADDED_KEYS, RESUMABLE_KEYS

    skip = (set(RESUMABLE_KEYS) - set(EVAL_MEANING)) | set(PER_RUN)
    by_key: dict[str, dict] = {}
    for run in runs:
        # a run made before a key existed did what the key's ADDED_KEYS value does
        ident = {k: v for k, v in {**ADDED_KEYS, **run.config}.items() if k not in skip}
        run.method_key = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str)
                                      .encode()).hexdigest()[:8]
        by_key.setdefault(run.method_key, ident)
        c = run.config
        run.method = ("random" if c.get("agent.name") == "random"  # no model: no backbone, size
                      else f"{c.get('agent.name')}-{c.get('agent.backbone.name', '?')}-"
                           f"{c.get('agent.size.name', '?')}")
    names: dict[str, list[str]] = defaultdict(list)
    for run in runs:  # suites differ in their configs anyway: name clashes within a suite only
        key = f"{run.suite}/{run.method}"
        if run.method_key not in names[key]:
            names[key].append(run.method_key)
    for run in runs:
        keys = sorted(names[f"{run.suite}/{run.method}"])  # stable numbering
        if len(keys) > 1:
            idents = [by_key[k] for k in keys]
            every = set().union(*idents)
            varying = sorted(k for k in every if len({json.dumps(i.get(k), default=str)
                                                      for i in idents}) > 1)
            mine = by_key[run.method_key]
            run.extra["differs"] = {k: mine.get(k) for k in varying}
            run.method = f"{run.method}#{keys.index(run.method_key) + 1}"


def _estimates(scores: np.ndarray, func, reps: int, seed: int):
    """rliable's stratified-bootstrap point and interval estimates of ``func(scores)``, the same
    for the same ``seed``. rliable 1.2 hands ``random_state`` to arch but draws its resamples
    from NumPy's global generator (``StratifiedBootstrap.update_indices``), so that generator is
    seeded here for the call and given back its state afterwards."""
    import warnings

    from rliable import library as rly

    scores = np.asarray(scores, dtype=float)
    if (scores == scores[:1]).all():
        # every run alike (one run, or equal runs): every stratified resample is ``scores``
        # itself, so the interval is the point; skipping arch's resampling loop saves ~0.3 s a call
        point = np.asarray(func(scores), dtype=float)
        return point, np.stack([point, point])
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch's notice about rliable's RandomState argument
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = rly.get_interval_estimates(
                {"m": scores}, func, reps=reps, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(state)
    return point["m"], interval["m"]


def bootstrap_ci(values: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0
                 ) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI of the mean over runs (rliable)."""
    values = np.asarray(values, dtype=float).reshape(-1, 1)
    point, interval = _estimates(values, lambda x: np.array([np.mean(x)]), reps, seed)
    return float(point[0]), float(interval[0, 0]), float(interval[1, 0])


def human_normalised(game: str, score: float, baselines: dict) -> float:
    b = baselines["games"][game]
    return (score - b["random"]) / (b["human"] - b["random"])


def atari_aggregates(hns: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict:
    """Mean, median, IQM and optimality gap of HNS ``[runs, games]`` with stratified-bootstrap
    95% CIs (rliable)."""
    from rliable import metrics

    def aggregate(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_iqm(x), metrics.aggregate_optimality_gap(x)])

    point, interval = _estimates(hns, aggregate, reps, seed)
    names = ("mean", "median", "iqm", "optimality_gap")
    return {n: {"value": float(point[i]), "ci": [float(interval[0, i]), float(interval[1, i])]}
            for i, n in enumerate(names)}


#: DreamerV3's published DMC curves log frames: the step counter counts policy steps and its
#: logger multiplies by the suite's action repeat (``make_logger``: ``multiplier = ...repeat``),
#: 2 for DMC in the versions that wrote ``scores/`` (danijar/dreamerv3 at 2411f7d; the file says
#: "environment steps"). Our env steps are agent steps, so their x / 2 is ours at equal frames.
DREAMERV3_DMC_REPEAT = 2


def reference_curve(suite: str, task: str, reference: dict | None) -> tuple[list, list] | None:
    """DreamerV3's published curve for ``task`` with x in agent steps (Atari100k: frames / 4,
    the file's ``agent_steps``; DMC: frames / :data:`DREAMERV3_DMC_REPEAT`), or None."""
    if not reference:
        return None
    if suite == "atari100k":
        block, key = reference.get("atari100k"), f"atari_{task}"
        x = block and block.get("agent_steps")
    elif suite in ("dmc", "dmc_proprio"):
        block = reference.get("dmc_vision" if suite == "dmc" else "dmc_proprio")
        key = f"dmc_{task}"
        x = block and [v / DREAMERV3_DMC_REPEAT for v in block.get("x", [])]
    else:
        return None
    if not block or key not in block.get("games", block.get("tasks", {})):
        return None
    entry = block.get("games", block.get("tasks"))[key]
    return list(x), list(entry["mean_return"])


#: the windows of DreamerV3's curves (training episodes ending within +-window of x; the
#: reference file's, in frames) in our agent steps
TRAIN_WINDOW = {"atari100k": 4000 / 4, "dmc_proprio": 5000 / DREAMERV3_DMC_REPEAT,
                "dmc": 10000 / DREAMERV3_DMC_REPEAT}


def training_return(run: Run, at: float, window: float) -> float | None:
    """The mean return of ``run``'s training episodes that ended within ``window`` steps of
    ``at``, as DreamerV3's curves count; None when none did. Near a finished run's end, where
    the window reaches past the last step and no episode comes after, the last ``2 * window``
    steps instead: the same span of steps (an Atari game lasts up to ~1,800 agent steps, more
    than one side of the window). An unfinished run's episodes go on past its last evaluation:
    the window stays centred."""
    end = run.env_steps
    if run.finished and at + window > end:
        near = [r for s, r in run.episodes if end - 2 * window <= s <= end]
    else:
        near = [r for s, r in run.episodes if abs(s - at) <= window]
    return float(np.mean(near)) if near else None


def _on_schedule(run: Run) -> dict[float, float]:
    """A run's evaluations keyed by the point of its schedule they belong to. An evaluation runs
    at the first collector batch at or past each interval (counted from the last one, also across
    a resume), so seeds evaluate a few steps apart; each is keyed by the nearest multiple of the
    interval: with three evaluations or more, the median gap between them to two significant
    digits (its ``config.yaml`` keeps the first process's ``eval.every``, which a resume may
    change), else ``eval.every``. A later evaluation keyed like an earlier one (the final one)
    replaces it."""
    steps = [r["step"] for r in run.evals]
    gaps = np.diff(steps)
    every = float(f"{np.median(gaps):.2g}") if len(gaps) >= 2 else 0.0
    every = every or float(run.config.get("eval.every") or 0)
    return {(round(r["step"] / every) * every if every > 0 else r["step"]): r["return_mean"]
            for r in run.evals}


def curves(runs: list[Run], x: str = "step") -> dict:
    """Mean and 95% CI band over runs at every x where all of them were evaluated (steps: the
    shared evaluation schedule, :func:`_on_schedule`; wall-clock: each run interpolated onto a
    common grid between the latest first evaluation and the earliest last one, and each run's
    own evaluations as ``points``, ``[wall_s, return]`` pairs, since the grid's are not
    evaluations)."""
    if x == "step":
        scheduled = [_on_schedule(run) for run in runs]
        common = sorted(set.intersection(*[set(s) for s in scheduled]))
        grid = np.array(common, dtype=float)
        ys = np.array([[s[c] for c in common] for s in scheduled])
    else:
        # from the latest first evaluation: before it, some run has nothing to interpolate
        starts = [run.evals[0].get("wall_s", 0.0) for run in runs]
        ends = [run.evals[-1].get("wall_s", 0.0) for run in runs]
        grid = (np.linspace(max(starts), min(ends), 20) if min(ends) > max(starts)
                else np.array([max(starts)]) if min(ends) == max(starts) > 0 else np.zeros(0))
        ys = np.array([np.interp(grid, [r.get("wall_s", 0.0) for r in run.evals],
                                 [r["return_mean"] for r in run.evals]) for run in runs])
    points = ({} if x == "step" else
              {"points": [[r.get("wall_s", 0.0), r["return_mean"]] for run in runs
                          for r in run.evals]})
    if not len(grid):
        return {"x": [], "mean": [], "lo": [], "hi": [], **points}
    stats = [bootstrap_ci(ys[:, i], reps=500) for i in range(len(grid))]
    return {"x": grid.tolist(), "mean": [s[0] for s in stats], "lo": [s[1] for s in stats],
            "hi": [s[2] for s in stats], **points}


def report(paths: list[str | Path], out: str | Path, baselines_file: Path = BASELINES,
           reference_file: Path | None = REFERENCE, plots: bool = True) -> dict:
    """Read the runs below ``paths``; write ``report.md``, ``report.json`` and PNGs to ``out``."""
    runs = [r for r in find_runs(paths) if r.evals]
    if not runs:
        where = ", ".join(map(str, paths))
        raise FileNotFoundError(f"no run with evaluations (eval.csv) below {where}")
    baselines = json.loads(Path(baselines_file).read_text())
    reference = (json.loads(Path(reference_file).read_text())
                 if reference_file and Path(reference_file).exists() else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        cells[(run.suite, run.task, run.method)].append(run)
    rows = []
    for (suite, task, method), group in sorted(cells.items()):
        group.sort(key=lambda r: (str(r.seed), str(r.path)))
        finals = np.array([r.final for r in group], dtype=float)
        mean, lo, hi = bootstrap_ci(finals)
        row = {"suite": suite, "task": task, "method": method, "runs": len(group),
               "seeds": [r.seed for r in group], "unfinished": [str(r.path) for r in group
                                                                 if not r.finished],
               "env_steps": [r.env_steps for r in group], "final": finals.tolist(),
               "final_mean": mean, "final_ci": [lo, hi],
               "differs": group[0].extra.get("differs"),
               "curve": curves(group), "curve_wall": curves(group, "wall_s")}
        if suite == "atari100k" and task in baselines["games"]:
            row["hns"] = [human_normalised(task, f, baselines) for f in finals]
            row["hns_mean"] = float(np.mean(row["hns"]))
        sampled = [r.sampled_final for r in group]
        if any(v is not None for v in sampled):
            row["sampled_final"] = {"runs": sampled, "mean": float(np.mean(
                [v for v in sampled if v is not None]))}
        window = TRAIN_WINDOW.get(suite)
        if window:  # like for like with DreamerV3's curves, which are training episodes
            near = [training_return(r, r.env_steps, window) for r in group]
            near = [v for v in near if v is not None]
            if near:
                row["train_end"] = {"mean": float(np.mean(near)), "runs": len(near),
                                    "window": window}
            xs = row["curve"]["x"]
            per_x = [[training_return(r, x, window) for r in group] for x in xs]
            row["train_curve"] = {"x": [x for x, v in zip(xs, per_x) if None not in v],
                                  "mean": [float(np.mean(v)) for v in per_x if None not in v]}
        ref = reference_curve(suite, task, reference)
        if ref:
            steps = max(row["env_steps"])
            row["reference"] = {"x": ref[0], "return": ref[1],
                                "at_our_steps": float(np.interp(steps, ref[0], ref[1]))}
        rows.append(row)
    aggregates = []
    for method in sorted({r["method"] for r in rows if r["suite"] == "atari100k"}):
        games = [r for r in rows if r["suite"] == "atari100k" and r["method"] == method
                 and "hns" in r]
        if not games:
            continue
        n = min(len(g["hns"]) for g in games)
        hns = np.array([g["hns"][:n] for g in games]).T  # [runs, games]
        aggregates.append({"suite": "atari100k", "method": method, "games": len(games),
                           "runs_per_game": n,
                           "runs_left_out": sum(len(g["hns"]) - n for g in games),
                           "unfinished_runs": sum(len(g["unfinished"]) for g in games),
                           **atari_aggregates(hns)})
        if plots:
            _profile(hns, method, out / _figure_name("profile", method))
    for suite, method in sorted({(r["suite"], r["method"]) for r in rows
                                 if r["suite"].startswith("dmc")}):
        tasks = [r for r in rows if (r["suite"], r["method"]) == (suite, method)]
        aggregates.append({"suite": suite, "method": method, "tasks": len(tasks),
                           "unfinished_runs": sum(len(t["unfinished"]) for t in tasks),
                           "mean_return": float(np.mean([t["final_mean"] for t in tasks]))})
    def rel(p) -> str:  # paths relative to the report folder: a committed report moves
        return os.path.relpath(Path(p).resolve(), out.resolve())

    for row in rows:
        row["unfinished"] = [rel(p) for p in row["unfinished"]]
    result = {"paths": [rel(p) for p in paths], "rows": rows, "aggregates": aggregates}
    if plots:
        for row in rows:
            row["png"] = rel(_plot(row, out))
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(render(result))
    return result


def _ci(v: float, ci: list[float]) -> str:
    return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def render(result: dict) -> str:
    lines = ["| suite | task | method | runs | env steps | final eval: mean [95% CI], or the "
             "runs when fewer than 3 | "
             "HNS | final eval, sampled actions | training episodes near the end | DreamerV3 at "
             "these steps (training episodes) | curve |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        runs = f"{r['runs']}" + (f" ({len(r['unfinished'])} unfinished)" if r["unfinished"]
                                 else "")
        steps = f"{min(r['env_steps']):.0f}" + (
            "" if min(r["env_steps"]) == max(r["env_steps"]) else f"-{max(r['env_steps']):.0f}")
        hns = f"{r['hns_mean']:.3f}" if "hns" in r else ""
        if r["runs"] < 3:  # a bootstrap interval over 1-2 runs is their range: show the runs
            final = f"{r['final_mean']:.3g} (runs: {', '.join(f'{x:.3g}' for x in r['final'])})"
        else:
            final = _ci(r["final_mean"], r["final_ci"])
        ref = f"{r['reference']['at_our_steps']:.1f}" if "reference" in r else ""
        train = f"{r['train_end']['mean']:.3g}" if "train_end" in r else ""
        sampled = ""
        if "sampled_final" in r:
            have = [v for v in r["sampled_final"]["runs"] if v is not None]
            sampled = f"{r['sampled_final']['mean']:.3g}" + (
                "" if len(have) == r["runs"] else f" ({len(have)} of {r['runs']} runs)")
        png = f"[png]({Path(r['png']).name})" if r.get("png") else ""
        lines.append(f"| {r['suite']} | {r['task']} | {r['method']} | {runs} | {steps} | "
                     f"{final} | {hns} | {sampled} | {train} | {ref} | {png} |")
    if any("train_end" in r for r in result["rows"]):
        lines += ["", "Training episodes near the end: the mean return of the training episodes "
                  "(the policy's samples) that ended in a finished run's last 2,000 agent steps "
                  "(Atari100k; DMC proprio 5,000, vision 10,000), the span of the +-window of "
                  "DreamerV3's published curves (an unfinished run: within that +-window of its "
                  "last evaluation), which are training episodes too; the final evaluation "
                  "plays the policy's mode unless `eval.sample=true`."]
    if any("sampled_final" in r for r in result["rows"]):
        lines += ["", "Final eval, sampled actions: the run's last checkpoint evaluated again "
                  "with actions sampled from the policy (`worldrl eval RUN --sample`, as "
                  "DreamerV3 and sheeprl evaluate), its mean over the runs that have it."]
    # numbered within a suite (#1 in one suite is not #1 in another): one line per suite
    differs = {(r["suite"], r["method"]): r["differs"] for r in result["rows"]
               if r.get("differs")}
    if differs:
        lines += ["", "Methods that share a name within a suite differ in:"]
        lines += [f"- {suite} {m}: {d}" for (suite, m), d in differs.items()]
    atari = [a for a in result["aggregates"] if a["suite"] == "atari100k"]
    if atari:
        lines += ["", "Atari100k human-normalised score over games (stratified bootstrap, 95% CI):",
                  "", "| method | games | runs per game | mean | median | IQM | optimality gap |",
                  "|---|---:|---:|---|---|---|---|"]
        for a in atari:
            notes = []
            if a["runs_left_out"]:
                notes.append(f"{a['runs_left_out']} runs left out to give every game "
                             f"{a['runs_per_game']}")
            if a["unfinished_runs"]:
                notes.append(f"{a['unfinished_runs']} unfinished runs counted at their last "
                             "evaluation")
            per_game = f"{a['runs_per_game']}" + (f" ({'; '.join(notes)})" if notes else "")
            lines.append(f"| {a['method']} | {a['games']} | {per_game} | "
                         + " | ".join(_ci(a[k]["value"], a[k]["ci"])
                                      for k in ("mean", "median", "iqm", "optimality_gap"))
                         + " |")
    dmc = [a for a in result["aggregates"] if a["suite"].startswith("dmc")]
    if dmc:
        lines += ["", "| DMC suite | method | tasks | mean final return |", "|---|---|---:|---:|"]
        for a in dmc:
            late = (f" ({a['unfinished_runs']} unfinished runs counted at their last evaluation)"
                    if a["unfinished_runs"] else "")
            lines.append(f"| {a['suite']} | {a['method']} | {a['tasks']}{late} | "
                         f"{a['mean_return']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(row: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = ((axes[0], "curve", "env steps"), (axes[1], "curve_wall", "wall-clock (s)"))
    for ax, key, label in panels:
        c = row[key]
        if c["x"]:  # markers only where runs were evaluated: the wall-clock grid is not
            ax.plot(c["x"], c["mean"], "-" if "points" in c else "o-", color="tab:blue",
                    label=f"worldrl {row['method']} ({row['runs']} runs)")
            ax.fill_between(c["x"], c["lo"], c["hi"], color="tab:blue", alpha=0.2)
        if c.get("points"):
            ax.plot(*zip(*c["points"]), "o", color="tab:blue", markersize=3,
                    label="each run's evaluations")
        ax.set_xlabel(label)
        ax.set_ylabel("eval return")
        ax.grid(alpha=0.3)
    if row.get("train_curve", {}).get("x"):
        tc = row["train_curve"]
        axes[0].plot(tc["x"], tc["mean"], ":", color="tab:orange",
                     label="worldrl training episodes")
    if "reference" in row:
        ref = row["reference"]
        axes[0].plot(ref["x"], ref["return"], "--", color="gray",
                     label="DreamerV3 (published, training episodes)")
        axes[0].set_xlim(0, max(max(row["curve"]["x"] or [1]) * 1.05, 1))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{row['suite']} / {row['task']}" + (" (unfinished runs)" if row["unfinished"]
                                                      else ""))
    fig.tight_layout()
    path = out / _figure_name("curve", row["suite"], row["task"], row["method"])
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _figure_name(*parts: str) -> str:
    """A PNG's file name from ``parts``, with what a Markdown link or a shell would misread
    (the ``#`` of a method numbered by its config, ``/``, spaces) made ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "_".join(parts)) + ".png"


def _profile(hns: np.ndarray, method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    taus = np.linspace(0.0, max(2.0, float(hns.max()) * 1.05), 81)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        profiles, cis = rly.create_performance_profile({method: hns}, taus, reps=500)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis, ax=ax,
                                         xlabel="human-normalised score (tau)")
    ax.set_title(f"Atari100k performance profile: {method}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
