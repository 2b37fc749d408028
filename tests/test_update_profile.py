"""benchmarks.update_profile: what --ops counts, and which regions a compiled profile times."""

import pytest
import torch

from benchmarks.update_profile import count_ops, op_counts
from worldrl.optim import LaProp


def test_views_and_bare_allocations_are_not_counted():
    x = torch.randn(4, 3)
    counts = count_ops(lambda: (x.view(-1)[:5] + 1).sum() * torch.empty(1).fill_(2.0))
    assert dict(counts) == {"add": 1, "sum": 1, "fill_": 1, "mul": 1}


def test_the_optimiser_step_dispatches_the_same_operators_for_any_number_of_tensors():
    """LaProp's multi-tensor step: its operators do not grow with the number of parameter
    tensors (~25 per tensor before); the clip factors scale one flat copy of the gradients."""
    def ops(n):
        params = [torch.randn(3, 1 + i % 3, requires_grad=True) for i in range(n)]
        opt = LaProp([{"params": params, "name": "w"}], lr=1e-3, warmup=0, wd=0.1)
        for p in params:
            p.grad = torch.randn(p.shape) * 100.0  # clipped
        opt.step()  # the state exists from here on
        return sum(count_ops(opt.step).values())

    few, many = ops(4), ops(40)
    assert few == many and few < 60


def test_the_posterior_loop_dispatches_per_step_and_the_encoder_per_batch():
    short, long = op_counts("xs", False, batch=2, seq=8), op_counts("xs", False, batch=2, seq=16)
    assert short["parts"]["encoder"]["ops"] == long["parts"]["encoder"]["ops"]
    assert long["parts"]["backbone"]["ops"] > 1.8 * short["parts"]["backbone"]["ops"]
    assert long["train_step_ops"] > short["train_step_ops"]
    assert long["parts"]["optimiser"]["ops"] == short["parts"]["optimiser"]["ops"]


def test_ops_with_compile_is_refused_before_anything_runs(tmp_path, capsys):
    """--compile would not change what --ops counts (eager ATen operators): refused, nothing
    written, no traceback."""
    from benchmarks.update_profile import main

    with pytest.raises(SystemExit) as e:
        main(["--ops", "--compile", "--out", str(tmp_path / "ops")])
    assert e.value.code == 2
    assert "--compile" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_compiled_update_is_profiled_in_the_regions_it_compiles():
    """The compiled update runs the decoder and the heads inside one compiled region
    (``WorldModel.terms``); the profile's parts of a compiled update must time that region, not
    the eager decoder and heads (which no compiled update runs)."""
    from benchmarks.train_speed import build_update
    from benchmarks.update_profile import COMPILED_TERMS, parts

    agent, data, _ = build_update("xs", batch=2, seq=4)
    assert {"decoder", "heads"} <= set(parts(agent, data)) and COMPILED_TERMS not in parts(
        agent, data)
    calls = []
    terms = agent.wm.terms
    agent.wm.terms = lambda *a: calls.append(a) or terms(*a)  # the region a compile replaces
    agent.compiled = "default"  # what setup_update(compile=True) records, without compiling
    found = parts(agent, data)
    assert list(found) == ["encoder", "backbone", COMPILED_TERMS, "imagination",
                           "actor-critic", "optimiser"]
    calls.clear()  # parts() ran the whole loss once, for the optimiser's gradients
    found[COMPILED_TERMS]()
    assert len(calls) == 1
    post, prior, batch = calls[0]
    assert post["deter"].requires_grad and prior["logits"].requires_grad
    assert batch["pixels"].shape[:2] == (2, 4)
    assert all(p.grad is None for p in agent.parameters())  # the part cleans up after itself
