"""The CPU-scale learning study: Atari100k and DMC runs of DreamerV3 beside random-policy floors.

    python -m benchmarks.learning --list               # every run, its state, steps and hours left
    python -m benchmarks.learning                      # run (or resume) what is left, one at a time
    python -m benchmarks.learning --parallel 2         # two single-thread runs side by side
    python -m benchmarks.learning --only atari100k-boxing-dreamer-s0 --parallel 1
    python -m benchmarks.learning --report-only        # results/learning_cpu.md from what is there
    python -m benchmarks.learning --minutes 150        # stop cleanly (SIGTERM: checkpoint) after
    python -m benchmarks.learning --gpu                # the GPU run: results/learning_gpu.md

Resumable by construction: every run is a ``worldrl train`` in its own run directory under
``--runs`` (default ``runs/learning``), so a killed study (or a killed session) picks each run up
from its last checkpoint when started again, and a finished run is never trained again. SIGTERM
or Ctrl-C to the study stops its runs as ``--minutes`` does (each checkpoints and exits 0); a run
still alive 10 minutes after its SIGTERM is killed (it resumes from its last checkpoint). After
each run, and at the end, ``worldrl report`` over the finished and unfinished runs is written to
``results/learning_cpu.md`` (tables, curves beside DreamerV3's published ones, Atari100k HNS with
rliable), with the study's settings, commands, machine, commits and dates.

Run directories live on one machine; the next session may get another. So each report first
brings every run's *record* up to date in ``results/learning_cpu_runs/RUN`` (``RECORDED``: its
evaluations, training episodes, summary and config, its metrics thinned to ``METRIC_ROWS`` rows,
its lines of the study log, a still of its newest open-loop video; no checkpoint), committed with
the report. A run whose directory is gone is reported from its record, and a finished one is not
trained again; an unfinished one starts afresh (its checkpoint went with the machine) and
replaces its record once its evaluations go as far. A run whose settings differ from its
record's (another ``--extra``, another recipe) never replaces it: the report keeps the record,
says so, and names the keys (delete the record to take the new run). A report that shows runs
neither place holds any more (a finished one, or a started one with evaluations) is not
rewritten (``--drop-lost`` to rewrite it anyway). ``--gpu`` writes ``results/learning_gpu.md``.

**Settings, and why** (the same for every run of a suite). The DreamerV3 recipe (size S, train
ratio 256 on Atari100k, 1024 on DMC proprio) costs ~8.6 s per size-S update on these 2 cores, i.e.
~60 h per Atari100k game: out of reach. Size XS (1M parameters on pixels) updates in ~1.0 s
compiled at 2 threads (``results/train_speed_cpu.md``); at train ratio 64 (one 16 x 64 update
per 16 env steps) a 50k-step Atari run is ~3.1k updates, about an hour of updates (each run's
wall-clock is in ``study_log.jsonl`` and the report's curves). DMC runs last 100k environment
frames, the x of DreamerV3's published DMC curves (its logger counts frames, at action repeat 2),
which is 50k of our agent steps (our step counter counts decisions); DMC proprio keeps its cheap
vector update at ratio 128 (one 16 x 64 update per 8 agent steps), and DMC vision, bounded by
rendering (~37 env steps/s), ratio 64. All dreamer runs use ``train.compile=true`` (the
update's graphs; the same function as eager, ``tests/test_update_paths.py``).

The optimiser is DreamerV3's (LaProp with adaptive gradient clipping) at the CPU quickstart's XS
learning rate, **3e-4 after 100 warm-up updates**, not DreamerV3's 4e-5 after 1,000 (``LR``).
DreamerV3's rate is tuned for its budget, 25k-100k updates per run; the study makes 3-6k. Its
first runs kept DreamerV3's rate and stayed far below DreamerV3's curves: proprio cartpole
``s0`` ended at 146 (greedy; DreamerV3 528 at equal frames), boxing ``s0`` was at -21 after
10k steps with a reward head predicting at most 0.002 where the data had rewards of 2, and an
actor still uniform. The same two runs at 3e-4 / 100, nothing else changed: cartpole 213 at 5k
agent steps, 374 at 20k, 430 at 40k and 456 at the end, 50k (DreamerV3's curve 445 and 528 at
equal frames; the 4e-5 run 142 and 146); boxing 1.7, 8.6 and 24.2 at 10k, 20k and 30k
(DreamerV3 -6, 31 and 43; the random floor 0.8). So every dreamer run of the study uses
3e-4 / 100, and the two runs at DreamerV3's rate stay in the report as a diagnostic arm
(``DIAGNOSTICS``, planned last and kept out of the peer tables):
``dmc_proprio-cartpole_swingup-dreamer-lr4e-5-s0`` (finished) and
``atari100k-boxing-dreamer-lr4e-5-s0``. sheeprl's ``dreamer_v3_5`` has the same optimiser
(LaProp, 4e-5 after 1,000 updates as it ships), so its runs get the study's rate too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the study's learning rate and warm-up (see "Settings, and why"); DreamerV3's are 4e-5 and 1,000
LR = ["agent.optim.lr=3e-4", "agent.optim.warmup=100"]
#: DreamerV3's optimiser settings, those of the diagnostic arm (``DIAGNOSTICS``)
DREAMERV3_LR = ["agent.optim.lr=4e-5", "agent.optim.warmup=1000"]
ATARI = ["env=atari100k", "size=xs", "steps=50000", "train.train_ratio=64", "eval.every=10000",
         "eval.episodes=10", "train.video_every=10000", "train.compile=true", *LR]
DMC_PROPRIO = ["env=dmc_proprio", "size=xs", "steps=50000", "train.train_ratio=128",
               "eval.every=5000", "eval.episodes=10", "train.compile=true", *LR]
DMC_VISION = ["env=dmc", "size=xs", "steps=50000", "train.train_ratio=64", "eval.every=5000",
              "eval.episodes=10", "train.video_every=20000", "train.compile=true", *LR]
GAMES = ("boxing", "krull", "road_runner", "pong")
SEEDS = (0, 1)


def without_lr(settings: list[str]) -> list[str]:
    """A suite's ``settings`` less the study's ``LR``."""
    return [o for o in settings if o not in LR]


@dataclass(frozen=True)
class Planned:
    name: str
    overrides: tuple[str, ...]
    peer: bool = False  # sheeprl's DreamerV3 (benchmarks.peer_learning); overrides are its args


def _peer(suite: str, task: str, settings: list[str], seed: int = 0) -> Planned:
    """sheeprl at a suite's settings: the same steps, train ratio and evaluation schedule."""
    kv = dict(o.split("=", 1) for o in settings)
    return Planned(f"sheeprl-{suite}-{task}-s{seed}",
                   ("--suite", suite, "--task", task, "--seed", str(seed), "--steps", kv["steps"],
                    "--train-ratio", kv["train.train_ratio"], "--eval-every", kv["eval.every"],
                    "--episodes", kv["eval.episodes"],
                    "--max-steps", "27000" if suite == "atari100k" else "1000",
                    "--lr", kv["agent.optim.lr"], "--warmup", kv["agent.optim.warmup"]),
                   peer=True)


def study() -> list[Planned]:
    """The study's runs, cheapest first within each block (floors, then proprio, then pixels)."""
    runs = []
    for game in GAMES:
        for seed in SEEDS:
            runs.append(Planned(f"atari100k-{game}-random-s{seed}",  # no optimiser: no LR
                                (*without_lr(ATARI), f"env.task={game}",
                                 "agent=random", f"seed={seed}")))
    for task in ("cartpole_swingup", "walker_walk"):
        for seed in SEEDS:
            runs.append(Planned(f"dmc_proprio-{task}-dreamer-s{seed}",
                                (*DMC_PROPRIO, f"env.task={task}", f"seed={seed}")))
        if task == "cartpole_swingup":  # beside our walker runs, as ours ran beside each other
            runs.append(_peer("dmc_proprio", task, DMC_PROPRIO))
    for game in GAMES:
        for seed in SEEDS:
            runs.append(Planned(f"atari100k-{game}-dreamer-s{seed}",
                                (*ATARI, f"env.task={game}", f"seed={seed}")))
    for seed in SEEDS:
        runs.append(Planned(f"dmc-cartpole_swingup-dreamer-s{seed}",
                            (*DMC_VISION, "env.task=cartpole_swingup", f"seed={seed}")))
    runs.append(_peer("atari100k", "boxing", ATARI))  # ~10 s per update at 1 thread: last
    return [*runs, *DIAGNOSTICS]


def _dreamerv3_lr(name: str, settings: list[str], task: str) -> Planned:
    """A run of the suite's ``settings`` at DreamerV3's learning rate and warm-up: the study's
    first attempt at the cell, kept as the evidence for the study's rate."""
    return Planned(name, (*without_lr(settings), *DREAMERV3_LR,
                          f"env.task={task}", "seed=0"))


#: not cells of the study but its evidence: the same runs at DreamerV3's optimiser settings
#: (``DREAMERV3_LR``), which the study's first runs used; planned last (boxing's is unfinished)
DIAGNOSTICS = (
    _dreamerv3_lr("dmc_proprio-cartpole_swingup-dreamer-lr4e-5-s0", DMC_PROPRIO,
                  "cartpole_swingup"),
    _dreamerv3_lr("atari100k-boxing-dreamer-lr4e-5-s0", ATARI, "boxing"),
)


def gpu_run() -> Planned:
    """One Atari100k game with the DreamerV3 recipe (size S, env=atari100k defaults)."""
    return Planned("gpu-atari100k-boxing-dreamer-S-s0",
                   ("env=atari100k", "env.task=boxing", "size=s", "seed=0", "device=cuda",
                    "train.compile=reduce-overhead", "train.amp=true"))


def state(run_dir: Path) -> str:
    if (run_dir / "summary.json").exists():
        return "finished"
    if any((run_dir / f).exists() for f in ("checkpoint.pt", "segments.jsonl", "eval.csv")):
        return "started"  # eval.csv alone: a record of an unfinished run
    return "new"


def progress_note(run_dir: Path, q: Planned, recent: int = 10, resumable: bool = True) -> str:
    """Where an unfinished run is: env steps reached of its budget, its last evaluation, and
    the hours left at the pace of its last ``recent`` logged rows (``""`` for peer runs and
    runs without logs); for a run that cannot be resumed (a record whose checkpoint went with
    another machine) that it starts afresh instead of the hours left."""
    from agents.logger import read_csv, read_jsonl

    budget = next((int(o.split("=", 1)[1]) for o in q.overrides if o.startswith("steps=")), None)
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "wall_s" in r and "step" in r]
    if q.peer or budget is None or not rows:
        return ""
    note = f"{rows[-1]['step']:,}/{budget:,} steps"
    evals = read_csv(run_dir / "eval.csv")
    if evals:
        note += f", last eval {float(evals[-1]['return_mean']):.1f} at {int(evals[-1]['step']):,}"
    a, b = rows[-min(recent, len(rows))], rows[-1]
    if not resumable:
        note += "; a record only (its checkpoint went with another machine): trained afresh"
    elif b["step"] > a["step"] and b["wall_s"] > a["wall_s"]:
        per_step = (b["wall_s"] - a["wall_s"]) / (b["step"] - a["step"])
        note += f", ~{max(0, budget - b['step']) * per_step / 3600:.1f} h left at its recent pace"
    return note


#: what a run's record keeps (``RECORDED`` plus the update rows of ``metrics.jsonl``, thinned,
#: its lines of the study log and a still of its newest open-loop video): enough for the report,
#: small enough to commit; checkpoints and replay stay in the run directory
RECORDED = ("config.yaml", "eval.csv", "episodes.csv", "summary.json",
            "eval_checkpoint_sample.json")
METRIC_ROWS = 400


def records_of(out: Path) -> Path:
    """Where the study's run records live beside its report: ``results/learning_cpu_runs``."""
    return out.parent / f"{out.name}_runs"


#: config keys that may differ between the attempts at one run: where and how it ran, what it
#: logs and how often it checkpoints
PLACE_KEYS = ("run_dir", "overwrite", "device", "train.threads", "train.progress",
              "train.log_every", "train.video_every", "train.checkpoint_every",
              "train.warning_signal")


def _settings(run_dir: Path) -> dict | None:
    """``run_dir``'s config by dotted key (``worldrl report``'s reading: upgraded to the current
    layout), ``PLACE_KEYS`` aside (None: no config there)."""
    from omegaconf import OmegaConf

    from agents.run_dir import flat_config, upgrade_config

    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    flat = flat_config(upgrade_config(OmegaConf.load(path)))
    return {k: v for k, v in flat.items() if k not in PLACE_KEYS}


def settings_differ(a: Path, b: Path) -> list[str]:
    """The config keys (dotted) set in both run directories ``a`` and ``b`` whose values differ,
    ``PLACE_KEYS`` aside; empty when either has no config. A key only one side has is a key
    added (or dropped) between the two attempts' commits: at its default, not a difference."""
    x, y = _settings(a), _settings(b)
    if x is None or y is None:
        return []
    return sorted(k for k in x.keys() & y.keys() if x[k] != y[k])


def where(q: Planned, runs_root: Path, records: Path | None) -> Path:
    """The directory the report reads run ``q`` from: the run itself, or its committed record
    when that is further along (a finished record, or one whose evaluations go further: the run
    directory was lost with another machine, or a lost run is being trained again). A run with
    other settings than its record (``settings_differ``) never takes its place: the record is
    the study's; delete it to take the new run."""
    live = runs_root / q.name
    if records is None or not (records / q.name / "eval.csv").exists():
        return live
    rec = records / q.name
    if settings_differ(live, rec):
        return rec
    if state(live) == "finished" or (state(rec) != "finished"
                                     and _evals_to(live) >= _evals_to(rec)):  # a tie: live
        return live
    return rec


def record(q: Planned, runs_root: Path, records: Path) -> bool:
    """Copy run ``q``'s record (see ``RECORDED``) from its run directory into ``records/NAME``,
    unless the record there is further along; returns whether it wrote one."""
    import shutil

    live = runs_root / q.name
    if not (live / "eval.csv").exists() or where(q, runs_root, records) != live:
        return False
    dst = records / q.name
    dst.mkdir(parents=True, exist_ok=True)
    for name in RECORDED:
        if (live / name).exists():
            tmp = dst / f".{name}.tmp"
            shutil.copyfile(live / name, tmp)
            tmp.replace(dst / name)
        elif (dst / name).exists():
            (dst / name).unlink()
    rows = _metrics(live)
    stride = max(1, -(-len(rows) // METRIC_ROWS))
    kept = rows[::stride] + ([rows[-1]] if rows and (len(rows) - 1) % stride else [])
    if kept:
        tmp = dst / ".metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(dst / "metrics.jsonl")
    elif (dst / "metrics.jsonl").exists():  # none (a random policy), or not the old attempt's
        (dst / "metrics.jsonl").unlink()
    log = runs_root / "study_log.jsonl"
    mine = [line for line in (log.read_text().splitlines() if log.exists() else [])
            if f'"run": "{q.name}"' in line]  # json.dumps' spacing (log_line)
    (dst / "study_log.jsonl").write_text("".join(line + "\n" for line in mine))
    gifs = sorted((live / "videos").glob("openloop-*-pixels.gif"))
    if gifs and not (dst / f"{gifs[-1].stem}.png").exists():
        try:  # a run in flight may be writing its newest GIF: the next report tries again
            openloop_still(gifs[-1], dst / f"{gifs[-1].stem}.png")
        except (OSError, ValueError, SyntaxError, EOFError):
            pass
    for old in dst.glob("openloop-*.png"):  # only the still of the run's newest GIF
        if not gifs or old.stem != gifs[-1].stem:
            old.unlink()
    return True


def lost_runs(out: Path, runs_root: Path, plan: list[Planned]) -> list[str]:
    """The runs whose results ``out``.md shows but that neither ``runs_root`` nor the records
    hold any more (their run directories went with another machine): a run shown finished that
    is no longer finished, or one shown started with evaluations (an unfinished run of the
    report's ``report.json``) of which nothing is left. ``report.json`` is written only where
    rliable is installed; without it, a started run is never called lost."""
    md = out.with_suffix(".md")
    if not md.exists():
        return []
    records = records_of(out)
    shown = dict(re.findall(r"^\| (\S+) \| (finished|started)", md.read_text(), re.M))
    # a started run counts as lost only if the report showed its evaluations (an unfinished
    # run of report.json); one started without any (sheeprl in flight, a run before its first
    # evaluation) showed nothing that could be lost
    figs = out.parent / f"{out.name}_figs" / "report.json"
    shown_evals = set()
    if figs.exists():
        rows = json.loads(figs.read_text()).get("rows", [])
        shown_evals = {Path(p).name for r in rows for p in r.get("unfinished", [])}
    lost = []
    for q in plan:
        now = state(where(q, runs_root, records))
        if (shown.get(q.name) == "finished" and now != "finished"
                or shown.get(q.name) == "started" and now == "new" and q.name in shown_evals):
            lost.append(q.name)
    return lost


def command(p: Planned, run_dir: Path, threads: int) -> list[str]:
    if p.peer:
        return [sys.executable, "-m", "benchmarks.peer_learning", str(run_dir), *p.overrides,
                *(["--threads", str(threads)] if threads else [])]
    return [sys.executable, "-m", "agents.cli", "train", *p.overrides, f"run_dir={run_dir}",
            "train.progress=false", *([f"train.threads={threads}"] if threads else [])]


def log_line(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_report(runs_root: Path, out: Path, plan: list[Planned]) -> None:
    """``worldrl report`` over the study's runs, with the settings, into ``out``.md; first each
    run's record is brought up to date (``record``), and a run whose directory is gone is read
    from its record."""
    from benchmarks.machine import speed_note, stamp

    records = records_of(out)
    for q in plan:
        record(q, runs_root, records)
    at = {q.name: where(q, runs_root, records) for q in plan}
    dirs = [at[q.name] for q in plan if (at[q.name] / "eval.csv").exists()]
    head = stamp("python -m benchmarks.learning " + " ".join(sys.argv[1:]))
    m = head["machine"]
    gpu = [q.name for q in plan] == [gpu_run().name]
    if gpu:
        title = "# Learning: one Atari100k game with the DreamerV3 recipe, on a GPU"
        settings = [f"- `{' '.join(gpu_run().overrides)}`"]
    else:
        title = "# Learning: Atari100k and DMC at CPU scale"
        settings = [f"- Atari100k: `{' '.join(ATARI)}`",
                    f"- DMC proprio: `{' '.join(DMC_PROPRIO)}`",
                    f"- DMC vision: `{' '.join(DMC_VISION)}`",
                    f"- Random-policy floors (`agent=random`): the Atari100k settings without "
                    f"`{' '.join(LR)}` (a random policy has no optimiser)",
                    "- sheeprl's runs: the suite's steps, train ratio, batch 16 x 64, "
                    "evaluations and learning rate and warm-up "
                    "(`benchmarks/peer_learning.py --lr --warmup`)",
                    f"- The diagnostic arm, {', '.join(f'`{q.name}`' for q in DIAGNOSTICS)}: "
                    f"the suite's settings at DreamerV3's `{' '.join(DREAMERV3_LR)}` (kept out "
                    "of the peer tables)"]
    lines = [title, "",
             f"Machine: {m['cpu']}, {m['cores']} cores{speed_note(m)}; torch {m['torch']}. "
             "Report written at "
             f"commit `{head['commit']}`, {head['date']}; each run's own commits, dates and CPUs "
             "(the CPU since 2026-11-29 evening; before, the AMD EPYC host) are in its "
             f"record's study log, `{_shown(records)}/RUN/study_log.jsonl` (the records: "
             "what the report reads, kept with the results, so that a run whose directory is "
             "lost with its machine still counts).", "",
             "Settings (why: `benchmarks/learning.py`'s docstring):", "", *settings, "",
             "| run | state |", "|---|---|"]
    for q in plan:
        differ = (settings_differ(runs_root / q.name, at[q.name])
                  if at[q.name].parent == records else [])
        if differ:
            note = (f" (record; the run in {_shown(runs_root)} has other settings, "
                    f"{', '.join(differ[:4])}: not taken)")
            print(f"run {q.name}: {runs_root / q.name} has other settings than its record "
                  f"({', '.join(differ)}); the report keeps the record (delete "
                  f"{at[q.name]} to take the new run, and pass --drop-lost once if the "
                  "record was finished)", file=sys.stderr)
        elif at[q.name].parent == records and state(at[q.name]) != "finished":
            note = " (record only: its checkpoint went with another machine)"
        else:
            note = ""
        lines.append(f"| {q.name} | {state(at[q.name])}{note} |")
    try:
        import rliable  # noqa: F401  (not on the GPU machine: report there, afterwards)
    except ImportError:
        dirs = []
        lines += ["", "(rliable is not installed here: run `worldrl report` on these runs "
                  "where it is.)"]
    if dirs:
        from agents.report import report

        figs = out.parent / f"{out.name}_figs"
        report(dirs, figs)
        lines += ["", (figs / "report.md").read_text().replace("](curve_", f"]({figs.name}/curve_")
                  .replace("](profile_", f"]({figs.name}/profile_")]
    lines += peer_table(at, plan)
    lines += diagnostics(at, plan, out.parent / f"{out.name}_figs", records)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _metrics(run_dir: Path) -> list[dict]:
    """The update rows of ``metrics.jsonl`` (those with the world model's KL)."""
    from agents.logger import read_jsonl

    path = run_dir / "metrics.jsonl"
    return [r for r in read_jsonl(path) if "kl/dyn" in r] if path.exists() else []


def openloop_still(gif: Path, out: Path, context_frame: int = 2, columns: int = 3) -> Path:
    """A still of an open-loop GIF (rows truth / model / error, a column per batch entry): its
    first ``columns`` entries at a frame inside the context (the posterior's reconstruction) and
    at the last frame (the prior's prediction, open loop), side by side."""
    from PIL import Image

    im = Image.open(gif)
    frames = []
    for i in (context_frame, im.n_frames - 1):
        im.seek(min(i, im.n_frames - 1))
        frame = im.convert("RGB")
        tile = frame.height // 3  # square tiles, three rows
        frames.append(frame.crop((0, 0, min(frame.width, tile * columns), frame.height)))
    w, h = frames[0].size
    still = Image.new("RGB", (2 * w + 4, h), "white")
    still.paste(frames[0], (0, 0))
    still.paste(frames[1], (w + 4, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    still.resize((still.width * 2, still.height * 2), Image.NEAREST).save(out)
    return out


def _first_last(first: dict, last: dict, key: str | None) -> str:
    if key is None or key not in first or key not in last:
        return ""
    return f"{first[key]:.3g} → {last[key]:.3g}"


def diagnostics(at: dict[str, Path], plan: list[Planned], figs: Path, records: Path
                ) -> list[str]:
    """What the curves show, per DreamerV3 run of the study: from ``metrics.jsonl``, the first
    and the last logged update's observation and reward losses, the world model's KL (its loss is
    clipped below 1 nat, DreamerV3's free bits), the actor's entropy, the imagined returns' 5-95
    percentile range and the return scale ``max(1, range)`` that divides the advantages, and the
    largest reward in the batch beside the largest the reward head predicts; a still of the
    newest open-loop video (context: the posterior's reconstruction; last frame: the prior's,
    open loop), which ``record`` keeps in the run's record."""
    import shutil

    lines = []
    for q in plan:
        run_dir = at[q.name]
        rows = _metrics(run_dir)
        if q.peer or "agent=random" in q.overrides or not rows:
            continue
        first, last = rows[0], rows[-1]
        obs = next((k for k in ("loss/pixels", "loss/vector") if k in last), None)
        spread = last.get("actor/retnorm_hi", 0.0) - last.get("actor/retnorm_lo", 0.0)
        still = ""
        if stills := sorted((records / q.name).glob("openloop-*-pixels.png")):
            png = figs / f"openloop_{q.name}.png"
            figs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stills[-1], png)
            still = f"[{stills[-1].stem.split('-')[1].lstrip('0')}]({figs.name}/{png.name})"
        lines.append(f"| {q.name} | {last['step']:.0f} | {last.get('updates', 0):.0f} | "
                     f"{obs.split('/')[1] + ' ' if obs else ''}{_first_last(first, last, obs)} | "
                     f"{_first_last(first, last, 'loss/rew')} | "
                     f"{_first_last(first, last, 'kl/dyn')} | "
                     f"{_first_last(first, last, 'actor/entropy')} | "
                     f"{spread:.3g} | {last.get('actor/return_scale', float('nan')):.3g} | "
                     f"{last.get('reward_max_pred', float('nan')):.3g} / "
                     f"{last.get('reward_max_data', float('nan')):.3g} | {still} |")
    if not lines:
        return []
    return ["", "### What the curves show", "",
            "Per DreamerV3 run, the first logged update → the last (`metrics.jsonl`, each value "
            "a mean over its log interval; curves of every metric: `tensorboard --logdir "
            "RUN/tb`). KL: the world model's dynamics KL itself; its loss is clipped below 1 nat "
            "(DreamerV3's free bits), so below 1 nothing pushes it down. Max reward: the largest "
            "absolute reward of each update's batch, in the data and in the reward head's "
            "predictions. Return range: the 5-95 "
            "percentile spread of the imagined returns; the advantages are divided by "
            "`max(1, range)`, so below 1 they stay as small as the returns' differences, next to "
            "the entropy bonus (3e-4). Open loop: a still of the newest open-loop video, three "
            "batch entries (rows: truth, model, error), left a frame inside the 5-step context "
            "(the posterior's reconstruction), right the last frame (predicted open loop).", "",
            "| run | agent steps | updates | observation loss | reward loss | KL | actor entropy "
            "| return range | return scale | max reward: predicted / data | open loop at |",
            "|---|---:|---:|---|---|---|---|---:|---:|---|---|", *lines]


def _last_eval(run_dir: Path) -> dict | None:
    from agents.report import _read_evals

    rows = _read_evals(run_dir / "eval.csv")
    return rows[-1] if rows else None


def _evals_to(run_dir: Path) -> float:
    """The step of ``run_dir``'s last evaluation (-1: none)."""
    last = _last_eval(run_dir)
    return last["step"] if last else -1.0


def _per_process(run_dir: Path, name: str, field) -> str:
    """``field(entry)`` of each process that worked on run ``name`` (the start entries of the
    study log beside its run directory, or in its record), in order, repeats merged."""
    log = run_dir / "study_log.jsonl"
    if not log.exists():
        log = run_dir.parent / "study_log.jsonl"
    seen: list[str] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        if entry.get("run") != name or "command" not in entry:
            continue
        value = field(entry)
        if not seen or seen[-1] != value:
            seen.append(value)
    return ", ".join(seen) or "?"


def _thread_count(entry: dict) -> str:
    m = re.search(r"(?:--threads |train\.threads=)(\d+)", entry["command"])
    return m.group(1) if m else "all"


def _threads_on(run_dir: Path, name: str) -> str:
    """Each process of run ``name``: its threads and the CPU model it ran on, ``1 on Intel Xeon
    Processor, all on ...`` (``?``: a start logged before the study recorded the CPU, before
    2026-11-29 evening; those ran on the AMD EPYC host of the reports up to then)."""
    return _per_process(run_dir, name, lambda entry: f"{_thread_count(entry)} on "
                        f"{entry.get('cpu', '?').replace('(R)', '').replace('(TM)', '')}")


def peer_table(at: dict[str, Path], plan: list[Planned]) -> list[str]:
    """Ours beside sheeprl at equal settings: per task, each run's last evaluation, the
    wall-clock that reached it and the torch threads each part of the run had (from the study
    log: runs side by side get 1 thread each, a run alone gets all cores)."""
    lines = []
    for peer in (p for p in plan if p.peer):
        kv = dict(zip(peer.overrides[0::2], peer.overrides[1::2]))
        suite, task = kv["--suite"], kv["--task"]
        ours = [p for p in plan  # the study's runs at the peer's settings, not the diagnostic
                if not p.peer and re.fullmatch(rf"{suite}-{task}-dreamer-s\d+", p.name)]
        rows = []
        for p in [*ours, peer]:
            last = _last_eval(at[p.name])
            if last is None:
                continue
            who = "sheeprl 0.8.4 dreamer_v3_5 (XS dims)" if p.peer else "worldrl dreamer rssm xs"
            wall = last.get("wall_s", float("nan")) / 3600
            rows.append(f"| {who} | {p.name} | {state(at[p.name])} | {last['step']:.0f} "
                        f"| {last['return_mean']:.1f} | {wall:.2f} | "
                        f"{_threads_on(at[p.name], p.name)} |")
        if rows:
            lines += ["", f"### Ours beside sheeprl: {suite} {task}", "",
                      "Last evaluation (10 episodes, the policy's mode) and the wall-clock that "
                      "reached it, with the torch threads of each process of the run and its "
                      "CPU (1: beside another 1-thread run of the study; all: alone, on every "
                      "core; a CPU ?: not recorded, a process started before 2026-11-29 "
                      "evening, on the AMD EPYC host; "
                      "other work of ours on the machine is not recorded, so read the "
                      "wall-clocks as rough; runs on different CPUs, or on one host on "
                      "different days, compare only roughly: see the reports' matmul rates). "
                      "Ours includes its in-loop evaluations, sheeprl's "
                      "(evaluated afterwards from its checkpoints) does not. How sheeprl is set "
                      "up: `benchmarks/peer_learning.py`; the update's speed beside sheeprl's, "
                      "measured side by side: `results/peer_speed_cpu.md`.", "",
                      "| implementation | run | state | agent steps | eval return "
                      "| wall-clock (h) | threads per process, on CPU |",
                      "|---|---|---|---:|---:|---:|---|", *rows]
    return lines


def run_plan(plan: list[Planned], runs_root: Path, parallel: int = 1, minutes: float = 0,
             on_exit=None, threads: int | None = None, grace: float = 600) -> str | None:
    """Run (or resume) the runs of ``plan`` not finished yet under ``runs_root``, ``parallel`` at
    a time (``threads`` torch threads each; by default 1 when ``parallel > 1``, else all),
    logging starts and exits to ``runs_root/study_log.jsonl`` and calling ``on_exit()`` after each
    run ends. After ``minutes`` (0: no limit), or when this process gets SIGTERM or SIGINT, the
    runs in flight are stopped cleanly (SIGTERM: one batch, a checkpoint, exit 0) and no more
    start; the next call resumes them. A run that has not exited ``grace`` seconds after its
    SIGTERM is killed (SIGKILL; it resumes from its last checkpoint). Returns the name of the
    signal that stopped the study, or None."""
    from benchmarks.machine import commit

    runs_root.mkdir(parents=True, exist_ok=True)
    log = runs_root / "study_log.jsonl"
    todo = [q for q in plan if state(runs_root / q.name) != "finished"]
    if threads is None:
        threads = 1 if parallel > 1 else 0
    deadline = time.time() + minutes * 60 if minutes else None
    asked: list[str] = []  # the signal that asked this process to stop

    def ask_stop(signum, frame):  # only records: printing here could re-enter a print
        asked.append(signal.Signals(signum).name)

    main_thread = threading.current_thread() is threading.main_thread()  # handlers live there
    previous = ({sig: signal.signal(sig, ask_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
                if main_thread else {})
    try:
        _run_plan_loop(todo, runs_root, log, parallel, threads, deadline, minutes, asked, grace,
                       on_exit, commit)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return asked[0] if asked else None


def _run_plan_loop(todo, runs_root, log, parallel, threads, deadline, minutes, asked, grace,
                   on_exit, commit) -> None:
    from benchmarks.machine import cpu_model

    active: list[tuple[Planned, subprocess.Popen, float]] = []
    stopped_at: dict[int, float] = {}  # pid -> when it was sent SIGTERM

    def stopping() -> bool:
        return bool(asked) or (deadline is not None and time.time() >= deadline)

    while todo or active:
        while todo and len(active) < parallel and not stopping():
            q = todo.pop(0)
            run_dir = runs_root / q.name
            with open(runs_root / f"{q.name}.stderr", "a") as err:
                # a run of its own process group: a Ctrl-C at the terminal reaches this process
                # only, which stops the runs as --minutes does
                proc = subprocess.Popen(command(q, run_dir, threads), cwd=ROOT, stdout=err,
                                        stderr=err, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            active.append((q, proc, time.time()))
            log_line(log, {"run": q.name, "event": "start", "commit": commit(),
                           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu_model(),
                           "command": " ".join(command(q, run_dir, threads)[1:])})
            print(f"started {q.name}", flush=True)
        if not active:
            break
        time.sleep(0.5 if stopping() else 5)
        if stopping():
            why = f"{asked[0]} received" if asked else f"--minutes={minutes} reached"
            for q, proc, _ in active:
                if proc.poll() is not None:
                    continue
                if proc.pid not in stopped_at:
                    proc.send_signal(signal.SIGTERM)  # checkpoint and exit 0
                    stopped_at[proc.pid] = time.time()
                    print(f"stopping {q.name} ({why})", flush=True)
                elif time.time() - stopped_at[proc.pid] > grace:
                    proc.kill()
                    proc.wait()
                    log_line(log, {"run": q.name, "event": "killed", "grace_s": grace,
                                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    print(f"killed {q.name}: not stopped {grace:.0f} s after SIGTERM (it "
                          "resumes from its last checkpoint)", flush=True)
        for item in list(active):
            q, proc, t0 = item
            if proc.poll() is None:
                continue
            active.remove(item)
            entry = {"run": q.name, "event": "exit", "rc": proc.returncode,
                     "wall_s": time.time() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            log_line(log, entry)
            print(f"{q.name}: exit {proc.returncode} after {entry['wall_s'] / 60:.1f} min",
                  flush=True)
            if on_exit is not None:
                on_exit()


def sampled_evals(plan: list[Planned], runs_root: Path, threads: int = 0) -> list[str]:
    """Evaluate each finished DreamerV3 run's final checkpoint again with sampled actions
    (``worldrl eval RUN --sample``: DreamerV3's and sheeprl's evaluation policy; the study's
    in-loop evaluations play the mode) into ``RUN/eval_checkpoint_sample.json``, which the report
    shows beside the final evaluation. Runs whose file is already at their last step are skipped;
    returns the runs evaluated."""
    from agents.evaluate import evaluate_again  # torch: only where a run is evaluated

    done = []
    for q in plan:
        run_dir = runs_root / q.name
        if q.peer or "agent=random" in q.overrides or state(run_dir) != "finished":
            continue
        with open(runs_root / f"{q.name}.stderr", "a") as err:
            result, ran, _ = evaluate_again(run_dir, sample=True, threads=threads, stderr=err)
        if not ran:
            continue  # already at the run's last step
        print(f"sampled evaluation of {q.name}: {'done' if result else 'failed'}", flush=True)
        if result:
            done.append(q.name)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "learning"))
    p.add_argument("--out", default=None,
                   help="the report, OUT.md (default results/learning_cpu, with --gpu "
                        "results/learning_gpu)")
    p.add_argument("--parallel", type=int, default=1, help="runs side by side (1 thread each)")
    p.add_argument("--only", nargs="+", default=None, help="run names (see --list)")
    p.add_argument("--list", action="store_true", help="show the study's runs and their state")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--sampled-evals", action="store_true",
                   help="only evaluate the finished runs' final checkpoints with sampled actions "
                        "(done anyway once the runs end), then write the report")
    p.add_argument("--gpu", action="store_true", help="the GPU run instead of the CPU study")
    p.add_argument("--minutes", type=float, default=0,
                   help="after this long, stop the runs in flight cleanly (SIGTERM: they write a "
                        "checkpoint and exit; the next start resumes them) and start no more")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    p.add_argument("--drop-lost", action="store_true",
                   help="rewrite OUT.md even if it shows runs that are no longer here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: 1 with --parallel > 1, else all); "
                        "e.g. 1 for one run beside other work")
    args = p.parse_args(argv)
    plan = [gpu_run()] if args.gpu else study()
    whole = plan  # the report always covers the whole study, whichever runs --only starts
    names = {q.name for q in plan}
    if args.only:
        unknown = sorted(set(args.only) - names)
        if unknown:
            raise SystemExit(f"unknown run(s) {unknown}; see --list for the study's runs")
        plan = [q for q in plan if q.name in args.only]
    if args.extra:
        plan = [Planned(q.name, (*q.overrides, *args.extra)) for q in plan]
    runs_root = Path(args.runs)
    out = Path(args.out or ROOT / "results" / ("learning_gpu" if args.gpu else "learning_cpu"))
    records = records_of(out)
    if args.list:
        for q in plan:
            at = where(q, runs_root, records)
            st = state(at)
            resumable = state(runs_root / q.name) == "started"
            where_note = progress_note(at, q, resumable=resumable) if st == "started" else ""
            print(f"{q.name:42s} {st:9s}{' (record)' if at.parent == records else ''} "
                  f"{' '.join(q.overrides)}" + (f"\n{'':52s}{where_note}" if where_note else ""))
        return 0
    lost = lost_runs(out, runs_root, whole)
    if lost and not args.drop_lost:
        print(f"{out.with_suffix('.md')} shows run(s) {lost} that neither {runs_root} nor "
              f"{records} holds (their run directories went with another machine?): rewriting "
              "it would drop them. Keep it by passing another --out, or --drop-lost to rewrite "
              "it without them.", file=sys.stderr)
        return 2
    # a run finished on another machine counts from its record: not trained again
    plan = [q for q in plan if state(where(q, runs_root, records)) != "finished"
            or state(runs_root / q.name) == "finished"]
    if args.report_only:
        write_report(runs_root, out, whole)
        return 0

    threads = args.threads if args.threads is not None else (1 if args.parallel > 1 else 0)
    deadline = time.time() + args.minutes * 60 if args.minutes else None
    stopped = None
    if not args.sampled_evals:  # the report after every run; the sampled evaluations after all
        stopped = run_plan(plan, runs_root, args.parallel, args.minutes, threads=threads,
                           on_exit=lambda: write_report(runs_root, out, whole))
    if stopped is None and (deadline is None or time.time() < deadline):
        sampled_evals(plan, runs_root, threads)
    else:
        why = f"{stopped} received" if stopped else "--minutes reached"
        print(f"{why}: sampled evaluations left for the next start (or --sampled-evals)",
              flush=True)
    write_report(runs_root, out, whole)
    return 0


if __name__ == "__main__":
    sys.exit(main())
