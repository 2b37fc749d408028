"""Memory benchmark (S4WM-style): recall a cue after a gap of K steps, for rssm, s4, mamba and
mamba2.

    python -m benchmarks.memory                   # -> results/memory.{json,md} (CPU, 1 thread)
    python -m benchmarks.memory --quick           # a few updates of everything (smoke)
    python -m benchmarks.memory --kinds agent --gaps 256 1024 --merge   # add cells to the report

``--merge`` keeps the cells of the existing report that this command does not re-run; every cell
records which run (command, commit, date, budget) measured it.

Task: ``envs/memory.py`` ``recall_K`` (cue bit at t=0, K blank steps, a query, the answer's reward
1 or 0 on the final step). Two measurements per backbone and gap K:

* **world-model reward accuracy**: a world model (tiny: encoder/decoder MLPs of 32 units, latents
  4x4, each backbone at ~30-60k parameters) trains on whole episodes of a random policy (fresh
  episodes every update: ``[B, K + 3]`` sequences aligned to episode starts, so the sequence covers
  the cue and the answer), then predicts the reward of the answer on held-out episodes; accuracy =
  fraction where ``pred > 0.5`` matches the reward (chance: 0.5; the final observation is blank,
  so only a remembered cue and the answer given at the query tell the reward).
* **agent success**: the DreamerV3 agent (same world model, tiny actor/critic) learns from its own
  episodes in a small episode-aligned loop (collect episodes with the current policy, replay
  ``[B, K + 3]`` episode batches, one update each), imagination starting from the last 4 replayed
  steps (the query among them) with exact states (``imag_context=0``, R2I's starts: an 8-step
  burn-in cannot hold a cue from K steps back); success = fraction of greedy (``eval``) episodes
  answered right.

Update counts shrink with K to fit a CPU budget (one core): see ``PLAN`` and the notes written to
the results. Numbers are whatever was measured; no backbone is favoured by the protocol.

**POPGym** (``--kinds popgym``): ``worldrl train env=popgym`` runs, one per task of
``POPGYM_TASKS`` and backbone, at ``POPGYM`` (the DreamerV3 agent at size XS; SSM imagination
from exact states, ``imag_context=0``, as R2I), each in its own run directory under
``--popgym-runs`` (default ``runs/memory``): resumable (``--minutes``: stop cleanly, the next start
resumes), the runner of ``benchmarks.learning``. The report puts each run's final evaluation (10
episodes; POPGym's returns lie in [-1, 1]) beside R2I's and DreamerV3's bars from R2I's POPGym
figure (``benchmarks/r2i_popgym.json``: read off the figure, R2I gives no table; their budget is
far larger than ours).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agents.dreamer import DreamerAgent
from benchmarks.learning import Planned, run_plan, state
from benchmarks.machine import stamp, write_report
from envs.memory import OBS_DIM, recall_episodes
from worldrl.world_model import WorldModel

BACKBONES = ("rssm", "s4", "mamba", "mamba2")
OBS_SPACE = {"vector": ((OBS_DIM,), torch.float32)}
LATENT = dict(hidden=32, stoch=4, classes=4)
BACKBONE_CFG = {
    "rssm": dict(deter=64, blocks=4, **LATENT),
    "s4": dict(d_model=32, d_state=16, layers=2, imag_context=0, **LATENT),
    "mamba": dict(d_model=32, d_state=16, layers=2, imag_context=0, **LATENT),
    "mamba2": dict(d_model=32, d_state=16, layers=2, imag_context=0, **LATENT),  # 16 heads of 4
}
HEADS = dict(encoder=dict(units=32, layers=2), decoder=dict(units=32, layers=2),
             reward_head=dict(units=32), cont_head=dict(units=32))
#: gap -> batch sizes of the world-model and agent runs (agent None: not run)
PLAN = {16: dict(wm=64, agent=32), 64: dict(wm=64, agent=16), 256: dict(wm=16, agent=8),
        1024: dict(wm=8, agent=4)}
QUICK = {16: dict(wm=4, agent=4), 64: dict(wm=4, agent=None)}
WM_LR, AGENT_LR, REW_SCALE = 3e-3, 2e-3, 10.0
#: R2I's three POPGym tasks (its figure: RepeatPrevious, Autoencode, Concentration) and
#: CountRecall, at Easy
POPGYM_TASKS = ("RepeatPreviousEasy", "AutoencodeEasy", "ConcentrationEasy", "CountRecallEasy")
#: the POPGym runs' settings: 20k env steps at R2I's POPGym train ratio (64: one 16 x 64 update
#: per 16 env steps, ~1.25k updates, ~20 min per run on one thread)
POPGYM = ("env=popgym", "size=xs", "steps=20000", "train.train_ratio=64", "eval.every=5000",
          "eval.episodes=10")
R2I_POPGYM = Path(__file__).with_name("r2i_popgym.json")
ROOT = Path(__file__).resolve().parents[1]
#: facts about cells of earlier runs, shown under every report
STANDING_NOTES = (
    "mamba cells of runs before commit 1eaa338 (2026-11-28) are Drama's Mamba-1 mixer (bc_norm "
    "and gated_norm off: the cue reached the answer step ~1e3 weaker than in s4); mamba2 cells "
    "before 459626e have no bc_norm (worldrl/backbones/mamba.py, benchmarks/mamba_recall.py).",
)


def popgym_plan(tasks=POPGYM_TASKS, backbones=BACKBONES, seeds=(0,), extra=()) -> list[Planned]:
    """The POPGym runs: one per task, backbone and seed (``extra``: overrides added to each)."""
    return [Planned(f"popgym-{task}-{b}-s{seed}",
                    (*POPGYM, f"env.task={task}", f"backbone={b}", f"seed={seed}",
                     *(["agent.backbone.imag_context=0"] if b != "rssm" else []), *extra))
            for task in tasks for b in backbones for seed in seeds]


def popgym_cells(runs_root: Path, plan: list[Planned]) -> list[dict]:
    """What each planned POPGym run has reached: state, env steps and its evaluations."""
    cells = []
    for q in plan:
        run_dir = runs_root / q.name
        kv = dict(o.split("=", 1) for o in q.overrides)  # the last of a key wins
        evals = []
        if (run_dir / "eval.csv").exists():
            with open(run_dir / "eval.csv") as f:
                evals = [[int(float(r["step"])), float(r["return_mean"])]
                         for r in csv.DictReader(f)]
        cells.append({"name": q.name, "task": kv["env.task"], "backbone": kv["backbone"],
                      "seed": int(kv["seed"]), "state": state(run_dir), "evals": evals,
                      "steps": int(kv["steps"])})
    return cells


def episode_batch(gap: int, n: int, rng: np.random.Generator, actions=None
                  ) -> dict[str, torch.Tensor]:
    """``n`` episodes as replay rows ``[n, gap + 3]`` (DreamerV3 layout); random actions unless
    given (``[n, gap + 3]`` ints; the last row's action is unused and stored as zeros)."""
    L = gap + 3
    cues = rng.integers(0, 2, n)
    obs = recall_episodes(gap, cues)
    if actions is None:
        actions = rng.integers(0, 2, (n, L))
    actions = torch.as_tensor(actions)
    onehot = F.one_hot(actions, 2).float()
    onehot[:, -1] = 0.0
    reward = torch.zeros(n, L)
    reward[:, -1] = (actions[:, L - 2] == torch.as_tensor(cues)).float()
    first = torch.zeros(n, L, dtype=torch.bool)
    first[:, 0] = True
    last = torch.zeros(n, L, dtype=torch.bool)
    last[:, -1] = True
    return {"vector": torch.as_tensor(obs), "action": onehot, "reward": reward,
            "is_first": first, "terminated": last, "is_last": last.clone()}


@torch.no_grad()
def reward_accuracy(wm: WorldModel, data: dict[str, torch.Tensor], chunk: int = 64
                    ) -> tuple[float, float]:
    """``(accuracy, separation)`` of the predicted reward at the answer: accuracy of
    ``pred > 0.5``, and ``mean pred | right - mean pred | wrong`` (1: perfect, 0: no memory).
    Near chance the predictions sit at ~0.5, so the accuracy there is noisy; the separation
    tells "not learned" (~0) apart from a real effect."""
    preds = []
    for s in range(0, data["is_first"].shape[0], chunk):
        part = {k: v[s:s + chunk] for k, v in data.items()}
        _, post, _, _ = wm.observe(part, sample=False)
        preds.append(wm.reward_head(wm.backbone.get_feat(post)[:, -1]).pred())
    pred, reward = torch.cat(preds), data["reward"][:, -1]
    accuracy = float(((pred > 0.5).float() == reward).float().mean())
    return accuracy, float(pred[reward == 1].mean() - pred[reward == 0].mean())


@torch.no_grad()
def cue_signal(wm: WorldModel, gap: int, n: int = 64, seed: int = 5) -> float:
    """How much the cue reaches the answer step: the mean relative change of ``deter`` at the
    last step of ``n`` episodes when only their cue is flipped (0: the cue is forgotten)."""
    data = episode_batch(gap, n, np.random.default_rng(seed))
    flipped = {k: v.clone() for k, v in data.items()}
    flipped["vector"][:, 0, :2] = data["vector"][:, 0, [1, 0]]
    a = wm.observe(data, sample=False)[1]["deter"][:, -1]
    b = wm.observe(flipped, sample=False)[1]["deter"][:, -1]
    return float(((a - b).norm(dim=-1) / a.norm(dim=-1)).mean())


def make_world_model(backbone: str, **backbone_cfg) -> WorldModel:
    """The benchmark's world model: ``BACKBONE_CFG[backbone]`` updated by ``backbone_cfg``."""
    return WorldModel(OBS_SPACE, 2, backbone, {**BACKBONE_CFG[backbone], **backbone_cfg},
                      loss_scales={"rew": REW_SCALE}, **HEADS)


def world_model_run(backbone: str, gap: int, seconds: float, batch: int, seed: int = 0,
                    max_updates: int | None = None, curve_every: int | None = None,
                    stop_at: float | None = None, backbone_cfg: dict | None = None) -> dict:
    """Train for ``seconds`` of wall-clock (or ``max_updates``), then measure the accuracy;
    ``curve_every``: also the separation every that many updates (``curve``: [updates, sep]),
    stopping early once it reaches ``stop_at``; ``backbone_cfg`` updates ``BACKBONE_CFG``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    wm = make_world_model(backbone, **(backbone_cfg or {}))
    opt = torch.optim.Adam(wm.parameters(), lr=WM_LR)
    test = episode_batch(gap, 256, np.random.default_rng(10_000 + seed))
    start = time.perf_counter()
    losses, curve = [], []
    updates = 0
    while time.perf_counter() - start < seconds and updates < (max_updates or 10**9):
        updates += 1
        loss, terms, _, _ = wm.loss(episode_batch(gap, batch, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), 100.0)
        opt.step()
        losses.append(float(terms["rew"][:, -1].mean().detach()))
        if curve_every and updates % curve_every == 0:
            curve.append([updates, round(reward_accuracy(wm, test)[1], 4)])
            if stop_at is not None and curve[-1][1] >= stop_at:
                break
    train_s = time.perf_counter() - start
    return {"backbone": backbone, "gap": gap, "updates": updates, "batch": batch,
            "seq_len": gap + 3, **dict(zip(("accuracy", "separation"),
                                           reward_accuracy(wm, test))),
            "final_reward_loss": float(np.mean(losses[-10:])) if losses else None,
            "params": sum(p.numel() for p in wm.parameters()), "train_s": train_s,
            **({"curve": curve} if curve_every else {})}


def agent_config(backbone: str) -> dict:
    return {
        "size": {"name": "mem", "deter": 64, "hidden": 32, "stoch": 4, "classes": 4, "units": 32,
                 "depth": 2},
        "backbone": {"name": backbone, **BACKBONE_CFG[backbone]},
        "world_model": {**{k: dict(v) for k, v in HEADS.items()},
                        "loss_scales": {"rew": REW_SCALE}},
        "actor": {"layers": 2}, "critic": {"layers": 2},
        "behavior": {"imag_horizon": 4, "imag_last": 4},
        "optim": {"lr": AGENT_LR, "warmup": 0},
    }


@torch.no_grad()
def play(agent: DreamerAgent, gap: int, n: int, mode: str, rng: np.random.Generator):
    """``n`` episodes with the agent's policy: (episode rows, success rate)."""
    L = gap + 3
    cues = rng.integers(0, 2, n)
    obs = torch.as_tensor(recall_episodes(gap, cues))
    carry = agent.initial_carry(n)
    actions = torch.zeros(n, L, dtype=torch.long)
    for t in range(L - 1):
        first = torch.full((n,), t == 0)
        act, carry = agent.act({"vector": obs[:, t]}, first, carry, mode=mode)
        actions[:, t] = act.argmax(-1)
    success = float((actions[:, L - 2] == torch.as_tensor(cues)).float().mean())
    rows = episode_batch(gap, n, np.random.default_rng(0), actions)
    rows["vector"] = obs  # the played cues (episode_batch drew its own)
    rows["reward"][:, -1] = (actions[:, L - 2] == torch.as_tensor(cues)).float()
    return rows, success


def agent_run(backbone: str, gap: int, seconds: float, batch: int, seed: int = 0,
              max_updates: int | None = None) -> dict:
    """Learn for ``seconds`` of wall-clock (or ``max_updates``), then evaluate greedily."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    agent = DreamerAgent(OBS_SPACE, {"discrete": True, "n": 2}, agent_config(backbone))
    buffer: deque[dict[str, torch.Tensor]] = deque(maxlen=64)  # batches of 8 episodes
    start = time.perf_counter()
    for _ in range(4):  # prefill with the random policy
        buffer.append(episode_batch(gap, 8, rng))
    curve = []
    u = 0
    while time.perf_counter() - start < seconds and u < (max_updates or 10**9):
        u += 1
        if u % 4 == 1:
            rows, success = play(agent, gap, 8, "train", rng)
            buffer.append(rows)
            curve.append(success)
        picks = rng.integers(0, len(buffer), batch)
        within = rng.integers(0, 8, batch)
        data = {k: torch.stack([buffer[i][k][j] for i, j in zip(picks, within)])
                for k in buffer[0]}
        agent.train_step(data)
    train_s = time.perf_counter() - start
    _, success = play(agent, gap, 200, "eval", np.random.default_rng(20_000 + seed))
    return {"backbone": backbone, "gap": gap, "updates": u, "batch": batch,
            "success": success, "train_success_last": float(np.mean(curve[-10:])),
            "train_s": train_s}


def _cell(kind: str, backbone: str, gap: int, seconds: float, batch: int, cap: int | None,
          threads: int, stop_at: float | None = None) -> tuple[str, dict]:
    torch.set_num_threads(threads)
    if kind == "world_model":
        return kind, world_model_run(backbone, gap, seconds, batch, max_updates=cap,
                                     curve_every=100 if stop_at is not None else None,
                                     stop_at=stop_at)
    return kind, agent_run(backbone, gap, seconds, batch, max_updates=cap)


def run_cells(cells: list[tuple], jobs: int, threads: int, stop_at: float | None = None):
    """Yield ``(kind, result)`` per cell ``(kind, backbone, gap, seconds, batch, cap)``, in
    order; ``jobs > 1`` runs cells in worker processes (spawned, ``threads`` torch threads each)
    so that a wall-clock budget is not shared."""
    if jobs <= 1:
        for cell in cells:
            yield _cell(*cell, threads, stop_at)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_cell, *cell, threads, stop_at) for cell in cells]
        for f in futures:
            yield f.result()


def _run(cell: dict, runs: list) -> str:
    return f", run {cell.get('run', 0) + 1}" if len(runs) > 1 else ""


def merge(old: dict, new: dict) -> dict:
    """``new``'s cells plus the cells of ``old`` that ``new`` did not re-run (a POPGym cell:
    that ``new`` has not brought as far); old reports (one top-level stamp, no ``runs``) are read
    as one run."""
    runs = old.get("runs") or [{k: old[k] for k in ("command", "commit", "date", "machine",
                                                    "budget")}]
    out = {**new, "runs": runs + new["runs"]}
    for kind in ("world_model", "agent"):
        fresh = {(r["backbone"], r["gap"]) for r in new[kind]}
        kept = [{**r, "run": r.get("run", 0)} for r in old.get(kind, [])
                if (r["backbone"], r["gap"]) not in fresh]
        out[kind] = kept + [{**r, "run": r["run"] + len(runs)} for r in new[kind]]
        out[kind].sort(key=lambda r: (r["gap"], BACKBONES.index(r["backbone"])))
    def reach(c):  # a POPGym cell is replaced only by one as far along (a run lost with its
        # machine and started afresh does not hide what the lost one reached until it is)
        return (c["state"] == "finished", c["evals"][-1][0] if c["evals"] else -1)

    seen = {c["name"]: c for c in new.get("popgym", []) if c["state"] != "new"}
    out["popgym"] = [seen[c["name"]] if c["name"] in seen and reach(seen[c["name"]]) >= reach(c)
                     else c for c in old.get("popgym", [])]
    out["popgym"] += [c for c in new.get("popgym", []) if c["name"] not in
                      {o["name"] for o in out["popgym"]}]
    return out


def _budget(budget: dict, key: str, what: str) -> str:
    if budget.get(f"{key}_updates"):
        stop = budget.get("stop_at") if key == "wm" else None
        return (f"{budget[f'{key}_updates']} updates per {what}"
                + (f" (stopped once the separation reached {stop})" if stop is not None else ""))
    return f"{budget[f'{key}_seconds']:.0f} s per {what}"


def markdown(result: dict) -> str:
    gaps = sorted({r["gap"] for r in result["world_model"] + result["agent"]})
    runs = result["runs"]
    lines = ["# Memory benchmark: recall a cue after K steps (" + " vs ".join(BACKBONES) + ")", ""]
    for i, run in enumerate(runs, 1):
        budget = run["budget"]
        kinds = budget.get("kinds", ["world_model", "agent"])
        per = [_budget(budget, "wm", "world model") if "world_model" in kinds else "",
               _budget(budget, "agent", "agent") if "agent" in kinds else "",
               "POPGym runs (below)" if "popgym" in kinds else ""]
        lines.append(
            f"Run {i}: `{run['command']}` — commit `{run['commit']}`, {run['date']}, "
            f"{run['machine']['cpu']} ({run['machine']['torch_threads']} thread per cell, "
            f"{budget.get('jobs', 1)} cell(s) at a time), torch {run['machine']['torch']}; "
            f"{', '.join(x for x in per if x)}.")
        lines.append("")
    lines += [
        "Within a run every cell of a kind trains for the same budget (wall-clock or updates) on "
        "one CPU thread; brackets: updates done x batch size"
        + (", run" if len(runs) > 1 else "") + ".",
        "",
        "## World-model reward prediction at the answer", "",
        "Accuracy of `pred > 0.5` (chance 0.50) / separation `mean pred | right - mean pred | "
        "wrong` (0: no memory of the cue, 1: perfect).", "",
        "| K | seq len | " + " | ".join(BACKBONES) + " |",
        "|---|---|" + "---|" * len(BACKBONES),
    ]
    by = {(r["backbone"], r["gap"]): r for r in result["world_model"]}
    for g in gaps:
        cells = [f"{by[(b, g)]['accuracy']:.2f} / {by[(b, g)]['separation']:+.2f} "
                 f"({by[(b, g)]['updates']} x {by[(b, g)]['batch']}{_run(by[(b, g)], runs)})"
                 if (b, g) in by else "not run" for b in BACKBONES]
        lines.append(f"| {g} | {g + 3} | " + " | ".join(cells) + " |")
    lines += ["", "## Agent success rate (greedy, 200 episodes; chance 0.50)", "",
              "| K | " + " | ".join(BACKBONES) + " |", "|---|" + "---|" * len(BACKBONES)]
    ab = {(r["backbone"], r["gap"]): r for r in result["agent"]}
    for g in gaps:
        cells = [f"{ab[(b, g)]['success']:.2f} ({ab[(b, g)]['updates']} x "
                 f"{ab[(b, g)]['batch']}{_run(ab[(b, g)], runs)})" if (b, g) in ab
                 else "not run" for b in BACKBONES]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    if result.get("popgym"):
        lines += popgym_markdown(result["popgym"])
    lines += ["", *[f"- {n}" for n in (*result["notes"], *STANDING_NOTES)]]
    lines += [*speed_markdown(), ""]
    return "\n".join(lines)


#: episodes and seed of the POPGym floors (``popgym_floors``)
FLOOR_EPISODES, FLOOR_SEED = 100, 0


@functools.cache
def popgym_floors(task: str) -> tuple[float, float]:
    """The mean return over ``FLOOR_EPISODES`` seeded episodes of POPGym ``task`` of a uniform
    random policy and of the constant policy "always action 0": what a run that learned nothing
    gets (a greedy policy that collapsed to one action gets the second)."""
    from envs.popgym import make_popgym

    env = make_popgym(task)
    rng = np.random.default_rng(FLOOR_SEED)
    means = []
    for uniform in (True, False):
        returns = []
        for episode in range(FLOOR_EPISODES):
            env.reset(seed=FLOOR_SEED + episode)
            ret, done = 0.0, False
            while not done:
                action = int(rng.integers(env.action_space.n)) if uniform else 0
                _, reward, terminated, truncated, _ = env.step(action)
                ret, done = ret + float(reward), terminated or truncated
            returns.append(ret)
        means.append(float(np.mean(returns)))
    env.close()
    return means[0], means[1]


def _floors(task: str) -> tuple[str, str]:
    try:
        return tuple(f"{v:+.2f}" for v in popgym_floors(task))
    except ImportError:  # popgym not installed where the report is written
        return "n/a", "n/a"


def _r2i(task: str) -> tuple[str, str]:
    """R2I's and DreamerV3's bars for a POPGym task name (``RepeatPreviousEasy``), or ``""``."""
    ref = json.loads(R2I_POPGYM.read_text())["scores"]
    for family, levels in ref.items():
        for level, methods in levels.items():
            if task == family + level:
                return tuple("" if methods.get(m) is None else f"{methods[m]:.2f}"
                             for m in ("R2I", "DreamerV3"))
    return "not reported", "not reported"


#: the backbones' world-model training speed, measured by ``benchmarks.backbone_speed``
SPEED = ROOT / "results" / "backbone_speed_cpu.json"


def speed_markdown(path: Path = SPEED) -> list[str]:
    """The backbone speed table of ``benchmarks.backbone_speed`` with its provenance (nothing
    when it has not been measured)."""
    from benchmarks.backbone_speed import table_lines

    if not path.exists():
        return []
    speed = json.loads(path.read_text())
    return ["", "## World-model training speed per backbone (CPU)", "",
            f"From `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}` "
            f"(`{speed['command']}`, commit `{speed['commit'][:7]}`, {speed['date'][:10]}, "
            f"{speed['machine']['torch_threads']} thread): size {speed['size']}, batch "
            f"{speed['batch']}, sequence steps per second of one world-model update, update "
            "time in brackets.", "", *table_lines(speed)]


def popgym_markdown(cells: list[dict]) -> list[str]:
    lines = ["", "## POPGym: agent return (final evaluation, 10 episodes; returns in [-1, 1])", "",
             "Settings: `worldrl train " + " ".join(POPGYM) + " env.task=T backbone=B seed=0` "
             "(`agent.backbone.imag_context=0` for the SSMs), one thread per run; each run's "
             "commits and dates: `runs/memory/study_log.jsonl`. R2I and DreamerV3: bar heights "
             "read off R2I's POPGym figure (`benchmarks/r2i_popgym.json`), at R2I's budget, far "
             "beyond ours. Floors: the mean return of a uniform random policy and of the "
             f"constant policy \"always action 0\", {FLOOR_EPISODES} seeded episodes each "
             "(`popgym_floors`); a run at a floor learned nothing (a greedy policy that "
             "collapsed to one action scores like the constant one).", "",
             "| task | " + " | ".join(BACKBONES) + " | uniform random | always action 0 | R2I "
             "| DreamerV3 |",
             "|---|" + "---|" * (len(BACKBONES) + 4)]
    by = {(c["task"], c["backbone"]): c for c in cells}
    for task in dict.fromkeys(c["task"] for c in cells):
        row = []
        for b in BACKBONES:
            c = by.get((task, b))
            if c is None or not c["evals"]:
                row.append("not run" if c is None or c["state"] == "new" else "started")
                continue
            step, ret = c["evals"][-1]
            row.append(f"{ret:+.2f}" + ("" if c["state"] == "finished"
                                        else f" (at {step // 1000}k, unfinished)"))
        lines.append(f"| {task} | " + " | ".join([*row, *_floors(task), *_r2i(task)]) + " |")
    return lines + ["", above_floor_line(cells)]


#: a finished POPGym run "learned" when its final evaluation beats the better floor by this much
LEARNED_MARGIN = 0.05


def above_floor_line(cells: list[dict]) -> str:
    """One sentence on which finished runs beat both floors by ``LEARNED_MARGIN`` (none: the
    table cannot rank the backbones)."""
    finished = [c for c in cells if c["state"] == "finished" and c["evals"]]
    if not finished:
        return "No POPGym run has finished yet."
    try:
        above = [f"{c['backbone']} on {c['task']} ({c['evals'][-1][1]:+.2f})" for c in finished
                 if c["evals"][-1][1] > max(popgym_floors(c["task"])) + LEARNED_MARGIN]
    except ImportError:
        return "Floors not computed (popgym is not installed here)."
    if not above:
        return (f"None of the {len(finished)} finished runs beats the better floor by more than "
                f"{LEARNED_MARGIN}: at this budget no backbone learned a POPGym task, so the table "
                "does not rank the backbones (R2I's bars come from far longer training).")
    return (f"{len(above)} of {len(finished)} finished runs beat the better floor by more than "
            f"{LEARNED_MARGIN}: " + ", ".join(above) + ".")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few updates only (smoke test)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--gaps", nargs="+", type=int, default=None)
    p.add_argument("--wm-seconds", type=float, default=60.0, help="budget per world model")
    p.add_argument("--agent-seconds", type=float, default=100.0, help="budget per agent")
    p.add_argument("--wm-updates", type=int, default=None,
                   help="budget per world model in updates (instead of --wm-seconds)")
    p.add_argument("--agent-updates", type=int, default=None,
                   help="budget per agent in updates (instead of --agent-seconds)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop a world model once its separation (checked every 100 updates) "
                        "reaches this")
    p.add_argument("--out", default="results/memory", help="path stem for .json and .md")
    p.add_argument("--kinds", nargs="+", default=["world_model", "agent"],
                   choices=["world_model", "agent", "popgym"], help="which measurements to run")
    p.add_argument("--popgym-tasks", nargs="+", default=list(POPGYM_TASKS))
    p.add_argument("--popgym-only", nargs="+", default=None, metavar="RUN",
                   help="POPGym: train only these runs of the plan, in this order (names as in the "
                        "study log, e.g. popgym-AutoencodeEasy-s4-s0); the report keeps the rest")
    p.add_argument("--popgym-runs", default="runs/memory",
                   help="where the POPGym runs live (resumable)")
    p.add_argument("--minutes", type=float, default=0,
                   help="POPGym: stop the runs in flight cleanly after this long (resumable)")
    p.add_argument("--popgym-extra", nargs="*", default=[],
                   help="POPGym: overrides added to every run (e.g. steps=300 for a smoke test)")
    p.add_argument("--merge", action="store_true",
                   help="keep the cells of the existing OUT.json that this command does not run "
                        "(implied when --kinds leaves out world_model or agent)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite OUT.md from OUT.json (and the POPGym runs there are)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once, each in its own process (jobs x threads <= cores)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else PLAN
    wm_cap, agent_cap = (3, 3) if args.quick else (args.wm_updates, args.agent_updates)
    wm_s = float("inf") if wm_cap else args.wm_seconds
    agent_s = float("inf") if agent_cap else args.agent_seconds
    gaps = args.gaps or sorted(plan)
    unknown = [g for g in gaps if g not in plan]
    if unknown:
        p.error(f"no plan for gap(s) {unknown}; choose from {sorted(plan)}")
    command = "python -m benchmarks.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    budget = {"wm_seconds": args.wm_seconds, "agent_seconds": args.agent_seconds,
              "wm_updates": wm_cap, "agent_updates": agent_cap, "stop_at": args.stop_at,
              "jobs": args.jobs, "kinds": list(args.kinds)}
    result = {"runs": [{**stamp(command.strip()), "budget": budget}], "world_model": [],
              "agent": [], "notes": [
        f"World model: Adam lr {WM_LR}, grad-norm clip 100, reward loss scale {REW_SCALE} (one "
        "informative reward per episode), fresh random-policy episodes each update, accuracy on "
        "256 held-out episodes; sequences are whole episodes (K + 3 steps).",
        f"Agent: DreamerV3 learner (LaProp lr {AGENT_LR}, reward scale {REW_SCALE}), imagination "
        "from the last 4 replayed steps, horizon 4, SSM starts exact (imag_context=0); "
        "episode-aligned replay of its own episodes (8 new episodes every 4 updates).",
        "Learning the recall is an XOR of the remembered cue and the answer: accuracy stays at "
        "chance for a few hundred updates, then jumps; a cell at chance means not learned within "
        "the budget, not that the backbone cannot learn it.",
    ]}  # fmt: skip
    old = None
    path = Path(args.out).with_suffix(".json")
    if args.report_only:
        if not path.exists():
            p.error(f"--report-only: {path} does not exist")
        whole = json.loads(path.read_text())
        found = popgym_cells(Path(args.popgym_runs), popgym_plan(
            args.popgym_tasks, args.backbones, extra=args.popgym_extra))
        whole = merge(whole, {"runs": [], "world_model": [], "agent": [], "popgym": found,
                              "notes": whole["notes"]})
        write_report(args.out, whole, markdown(whole))
        return 0
    if args.merge and not path.exists():
        p.error(f"--merge: {path} does not exist")
    if args.merge or (path.exists() and not {"world_model", "agent"} <= set(args.kinds)):
        old = json.loads(path.read_text())  # a partial study keeps the other kinds' cells
    cells = []
    if "world_model" in args.kinds:
        cells += [("world_model", b, g, wm_s, plan[g]["wm"], wm_cap) for g in gaps
                  for b in args.backbones]
    if "agent" in args.kinds:
        cells += [("agent", b, g, agent_s, plan[g]["agent"], agent_cap) for g in gaps
                  if plan[g].get("agent") for b in args.backbones]
    popgym_root = Path(args.popgym_runs)
    full = popgym_plan(args.popgym_tasks, args.backbones, extra=args.popgym_extra)
    chosen = full
    if args.popgym_only is not None:
        names = [q.name for q in full]
        unknown = [n for n in args.popgym_only if n not in names]
        if unknown:
            p.error(f"--popgym-only: no run(s) {unknown} in the plan of --popgym-tasks "
                    f"{args.popgym_tasks} and --backbones {args.backbones}; choose from {names}")
        by_name = {q.name: q for q in full}
        chosen = [by_name[n] for n in dict.fromkeys(args.popgym_only)]  # in the order given

    def report() -> None:
        result["popgym"] = popgym_cells(popgym_root, full)
        whole = merge(old, result) if old is not None else result
        write_report(args.out, whole, markdown(whole))

    if "popgym" in args.kinds:
        stopped = run_plan(chosen, popgym_root, args.jobs, args.minutes, on_exit=report,
                           threads=args.threads)
        if stopped and cells:
            print(f"{stopped} received: the recall cells are not run", flush=True)
            cells = []
    for kind, r in run_cells(cells, args.jobs, args.threads, args.stop_at):
        result[kind].append({**r, "run": 0})
        if kind == "world_model":
            print(f"world model {r['backbone']:6s} K={r['gap']:5d}: accuracy "
                  f"{r['accuracy']:.3f}, separation {r['separation']:+.3f} "
                  f"({r['updates']} updates)", flush=True)
        else:
            print(f"agent       {r['backbone']:6s} K={r['gap']:5d}: success {r['success']:.3f} "
                  f"({r['updates']} updates)", flush=True)
        report()  # after every cell, so that a stopped study keeps what it measured
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
