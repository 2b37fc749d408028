"""benchmarks.same_numbers: the before/after comparison finds what changed."""

import copy
import json
from pathlib import Path

import pytest

from benchmarks.same_numbers import RUNS, _diff

RECORDS = Path(__file__).resolve().parents[1] / "results" / "behaviour"


@pytest.fixture(scope="module")
def record():
    return json.loads((RECORDS / "gym-rssm.json").read_text())


def test_every_run_has_a_record_and_a_resumed_record():
    for name in RUNS:
        for kept in (name, f"{name}-resumed"):
            rec = json.loads((RECORDS / f"{kept}.json").read_text())
            assert rec["metrics"] and rec["weights"] and rec["summary"]["updates"] == 40


def test_a_record_equals_itself(record):
    assert _diff(record, copy.deepcopy(record)) == (0.0, [])


def test_a_changed_loss_weight_or_row_shows(record):
    b = copy.deepcopy(record)
    row = next(r for r in b["metrics"] if "loss/dyn" in r)
    row["loss/dyn"] += 1e-5
    assert _diff(record, b)[0] == pytest.approx(1e-5, rel=1e-3)
    c = copy.deepcopy(record)
    name = next(iter(c["weights"]))
    c["weights"][name][0] += 3e-6 * max(1.0, abs(c["weights"][name][0]))
    assert _diff(record, c)[0] == pytest.approx(3e-6, rel=1e-3)
    d = copy.deepcopy(record)
    d["metrics"].pop()
    d["weights"]["renamed.weight"] = d["weights"].pop(name)
    d["summary"]["episodes"] += 1
    notes = []
    worst, problems = _diff(record, d, notes)
    assert any("metric rows" in p for p in problems) and any("episodes" in p for p in problems)
    assert any("renamed" in n for n in notes) and worst > 1e-3  # lined up by order: moved


def test_a_metric_removed_on_purpose_is_not_a_difference(record):
    b = copy.deepcopy(record)
    for row in b["metrics"]:
        row.pop("kl/rep", None)
    assert any("kl/rep" in row for row in record["metrics"])
    assert _diff(record, b)[1]  # a missing key shows
    assert _diff(record, b, dropped=("kl/rep",)) == (0.0, [])
