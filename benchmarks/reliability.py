"""Chaos: kill a real ``worldrl train`` with SIGKILL at random moments, restart it, check it.

    python -m benchmarks.reliability                  # -> results/reliability.{json,md}
    python -m benchmarks.reliability --kills 4 --scenarios gym-rssm   # a quick look

Each scenario starts a training run, kills it (``SIGKILL``: no handler runs) at random moments
while it trains, during a checkpoint write (the process is made to write its checkpoint slowly and
is killed half-way through the temporary file) and, last of the random kills, with the replay's
FIFO wrapped and rows written after the checkpoint (that kill waits for both, not for a clock, so
a slow machine cannot miss it); it restarts the same command after every kill and finally lets it
finish. After each restart it checks:

- the run resumed at the checkpoint's counters (the ``resumed ... at env step N`` line);
- no log goes backwards (``metrics.jsonl`` and ``eval.csv`` steps, ``episodes.csv`` episode
  numbers, one more each row);
- no replay window the resumed process can draw holds a row written after the checkpoint (the
  rows the killed process wrote after it are counted, and every window of 20 raw batches is
  checked; the training process checks every batch it samples as well);
- the run ends with ``summary.json``.

It also tries every bad input of ``tests/test_reliability.py`` on an existing run and counts the
clean errors (exit 2, one line, no traceback, run directory byte-identical). The tests run the
same code on a short run (``tests/test_chaos.py``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from agents.logger import read_csv, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SLOW_SAVE = "WORLDRL_CHAOS_SLOW_SAVE"
MARKER = "CHAOS: checkpoint half written"

#: name -> overrides; each run wraps its replay (capacity well below its steps)
SCENARIOS = {
    "gym-rssm": ["preset=debug", "env=gym", "backbone=rssm", "steps=3000",
                 "replay.capacity=150"],
    "gym-s4-dfs": ["preset=debug", "env=gym", "backbone=s4", "replay.sampler=dfs", "steps=3000",
                   "replay.capacity=150"],
    "gym-mamba-dfs": ["preset=debug", "env=gym", "backbone=mamba", "replay.sampler=dfs",
                      "steps=3000", "replay.capacity=150"],
    "atari100k-rssm": ["preset=debug", "env=atari100k", "env.task=pong", "steps=1500",
                       "replay.capacity=400"],
}
CHECKPOINT_EVERY = 100
COMMON = ["train.progress=false", f"train.checkpoint_every={CHECKPOINT_EVERY}",
          "train.log_every=20", "eval.every=0", "train.video_every=0"]


def hooked_main() -> int:
    """``worldrl`` with a slow checkpoint write when ``WORLDRL_CHAOS_SLOW_SAVE=1``: half the
    bytes, a marker line on stdout, a pause, the rest (a window for a kill mid-write)."""
    if os.environ.get(SLOW_SAVE) == "1":
        import torch

        import agents.run_dir as rd

        real_save = torch.save

        def slow_save(obj, f):
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                print(MARKER, flush=True)
                time.sleep(3.0)
                fh.write(data[len(data) // 2:])

        rd.torch.save = slow_save
    from agents.cli import main

    return main(sys.argv[1:])


class Proc:
    """A ``worldrl train`` subprocess whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], slow_save: bool = False):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               SLOW_SAVE: "1" if slow_save else "0"}
        code = "import sys; from benchmarks.reliability import hooked_main; " \
               "sys.exit(hooked_main())"
        self.p = subprocess.Popen([sys.executable, "-c", code, "train", *args], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.p.stdout, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.p.stderr, self.err),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, test, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if test() or self.p.poll() is not None:
                return test()
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()
        for t in self._threads:
            t.join(timeout=5)

    def finish(self, timeout: float) -> int:
        self.p.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return self.p.returncode


def _steps(path: Path, key: str = "step") -> list[float]:
    """The ``key`` column of a jsonl or csv log, complete rows only."""
    if path.suffix == ".jsonl":
        return [float(row[key]) for row in read_jsonl(path)]
    return [float(row[key]) for row in read_csv(path)]


def progress(run: Path) -> float:
    """The furthest env step a (killed) process logged."""
    return max([0.0, *_steps(run / "metrics.jsonl"), *_steps(run / "episodes.csv")])


def stale_windows(run: Path, batches: int = 20) -> dict:
    """What the next process's replay would serve: rows written after the checkpoint, and how
    many sampled rows (raw windows, bookkeeping columns included) are such rows."""
    from omegaconf import OmegaConf

    from agents.run_dir import load_checkpoint, upgrade_config
    from worldrl.replay import Replay

    ckpt = load_checkpoint(run)
    cfg = upgrade_config(ckpt["config"])
    t = cfg.train
    replay = Replay(run / "replay", cfg.replay.capacity, cfg.env.num_envs, t.batch_size,
                    t.seq_len, sampler=cfg.replay.sampler, seed=cfg.seed,
                    smoothing=OmegaConf.to_container(cfg.replay.smoothing, resolve=True),
                    dfs=OmegaConf.to_container(cfg.replay.dfs, resolve=True),
                    generation=ckpt["counters"]["resumes"] + 1)
    replay.load_state_dict(ckpt["replay"])
    serial = replay.storage._storage["serial"][:, 0]
    after = int((serial >= replay.resume_serial).sum()) if replay.storage.initialized else 0
    sampled = bad = 0
    if replay.ready():
        for _ in range(batches):
            raw = replay.buffer.sample()
            sampled += raw.numel()
            bad += int(((raw["generation"] != replay.generation)
                        & (raw["serial"] >= replay.resume_serial)).sum())
    return {"wrapped": replay_wrapped(ckpt),
            "rows_after_checkpoint": after, "hole": replay.sampler.hole, "sampled": sampled,
            "sampled_after_checkpoint": bad}


def wrapped_and_past(run: Path) -> bool:
    """Whether the last complete checkpoint's replay has wrapped (more rows added per env than
    it holds) and the running process has logged env steps past that checkpoint."""
    from agents.run_dir import CHECKPOINT_FILE

    try:
        mtime = (run / CHECKPOINT_FILE).stat().st_mtime_ns
        wrapped, env_steps = _checkpoint_wrapped(run, mtime)
    except Exception:  # none yet, or replaced while it was read: ask again on the next poll
        return False
    return wrapped and progress(run) > env_steps


@functools.lru_cache(maxsize=8)
def _checkpoint_wrapped(run: Path, mtime_ns: int) -> tuple[bool, int]:
    """(replay wrapped, env steps) of the checkpoint file as it was at ``mtime_ns`` (read once
    per version, not at every poll)."""
    from agents.run_dir import load_checkpoint

    ckpt = load_checkpoint(run)
    return replay_wrapped(ckpt), int(ckpt["counters"]["env_steps"])


def replay_wrapped(ckpt: dict) -> bool:
    """Whether a checkpoint's replay FIFO has wrapped: more rows added per env copy than its
    storage holds (``Replay``'s ``capacity // num_envs`` steps)."""
    num_envs = int(ckpt["config"]["env"]["num_envs"])
    return (ckpt["replay"]["rows_added"] // num_envs
            > int(ckpt["config"]["replay"]["capacity"]) // num_envs)


def check_logs(run: Path) -> list[str]:
    """Problems with the logs: any step or episode number that goes backwards or repeats."""
    problems = []
    steps = _steps(run / "metrics.jsonl")
    if any(b < a for a, b in zip(steps, steps[1:])):
        problems.append("metrics.jsonl steps go backwards")
    evals = _steps(run / "eval.csv")
    if any(b <= a for a, b in zip(evals, evals[1:])):
        problems.append("eval.csv steps repeat or go backwards")
    episodes = _steps(run / "episodes.csv", "episode")
    if episodes and episodes != list(range(1, len(episodes) + 1)):
        problems.append("episodes.csv episode numbers are not 1, 2, 3 ...")
    ep_steps = _steps(run / "episodes.csv")
    if any(b < a for a, b in zip(ep_steps, ep_steps[1:])):
        problems.append("episodes.csv steps go backwards")
    return problems


def chaos(run: Path, overrides: list[str], kills: int, seed: int = 0,
          checkpoint_kills: int = 1, delay: tuple[float, float] = (1.0, 6.0),
          timeout: float = 300.0) -> dict:
    """Kill and restart ``worldrl train`` ``kills`` times (``checkpoint_kills`` of them during a
    checkpoint write), then let it finish; returns what happened and every problem seen."""
    from agents.run_dir import CHECKPOINT_FILE, load_checkpoint

    rng = random.Random(seed)
    args = [*overrides, *COMMON, f"run_dir={run}", f"seed={seed}"]
    at_ckpt = set(rng.sample(range(kills), min(checkpoint_kills, kills)))
    last_random = max(set(range(kills)) - at_ckpt, default=None)
    events, problems = [], []

    def counters():
        if not (run / CHECKPOINT_FILE).exists():
            return None
        return load_checkpoint(run)["counters"]

    reached = 0.0
    for i in range(kills):
        before = counters()
        mode = "checkpoint write" if i in at_ckpt else "random"
        proc = Proc(args, slow_save=i in at_ckpt)
        start = before["env_steps"] if before else 0
        resumed = lambda p=proc: any("resumed" in x for x in p.lines)  # noqa: E731
        if before and not proc.wait_for(resumed, timeout):
            problems.append(f"kill {i}: no 'resumed' line: {proc.err[-3:]}")
        if before:
            want = f"resumed {run} at env step {before['env_steps']} ({before['updates']} updates"
            if not any(x.startswith(want) for x in proc.lines):
                problems.append(f"kill {i}: expected '{want}', got {proc.lines[:2]}")
        if mode == "random":
            # past what the killed process had logged: this one has cut the logs and trained
            past = max(start, reached)
            ok = proc.wait_for(lambda past=past: progress(run) > past, timeout)
            pause = rng.uniform(*delay)  # drawn for every random kill: the same seeds as before
            if i == last_random:
                ok = ok and proc.wait_for(lambda: wrapped_and_past(run), timeout)
            else:
                time.sleep(pause)
        else:
            ok = proc.wait_for(lambda p=proc: MARKER in p.lines, timeout)
        finished = proc.p.poll() is not None
        proc.kill()
        if finished:
            problems.append(f"kill {i}: the process ended before the kill (rc "
                            f"{proc.p.returncode}): {proc.err[-3:]}")
            break
        if not ok:
            problems.append(f"kill {i}: no progress within {timeout} s")
        after = counters() or {"env_steps": 0, "updates": 0}
        reached = progress(run)
        tmp_left = (run / (CHECKPOINT_FILE + ".tmp")).exists()
        replay = stale_windows(run) if (run / CHECKPOINT_FILE).exists() else {}
        if replay.get("sampled_after_checkpoint"):
            problems.append(f"kill {i}: {replay['sampled_after_checkpoint']} sampled rows were "
                            "written after the checkpoint")
        events.append({"kill": i, "moment": mode, "checkpoint_env_steps": after["env_steps"],
                       "logged_env_steps": reached,
                       "env_steps_lost": max(0.0, reached - after["env_steps"]),
                       "partial_checkpoint_tmp": tmp_left, **replay})
    before = counters()
    proc = Proc(args)
    rc = proc.finish(timeout=timeout * 4)
    if rc != 0:
        problems.append(f"the final restart failed (rc {rc}): {proc.err[-5:]}")
    if before:
        want = f"resumed {run} at env step {before['env_steps']} ("
        if not any(x.startswith(want) for x in proc.lines):
            problems.append(f"final restart: expected '{want}', got {proc.lines[:2]}")
    problems += check_logs(run)
    summary = run / "summary.json"
    if not summary.exists():
        problems.append("no summary.json")
    return {"overrides": overrides, "kills_tried": kills, "events": events,
            "survived": len(events) - sum(1 for p in problems if p.startswith("kill ")),
            "summary": json.loads(summary.read_text()) if summary.exists() else None,
            "problems": problems}


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its content hash (a run directory, byte for byte)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


#: bad command-line values and the start of the one-line error each must give (before anything
#: touches the disk); tried here on an existing run and by tests/test_reliability.py
BAD = [
    ("seed=1.5", "seed must be an integer like its default 0, got 1.5"),
    ("seed=abc", "seed must be an integer like its default 0, got 'abc'"),
    ("steps=abc", "steps must be an integer like its default 120, got 'abc'"),
    ("train.checkpoint_every=abc", "train.checkpoint_every must be an integer"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("replay.sampler=dfz", "unknown replay sampler 'dfz'; choose one of: uniform, dfs"),
    ("replay.smoothing.mode=gauss", "unknown reward smoothing 'gauss'; choose one of: none, "),
    ("replay.smoothing.edge=wrap", "unknown reward smoothing edge 'wrap'; choose one of: "),
    ("replay.capacity=4", "replay capacity 4 holds 4 steps per env (1 env copies), fewer than "
                          "seq_len=8"),
    ("replay.dfs.tau=0", "replay.dfs.tau must be > 0, got 0"),
    ("train.amp=yes", "train.amp must be a boolean (true/false) like its default False, got 'yes'"),
    ("train.warning_signal=SIGFOO", "train.warning_signal 'SIGFOO' is not a signal this system "
                                    "can catch; choose one of: "),
    ("eval.episodes=0", "eval.episodes must be >= 1, got 0"),
    ("train.foo=1 train.bar=2", "unknown config key 'train.foo'; valid keys under 'train': amp, "),
]


def bad_inputs(run: Path) -> list[dict]:
    """Every input of :data:`BAD` on an existing run: exit 2, one line, nothing changed."""
    results = []
    before = tree(run)
    for override, message in BAD:
        out = subprocess.run([sys.executable, "-m", "agents.cli", "train", "preset=debug",
                              *override.split(), f"run_dir={run}", "train.progress=false"],
                             cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        clean = (out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
                 and len(out.stderr.strip().splitlines()) <= 2 and tree(run) == before)
        results.append({"input": override, "clean": clean,
                        "message": out.stderr.strip().splitlines()[-1] if out.stderr else ""})
    return results


def render(report: dict) -> str:
    m = report["machine"]
    lines = ["# Reliability: SIGKILL at random moments, bad inputs", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}. Commit "
             f"`{report['commit']}`, {report['date']}.", f"Command: `{report['command']}`.", "",
             "Each scenario is killed with SIGKILL (at random moments while it trains, and once "
             "half-way through writing a checkpoint), restarted with the same command after each "
             "kill, and finally left to finish. "
             f"`checkpoint_every={report['checkpoint_every']}` env steps; every replay wraps "
             "(capacity well below the run's steps). \"Lost\" is the furthest env step the "
             "killed process had logged minus the checkpoint it resumed from.", "",
             "| scenario | kills survived / tried | at a checkpoint write | with the replay "
             "wrapped | most env steps lost per kill | rows written after the checkpoint (most) "
             "| such rows sampled after the resume | finished (summary.json) | problems |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    most_lost, stale_sampled = 0.0, 0
    for name, r in report["scenarios"].items():
        ev = r["events"]
        lost = max((e["env_steps_lost"] for e in ev), default=0)
        most_lost = max(most_lost, lost)
        after = max((e.get("rows_after_checkpoint", 0) for e in ev), default=0)
        sampled = sum(e.get("sampled_after_checkpoint", 0) for e in ev)
        stale_sampled += sampled
        at_write = sum(e["moment"] == "checkpoint write" for e in ev)
        wrapped = sum(bool(e.get("wrapped")) for e in ev)
        probs = "; ".join(r["problems"]) or "none"
        done = "yes" if r["summary"] else "NO"
        lines.append(f"| {name} | {r['survived']} / {r['kills_tried']} | {at_write} | {wrapped} | "
                     f"{lost:.0f} | {after} | {sampled} | {done} | {probs} |")
    bad = report["bad_inputs"]
    lines += ["", f"Bad inputs on an existing run: {sum(b['clean'] for b in bad)} / {len(bad)} "
              "clean errors (exit 2, one line naming the value, no traceback, run directory "
              "byte-identical).", "", "| input | clean | message |", "|---|---|---|"]
    lines += [f"| `{b['input']}` | {'yes' if b['clean'] else 'NO'} | {b['message']} |"
              for b in bad]
    lines += ["", f"Data lost: at most {most_lost:.0f} env steps (and their updates) per kill, "
              f"against checkpoint_every={report['checkpoint_every']}; {stale_sampled} replay rows "
              "written after a checkpoint were sampled after the resumes.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--kills", type=int, default=8, help="SIGKILLs per scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/worldrl-chaos", help="where the runs go")
    p.add_argument("--out", default=str(ROOT / "results" / "reliability"))
    args = p.parse_args(argv)
    import shutil

    from benchmarks.machine import stamp, write_report

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    report = {**stamp("python -m benchmarks.reliability "
                      + " ".join(argv if argv is not None else sys.argv[1:])), "scenarios": {},
              "checkpoint_every": CHECKPOINT_EVERY}
    for name in args.scenarios:
        t0 = time.time()
        r = chaos(work / name, SCENARIOS[name], args.kills, seed=args.seed)
        r["wall_s"] = time.time() - t0
        report["scenarios"][name] = r
        print(f"{name}: survived {r['survived']}/{r['kills_tried']}, problems: "
              f"{r['problems'] or 'none'} ({r['wall_s']:.0f} s)", flush=True)
    first = work / args.scenarios[0]
    report["bad_inputs"] = bad_inputs(first)
    write_report(args.out, report, render(report))
    print(render(report))
    return 0 if not any(r["problems"] for r in report["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
