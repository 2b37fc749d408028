"""benchmarks.machine: the stamp every result file carries."""

from benchmarks.machine import machine, matmul_gflops, speed_note


def test_the_stamp_records_the_machines_matmul_rate_and_the_note_reads_it():
    import torch

    rate = matmul_gflops(seconds=0.05, n=256)
    assert 0.1 < rate < 1e5  # a real rate: a broken timer gives 0 or inf
    m = machine()
    assert m["matmul_gflops"] > 0 and m["torch_threads"] == torch.get_num_threads()
    note = speed_note(m)
    assert note.startswith("; float32 matmul ") and f"at {m['torch_threads']} threads" in note
    assert speed_note({"cpu": "x"}) == ""  # a record from before the rate was measured
