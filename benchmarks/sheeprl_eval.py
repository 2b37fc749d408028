"""Evaluate sheeprl DreamerV3 checkpoints as worldrl evaluates: N episodes, the policy's mode.

Runs in sheeprl's own virtual environment (``benchmarks.peer_learning`` starts it there with
``python -I``), so it imports nothing of ours:

    <sheeprl venv>/bin/python -I benchmarks/sheeprl_eval.py CKPT [CKPT ...] --episodes 10

Per checkpoint it prints one JSON line: ``{"checkpoint", "step", "returns": [...]}``. The player,
the environment and the observation preprocessing are sheeprl's own (``build_agent``,
``make_env``, ``prepare_obs``, as its ``test`` uses them); the episode loop is ``test``'s with a
different seed per episode (``seed + 1000 * episode``; sheeprl's ``test`` plays one episode at
``cfg.seed``) and greedy actions (the mode, as ``eval.sample=false`` does in worldrl).
"""

from __future__ import annotations

import argparse
import json
import os
import re


def evaluate(ckpt: str, episodes: int, max_steps: int | None = None) -> dict:
    import gymnasium as gym
    import hydra
    import torch
    from omegaconf import OmegaConf
    from sheeprl.algos.dreamer_v3_5.agent import build_agent
    from sheeprl.algos.dreamer_v3_5.utils import prepare_obs
    from sheeprl.utils import fs
    from sheeprl.utils.env import make_env
    from sheeprl.utils.utils import dotdict

    cfg = fs.load_yaml(fs.run_config(ckpt))
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    cfg.env.capture_video = False
    cfg.env.num_envs = 1
    fabric = hydra.utils.instantiate(cfg.fabric, accelerator="cpu", devices=1, num_nodes=1,
                                     _convert_="all")
    fabric.seed_everything(cfg.seed)
    state = fs.load_checkpoint(fabric, ckpt, weights_only=False)
    log_dir = os.path.join(os.path.dirname(os.path.dirname(ckpt)), "evaluation")
    env = make_env(cfg, cfg.seed, 0, log_dir, "test", vector_env_idx=0)()
    space = env.action_space
    continuous = isinstance(space, gym.spaces.Box)
    multi = isinstance(space, gym.spaces.MultiDiscrete)
    dims = tuple(space.shape if continuous else (space.nvec.tolist() if multi else [space.n]))
    *_, player = build_agent(fabric, dims, continuous, cfg, env.observation_space,
                             state["world_model"], state["actor"])
    returns = []
    with torch.no_grad():
        for ep in range(episodes):
            obs = env.reset(seed=cfg.seed + 1000 * ep)[0]
            player.num_envs = 1
            player.init_states()
            done, total, steps = False, 0.0, 0
            while not done:
                torch_obs = prepare_obs(fabric, obs, cnn_keys=cfg.algo.cnn_keys.encoder)
                masks = {k: v for k, v in torch_obs.items() if k.startswith("mask")}
                acts = player.get_actions(torch_obs, True, masks)
                if player.actor.is_continuous:
                    acts = torch.stack(acts, -1).cpu().numpy()
                else:
                    acts = torch.stack([a.argmax(dim=-1) for a in acts], dim=-1).cpu().numpy()
                obs, reward, terminated, truncated, _ = env.step(acts.reshape(space.shape))
                total += float(reward)
                steps += 1
                done = terminated or truncated or (max_steps is not None and steps >= max_steps)
            returns.append(total)
    env.close()
    m = re.search(r"ckpt_(\d+)_", os.path.basename(ckpt))
    return {"checkpoint": ckpt, "step": int(m.group(1)) if m else None, "returns": returns}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="cap per episode (agent steps)")
    args = p.parse_args(argv)
    for ckpt in args.checkpoints:
        print(json.dumps(evaluate(ckpt, args.episodes, args.max_steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
