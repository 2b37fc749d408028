"""``worldrl plot RUN_DIR``: the learning curve (training episodes and evaluations) as a PNG."""

from __future__ import annotations

from pathlib import Path

from agents.logger import read_csv


def _read(path: Path) -> list[dict[str, float]]:
    """The rows of a log CSV as numbers. A partial last row (a process killed mid-write) is
    skipped; a malformed row elsewhere is an error naming the file and line."""
    rows = read_csv(path)
    out = []
    for i, row in enumerate(rows):
        try:
            if None in row or any(v is None or v == "" for v in row.values()):
                raise ValueError("missing columns")
            out.append({k: float(v) for k, v in row.items()})
        except ValueError as err:
            if i == len(rows) - 1:
                break  # cut short by a kill; the next resume drops it from the file too
            raise ValueError(f"{path}, line {i + 2}: not a row of numbers ({err}): "
                             f"{dict(row)}") from None
    return out


def plot_run(run_dir: Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    episodes = _read(run_dir / "episodes.csv")
    evals = _read(run_dir / "eval.csv")
    if not episodes and not evals:
        raise FileNotFoundError(f"{run_dir} has no episodes.csv or eval.csv to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    if episodes:
        x = np.array([r["step"] for r in episodes])
        y = np.array([r["return"] for r in episodes])
        ax.plot(x, y, ".", alpha=0.25, color="tab:blue", label="train episodes")
        k = max(1, len(y) // 20)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1 :], smooth, color="tab:blue", label=f"train (mean of {k})")
    if evals:
        x = np.array([r["step"] for r in evals])
        m = np.array([r["return_mean"] for r in evals])
        s = np.array([r["return_std"] for r in evals])
        ax.plot(x, m, "o-", color="tab:orange", label="eval")
        ax.fill_between(x, m - s, m + s, color="tab:orange", alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(run_dir.name)
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(out) if out else run_dir / "curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
