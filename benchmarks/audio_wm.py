"""Audio-visual world model on Atari with sound: open-loop audio prediction vs copy-last-frame.

    OMP_NUM_THREADS=1 python -m benchmarks.audio_wm       # ~10 min on one idle core, 2 games
    python -m benchmarks.audio_wm --games pong --updates 100         # a quicker look

Per game (``atari100k_av``, ``envs/atari_av.py``: ``pixels`` [3, 64, 64] + ``audio`` log-mel
[7, 40] per agent step):

1. collect ``--steps`` agent steps with uniformly random actions (training stream) and, from
   another seed, ``--heldout`` steps (held-out stream);
2. train only the world model (``agents/dreamer.py``'s ``WorldModel``: RSSM, a CPU size, the
   audio encoder/decoder of ``worldrl/nets.py``) on ``B x --train-len`` windows of the training
   stream for ``--updates`` updates (LaProp, lr 3e-4);
3. on every ``--seq-len`` window of the held-out stream (stride ``--seq-len``): observe
   ``--context`` steps, imagine the rest with the actions taken (open loop), decode ``audio``;
   compare with the truth by the mean squared error per log-mel value (units: ``ln`` of the mel
   power ratio), per horizon bucket.

Baselines on the same windows: ``copy_last`` repeats the last observed audio frame (the brief's
baseline), ``train_mean`` predicts the training stream's mean log-mel frame (what an MSE-trained
model with no dynamics would converge to), ``silence`` predicts 0.

Writes ``results/audio_wm.{json,md}`` and one spectrogram image per game
(``results/audio_wm_<game>.png``: truth / model / |error| panels of a held-out window, white line
where imagination starts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import stamp  # noqa: E402

BUCKETS = ((1, 4), (5, 12), (13, 24), (25, 10_000))


def collect(game: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    """A random-policy stream in DreamerV3's row layout (episode ends get their own row)."""
    import envs

    env = envs.make_gym("atari100k_av", game)
    n_act = env.action_space.n
    rng = np.random.default_rng(seed)
    out = {"pixels": [], "audio": [], "action": [], "reward": [], "is_first": [], "terminated": []}
    obs, _ = env.reset(seed=seed)
    first, rew = True, 0.0
    while len(out["pixels"]) < steps:
        a = int(rng.integers(n_act))
        out["pixels"].append(obs["pixels"])
        out["audio"].append(obs["audio"])
        out["action"].append(a)
        out["reward"].append(rew)
        out["is_first"].append(first)
        out["terminated"].append(False)
        obs, rew, term, trunc, _ = env.step(a)
        first = False
        if term or trunc:  # the final observation as a row of its own
            out["pixels"].append(obs["pixels"])
            out["audio"].append(obs["audio"])
            out["action"].append(0)
            out["reward"].append(rew)
            out["is_first"].append(False)
            out["terminated"].append(bool(term))
            obs, _ = env.reset()
            first, rew = True, 0.0
    env.close()
    data = {k: np.asarray(v) for k, v in out.items()}
    data["action"] = np.eye(n_act, dtype=np.float32)[data["action"]]
    data["reward"] = data["reward"].astype(np.float32)
    return data


def windows(data: dict[str, np.ndarray], starts: np.ndarray, T: int) -> dict[str, torch.Tensor]:
    idx = starts[:, None] + np.arange(T)
    batch = {k: torch.as_tensor(v[idx]) for k, v in data.items()}
    batch["is_first"] = batch["is_first"].clone()
    batch["is_first"][:, 0] = True
    return batch


def make_world_model(obs_space, n_act: int, args):
    from agents.dreamer import DreamerAgent
    from agents.train import agent_config
    from worldrl.config import load_config

    sizes = dict(deter=args.deter, hidden=args.deter // 2, stoch=8, classes=8, units=args.units,
                 depth=args.depth)  # the sizes every size key interpolates
    cfg = agent_config(load_config(["size=xs", *(f"agent.size.{k}={v}" for k, v in sizes.items())]))
    return DreamerAgent(obs_space, {"discrete": True, "n": n_act}, cfg).wm


def evaluate(wm, held: dict[str, np.ndarray], T: int, context: int, mean_frame: torch.Tensor,
             chunk: int = 8) -> tuple[dict, dict[str, torch.Tensor]]:
    starts = np.arange(0, len(held["audio"]) - T + 1, T)
    errs = {k: [] for k in ("model", "copy_last", "train_mean", "silence")}
    example = None
    wm.eval()
    for i in range(0, len(starts), chunk):
        batch = windows(held, starts[i:i + chunk], T)
        pred = wm.predict_open_loop(batch, context, max_batch=chunk)["audio"].pred()
        truth = batch["audio"].float()
        future = truth[:, context:]
        guesses = {
            "model": pred[:, context:],
            "copy_last": truth[:, context - 1:context].expand_as(future),
            "train_mean": mean_frame.expand_as(future),
            "silence": torch.zeros_like(future),
        }
        for k, g in guesses.items():
            errs[k].append((g - future).square().mean((-1, -2)))  # [b, T - context]
        if example is None or truth.std() > example["truth"].std():
            j = int(truth.flatten(1).std(1).argmax())
            example = {"truth": truth[j:j + 1], "model": pred[j:j + 1]}
    wm.train()
    errs = {k: torch.cat(v) for k, v in errs.items()}  # [windows, horizon]
    out = {"windows": len(starts), "overall": {k: float(v.mean()) for k, v in errs.items()}}
    H = errs["model"].shape[1]
    for lo, hi in BUCKETS:
        if lo > H:
            break
        sl = slice(lo - 1, min(hi, H))
        out[f"h{lo}-{min(hi, H)}"] = {k: float(v[:, sl].mean()) for k, v in errs.items()}
    return out, example


def run_game(game: str, args) -> dict:
    from worldrl.audio import spectrogram_image
    from worldrl.optim import LaProp

    t0 = time.time()
    train = collect(game, args.steps, seed=args.seed)
    held = collect(game, args.heldout, seed=args.seed + 1000)
    t_collect = time.time() - t0
    obs_space = {"pixels": ((3, 64, 64), torch.uint8), "audio": ((7, 40), torch.float32)}
    torch.manual_seed(args.seed)
    wm = make_world_model(obs_space, train["action"].shape[1], args)
    opt = LaProp(wm.parameters(), lr=args.lr, warmup=100)
    rng = np.random.default_rng(args.seed)
    B, T = args.batch, args.train_len
    mean_frame = torch.as_tensor(train["audio"].mean(0))
    log = []
    t1 = time.time()
    for u in range(1, args.updates + 1):
        batch = windows(train, rng.integers(0, len(train["audio"]) - T + 1, B), T)
        total, terms, _, _ = wm.loss(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if u % args.log_every == 0 or u == args.updates:
            row = {"update": u, "wall_s": time.time() - t1,
                   **{f"loss/{k}": float(v.detach().mean()) for k, v in terms.items()}}
            log.append(row)
            print(f"  [{game}] {json.dumps({k: round(v, 3) for k, v in row.items()})}",
                  flush=True)
    t_train = time.time() - t1
    with torch.no_grad():
        scores, example = evaluate(wm, held, args.seq_len, args.context, mean_frame)
    img = spectrogram_image(example["truth"], example["model"], args.context)[0]
    png = Path(args.out).with_name(f"{Path(args.out).name}_{game}.png")
    import imageio

    imageio.imwrite(png, np.repeat(np.repeat(img.permute(1, 2, 0).numpy(), 3, 0), 3, 1))
    silent = float((train["audio"].max((1, 2)) < 0.5).mean())
    return {"game": game, **scores, "train_steps": len(train["audio"]),
            "heldout_steps": len(held["audio"]), "silent_fraction": silent,
            "updates": args.updates, "collect_s": t_collect, "train_s": t_train,
            "losses": log, "spectrogram_png": str(png.relative_to(ROOT)) if png.is_relative_to(
                ROOT) else str(png)}


def table(results: list[dict]) -> str:
    keys = [k for k in results[0] if k.startswith("h") and isinstance(results[0][k], dict)]
    lines = ["| game | horizon (steps) | model | copy last frame | train mean | silence |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for k in ["overall", *keys]:
            v = r[k]
            best = min(v, key=v.get)
            cells = [f"**{v[m]:.3f}**" if m == best else f"{v[m]:.3f}"
                     for m in ("model", "copy_last", "train_mean", "silence")]
            lines.append(f"| {r['game']} | {k.lstrip('h') if k != 'overall' else 'all'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=["ms_pacman", "seaquest"])
    p.add_argument("--steps", type=int, default=5000, help="training stream, agent steps")
    p.add_argument("--heldout", type=int, default=1024, help="held-out stream, agent steps")
    p.add_argument("--updates", type=int, default=800)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=32, help="evaluation window")
    p.add_argument("--train-len", type=int, default=16, help="training window")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--deter", type=int, default=256)
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "audio_wm"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    info = stamp("OMP_NUM_THREADS=1 python -m benchmarks.audio_wm " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for game in args.games:
        print(f"game {game}", flush=True)
        results.append(run_game(game, args))
        out.with_suffix(".json").write_text(json.dumps(
            {**info, "settings": vars(args), "results": results}, indent=1))
    md = [
        "# Audio-visual world model: open-loop audio prediction (CPU scale)", "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['machine']['cpu']} ({info['machine']['cores']} cores, 1 thread used), "
        f"torch {info['machine']['torch']}; commit {info['commit']}; {info['date']}.", "",
        f"Env `atari100k_av` (pixels 64x64 + log-mel audio [7, 40] per step). World model only "
        f"(RSSM deter {args.deter}, units {args.units}, CNN depth {args.depth}), trained "
        f"{args.updates} updates of B x T = {args.batch} x {args.train_len} on {args.steps} "
        f"random-policy steps per game; evaluated on {args.heldout} held-out steps (another "
        f"seed) in windows of {args.seq_len}: {args.context} observed, the rest imagined with "
        "the actions taken. Mean squared error per log-mel value (ln units; silence = 0, loud "
        "tones ~9); best per row in bold.", "",
        table(results), "",
        "Baselines: copy last frame = the last observed audio step repeated; train mean = the "
        "mean log-mel frame of the training stream; silence = 0.", "",
        "Spectrograms (truth / model / |error|, white line: imagination starts): "
        + ", ".join(f"`{r['spectrogram_png']}`" for r in results), "",
        "Scale: one CPU core, one seed, a few hundred updates: far from a trained Atari world "
        "model; the numbers show the pipeline works and where the model stands against the "
        "baselines, not a converged result.",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
