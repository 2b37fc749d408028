"""The whole update as one CUDA graph (``train.cuda_graph``): what the CPU can check (no host
reads of device values in the update, which a capture cannot hold; the refusals), and on a GPU
(marked ``gpu``) that the captured update replays as fresh updates on fresh batches."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents.dreamer import GRAPH_WARMUP, check_cuda_graph
from tests.test_dreamer_agent import PIXVEC, TINY, make_agent, make_batch

torch.set_num_threads(1)

#: operators that read a device value on the host (``.item()``, ``bool(t)``, ``nonzero``...):
#: a CUDA-graph capture fails on them, and every eager GPU update waits on them
HOST_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item",
              "aten.is_nonzero", "aten.equal", "aten._unique", "aten.unique")


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(HOST_READS):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_detector_sees_a_host_read():
    with HostReads() as mode:
        x = torch.ones(3)
        float(x.sum())
        bool((x > 0).any())
    assert len(mode.seen) == 2


@pytest.mark.parametrize("discrete, space", [(True, PIXVEC),
                                             (False, {"vector": ((5,), torch.float32)})])
@pytest.mark.parametrize("amp", [False, True])
def test_the_update_reads_no_device_value_on_the_host(discrete, space, amp):
    agent = make_agent(discrete, space)
    agent.setup_update(amp=amp)
    agent.opt.capturable = True  # as cuda_graph sets it (device-side step counts)
    batch = make_batch(space, discrete=discrete)
    agent.train_step(batch)  # the first update creates the optimiser's state
    second = make_batch(space, discrete=discrete, seed=1)
    with HostReads() as mode:
        metrics = agent.train_step(second)
    assert mode.seen == []
    assert metrics["lr"].dim() == 0 and all(v.device.type == "cpu" for v in metrics.values())


def test_cuda_graph_is_refused_where_it_cannot_work():
    agent = make_agent()
    with pytest.raises(ValueError, match="needs a CUDA device; the agent is on 'cpu'"):
        agent.setup_update(cuda_graph=True)
    assert not agent.cuda_graph and not agent.opt.capturable
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="cannot hold compile mode 'reduce-overhead'"):
        check_cuda_graph(True, cuda, "reduce-overhead")
    with pytest.raises(ValueError, match="not for data-parallel"):
        check_cuda_graph(True, cuda, "default", world=object())
    check_cuda_graph(True, cuda, "default")
    check_cuda_graph(True, cuda, None)
    check_cuda_graph(False, torch.device("cpu"), "reduce-overhead")


# ------------------------------------------------------------------------------------ GPU
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
#: the tiny agent with a learning-rate warm-up longer than these tests: the rate moves each update
WARM = {**TINY, "optim": {"lr": 3e-3, "warmup": 100}}


def _buffers(agent):
    return {k: v.detach().clone() for k, v in agent.named_buffers()}


@pytest.mark.gpu
@needs_gpu
def test_gpu_the_update_never_waits_for_the_device():
    """What a capture cannot hold, seen by CUDA itself: a synchronising call raises."""
    agent = make_agent(cfg=WARM).cuda()
    agent.setup_update(amp=True)
    agent.opt.capturable = True
    agent.train_step(make_batch())  # the optimiser's state, cuDNN's choices
    batch = {k: v.cuda() for k, v in make_batch(seed=1).items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        agent.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("compile_", [False, True])
def test_gpu_graphed_updates_are_fresh_updates_on_fresh_batches(compile_):
    torch.manual_seed(0)
    agent = make_agent(cfg=WARM).cuda()
    agent.setup_update(amp=True, compile=compile_, cuda_graph=True)
    batches = [make_batch(seed=i) for i in range(GRAPH_WARMUP + 4)]
    rows, before = [], None
    for i, batch in enumerate(batches):
        weights = torch.cat([p.detach().flatten().float() for p in agent.wm.parameters()])
        if before is not None:
            assert not torch.equal(weights, before), f"update {i} changed no weight"
        before = weights
        rows.append({k: float(v) for k, v in agent.train_step(batch).items()})
    assert agent._graph is not None and agent._graph.graph is not None  # captured, replayed
    assert int(agent.updates) == len(batches)
    steps = {float(s["step"]) for s in agent.opt.state.values()}
    assert steps == {float(len(batches))}  # the device-side counts advance in every replay
    group = agent.opt.param_groups[0]
    for i, row in enumerate(rows, 1):  # the warm-up's rate, update by update, replays included
        assert row["lr"] == pytest.approx(agent.opt.current_lr(group, i), rel=1e-5), i
        assert all(v == v and abs(v) != float("inf") for v in row.values()), row
    assert rows[-1]["loss/total"] != rows[-2]["loss/total"]
    with pytest.raises(ValueError, match="another layout than the captured one"):
        agent.train_step(make_batch(B=2))


@pytest.mark.gpu
@needs_gpu
def test_gpu_graphed_update_matches_eager_with_the_same_random_numbers():
    """A replay computes what an eager update of the same weights, optimiser state, buffers,
    batch and generator state does (float32; a tolerance for kernel-order differences): the
    twin takes copies of the graphed agent's state after the capture, then both update from
    one generator state."""
    torch.manual_seed(0)
    graphed = make_agent(cfg=WARM).cuda()
    graphed.setup_update(cuda_graph=True)
    for i in range(GRAPH_WARMUP + 1):  # the eager warm-ups and the capturing update
        graphed.train_step(make_batch(seed=i))
    eager = make_agent(cfg=WARM).cuda()
    eager.load_state_dict(graphed.state_dict())
    eager.opt.capturable = True
    eager.load_optim_state_dict(copy.deepcopy(graphed.optim_state_dict()))
    assert all(a is not b for a, b in zip(graphed.opt.state.values(), eager.opt.state.values()))
    batch = make_batch(seed=99)
    state = torch.cuda.get_rng_state()
    got = graphed.train_step(batch)  # a replay
    torch.cuda.set_rng_state(state)
    want = eager.train_step(batch)
    for k in ("loss/total", "grad/world_model/grad_norm", "lr"):
        torch.testing.assert_close(got[k], want[k], rtol=2e-3, atol=1e-4)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
    for (k, a), b in zip(_buffers(graphed).items(), _buffers(eager).values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-5, msg=k)
    for a, b in zip(graphed.opt.state.values(), eager.opt.state.values()):
        for key in ("step", "nu", "mu"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-6)


@pytest.mark.gpu
@needs_gpu
def test_gpu_a_graphed_run_resumes_from_its_checkpoint(tmp_path):
    """Saved with device-side step counts, loaded onto the CPU as checkpoints are: the next
    updates (warm-up, capture, replay) run on the GPU with the counts where they were."""
    agent = make_agent(cfg=WARM).cuda()
    agent.setup_update(cuda_graph=True)
    for i in range(GRAPH_WARMUP + 2):
        agent.train_step(make_batch(seed=i))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": agent.state_dict(), "optim": agent.optim_state_dict()}, path)
    saved = torch.load(path, map_location="cpu")
    again = make_agent(cfg=WARM).cuda()
    again.load_state_dict(saved["model"])
    again.load_optim_state_dict(saved["optim"])
    again.setup_update(cuda_graph=True)
    for i in range(GRAPH_WARMUP + 2):
        metrics = again.train_step(make_batch(seed=10 + i))
    n = 2 * (GRAPH_WARMUP + 2)
    assert {float(s["step"]) for s in again.opt.state.values()} == {float(n)}
    assert all(s["step"].device.type == "cuda" for s in again.opt.state.values())
    assert float(metrics["lr"]) == pytest.approx(again.opt.current_lr(
        again.opt.param_groups[0], n), rel=1e-5)
