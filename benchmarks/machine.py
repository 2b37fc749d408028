"""Where and when a measurement was taken: machine, commit, date, versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: the commit of a copied tree whose own .git is older (the device machine's copy keeps the
#: session's first commit as HEAD): set by the run command, reported as "<sha> (given)"
COMMIT_ENV = "WORLDRL_COMMIT"


def commit() -> str:
    if os.environ.get(COMMIT_ENV):
        return f"{os.environ[COMMIT_ENV]} (given)"
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!results"],  # results written earlier in a chain of benchmarks
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def matmul_gflops(seconds: float = 0.2, n: int = 1024) -> float:
    """float32 GFLOP/s of an ``n x n`` matrix product at torch's current thread count, over
    about ``seconds``: the machine's speed when a measurement starts. A shared or throttled
    host can be several times slower on one day than another; results from two days compare
    only through it."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        a @ b
        done += 1
    return 2 * n ** 3 * done / elapsed / 1e9


def machine() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # other work on the machine when the measurement started (1, 5, 15 min averages)
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "matmul_gflops": round(matmul_gflops(), 1),  # the machine's speed at the start
    }
    try:
        import torchrl

        info["torchrl"] = torchrl.__version__
    except ImportError:
        pass
    return info


def speed_note(m: dict) -> str:
    """``"; float32 matmul N GFLOP/s at T threads at the start"`` from ``machine()``'s record
    (empty for a record made before it was measured)."""
    if m.get("matmul_gflops") is None:
        return ""
    return (f"; float32 matmul {m['matmul_gflops']:.0f} GFLOP/s at {m.get('torch_threads')} "
            "threads at the start")


def stamp(command: str) -> dict:
    return {
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }


def write_report(out: str | Path, report: dict, markdown: str) -> Path:
    """Write ``OUT.json`` (the report) and ``OUT.md`` (its table) side by side."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return out
