"""Two data-parallel updates of a small DreamerV3 agent, for ``tests/test_ddp.py``.

    python tests/ddp_worker.py OUT single        one process, the whole batch
    torchrun --nproc_per_node=N tests/ddp_worker.py OUT ddp    rank r takes the r-th slice

Each writes its parameters and buffers after every update to ``OUT/<mode>-rank<r>-u<k>.pt``. The
categorical samples are replaced by their modes so that the update is a function of the batch
alone; the return normaliser updates at rate 1, so that its statistics are the batch's own
percentiles (a rank that took them over its slice alone would differ).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.ddp import World  # noqa: E402
from tests.test_dreamer_agent import TINY, make_agent, make_batch  # noqa: E402
from worldrl.dists import OneHot  # noqa: E402

OneHot.sample = OneHot.rsample = OneHot.mode  # deterministic: the update depends on the batch
SPACE = {"vector": ((5,), torch.float32)}
B, T, UPDATES = 4, 8, 2


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    world = World()
    if mode == "ddp":
        dist.init_process_group("gloo")
        world = World(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)
    cfg = {**TINY, "behavior": {**TINY["behavior"], "retnorm": {"rate": 1.0}}}
    agent = make_agent(space=SPACE, cfg=cfg)
    if world.parallel:
        agent.setup_distributed(world)
    per = B // world.size
    for k in range(UPDATES):
        batch = make_batch(space=SPACE, B=B, T=T, seed=k)
        batch = {key: v[world.rank * per:(world.rank + 1) * per] for key, v in batch.items()}
        agent.train_step(batch)
        state = {**dict(agent.named_parameters()), **dict(agent.named_buffers())}
        torch.save({n: t.detach().clone() for n, t in state.items()},
                   out / f"{mode}-rank{world.rank}-u{k}.pt")
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
