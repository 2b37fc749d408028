"""benchmarks.train_speed's variants: what each flag asks to measure (no timing here)."""

import pytest

from benchmarks.train_speed import main, parser, variants


@pytest.mark.parametrize("argv, expected", [
    ([], [(False, False)]),
    (["--amp"], [(False, False), (False, True)]),
    (["--compile"], [(False, False), (True, False)]),
    (["--amp", "--compile", "default", "reduce-overhead"],
     [(False, False), (False, True), (True, False), (True, True),
      ("reduce-overhead", False), ("reduce-overhead", True)]),
    (["--no-eager", "--compile", "reduce-overhead"], [("reduce-overhead", False)]),
    (["--amp", "--no-eager", "--compile"], [(True, False), (True, True)]),
    (["--amp-only", "--no-eager", "--compile", "reduce-overhead"], [("reduce-overhead", True)]),
    (["--amp-only"], [(False, True)]),
])
def test_variants(argv, expected):
    assert variants(parser().parse_args(argv)) == expected


def test_no_eager_without_compile_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--no-eager"])
    assert "--no-eager needs --compile" in capsys.readouterr().err


def test_cuda_graph_is_refused_on_the_cpu_and_with_reduce_overhead(capsys):
    with pytest.raises(SystemExit):
        main(["--cuda-graph"])
    assert "needs a CUDA device; the agent is on 'cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--cuda-graph", "--device", "cuda", "--no-eager", "--compile", "reduce-overhead"])
    assert "cannot hold compile mode 'reduce-overhead'" in capsys.readouterr().err


def test_profile_table_of_a_tiny_update(monkeypatch):
    """--profile's markdown on the CPU: the per-update wall time and the host operators."""
    import torch

    import benchmarks.train_speed as ts
    from tests.test_dreamer_agent import make_agent, make_batch

    def tiny(size, device, **kw):
        agent = make_agent()
        batch = make_batch()
        return agent, batch, lambda: agent.train_step(batch)

    monkeypatch.setattr(ts, "build_update", tiny)
    md = ts.profile_update("tiny", torch.device("cpu"), 3, 8, steps=2, amp=False,
                           compile_=False, warmup=1)
    head, rest = md.split("\n", 1)
    assert head == "## size tiny, bf16 False, compile False, cpu"
    assert "2 profiled updates after 1 warm-up" in rest and "ms** per update" in rest
    assert "Device time" not in rest  # no device kernels on the CPU
    rows = [line for line in rest.splitlines() if line.startswith("| `aten::")]
    assert rows and all(int(r.split("|")[2]) >= 1 for r in rows)
