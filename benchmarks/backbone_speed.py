"""World-model training speed against sequence length for the rssm, s4, mamba and mamba2
backbones.

    python -m benchmarks.backbone_speed      # CPU, 1 thread -> results/backbone_speed_cpu.{json,md}
    python -m benchmarks.backbone_speed --device cuda --size s --out results/backbone_speed_gpu

One "update" is the world-model loss on a ``[B, T]`` batch, its backward pass and an Adam step,
with the backbones at a config size (default XS: rssm deter 256; s4, mamba, mamba2 d_model 64)
and the rest of the world model small and identical for all (vector observations of 8 dims, MLP
encoder / decoder). Reported: replayed sequence steps per second (``B * T / time``), the median
of the timed repeats after one warm-up. The RSSM steps through time in a Python loop; s4 scans
with ``kernels.linear_scan`` (complex), mamba with ``kernels.selective_scan`` (on CPU: the
compiled native loop of ``kernels/_native.py`` when it builds, else the vectorised PyTorch
paths; the JSON records which), mamba2 with ``kernels.ssd_chunk_scan`` (the chunked PyTorch
form).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import kernels._native
from benchmarks.machine import stamp, write_report
from worldrl.config import load_config
from worldrl.world_model import WorldModel

BACKBONES = ("rssm", "s4", "mamba", "mamba2")
OBS = {"vector": ((8,), torch.float32)}
HEADS = dict(encoder=dict(units=128, layers=2), decoder=dict(units=128, layers=2),
             reward_head=dict(units=128), cont_head=dict(units=128))


def backbone_config(name: str, size: str) -> dict:
    cfg = load_config([f"backbone={name}", f"size={size}"])
    backbone = OmegaConf.to_container(cfg.agent.backbone, resolve=True)
    backbone.pop("name")
    return backbone


def batch(B: int, T: int, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    data = {
        "vector": torch.randn(B, T, 8, generator=g),
        "action": F.one_hot(torch.randint(0, 4, (B, T), generator=g), 4).float(),
        "reward": torch.randn(B, T, generator=g),
        "is_first": torch.rand(B, T, generator=g) < 0.01,
        "terminated": torch.zeros(B, T, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    return {k: v.to(device) for k, v in data.items()}


def time_updates(wm: WorldModel, data, repeats: int, device) -> list[float]:
    opt = torch.optim.Adam(wm.parameters(), lr=1e-4)

    def update():
        loss = wm.loss(data)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t)
    return times


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# World-model training speed vs sequence length (" + " / ".join(BACKBONES) + ")", "",
        f"`{result['command']}` — commit `{result['commit']}`, {result['date']}, {m['cpu']}"
        f"{', ' + m['gpu'] if m.get('gpu') else ''}, {m['torch_threads']} torch thread(s), "
        f"torch {m['torch']}.", "",
        f"Size {result['size']}, batch {result['batch']}, vector observations; one update = "
        "world-model loss + backward + Adam step; median of "
        f"{result['repeats']} timed updates after a warm-up. Sequence steps per second "
        "(B x T / update time), higher is better; update time in brackets."
        + (f" The scans run on kernels' `{result['cpu_scan']}` CPU path."
           if result.get("device", "cpu") == "cpu" and "cpu_scan" in result else ""), "",
        *table_lines(result), "",
        "Backbone parameters only in the headers; the rest of the world model "
        "(encoder, decoder, heads) is the same for all of them.", "",
    ]
    return "\n".join(lines)


def table_lines(result: dict) -> list[str]:
    """The speed table: one row per sequence length, one column per backbone."""
    lines = ["| T | " + " | ".join(f"{b} ({result['params'][b] / 1e3:.0f}k params)"
                                   for b in result["backbones"]) + " |",
             "|---|" + "---|" * len(result["backbones"])]
    for T in result["lengths"]:
        cells = []
        for b in result["backbones"]:
            r = next(x for x in result["rows"] if x["backbone"] == b and x["T"] == T)
            cells.append(f"{r['steps_per_s']:,.0f} ({r['median_s'] * 1e3:.0f} ms)")
        lines.append(f"| {T} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    p.add_argument("--size", default="xs")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/backbone_speed_cpu", help="path stem")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    command = "python -m benchmarks.backbone_speed " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result = {**stamp(command.strip()), "size": args.size, "batch": args.batch,
              "repeats": args.repeats, "lengths": args.lengths, "backbones": args.backbones,
              "params": {}, "rows": [],
              "device": device.type,
              "cpu_scan": "native" if kernels._native.available() else "torch"}
    for name in args.backbones:
        cfg = backbone_config(name, args.size)
        torch.manual_seed(0)
        wm = WorldModel(OBS, 4, name, cfg, **HEADS).to(device)
        result["params"][name] = sum(p.numel() for p in wm.backbone.parameters())
        for T in args.lengths:
            times = time_updates(wm, batch(args.batch, T, device), args.repeats, device)
            med = statistics.median(times)
            row = {"backbone": name, "T": T, "median_s": med, "times_s": times,
                   "steps_per_s": args.batch * T / med, "config": cfg}
            result["rows"].append(row)
            print(f"{name:6s} T={T:5d}: {row['steps_per_s']:9.0f} steps/s "
                  f"({med * 1e3:.0f} ms/update)", flush=True)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
