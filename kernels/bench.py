"""Benchmark the scans: ``python -m kernels.bench`` writes results/kernels.json and .png
(``--ops ssd_chunk_scan``: that op only, the others' entries of the JSON kept).

For T in {64, 256, 1024, 4096, 16384} it times forward and forward+backward, reports the bytes that
must move divided by the time (GB/s) and the peak memory of one call, for:

* linear_scan: ours (backend "auto": Triton on CUDA; on CPU the compiled C loop of
  kernels/_native.py when it builds, else the chunked torch scan), on CPU also the chunked torch
  scan on its own ("torch_chunked", what runs where there is no C compiler), the sequential
  PyTorch loop (``linear_scan_ref``), and accelerated-scan when installed (its Triton
  ``accelerated_scan.scalar.scan`` on CUDA, its torch ``accelerated_scan.ref.scan`` on CPU; its
  layout is [B, D, T], prepared outside the timed region).
* selective_scan: ours against ``selective_scan_ref`` (the sequential loop).
* ssd_chunk_scan (Mamba-2's SSD): ours (backend "auto", chunk_size 64: the Triton forward on
  CUDA, whose backward recomputes the chunked PyTorch form; the chunked PyTorch form on CPU)
  against ``ssd_chunk_scan_ref`` (the sequential loop).

Sizes: CPU linear_scan B*D = 4*256, selective_scan batch=2, dim=64, N=16, ssd_chunk_scan batch=2,
nheads=4, headdim=16, dstate=16; CUDA linear_scan B*D = 16*4096, selective_scan batch=8,
dim=1024, N=16, ssd_chunk_scan batch=4, nheads=16, headdim=64, dstate=32 (all float32; one group
of B, C for the SSD, whose state has as many elements as selective_scan's, so that the loops'
saved per-step states take the same memory). On CUDA it also measures the device-to-device copy
bandwidth and reports each linear_scan forward as a fraction of it.
CPU peak memory is the rise of the process's peak RSS (Linux VmHWM, reset before each call after
glibc's malloc_trim; a lower bound where the allocator reuses pages it kept);
CUDA peak memory is ``torch.cuda.max_memory_allocated`` above the inputs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import kernels
from kernels import (
    _native,
    linear_scan,
    linear_scan_ref,
    selective_scan,
    selective_scan_ref,
    ssd_chunk_scan,
    ssd_chunk_scan_ref,
)

SEQLENS = (64, 256, 1024, 4096, 16384)


# ------------------------------------------------------------------------------ machine info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return "uncommitted"
        dirty = subprocess.run(["git", "status", "--porcelain", "kernels"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": None,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "kernels.bench", *sys.argv[1:]]),
        "cpu_linear_scan_backend": "native" if _native.available() else "torch",
        "native_unavailable_reason": _native.unavailable_reason(),
    }
    if kernels.HAS_TRITON:
        import triton

        info["triton"] = triton.__version__
    return info


# ------------------------------------------------------------------------------ measuring


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, reps: int, budget_s: float) -> float:
    """Fastest of ``reps`` calls after a warm-up of at least 3 calls and 0.2 s (or ``budget_s``,
    whichever ends first; fewer reps when a call is slow): on a shared machine the minimum is
    the stable statistic; the JSON also keeps the median. The warm-up matters on the CPU: the
    first calls that fault in fresh huge pages for a large output run 2-3x slower."""
    _sync(device)
    start = time.perf_counter()
    calls = 0
    while True:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - t0
        calls += 1
        spent = time.perf_counter() - start
        if (calls >= 3 and spent >= 0.2) or spent >= budget_s:
            break
    reps = max(1, min(reps, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _rss_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device) -> int | None:
    """Bytes the call needs above what was allocated before it (see module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    _malloc_trim()  # hand freed heap pages back so that the call's allocations show in RSS
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_status("VmRSS")
    fn()
    peak = _rss_status("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


MODES = ("fwd", "fwd_bwd")


def measure(impls: dict, bytes_fwd: int, bytes_fwd_bwd: int, device, reps: int, budget_s: float,
            rounds: int) -> dict:
    """Time every implementation in ``rounds`` interleaved rounds.

    ``impls`` maps a name to a factory returning ``(fwd, fwd_bwd)`` callables; each factory call
    makes that implementation's own inputs (layout copies, gradient leaves), which are dropped
    before the next one is made, so only one implementation's tensors are alive at a time (at
    the CUDA sizes one tensor is 4 GiB at T=16384). Each round times all of them in turn, so a
    burst of load on a shared machine slows one round of each rather than every call of one;
    the fastest time over the rounds is reported, with the median of the rounds' medians beside
    it. Peak memory is taken once, after the timing.
    """
    timings = {(name, mode): [] for name in impls for mode in MODES}
    for _ in range(rounds):
        for name, make_fns in impls.items():
            fns = make_fns()
            for mode, fn in zip(MODES, fns):
                timings[(name, mode)].append(time_call(fn, device, reps, budget_s))
            del fns
    rows = {}
    for name, make_fns in impls.items():
        fns = make_fns()
        row = {}
        for mode, fn, nbytes in zip(MODES, fns, (bytes_fwd, bytes_fwd_bwd)):
            t = min(best for best, _ in timings[(name, mode)])
            row[mode] = {
                "time_ms": t * 1e3,
                "median_time_ms": statistics.median(m for _, m in timings[(name, mode)]) * 1e3,
                "gb_per_s": nbytes / t / 1e9,
                "peak_mem_mb": (lambda m: None if m is None else m / 2**20)(
                    peak_memory(fn, device)),
            }
        rows[name] = row
        del fns
    return rows


def _speedup(row: dict, name: str) -> dict:
    """The loop's time over ``name``'s, per mode."""
    return {mode: row["loop"][mode]["time_ms"] / row[name][mode]["time_ms"] for mode in MODES}


def _min_speedup(rows: list) -> dict:
    """The smallest speedup over the loop at T >= 256, per mode (None without such rows)."""
    return {mode: min((row["speedup_vs_loop"][mode] for row in rows if row["T"] >= 256),
                      default=None) for mode in MODES}


def copy_bandwidth(device) -> float | None:
    """Device-to-device copy GB/s (read + write) on a 1 GiB buffer."""
    if device.type != "cuda":
        return None
    x = torch.empty(2**28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t, _ = time_call(lambda: y.copy_(x), device, reps=20, budget_s=5.0)
    return 2 * x.numel() * 4 / t / 1e9


# ------------------------------------------------------------------------------ benchmarks


def _backward(out, grad):
    out.backward(grad)


def bench_linear_scan(device, sizes, reps, budget_s, log, rounds=3):
    bsz, dim = sizes["B"], sizes["D"]
    try:
        if device.type == "cuda":
            from accelerated_scan.scalar import scan as acc_scan
        else:
            from accelerated_scan.ref import scan as acc_scan
    except ImportError:
        acc_scan = None
        log("accelerated-scan not installed: pip install accelerated-scan to compare")
    rows = []
    for seqlen in SEQLENS:
        g = torch.Generator().manual_seed(seqlen)
        a = (torch.rand(bsz, seqlen, dim, generator=g) * 0.5 + 0.5).to(device)
        b = torch.randn(bsz, seqlen, dim, generator=g).to(device)
        grad = torch.randn(bsz, seqlen, dim, generator=g).to(device)
        impls = {
            "ours": lambda a_, b_: linear_scan(a_, b_),
            "loop": lambda a_, b_: linear_scan_ref(a_, b_),
        }
        layouts = {"ours": False, "loop": False}
        if device.type == "cpu":
            impls["torch_chunked"] = lambda a_, b_: linear_scan(a_, b_, backend="torch")
            layouts["torch_chunked"] = False
        if acc_scan is not None:
            impls["accelerated_scan"] = lambda a_, b_: acc_scan(a_, b_)
            layouts["accelerated_scan"] = True  # [B, D, T] contiguous
        row = {"T": seqlen}
        timed = {}
        for name, fn in impls.items():

            def make(fn=fn, transposed=layouts[name], a=a, b=b, grad=grad):
                if transposed:
                    xa = a.transpose(1, 2).contiguous()
                    xb = b.transpose(1, 2).contiguous()
                    gg = grad.transpose(1, 2).contiguous()
                else:
                    xa, xb, gg = a, b, grad
                xa_g = xa.clone().requires_grad_()
                xb_g = xb.clone().requires_grad_()

                def fwd():
                    with torch.no_grad():
                        return fn(xa, xb)

                def fwd_bwd():
                    xa_g.grad = xb_g.grad = None
                    _backward(fn(xa_g, xb_g), gg)

                return fwd, fwd_bwd

            timed[name] = make
        # fwd: read a, b, write h; bwd: read a, h, grad, write grad_a, grad_b
        row.update(measure(timed, *linear_scan_bytes(bsz, seqlen, dim, a.element_size()),
                           device, reps, budget_s, rounds))
        row["speedup_vs_loop"] = _speedup(row, "ours")
        extra = ""
        if "torch_chunked" in row:
            row["torch_chunked_speedup_vs_loop"] = _speedup(row, "torch_chunked")
            extra = (f"; torch_chunked fwd x{row['torch_chunked_speedup_vs_loop']['fwd']:.1f},"
                     f" fwd+bwd x{row['torch_chunked_speedup_vs_loop']['fwd_bwd']:.1f}")
        log(f"linear_scan T={seqlen}: ours fwd {row['ours']['fwd']['time_ms']:.3f} ms, "
            f"loop {row['loop']['fwd']['time_ms']:.3f} ms (x{row['speedup_vs_loop']['fwd']:.1f});"
            f" fwd+bwd x{row['speedup_vs_loop']['fwd_bwd']:.1f}{extra}")
        rows.append(row)
        del a, b, grad, timed
    return rows


def bench_selective_scan(device, sizes, reps, budget_s, log, rounds=3):
    batch, dim, dstate = sizes["batch"], sizes["dim"], sizes["N"]
    rows = []
    for seqlen in SEQLENS:
        g = torch.Generator().manual_seed(seqlen)
        u = torch.randn(batch, dim, seqlen, generator=g).to(device)
        delta = (torch.rand(batch, dim, seqlen, generator=g) * 0.1).to(device)
        A = -(torch.rand(dim, dstate, generator=g) + 0.5).to(device)
        B = torch.randn(batch, dstate, seqlen, generator=g).to(device)
        C = torch.randn(batch, dstate, seqlen, generator=g).to(device)
        D = torch.randn(dim, generator=g).to(device)
        z = torch.randn(batch, dim, seqlen, generator=g).to(device)
        bias = torch.randn(dim, generator=g).to(device) * 0.1
        grad = torch.randn(batch, dim, seqlen, generator=g).to(device)
        el = u.element_size()
        io = batch * dim * seqlen * el
        bc = batch * dstate * seqlen * el
        bytes_fwd = 4 * io + 2 * bc  # u, delta, z in; out; B, C in
        bytes_bwd = bytes_fwd + 7 * io + 4 * bc  # + dout in, du/ddelta/dz out, dB/dC out
        row = {"T": seqlen}
        inputs = (u, delta, A, B, C, D, z, bias)
        timed = {}
        for name, fn in (("ours", selective_scan), ("loop", selective_scan_ref)):

            def make(fn=fn, inputs=inputs, grad=grad):
                leaves = [x.clone().requires_grad_() for x in inputs]

                def fwd():
                    with torch.no_grad():
                        return fn(*inputs, True)

                def fwd_bwd():
                    for x in leaves:
                        x.grad = None
                    _backward(fn(*leaves, True), grad)

                return fwd, fwd_bwd

            timed[name] = make
        row.update(measure(timed, bytes_fwd, bytes_bwd, device, reps, budget_s, rounds))
        row["speedup_vs_loop"] = _speedup(row, "ours")
        log(f"selective_scan L={seqlen}: ours fwd {row['ours']['fwd']['time_ms']:.3f} ms, "
            f"ref {row['loop']['fwd']['time_ms']:.3f} ms (x{row['speedup_vs_loop']['fwd']:.1f});"
            f" fwd+bwd x{row['speedup_vs_loop']['fwd_bwd']:.1f}")
        rows.append(row)
    return rows


def bench_ssd(device, sizes, reps, budget_s, log, rounds=3):
    batch, nheads, headdim = sizes["batch"], sizes["nheads"], sizes["headdim"]
    ngroups, dstate, chunk = sizes["ngroups"], sizes["dstate"], sizes["chunk_size"]
    rows = []
    for seqlen in SEQLENS:
        g = torch.Generator().manual_seed(seqlen)
        x = torch.randn(batch, seqlen, nheads, headdim, generator=g).to(device)
        dt = (torch.randn(batch, seqlen, nheads, generator=g) - 2.0).to(device)
        A = -(torch.rand(nheads, generator=g) + 0.5).to(device)
        B = torch.randn(batch, seqlen, ngroups, dstate, generator=g).to(device)
        C = torch.randn(batch, seqlen, ngroups, dstate, generator=g).to(device)
        D = torch.randn(nheads, generator=g).to(device)
        z = torch.randn(batch, seqlen, nheads, headdim, generator=g).to(device)
        bias = (torch.randn(nheads, generator=g) * 0.1).to(device)
        grad = torch.randn(batch, seqlen, nheads, headdim, generator=g).to(device)
        el = x.element_size()
        io = batch * seqlen * nheads * headdim * el
        dtb = batch * seqlen * nheads * el
        bc = batch * seqlen * ngroups * dstate * el
        bytes_fwd = 3 * io + dtb + 2 * bc  # x, z in; out; dt, B, C in
        bytes_bwd = bytes_fwd + 5 * io + 2 * dtb + 4 * bc  # + dout, re-reads, dx/dz/ddt/dB/dC
        row = {"T": seqlen}
        inputs = (x, dt, A, B, C, D, z, bias)
        timed = {}
        for name, fn in (("ours", lambda *a, **k: ssd_chunk_scan(*a[:5], chunk, *a[5:], **k)),
                         ("loop", ssd_chunk_scan_ref)):

            def make(fn=fn, inputs=inputs, grad=grad):
                leaves = [t.clone().requires_grad_() for t in inputs]

                def fwd():
                    with torch.no_grad():
                        return fn(*inputs, dt_softplus=True)

                def fwd_bwd():
                    for t in leaves:
                        t.grad = None
                    _backward(fn(*leaves, dt_softplus=True), grad)

                return fwd, fwd_bwd

            timed[name] = make
        row.update(measure(timed, bytes_fwd, bytes_bwd, device, reps, budget_s, rounds))
        row["speedup_vs_loop"] = _speedup(row, "ours")
        log(f"ssd_chunk_scan T={seqlen}: ours fwd {row['ours']['fwd']['time_ms']:.3f} ms, "
            f"ref {row['loop']['fwd']['time_ms']:.3f} ms (x{row['speedup_vs_loop']['fwd']:.1f});"
            f" fwd+bwd x{row['speedup_vs_loop']['fwd_bwd']:.1f}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ plot


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in ("linear_scan", "selective_scan", "ssd_chunk_scan") if op in results]
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 4 * len(ops)), squeeze=False)
    for r, op in enumerate(ops):
        rows = results[op]["rows"]
        seqlens = [row["T"] for row in rows]
        names = [k for k, v in rows[0].items()
                 if isinstance(v, dict) and isinstance(v.get("fwd"), dict)]
        for c, mode in enumerate(("fwd", "fwd_bwd")):
            ax = axes[r][c]
            for name in names:
                ax.plot(seqlens, [row[name][mode]["time_ms"] for row in rows], marker="o",
                        label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T (sequence length)")
            ax.set_ylabel("time per call (ms)")
            ax.set_title(f"{op} {mode.replace('_', '+')} ({results[op]['sizes_text']})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    m = results["machine"]
    dev = m["gpu"] or f"{m['cpu']} ({m['torch_threads']} thread(s))"
    fig.suptitle(f"kernels bench on {dev}; torch {m['torch']}; {m['date']}; commit {m['commit']}",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


#: the ops the benchmark times
OPS = ("linear_scan", "selective_scan", "ssd_chunk_scan")
#: each op's sizes per device type (all float32)
SIZES = {
    "cuda": {"linear_scan": {"B": 16, "D": 4096},
             "selective_scan": {"batch": 8, "dim": 1024, "N": 16},
             "ssd_chunk_scan": {"batch": 4, "nheads": 16, "headdim": 64, "ngroups": 1,
                                "dstate": 32, "chunk_size": 64}},
    "cpu": {"linear_scan": {"B": 4, "D": 256},
            "selective_scan": {"batch": 2, "dim": 64, "N": 16},
            "ssd_chunk_scan": {"batch": 2, "nheads": 4, "headdim": 16, "ngroups": 1,
                               "dstate": 16, "chunk_size": 64}},
}


def linear_scan_bytes(B: int, T: int, D: int, element: int = 4) -> tuple[int, int]:
    """The fewest bytes a linear_scan moves: forward (a, b in; h out) and forward+backward."""
    el = B * T * D * element
    return 3 * el, 8 * el


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's default, every core; the per-step "
                        "loop uses one either way)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions (fastest is reported)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds of timed repetitions per measurement at most")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds per size (the fastest round is reported)")
    p.add_argument("--out", default="results/kernels.json")
    p.add_argument("--png", default="results/kernels.png")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS),
                   help="ops to time; with a subset, the other ops' entries of an existing --out "
                        "are kept (each measured op records its own machine, commit and date)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]
    ls_sizes, ss_sizes, ssd_sizes = (dict(sizes[op]) for op in OPS)

    start = time.monotonic()

    def log(msg):  # with the seconds since the start: where a stopped run spent its time
        print(f"{msg} [{time.monotonic() - start:.1f} s]", flush=True)

    out = Path(args.out)
    kept = {}
    if set(args.ops) != set(OPS) and out.exists():
        old = json.loads(out.read_text())
        if old.get("device") == str(device):
            kept = {op: {"machine": old["machine"], **old[op]} for op in OPS
                    if op not in args.ops and op in old}
    results = {"machine": machine_info(device), "device": str(device), "dtype": "float32",
               "seqlens": list(SEQLENS),
               "timing": f"fastest call of {args.rounds} interleaved rounds (each: warm-up, "
                         f"then up to {args.reps} timed calls within {args.budget} s per "
                         "implementation)"}
    log(f"machine: {results['machine']}")
    copy_bw = copy_bandwidth(device)
    results["copy_gb_per_s"] = copy_bw
    if copy_bw:
        log(f"copy bandwidth {copy_bw:.0f} GB/s (device to device, read + write)")

    def write(done):
        """The JSON so far: a run stopped in a later op keeps the ops it finished."""
        for op in done:
            results[op]["machine"] = results["machine"]
        results.update(kept)
        results["min_speedup_T_ge_256"] = {
            op: _min_speedup(results[op]["rows"]) for op in ("linear_scan", "selective_scan")
            if op in results}
        results["ops_done"] = list(done)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")  # a stop mid-write leaves the last whole file
        part.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(part, out)

    benches = {"linear_scan": lambda: _bench_linear_scan(results, device, ls_sizes, args, log,
                                                         copy_bw),
               "selective_scan": lambda: _bench_selective_scan(results, device, ss_sizes, args,
                                                               log),
               "ssd_chunk_scan": lambda: _bench_ssd(results, device, ssd_sizes, args, log)}
    done = []
    for op in OPS:
        if op in args.ops:
            benches[op]()
            done.append(op)
            write(done)
    plot(results, Path(args.png))
    log(f"wrote {out} and {args.png}")
    return results


def _bench_linear_scan(results, device, ls_sizes, args, log, copy_bw):
    ls_rows = bench_linear_scan(device, ls_sizes, args.reps, args.budget, log, args.rounds)
    if copy_bw:
        for row in ls_rows:
            row["ours"]["fwd"]["fraction_of_copy_bw"] = row["ours"]["fwd"]["gb_per_s"] / copy_bw
    results["linear_scan"] = {
        "sizes": ls_sizes, "sizes_text": f"B={ls_sizes['B']}, D={ls_sizes['D']}, fp32",
        "layout": "[B, T, D]; accelerated_scan timed on [B, D, T] copies", "rows": ls_rows,
        "bytes_model": "fwd 3*B*T*D*4 (a, b in; h out); fwd+bwd 8*B*T*D*4",
        "baseline": "loop = kernels.linear_scan_ref (Python loop over T)",
        "ours": "kernels.linear_scan, backend auto (CUDA: Triton; CPU: "
                f"{results['machine']['cpu_linear_scan_backend']})",
    }


def _bench_selective_scan(results, device, ss_sizes, args, log):
    ss_rows = bench_selective_scan(device, ss_sizes, args.reps, args.budget, log, args.rounds)
    results["selective_scan"] = {
        "sizes": ss_sizes,
        "sizes_text": f"batch={ss_sizes['batch']}, dim={ss_sizes['dim']}, N={ss_sizes['N']}, fp32",
        "options": "D, z, delta_bias, delta_softplus=True; B, C [batch, N, L]",
        "rows": ss_rows,
        "bytes_model": "fwd: u, delta, z, out (4*b*d*L*4) + B, C (2*b*N*L*4); "
                       "fwd+bwd adds dout, du, ddelta, dz and re-reads (7*b*d*L*4 + 4*b*N*L*4)",
        "baseline": "loop = kernels.selective_scan_ref (Python loop over L)",
        "ours": "kernels.selective_scan, backend auto (CUDA: Triton; CPU: the PyTorch path, whose "
                f"inner scan is linear_scan's {results['machine']['cpu_linear_scan_backend']})",
    }


def _bench_ssd(results, device, ssd_sizes, args, log):
    ssd_rows = bench_ssd(device, ssd_sizes, args.reps, args.budget, log, args.rounds)
    results["ssd_chunk_scan"] = {
        "sizes": ssd_sizes,
        # the SSD paper's letters: batch, heads, headdim, dstate, chunk
        "sizes_text": f"B={ssd_sizes['batch']}, H={ssd_sizes['nheads']}, "
                      f"P={ssd_sizes['headdim']}, N={ssd_sizes['dstate']}, "
                      f"Q={ssd_sizes['chunk_size']}",  # fp32; longer overflows the title
        "options": "D [nheads], z, dt_bias, dt_softplus=True; B, C [batch, T, 1, dstate]",
        "rows": ssd_rows,
        "bytes_model": "fwd: x, z, out (3*b*T*h*p*4) + dt (b*T*h*4) + B, C (2*b*T*g*n*4); "
                       "fwd+bwd adds dout, dx, dz and re-reads (5*b*T*h*p*4 + 2*b*T*h*4 + "
                       "4*b*T*g*n*4)",
        "baseline": "loop = kernels.ssd_chunk_scan_ref (Python loop over T)",
        "ours": "kernels.ssd_chunk_scan, backend auto = the Triton forward on CUDA (backward: "
                "the chunked PyTorch form recomputed), the chunked PyTorch form on CPU",
        # kept beside the op: the top-level min_speedup_T_ge_256 covers the two scans above
        "min_speedup_T_ge_256": _min_speedup(ssd_rows),
    }


if __name__ == "__main__":
    main()
