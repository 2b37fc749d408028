"""World-model update and full train-step speed of the DreamerV3 agent on the Atari100k config.

    python -m benchmarks.train_speed          # sizes xs and s -> results/train_speed_cpu.{json,md}
    python -m benchmarks.train_speed --sizes s m --device cuda --out results/train_speed_gpu

Batches are synthetic with the Atari100k shapes (pixels uint8 [3, 64, 64], 6 one-hot actions) at
DreamerV3's batch 16 x 64; the arithmetic does not depend on the values. "World-model update" is
the world-model loss, its backward pass and the optimiser step; "train step" adds imagination and
the actor-critic losses (DreamerV3's full update). Times are medians over the timed repeats, after
warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agents.dreamer import (
    CUDAGRAPH_MODES,
    GRAPH_WARMUP,
    DreamerAgent,
    check_cuda_graph,
    compile_mode,
)
from benchmarks.machine import speed_note, stamp
from worldrl.config import load_config


def synthetic_batch(batch: int, seq: int, actions: int, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    act = torch.randint(0, actions, (batch, seq), generator=g)
    data = {
        "pixels": torch.randint(0, 256, (batch, seq, 3, 64, 64), dtype=torch.uint8, generator=g),
        "action": torch.nn.functional.one_hot(act, actions).float(),
        "reward": torch.randn(batch, seq, generator=g).clamp(-1, 1),
        "is_first": torch.rand(batch, seq, generator=g) < 0.01,
        "terminated": torch.zeros(batch, seq, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in data.items()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, repeats: int, warmup: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def param_counts(agent) -> dict[str, int]:
    """Trainable parameters per part, as DreamerV3 and sheeprl report them (no slow critic)."""
    return {"world_model": sum(p.numel() for p in agent.wm.parameters()),
            "actor": sum(p.numel() for p in agent.ac.actor.parameters()),
            "critic": sum(p.numel() for p in agent.ac.critic.parameters())}


def build_update(size: str, device: torch.device | str = "cpu", *, amp: bool = False,
                 compile_: bool | str = False, batch: int = 16, seq: int = 64, actions: int = 6,
                 overrides: tuple[str, ...] = (), cuda_graph: bool = False):
    """The DreamerV3 agent on the Atari100k config and one synthetic batch.

    Returns ``(agent, data, step)`` where ``step()`` runs one full update (``train_step``) in the
    configuration that ``worldrl train`` uses for ``train.amp`` / ``train.compile`` /
    ``train.cuda_graph``.
    """
    device = torch.device(device)
    cfg = load_config(["env=atari100k", f"size={size}", *overrides])
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    agent = DreamerAgent({"pixels": ((3, 64, 64), torch.uint8)},
                         {"discrete": True, "n": actions}, agent_cfg).to(device)
    agent.setup_update(amp=amp, compile=compile_, cuda_graph=cuda_graph)
    data = synthetic_batch(batch, seq, actions, device)

    def step():
        return agent.train_step(data)

    return agent, data, step


def measure(size: str, device: torch.device, batch: int, seq: int, repeats: int, warmup: int,
            amp: bool = False, compile_: bool | str = False, cuda_graph: bool = False) -> dict:
    """Time one configuration: the first update (compilation included), then the world-model
    update alone and the full update, each the median of ``repeats`` after ``warmup``. With
    ``cuda_graph`` the first update is the eager ones before the capture plus the capturing
    one, and the world-model update stays eager (only the full update is captured)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    agent, data, train_step = build_update(size, device, amp=amp, compile_=compile_,
                                           batch=batch, seq=seq, cuda_graph=cuda_graph)
    params = sum(p.numel() for p in agent.parameters())
    first = sum(time_fn(train_step, 1, 0, device)[0]
                for _ in range(GRAPH_WARMUP + 1 if cuda_graph else 1))
    graphs = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())

    def wm_update():  # the world-model part of train_step, with its precision and compilation
        if agent.compiled in CUDAGRAPH_MODES:  # as train_step: CUDA graphs, a new iteration
            torch.compiler.cudagraph_mark_step_begin()
        agent.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=agent.amp):
            loss = agent.wm.loss(data)[0]
        loss.backward()
        agent.opt.step()

    # (with cuda_graph only the full update is captured: an eager world-model update beside it
    # would time something else)
    wm_s = None if cuda_graph else statistics.median(time_fn(wm_update, repeats, warmup, device))
    full = time_fn(train_step, repeats, warmup, device)
    full_s = statistics.median(full)
    return {
        "size": size, "params_M": params / 1e6, "params": param_counts(agent), "batch": batch,
        "seq_len": seq, "device": str(device), "bf16_autocast": amp,
        "torch_compile": agent.compiled or False, "cuda_graph": agent.cuda_graph,
        "compiled_graphs": graphs,
        "graph_breaks": breaks, "first_update_s": first,
        # updates the first-update time covers: with cuda_graph the eager warm-ups and the capture
        "first_update_count": GRAPH_WARMUP + 1 if cuda_graph else 1,
        "wm_update_s": wm_s, "wm_updates_per_s": None if wm_s is None else 1 / wm_s,
        "train_step_s": full_s, "train_steps_per_s": 1 / full_s, "train_step_all_s": full,
        "replayed_steps_per_s": batch * seq / full_s,
        "repeats": repeats,
    }


def profile_update(size: str, device: torch.device, batch: int, seq: int, steps: int,
                   amp: bool, compile_: bool | str, warmup: int = 3,
                   cuda_graph: bool = False) -> str:
    """Markdown: where ``steps`` full updates spend their time, by torch.profiler (after
    ``warmup`` updates, compilation and CUDA-graph recording included there). On CUDA it says
    whether the update is bound by the device (kernel time near the wall time) or by the host
    (launches, Python and the glue between compiled regions)."""
    from torch.profiler import ProfilerActivity, profile

    torch._dynamo.reset()
    agent, data, train_step = build_update(size, device, amp=amp, compile_=compile_,
                                           batch=batch, seq=seq, cuda_graph=cuda_graph)
    warmup = max(warmup, GRAPH_WARMUP + 1 if cuda_graph else 0)  # replays, not the capture
    time_fn(train_step, 1, warmup, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    _sync(device)
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step()
        _sync(device)
    wall = (time.perf_counter() - t) / steps
    events = prof.key_averages()
    dev_attr = ("self_device_time_total" if hasattr(events[0], "self_device_time_total")
                else "self_cuda_time_total") if len(events) else "self_cpu_time_total"
    per = {e.key: e for e in events}
    on_device = [e for e in events if getattr(e, dev_attr, 0) > 0
                 and getattr(getattr(e, "device_type", None), "name", "CPU") != "CPU"]
    # a record_function range (the optimiser's step) also shows on the device as the span of
    # its kernels, gaps included: not kernel time
    spans = [e for e in on_device if getattr(e, "is_user_annotation", False)]
    kernels = [e for e in on_device if not getattr(e, "is_user_annotation", False)]
    busy = sum(getattr(e, dev_attr) for e in kernels) / 1e6 / steps
    launches = {k: per[k].count / steps for k in ("cudaLaunchKernel", "cuLaunchKernel",
                                                  "cudaGraphLaunch", "cuLaunchKernelEx")
                if k in per}
    lines = [f"## size {size}, bf16 {amp}, compile {agent.compiled or False}"
             f"{', one CUDA graph' if cuda_graph else ''}, {device}", "",
             f"{steps} profiled updates after {warmup} warm-up: **{wall * 1e3:.1f} ms** per "
             f"update under the profiler; device kernels busy {busy * 1e3:.1f} ms of it "
             f"({busy / wall:.0%}). Launches per update: "
             + (", ".join(f"{k} {v:.0f}" for k, v in launches.items()) or "none recorded")
             + "." + ("" if not spans else " Device spans of annotated ranges (not counted): "
                      + ", ".join(f"`{e.key}` {getattr(e, dev_attr) / 1e3 / steps:.1f} ms"
                                  for e in spans) + "."), ""]

    def table(rows, attr, title):
        out = [f"{title}", "", "| operator / kernel | calls per update | ms per update |",
               "|---|---:|---:|"]
        out += [f"| `{e.key[:90]}` | {e.count / steps:.0f} | "
                f"{getattr(e, attr) / 1e3 / steps:.2f} |" for e in rows]
        return out + [""]

    top_dev = sorted(kernels, key=lambda e: -getattr(e, dev_attr))[:25]
    top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]
    if kernels:
        lines += table(top_dev, dev_attr, "Device time (self), the top 25:")
    lines += table(top_cpu, "self_cpu_time_total", "Host time (self), the top 25:")
    return "\n".join(lines)


def _secs(value: float | None, digits: int, unit: str = "s") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def variants(args: argparse.Namespace) -> list[tuple[bool | str, bool]]:
    """``(compile, amp)`` pairs to measure: eager (unless ``--no-eager``) and each ``--compile``
    mode, each in float32 and, with ``--amp``, bf16 (``--amp-only``: bf16 alone)."""
    precisions = [True] if args.amp_only else [False, True] if args.amp else [False]
    modes: list[bool | str] = [] if args.no_eager and args.compile is not None else [False]
    if args.compile is not None:
        modes += [m if m != "default" else True for m in (args.compile or ["default"])]
    return [(comp, amp) for comp in modes for amp in precisions]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["xs", "s"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--amp", action="store_true", help="also measure with bf16 autocast")
    p.add_argument("--amp-only", action="store_true",
                   help="only bf16 autocast, not float32 (each compiled variant compiles anew)")
    p.add_argument("--compile", nargs="*", default=None, metavar="MODE",
                   help="also measure compiled updates: torch.compile modes (none given: default; "
                        "e.g. reduce-overhead for CUDA graphs), each with every precision")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture every variant's whole update as one CUDA graph "
                        "(train.cuda_graph; CUDA only, not with reduce-overhead)")
    p.add_argument("--no-eager", action="store_true",
                   help="only the compiled variants (with --compile), not the eager ones")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N full updates of each variant (torch.profiler) into "
                        "OUT_profile.md: device kernel time against the wall time")
    p.add_argument("--out", default="results/train_speed_cpu")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.no_eager and args.compile is None:
        p.error("--no-eager needs --compile (there would be nothing to measure)")
    device = torch.device(args.device)
    if args.cuda_graph:
        for comp, _ in variants(args):
            try:
                check_cuda_graph(True, device, compile_mode(comp), name="--cuda-graph")
            except ValueError as err:
                p.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for comp, amp in variants(args):
            r = measure(size, device, args.batch, args.seq, args.repeats, args.warmup, amp,
                        comp, args.cuda_graph)
            rows.append(r)
            print(f"size={size:3s} amp={amp!s:5s} compile={r['torch_compile']!s:15s} "
                  f"{'cuda_graph ' if r['cuda_graph'] else ''}"
                  f"params={r['params_M']:.1f}M graphs={r['compiled_graphs']} "
                  f"breaks={r['graph_breaks']} first {r['first_update_s']:.1f}s  "
                  f"wm update {_secs(r['wm_update_s'], 2)}  train step {r['train_step_s']:.2f}s",
                  flush=True)
    # projected hours for one Atari100k game: 100k env steps at DreamerV3's train ratio 256
    # (batch 16 x 64 -> one update per 4 env steps), updates only
    for r in rows:
        r["atari100k_hours_at_ratio_256"] = 100_000 / 4 * r["train_step_s"] / 3600
    report = {**stamp("python -m benchmarks.train_speed " + " ".join(sys.argv[1:])),
              "what": __doc__.split("\n\n")[2].replace("\n", " "), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    m = report["machine"]
    lines = [
        "# DreamerV3 update speed, Atari100k config", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, GPU "
        f"{m['gpu']}{speed_note(m)}; torch {m['torch']}. Commit `{report['commit']}`, "
        f"{report['date']}.",
        f"Command: `{report['command']}`.", "", report["what"], "",
        "| size | params | device | bf16 | compile | graphs / breaks | first update (s) "
        "| WM update (s) | train step (s) | replayed steps/s | h per Atari100k game (ratio 256) |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['size']} | {r['params_M']:.1f}M | {r['device']} | {r['bf16_autocast']} | "
              f"{r['torch_compile']}{' + CUDA graph' if r.get('cuda_graph') else ''} | "
              f"{r['compiled_graphs']} / {r['graph_breaks']} | "
              f"{r['first_update_s']:.1f} | {_secs(r['wm_update_s'], 3, '')} | "
              f"{r['train_step_s']:.3f} | "
              f"{r['replayed_steps_per_s']:.0f} | {r['atari100k_hours_at_ratio_256']:.1f} |"
              for r in rows]
    if any(r.get("cuda_graph") for r in rows):
        lines += ["", f"CUDA graph rows: the first update covers the {GRAPH_WARMUP} eager "
                  "warm-up updates and the capturing one; the world-model update alone is not "
                  "captured and not timed (n/a)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if args.profile:
        parts = ["# Where the update's time goes (torch.profiler)", "",
                 f"Machine: {m['cpu']}, GPU {m['gpu']}; torch {m['torch']}. Commit "
                 f"`{report['commit']}`, {report['date']}. Command: `{report['command']}`.", ""]
        for size in args.sizes:
            for comp, amp in variants(args):
                parts.append(profile_update(size, device, args.batch, args.seq, args.profile,
                                            amp, comp, cuda_graph=args.cuda_graph))
                path = out.parent / (out.name + "_profile.md")
                path.write_text("\n".join(parts) + "\n")
                print(parts[-1].split("\n")[2], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
