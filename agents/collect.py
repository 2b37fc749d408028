"""Collection: the TorchRL collector a run trains from, in this process or in worker processes.

``env.collectors=1`` (default) steps the envs in the learner's process between updates.
``env.collectors=N`` runs N collector workers (TorchRL's ``Collector(num_collectors=N)``,
asynchronous: a worker steps its own ``env.num_envs`` env copies while the learner trains, and the
learner takes whichever worker's batch is ready first). ``env.collector_backend``: ``process``
(local processes) or ``ray`` (TorchRL's Ray backend; a Ray cluster, or a local one).

- Each worker's env copies keep their own recurrent carry in the tensordict (the primer, reset
  where ``is_first`` is set), as in one process.
- A worker's batch is tagged with its env streams (:class:`StreamIndex`), so replay keeps one
  stream per env copy over all workers: ``env.num_envs x env.collectors`` streams.
- The workers' policy copies follow the learner's weights through TorchRL's weight updater
  (``collector.update_policy_weights_()``) after each round of updates, and its acting mode
  (random during prefill, then sampling) travels with them as a buffer. A batch may therefore
  mix weights: the steps a worker took before the update it has not yet seen, at most one
  batch (``env.num_envs x train.steps_per_batch`` steps per worker) behind.
- Runs with several workers are not bit-reproducible (which worker's batch arrives first
  depends on timing); with one they are.
"""

from __future__ import annotations

from functools import partial

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.data import Unbounded
from torchrl.envs import Transform

BACKENDS = ("process", "ray")


class StreamIndex(Transform):
    """Writes ``stream``: each env copy's index among all workers' copies (``first + i``)."""

    def __init__(self, first: int):
        super().__init__(in_keys=[], out_keys=["stream"])
        self.first = first

    def _index(self, td):
        n = td.batch_size.numel()
        return torch.arange(self.first, self.first + n).reshape(td.batch_size)

    def _call(self, next_td):
        next_td.set("stream", self._index(next_td))
        return next_td

    def _reset(self, tensordict, tensordict_reset):
        tensordict_reset.set("stream", self._index(tensordict_reset))
        return tensordict_reset

    def transform_observation_spec(self, observation_spec):
        observation_spec["stream"] = Unbounded(shape=observation_spec.shape, dtype=torch.int64,
                                               device=observation_spec.device)
        return observation_spec


def worker_env(env_cfg: dict, seed: int, first: int, primer):
    """One worker's envs: ``env.num_envs`` copies seeded ``seed + i``, the carry primer, the
    stream tags ``first + i``."""
    from agents.train import build_env

    env = build_env(OmegaConf.create(env_cfg), seed=None)
    env.set_seed(seed)
    env.append_transform(primer)
    env.append_transform(StreamIndex(first))
    return env


def check(env_cfg: DictConfig) -> None:
    """The backend (and Ray when it is asked for); the config loader checks the type and
    ``train.MINIMUM`` the range of ``env.collectors``."""
    n, backend = env_cfg.collectors, env_cfg.collector_backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown env.collector_backend {backend!r}; choose one of: "
                         f"{', '.join(BACKENDS)}")
    if n > 1 and backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ImportError("env.collector_backend=ray needs Ray: pip install 'worldrl[ray]'")


def make_collector(env, policy, cfg: DictConfig, seed: int, primer):
    """The run's collector: ``env`` itself when ``env.collectors`` is 1, else workers that
    build their own envs (``env`` then only gave the specs and is closed)."""
    from torchrl.collectors import Collector

    per_batch = cfg.env.num_envs * cfg.train.steps_per_batch
    workers = cfg.env.collectors
    if workers == 1:
        return Collector(env, policy, frames_per_batch=per_batch, total_frames=-1,
                         auto_register_policy_transforms=False)
    env.close()
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    makers = [partial(worker_env, env_cfg, seed + k * cfg.env.num_envs, k * cfg.env.num_envs,
                      primer) for k in range(workers)]
    backend = cfg.env.collector_backend
    if backend == "process":
        return Collector(makers, policy, num_collectors=workers, backend=backend, sync=False,
                         frames_per_batch=per_batch, total_frames=-1,
                         auto_register_policy_transforms=False)
    # TorchRL's Ray collector has no endless mode (-1 collects nothing) and wants the weights
    # sent once before it starts. Ray joins the cluster at RAY_ADDRESS, or starts a local one;
    # the workers' output stays in Ray's logs (their log prefix is the collector's long repr)
    from torchrl.collectors.distributed.ray import DEFAULT_RAY_INIT_CONFIG

    init = {**DEFAULT_RAY_INIT_CONFIG, "log_to_driver": False}
    collector = Collector(makers, policy, num_collectors=workers, backend=backend, sync=False,
                          frames_per_batch=per_batch, total_frames=2**62,
                          backend_options={"ray_init_config": init})
    collector.update_policy_weights_(policy)
    return collector


def streams_of(batch) -> list[int] | None:
    """The env streams of a worker's batch ``[num_envs, T]`` or ``[T]`` (None: all, from one
    process)."""
    if "stream" not in batch.keys():
        return None
    stream = batch["stream"].reshape(batch.shape + (-1,))[..., 0]  # [num_envs, T] or [T]
    return (stream[:1] if batch.ndim == 1 else stream[:, 0]).tolist()
