"""The data-parallel learner: one agent trained by N processes (``train.ddp=true`` under torchrun).

    torchrun --nproc_per_node=N -m agents.cli train train.ddp=true ...

Every rank holds the whole agent, its own envs (seeds offset per rank) and its own replay shard
(``RUN_DIR/replay`` for rank 0, ``RUN_DIR/replay-rankR`` for the others). The ranks move in
lockstep, one collector batch per iteration each, so that the run's env step counts all ranks'
steps and every rank owes the same updates; an update is one ``[B, T]`` batch per rank, so the
effective batch is ``N x B`` and the train ratio counts it. Before LaProp's step the gradients are
averaged over the ranks (one flat all-reduce), and the return normaliser's percentiles are taken
over all ranks' returns (:class:`worldrl.behavior.Normalize` gathers them): after an update every
rank holds the same parameters, equal to one process's update on the concatenated batch.

Rank 0 writes the config, logs, evaluations, videos and the checkpoint; the checkpoint also holds
each other rank's replay position and RNG state, so that the same torchrun command resumes. The
ranks agree once per iteration on finished episodes (rank 0 logs all of them) and on a stop
request (a SIGTERM to any rank checkpoints and stops all). Backends: NCCL on GPUs (each rank on
``cuda:LOCAL_RANK``), gloo on CPUs. Several nodes need ``run_dir`` on a shared file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig

#: the seed offset between ranks (envs, replay sampling, the learner's noise)
RANK_SEED = 100_000


def launched_world() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 0 when not under torchrun)."""
    try:
        return int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ else 0
    except (KeyError, ValueError):
        return 0


def check(cfg: DictConfig) -> None:
    """``train.ddp`` against the launch, before anything touches the disk."""
    ddp = cfg.train.get("ddp", False)
    if not isinstance(ddp, bool):
        raise ValueError(f"train.ddp must be true or false, got {ddp!r}")
    world = launched_world()
    if ddp and not world:
        raise ValueError("train.ddp=true needs a torchrun launch (RANK and WORLD_SIZE are not "
                         "set): torchrun --nproc_per_node=N -m agents.cli train train.ddp=true ...")
    if not ddp and world > 1:
        raise ValueError(f"this process is one of {world} that torchrun started, but "
                         "train.ddp is false: every process would train its own copy in the same "
                         "run_dir. Add train.ddp=true, or run without torchrun")
    if ddp and cfg.agent.name == "random":
        raise ValueError("train.ddp=true trains an agent with updates; agent=random has none")


@dataclass
class World:
    """This process's place among the ranks (one rank, no group, when not data-parallel)."""

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.group is not None

    # ------------------------------------------------------------------ agreement between ranks
    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
        if not self.parallel:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def from_main(self, fn) -> Any:
        """``fn()`` run on rank 0 and its result given to every rank; an exception raised there
        is raised on every rank (no rank is left waiting)."""
        if not self.parallel:
            return fn()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # re-raised below, on every rank
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0, group=self.group)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank passes the same keys)."""
        if not self.parallel or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend(self.group) == "nccl":
            t = t.cuda()
        dist.all_reduce(t, group=self.group)
        return dict(zip(keys, (t / self.size).tolist()))

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if not self.parallel:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0, group=self.group)

    def close(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()


def init(cfg: DictConfig, device: torch.device) -> tuple[World, torch.device]:
    """Join the ranks when ``train.ddp`` (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on
    the CPU); the world and this rank's device."""
    if not cfg.train.get("ddp", False):
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dist.group.WORLD), device


def all_reduce_grads(params: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of ``params`` over the ranks, in one flat all-reduce (a missing
    gradient counts as zeros on that rank)."""
    if not world.parallel:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=world.group)
    flat.div_(world.size)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
