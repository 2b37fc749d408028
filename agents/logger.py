"""Metrics as they come: ``metrics.jsonl`` and CSVs always, TensorBoard when it is installed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


class Logger:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._csv: dict[str, tuple[Any, Any]] = {}
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                self._tb = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items()
                 if v is not None and math.isfinite(float(v))}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)

    def row(self, name: str, values: dict[str, Any]) -> None:
        """Append a row to ``NAME.csv`` (fixed columns: those of the first row)."""
        if name not in self._csv:
            path = self.run_dir / f"{name}.csv"
            new = not path.exists() or path.stat().st_size == 0
            f = open(path, "a", newline="", buffering=1)
            writer = csv.DictWriter(f, fieldnames=list(values), extrasaction="ignore")
            if new:
                writer.writeheader()
            self._csv[name] = (f, writer)
        self._csv[name][1].writerow(values)

    def flush(self) -> None:
        self._jsonl.flush()
        for f, _ in self._csv.values():
            f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        for f, _ in self._csv.values():
            f.close()
        if self._tb is not None:
            self._tb.close()
