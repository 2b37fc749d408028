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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agents.dreamer import DreamerAgent
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


def world_model_run(backbone: str, gap: int, seconds: float, batch: int, seed: int = 0,
                    max_updates: int | None = None) -> dict:
    """Train for ``seconds`` of wall-clock (or ``max_updates``), then measure the accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    wm = WorldModel(OBS_SPACE, 2, backbone, BACKBONE_CFG[backbone],
                    loss_scales={"rew": REW_SCALE}, **HEADS)
    opt = torch.optim.Adam(wm.parameters(), lr=WM_LR)
    test = episode_batch(gap, 256, np.random.default_rng(10_000 + seed))
    start = time.perf_counter()
    losses = []
    updates = 0
    while time.perf_counter() - start < seconds and updates < (max_updates or 10**9):
        updates += 1
        loss, terms, _, _ = wm.loss(episode_batch(gap, batch, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), 100.0)
        opt.step()
        losses.append(float(terms["rew"][:, -1].mean().detach()))
    train_s = time.perf_counter() - start
    return {"backbone": backbone, "gap": gap, "updates": updates, "batch": batch,
            "seq_len": gap + 3, **dict(zip(("accuracy", "separation"),
                                           reward_accuracy(wm, test))),
            "final_reward_loss": float(np.mean(losses[-10:])) if losses else None,
            "params": sum(p.numel() for p in wm.parameters()), "train_s": train_s}


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
          threads: int) -> tuple[str, dict]:
    torch.set_num_threads(threads)
    run = world_model_run if kind == "world_model" else agent_run
    return kind, run(backbone, gap, seconds, batch, max_updates=cap)


def run_cells(cells: list[tuple], cap: int | None, jobs: int, threads: int):
    """Yield ``(kind, result)`` per cell, in order; ``jobs > 1`` runs cells in worker processes
    (spawned, ``threads`` torch threads each) so that a wall-clock budget is not shared."""
    if jobs <= 1:
        for cell in cells:
            yield _cell(*cell, cap, threads)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_cell, *cell, cap, threads) for cell in cells]
        for f in futures:
            yield f.result()


def _run(cell: dict, runs: list) -> str:
    return f", run {cell.get('run', 0) + 1}" if len(runs) > 1 else ""


def merge(old: dict, new: dict) -> dict:
    """``new``'s cells plus the cells of ``old`` that ``new`` did not re-run; old reports (one
    top-level stamp, no ``runs``) are read as one run."""
    runs = old.get("runs") or [{k: old[k] for k in ("command", "commit", "date", "machine",
                                                    "budget")}]
    out = {**new, "runs": runs + new["runs"]}
    for kind in ("world_model", "agent"):
        fresh = {(r["backbone"], r["gap"]) for r in new[kind]}
        kept = [{**r, "run": r.get("run", 0)} for r in old.get(kind, [])
                if (r["backbone"], r["gap"]) not in fresh]
        out[kind] = kept + [{**r, "run": r["run"] + len(runs)} for r in new[kind]]
        out[kind].sort(key=lambda r: (r["gap"], BACKBONES.index(r["backbone"])))
    return out


def markdown(result: dict) -> str:
    gaps = sorted({r["gap"] for r in result["world_model"] + result["agent"]})
    runs = result["runs"]
    lines = ["# Memory benchmark: recall a cue after K steps (" + " vs ".join(BACKBONES) + ")", ""]
    for i, run in enumerate(runs, 1):
        budget = run["budget"]
        kinds = budget.get("kinds", ["world_model", "agent"])
        per = [f"{budget['wm_seconds']:.0f} s per world model" if "world_model" in kinds else "",
               f"{budget['agent_seconds']:.0f} s per agent" if "agent" in kinds else ""]
        lines.append(
            f"Run {i}: `{run['command']}` — commit `{run['commit']}`, {run['date']}, "
            f"{run['machine']['cpu']} ({run['machine']['torch_threads']} thread per cell, "
            f"{budget.get('jobs', 1)} cell(s) at a time), torch {run['machine']['torch']}; "
            f"{', '.join(x for x in per if x)}.")
        lines.append("")
    lines += [
        "Within a run every cell of a kind trains for the same wall-clock budget on one CPU "
        "thread; brackets: updates done x batch size" + (", run" if len(runs) > 1 else "") + ".",
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
    lines += ["", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few updates only (smoke test)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--gaps", nargs="+", type=int, default=None)
    p.add_argument("--wm-seconds", type=float, default=60.0, help="budget per world model")
    p.add_argument("--agent-seconds", type=float, default=100.0, help="budget per agent")
    p.add_argument("--out", default="results/memory", help="path stem for .json and .md")
    p.add_argument("--kinds", nargs="+", default=["world_model", "agent"],
                   choices=["world_model", "agent"], help="which measurements to run")
    p.add_argument("--merge", action="store_true",
                   help="keep the cells of the existing OUT.json that this command does not run")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once, each in its own process (jobs x threads <= cores)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else PLAN
    cap = 3 if args.quick else None
    gaps = args.gaps or sorted(plan)
    unknown = [g for g in gaps if g not in plan]
    if unknown:
        p.error(f"no plan for gap(s) {unknown}; choose from {sorted(plan)}")
    command = "python -m benchmarks.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    budget = {"wm_seconds": args.wm_seconds, "agent_seconds": args.agent_seconds,
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
    if args.merge:
        path = Path(args.out).with_suffix(".json")
        if not path.exists():
            p.error(f"--merge: {path} does not exist")
        old = json.loads(path.read_text())
    cells = []
    if "world_model" in args.kinds:
        cells += [("world_model", b, g, args.wm_seconds, plan[g]["wm"]) for g in gaps
                  for b in args.backbones]
    if "agent" in args.kinds:
        cells += [("agent", b, g, args.agent_seconds, plan[g]["agent"]) for g in gaps
                  if plan[g].get("agent") for b in args.backbones]
    for kind, r in run_cells(cells, cap, args.jobs, args.threads):
        result[kind].append({**r, "run": 0})
        if kind == "world_model":
            print(f"world model {r['backbone']:6s} K={r['gap']:5d}: accuracy "
                  f"{r['accuracy']:.3f}, separation {r['separation']:+.3f} "
                  f"({r['updates']} updates)", flush=True)
        else:
            print(f"agent       {r['backbone']:6s} K={r['gap']:5d}: success {r['success']:.3f} "
                  f"({r['updates']} updates)", flush=True)
    if old is not None:
        result = merge(old, result)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
