"""Metrics as they come: ``metrics.jsonl`` and CSVs always, TensorBoard when it is installed.

A run that resumes from a checkpoint at env step ``S`` (or starts afresh, ``S = 0``) first cuts
every log back to its rows at steps ``<= S`` (the rows a killed process wrote after its last
checkpoint, and a partial last line, are dropped; the file is rewritten atomically), and
TensorBoard purges its events after ``S``: the logs read as if the kill never happened.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

#: the CSV logs a run writes, each with a ``step`` column
CSV_LOGS = ("episodes", "eval")


@contextlib.contextmanager
def _naming(path: Path):
    """A failed write (disk full, read-only) becomes one line naming the log file."""
    try:
        yield
    except OSError as err:
        from agents.run_dir import storage_error

        raise storage_error(path, err) from None


def complete_lines(path: Path) -> list[str]:
    """The lines of a log file, without a last line that lacks its newline (a process killed
    while writing it); ``[]`` for a missing file. Every reader of the logs goes through this."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    return lines if text.endswith("\n") else lines[:-1]


def read_csv(path: Path) -> list[dict[str, str]]:
    """The complete rows of a log CSV (header first), as text."""
    return list(csv.DictReader(complete_lines(path)))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl``."""
    return [json.loads(line) for line in complete_lines(path) if line.strip()]


def _rewrite(path: Path, text: str) -> None:
    from agents.run_dir import write_atomic

    write_atomic(path, lambda tmp: tmp.write_text(text))


def cut_jsonl(path: Path, step: int) -> int:
    """Keep the complete rows of ``path`` with ``step <= step``; returns the rows dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in complete_lines(path):
        try:
            row = json.loads(line)
            if isinstance(row, dict) and float(row["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(kept) < len(lines):
        _rewrite(path, "".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


def cut_csv(path: Path, step: int) -> int:
    """Keep the header and the complete rows with ``step <= step``; returns the rows dropped
    (a file without a complete header with a ``step`` column is emptied)."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    complete = complete_lines(path)
    header = next(csv.reader(complete[:1]), [])
    if "step" not in header:
        if lines:
            _rewrite(path, "")
        return len(lines)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    kept = 0
    for row in csv.reader(complete[1:]):
        try:
            if len(row) == len(header) and float(row[header.index("step")]) <= step:
                writer.writerow(row)
                kept += 1
        except ValueError:
            pass
    dropped = len(lines) - 1 - kept
    if dropped:
        _rewrite(path, out.getvalue())
    return dropped


class Logger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0):
        self.run_dir = Path(run_dir)
        cut_jsonl(self.run_dir / "metrics.jsonl", start_step)
        for name in CSV_LOGS:
            cut_csv(self.run_dir / f"{name}.csv", start_step)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._csv: dict[str, tuple[Any, Any]] = {}
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # events after the checkpoint's step (a killed process's) are purged
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1)
            except ImportError:
                self._tb = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items()
                 if v is not None and math.isfinite(float(v))}
        with _naming(self.run_dir / "metrics.jsonl"):
            self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            with _naming(self.run_dir / "tb"):
                for k, v in clean.items():
                    self._tb.add_scalar(k, v, step)

    def row(self, name: str, values: dict[str, Any]) -> None:
        """Append a row to ``NAME.csv`` (fixed columns: those of the first row)."""
        path = self.run_dir / f"{name}.csv"
        with _naming(path):
            if name not in self._csv:
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
