"""How the quickstart's greedy CartPole policy fails: per episode, the step it ended and why.

    python -m benchmarks.cartpole_failures RUN_DIR/checkpoint.pt --episodes 10 [--trace]

CartPole-v1 ends an episode when the pole leans past 12 degrees (``angle``), when the cart leaves
the track, |x| > 2.4 (``position``), or at 500 steps (``truncated``: solved). The quickstart's
greedy evaluations that stay below 500 fail one way or the other, and the two call for different
fixes: an angle failure is balance, a position failure is a drift the policy never corrects. The
replay's terminations are split the same way (``--replay``), which says whether the world model
saw the failure it has to predict. ``--trace`` prints, along the first episode, the cart's
position and velocity, the continue head's probability, the critic's value and the policy's
action probabilities. Episodes are played with gymnasium's CartPole-v1 directly, seeded
1000, 1001, ... (not the run's own evaluation seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from agents.run_dir import CHECKPOINT_FILE
from benchmarks.machine import stamp

X_LIMIT, ANGLE_LIMIT = 2.4, 12 * 2 * np.pi / 360  # gymnasium's CartPole-v1 thresholds


def why_ended(obs, steps: int, max_steps: int) -> str:
    if abs(obs[0]) > X_LIMIT:
        return "position"
    if abs(obs[2]) > ANGLE_LIMIT:
        return "angle"
    return "truncated" if steps >= max_steps else "running"


def load_agent(checkpoint: Path):
    from agents.evaluate import read_checkpoint, trained_agent

    payload, cfg = read_checkpoint(checkpoint)
    if cfg.env.suite != "gym" or cfg.env.task != "CartPole-v1":
        raise SystemExit(f"{checkpoint} is a {cfg.env.suite}/{cfg.env.task} run, not "
                         "gym/CartPole-v1")
    env, agent, _ = trained_agent(checkpoint, payload, cfg, 0, 1, torch.device("cpu"))
    env.close()
    agent.eval()
    return agent, payload["counters"]["env_steps"]


@torch.no_grad()
def play(agent, seed: int, max_steps: int = 500, trace: bool = False) -> dict:
    import gymnasium as gym

    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    carry = agent.initial_carry(1)
    first = torch.ones(1, dtype=torch.bool)
    xs, rows, steps = [], [], 0
    for steps in range(1, max_steps + 1):
        action, carry = agent.act({"vector": torch.as_tensor(obs, dtype=torch.float32)[None]},
                                  first, carry, mode="eval")
        first = torch.zeros(1, dtype=torch.bool)
        if trace:
            feat = agent.wm.backbone.get_feat({k: carry[k]
                                               for k in agent.wm.backbone.state_keys()})
            rows.append({"t": steps - 1, "x": float(obs[0]), "x_dot": float(obs[1]),
                         "continue": agent.wm.cont_head(feat).prob().item(),
                         "value": agent.ac.critic(feat).pred().item(),
                         "policy": [round(p, 3) for p in agent.ac.policy(feat).probs[0].tolist()]})
        obs, _, terminated, truncated, _ = env.step(int(action.argmax(-1)))
        xs.append(float(obs[0]))
        if terminated or truncated:
            break
    env.close()
    return {"seed": seed, "return": steps, "ended": why_ended(obs, steps, max_steps),
            "x_end": float(obs[0]), "x_dot_end": float(obs[1]), "x_mean": float(np.mean(xs)),
            "trace": rows}


def replay_terminations(run_dir: Path) -> dict:
    """The replay's terminal rows split by cause (the row holds the observation it ended on)."""
    meta = json.loads((run_dir / "replay" / "meta.json").read_text())  # the memmaps' shapes
    shape = tuple(meta["vector"]["shape"])
    vector = np.memmap(run_dir / "replay" / "vector.memmap", np.float32, "r", shape=shape)
    term = np.memmap(run_dir / "replay" / "terminated.memmap", np.bool_, "r",
                     shape=tuple(meta["terminated"]["shape"]))
    end = vector.reshape(-1, shape[-1])[term.reshape(-1)]
    off_track = np.abs(end[:, 0]) > X_LIMIT
    return {"terminations": int(len(end)), "position": int(off_track.sum()),
            "angle": int((~off_track & (np.abs(end[:, 2]) > ANGLE_LIMIT)).sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint.pt or its run directory")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--trace", action="store_true", help="print the first episode step by step")
    p.add_argument("--replay", action="store_true", help="split the replay's terminations too")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.checkpoint.is_dir():  # a run directory, as `worldrl eval` takes
        args.checkpoint = args.checkpoint / CHECKPOINT_FILE
    if not args.checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint}")
    torch.set_num_threads(1)
    agent, env_steps = load_agent(args.checkpoint)
    print(f"{args.checkpoint}: trained for {env_steps} env steps")
    episodes = [play(agent, 1000 + i, args.max_steps, trace=args.trace and i == 0)
                for i in range(args.episodes)]
    for e in episodes:
        print(f"seed {e['seed']}: {e['return']:3d} steps, {e['ended']:9s} x {e['x_end']:+.2f} "
              f"x_dot {e['x_dot_end']:+.2f} (mean x {e['x_mean']:+.2f})")
    counts = {k: sum(e["ended"] == k for e in episodes) for k in ("angle", "position",
                                                                   "truncated")}
    print("ended: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    result = {**stamp("python -m benchmarks.cartpole_failures " + " ".join(map(str, argv or
                                                                                sys.argv[1:]))),
              "checkpoint": str(args.checkpoint), "env_steps": env_steps, "ended": counts,
              "episodes": episodes}
    if args.trace:
        trace = episodes[0]["trace"]
        for r in trace[::25] + trace[-5:]:
            print(f"t {r['t']:3d}  x {r['x']:+.2f}  x_dot {r['x_dot']:+.2f}  continue "
                  f"{r['continue']:.3f}  value {r['value']:6.1f}  policy {r['policy']}")
    if args.replay:
        result["replay"] = replay_terminations(args.checkpoint.parent)
        print("replay terminations: " + ", ".join(f"{k} {v}"
                                                   for k, v in result["replay"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
