"""Where one DreamerV3 update's time goes, part by part, beside each part's floor.

    python -m benchmarks.update_profile                      # size s, float32 and bf16, eager
    python -m benchmarks.update_profile --sizes xs s --compile --threads 2
    python -m benchmarks.update_profile --ops       # operator counts only (no timing): ops.md

Each part of ``DreamerAgent.train_step`` is timed on its own (forward and backward where it has
one), in the precision and compilation that ``train.amp`` / ``train.compile`` give it, on the
synthetic Atari100k batch of ``benchmarks.train_speed`` (16 x 64, pixels, 6 actions):

* ``encoder``: the CNN over the ``B*T`` frames;
* ``backbone``: the RSSM's posterior loop over ``T`` steps and the prior;
* ``decoder``: the image decoder and its loss;
* ``heads``: the reward and continue heads and the KL terms (the world-model terms without the
  decoder); with ``--compile`` the decoder and the heads are one part, ``decoder+heads``, as the
  update compiles them as one region (``WorldModel.terms``);
* ``imagination``: the 15-step rollout from ``B*T`` starts (no gradients under REINFORCE);
* ``actor-critic``: the policy, value and replay-value losses;
* ``optimiser``: LaProp's step over all parameters and the slow critic.

``--ops`` counts instead of timing: the ATen operators each part and the full update dispatch
(forward, backward and the optimiser; views and allocations without a kernel left out). On a GPU
each is at least one kernel launch, and an update of small kernels is bound by their number, not
their FLOPs: the counts say where a launch-bound update (eager, or compiled without CUDA graphs)
spends its launches. Counted on the CPU; CUDA's kernels for an operator can differ in number
(cuDNN convolutions, fused optimiser kernels).

The floor of a part is its FLOPs (``torch.utils.flop_counter``, forward + backward) at this CPU's
measured rates: convolutions at the rate of a large 5x5 convolution, matrix products at that of a
large matrix product, both measured here in the same precision and thread count. The parts'
sum differs from the full update by what they share (the full update runs each once).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import speed_note, stamp
from benchmarks.train_speed import build_update
from worldrl.world_model import shift_actions

CONV_OPS = ("convolution", "conv")


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_rates(amp: bool, repeats: int = 3) -> dict[str, float]:
    """FLOP/s of a large matrix product and a large 5x5 convolution (forward), here."""
    dtype = torch.bfloat16 if amp else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    mm = _timed(lambda: a @ b, repeats)
    x = torch.randn(256, 48, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 48, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = _timed(lambda: torch.nn.functional.conv2d(x, w, padding=2), repeats)
    return {"matmul": 2 * 2048**3 / mm, "conv": 2 * 256 * 64 * 48 * 25 * 32 * 32 / conv}


def _flops(fn) -> dict[str, float]:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    conv = mm = 0.0
    for op, n in counter.get_flop_counts()["Global"].items():
        if any(c in str(op) for c in CONV_OPS):
            conv += n
        else:
            mm += n
    return {"conv": conv, "matmul": mm}


#: operators that launch no kernel: allocations without a fill, views not marked as aliases
NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "lift_fresh", "_unsafe_view"})


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it, by name (views and NO_KERNEL left out)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> Counter:
    with OpCounter() as counter:
        fn()
    return counter.counts


#: the part that stands for ``decoder`` and ``heads`` when the update is compiled
COMPILED_TERMS = "decoder+heads"


def parts(agent, data) -> dict:
    """The update's parts as closures, each doing what ``train_step`` does for that part, in the
    compiled regions it runs them in (a compiled update: the decoder and the heads as the one
    region :data:`COMPILED_TERMS`)."""
    wm, ac, bb = agent.wm, agent.ac, agent.wm.backbone
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=agent.amp)  # noqa: E731
    is_first = data["is_first"].bool()
    prev = shift_actions(data["action"].float(), is_first)
    with torch.no_grad(), autocast():
        embed = wm.encoder({k: data[k] for k in wm.obs_keys})
        post, prior, _ = bb.observe(embed, prev, is_first)
        start = bb.imagination_starts(post, prev, is_first, 0)
        traj = ac.rollout(bb, wm.reward_head, wm.cont_head, start)
    B, T = is_first.shape

    def backward(out):
        outs = [o for o in out if o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        agent.zero_grad(set_to_none=True)

    def encoder():
        with autocast():
            out = wm.encoder({k: data[k] for k in wm.obs_keys})
        backward([out.float().square().mean()])

    def backbone():
        e = embed.detach().float().requires_grad_()
        with autocast():
            p, q, _ = bb.observe(e, prev, is_first)
        backward([p["deter"].float().mean(), p["logits"].float().mean(), q["logits"].mean()])

    feat = bb.get_feat(post).detach().float()

    def decoder():
        f = feat.clone().requires_grad_()
        with autocast():
            losses = [d.loss(data[k]).mean() for k, d in wm.decoder(f).items()]
        backward(losses)

    def heads():
        p = {k: v.detach().float().requires_grad_(k != "deter") for k, v in post.items()}
        q = {k: v.detach().float().requires_grad_(k == "logits") for k, v in prior.items()}
        f = bb.get_feat(p)
        with autocast():
            dyn, rep = bb.kl_losses(p, q, wm.free_nats)
            rew = wm.reward_head.loss(f, data["reward"].float())
            con = wm.cont_head.loss(f, 1.0 - data["terminated"].float())
        backward([dyn.mean(), rep.mean(), rew.mean(), con.mean()])

    def imagination():
        with torch.no_grad(), autocast():
            ac.rollout(bb, wm.reward_head, wm.cont_head, start)

    def actor_critic():
        with autocast():
            terms, outs, _ = ac.imag_loss(traj, update=False)
            boot = outs["ret"][0].reshape(B, T)
            repval = ac.replay_value_loss(feat.clone().requires_grad_(), data["reward"],
                                          data["terminated"], data["is_first"], boot,
                                          update=False)
        backward([terms["policy"].mean(), terms["value"].mean(), repval.mean()])

    with autocast():  # gradients for every parameter, then only the optimiser is timed
        total = agent.losses(data)[0]
    total.backward()
    grads = {p: p.grad.clone() for p in agent.parameters() if p.grad is not None}

    def optimiser():
        for p, g in grads.items():
            p.grad = g
        agent.opt.step()
        agent.ac.update_slow()

    def decoder_heads():  # the compiled update's one region after the backbone, its inputs as
        # the backbone gives them there (dtypes, gradients): no recompilation for the profile
        p, q = ({k: v.detach().clone().requires_grad_(v.is_floating_point())
                 for k, v in state.items()} for state in (post, prior))
        with autocast():
            terms, _ = wm.terms(p, q, data)
        backward([t.mean() for t in terms.values()])

    # a compiled update runs the decoder and the heads only inside one compiled region
    # (WorldModel.terms): timing them apart would time eager code
    middle = ({COMPILED_TERMS: decoder_heads} if agent.compiled
              else {"decoder": decoder, "heads": heads})
    return {"encoder": encoder, "backbone": backbone, **middle, "imagination": imagination,
            "actor-critic": actor_critic, "optimiser": optimiser}


def profile(size: str, amp: bool, compile_: bool, repeats: int, rates: dict) -> dict:
    agent, data, step = build_update(size, amp=amp, compile_=compile_)
    full = _timed(step, repeats)
    rows = {}
    eager_agent, eager_data, _ = build_update(size, amp=False)
    eager_parts = parts(eager_agent, eager_data)
    for name, fn in parts(agent, data).items():
        if name == "optimiser":
            flops = {"conv": 0.0, "matmul": 0.0}
        elif name == COMPILED_TERMS:
            two = [_flops(eager_parts[k]) for k in ("decoder", "heads")]
            flops = {k: two[0][k] + two[1][k] for k in two[0]}
        else:
            flops = _flops(eager_parts[name])
        floor = flops["conv"] / rates["conv"] + flops["matmul"] / rates["matmul"]
        rows[name] = {"s": _timed(fn, repeats), "conv_gflop": flops["conv"] / 1e9,
                      "matmul_gflop": flops["matmul"] / 1e9, "floor_s": floor}
    total_flops = _flops(lambda: eager_agent.losses(eager_data)[0].backward())
    return {"size": size, "bf16": amp, "compile": compile_, "train_step_s": full,
            "train_step_floor_s": total_flops["conv"] / rates["conv"]
            + total_flops["matmul"] / rates["matmul"],
            "train_step_gflop": {k: v / 1e9 for k, v in total_flops.items()}, "parts": rows}


def op_counts(size: str, amp: bool, batch: int = 16, seq: int = 64) -> dict:
    """The eager update's operators, part by part and whole (one update each, after a first
    that creates the optimiser's state)."""
    agent, data, step = build_update(size, amp=amp, batch=batch, seq=seq)
    step()
    full = count_ops(step)
    rows = {}
    for name, fn in parts(agent, data).items():
        c = count_ops(fn)
        rows[name] = {"ops": sum(c.values()), "top": dict(c.most_common(8))}
    return {"size": size, "bf16": amp, "train_step_ops": sum(full.values()),
            "train_step_top": dict(full.most_common(12)), "parts": rows}


def render_ops(report: dict) -> str:
    m = report["machine"]
    lines = ["# How many operators one update dispatches (eager)", "",
             f"Machine: {m['cpu']}; torch {m['torch']}. Commit `{report['commit']}`, "
             f"{report['date']}.", f"Command: `{report['command']}`.", "", report["what"], ""]
    for r in report["results"]:
        lines += [f"## size {r['size']}, {'bf16' if r['bf16'] else 'fp32'}", "",
                  f"Full update: **{r['train_step_ops']:,} operators**; the most frequent: "
                  + ", ".join(f"{k} {v:,}" for k, v in r["train_step_top"].items()) + ".", "",
                  "| part | operators | the most frequent |", "|---|---:|---|"]
        for name, row in r["parts"].items():
            top = ", ".join(f"{k} {v:,}" for k, v in list(row["top"].items())[:5])
            lines.append(f"| {name} | {row['ops']:,} | {top} |")
        lines.append("")
    return "\n".join(lines)


def render(report: dict) -> str:
    """The markdown report of :func:`main`'s JSON."""
    m = report["machine"]
    lines = ["# Where the update's time goes (CPU)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {report['threads']} torch threads"
             f"{speed_note(m)}; torch "
             f"{m['torch']}. Commit `{report['commit']}`, {report['date']}.",
             f"Command: `{report['command']}`.", "", report["what"], ""]
    for r in report["results"]:
        prec = "bf16" if r["bf16"] else "fp32"
        rates = r["rates_gflops"]
        lines += [f"## size {r['size']}, {prec}, {'compiled' if r['compile'] else 'eager'}", "",
                  f"Full update {r['train_step_s']:.2f} s; its floor "
                  f"{r['train_step_floor_s']:.2f} s "
                  f"({r['train_step_gflop']['conv']:.0f} GFLOP of convolutions at "
                  f"{rates['conv']:.0f} GFLOP/s, {r['train_step_gflop']['matmul']:.0f} GFLOP of "
                  f"matrix products at {rates['matmul']:.0f} GFLOP/s).", "",
                  "| part | time (s) | share of the parts | floor (s) | time / floor "
                  "| conv GFLOP | matmul GFLOP |", "|---|---:|---:|---:|---:|---:|---:|"]
        total = sum(row["s"] for row in r["parts"].values())
        for name, row in r["parts"].items():
            ratio = f"{row['s'] / row['floor_s']:.1f}" if row["floor_s"] > 0 else "-"
            lines.append(f"| {name} | {row['s']:.3f} | {row['s'] / total:.0%} | "
                         f"{row['floor_s']:.3f} | {ratio} | {row['conv_gflop']:.1f} | "
                         f"{row['matmul_gflop']:.1f} |")
        lines.append(f"| sum of the parts | {total:.3f} | | | | | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["s"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="the compiled update instead of eager")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ops", action="store_true",
                   help="count the operators (eager, no timing) into --out (default "
                        "results/update_ops)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.ops and args.compile:
        # inductor's fused kernels are not ATen operators: a count "with --compile" would be
        # the eager count under another name
        p.error("--ops counts the eager update's ATen operators; it cannot be combined with "
                "--compile (drop one of them)")
    torch.set_num_threads(args.threads)
    if args.ops:
        return _ops_main(args)
    args.out = args.out or "results/update_profile_cpu"
    results = []
    for prec in args.precisions:
        amp = prec == "bf16"
        rates = peak_rates(amp)
        print(f"{prec}: matmul {rates['matmul'] / 1e9:.0f} GFLOP/s, "
              f"conv {rates['conv'] / 1e9:.0f} GFLOP/s", flush=True)
        for size in args.sizes:
            r = profile(size, amp, args.compile, args.repeats, rates)
            r["rates_gflops"] = {k: v / 1e9 for k, v in rates.items()}
            results.append(r)
            print(f"size={size} {prec}: train step {r['train_step_s']:.2f}s (floor "
                  f"{r['train_step_floor_s']:.2f}s)", flush=True)
            for name, row in r["parts"].items():
                print(f"  {name:13s} {row['s']:7.3f}s  floor {row['floor_s']:6.3f}s  conv "
                      f"{row['conv_gflop']:7.1f} GFLOP  matmul {row['matmul_gflop']:7.1f} GFLOP",
                      flush=True)
    report = {**stamp("python -m benchmarks.update_profile " + " ".join(sys.argv[1:])),
              "what": "\n\n".join(__doc__.split("\n\n")[i] for i in (2, 3, 5)),
              "threads": args.threads,
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(render(report))
    return 0


def _ops_main(args) -> int:
    results = []
    for prec in args.precisions:
        for size in args.sizes:
            r = op_counts(size, prec == "bf16")
            results.append(r)
            print(f"size={size} {prec}: {r['train_step_ops']:,} operators per update; "
                  + ", ".join(f"{k} {v['ops']:,}" for k, v in r["parts"].items()), flush=True)
    doc = __doc__.split("\n\n")
    report = {**stamp("python -m benchmarks.update_profile " + " ".join(sys.argv[1:])),
              "what": "\n\n".join(doc[i] for i in (4, 2, 3)), "results": results}
    out = Path(args.out or "results/update_ops")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(render_ops(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
