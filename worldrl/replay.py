"""Replay: TorchRL's ``ReplayBuffer`` over a memory-mapped storage in the run directory.

Rows follow DreamerV3's layout, one per observation: ``obs_t`` (``pixels``/``vector``/...), the
``action`` taken at ``obs_t`` (float; one-hot for discrete actions; zeros on a final row),
``reward`` received on arriving at ``obs_t`` (0 on ``is_first``), ``is_first``, ``is_last``,
``terminated`` (``obs_t`` is terminal), ``truncated`` and ``episode`` (an id). TorchRL
collectors emit transitions ``(obs_t, action_t, next: obs_{t+1}, reward, done)``;
:meth:`Replay.add` turns them into rows and adds the final observation of each episode as a row of
its own (``is_last``), so that the continue and reward heads see terminal observations.

Storage is time-major, ``[capacity / num_envs, num_envs]``: one stream per env copy, written in
lock-step. Sampling draws ``[batch_size, seq_len]`` windows of consecutive rows of one stream.

**Episode boundaries.** A window may span the end of one episode and the start of the next; every
episode start inside a window is marked ``is_first=True`` (the world model resets its state
there, as DreamerV3 does). A window never spans the FIFO's write position (it never joins the
newest rows to the oldest).

Only the sampled batch is read into memory; the buffer stays on disk (``LazyMemmapStorage``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, ReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import RoundRobinWriter

#: Observation keys copied from the collector into replay when present.
OBS_KEYS = ("pixels", "vector", "audio", "life_loss")
SAMPLERS = ("uniform",)


class SequenceSampler(Sampler):
    """Uniform ``[B, T]`` windows over a time-major ``[steps, streams]`` FIFO storage.

    Returns ``(time_index, stream_index)``, each ``[B * T]``. Windows never cross the write cursor.
    """

    def __init__(self, seq_len: int, generator: torch.Generator | None = None):
        super().__init__()
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.generator = generator or torch.Generator().manual_seed(0)
        self.cursor = 0  # next time row to be written (set by the Replay after each write)

    def window_starts(self, storage, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = len(storage)
        capacity = storage.max_size
        streams = storage._storage.shape[1]
        if steps < self.seq_len:
            raise RuntimeError(
                f"replay holds {steps} steps per stream, fewer than seq_len={self.seq_len}"
            )
        # age-ordered offset: 0 is the oldest row kept, steps - 1 the newest
        offset = torch.randint(0, steps - self.seq_len + 1, (batch_size,),
                               generator=self.generator)
        oldest = self.cursor % capacity if steps == capacity else 0
        start = (oldest + offset) % capacity
        stream = torch.randint(0, streams, (batch_size,), generator=self.generator)
        return start, stream

    def sample(self, storage, batch_size: int):
        if batch_size % self.seq_len:
            raise ValueError(f"batch size {batch_size} is not a multiple of seq_len {self.seq_len}")
        n = batch_size // self.seq_len
        start, stream = self.window_starts(storage, n)
        time = (start[:, None] + torch.arange(self.seq_len)) % storage.max_size
        return (time.reshape(-1), stream[:, None].expand(n, self.seq_len).reshape(-1)), {}

    def _empty(self):
        self.cursor = 0

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cursor = state_dict["cursor"]
        self.generator.set_state(state_dict["generator"])

    def dumps(self, path):  # pragma: no cover - Replay checkpoints through state_dict
        torch.save(self.state_dict(), Path(path) / "sampler.pt")

    def loads(self, path):  # pragma: no cover
        self.load_state_dict(torch.load(Path(path) / "sampler.pt"))


def _transitions_to_rows(
    batch: TensorDictBase, carry_reward: torch.Tensor, episode: torch.Tensor, num_envs: int
) -> list[TensorDict]:
    """Collector transitions ``[N, T]`` -> one TensorDict of rows per env (see module docstring).

    ``carry_reward[n]`` is the reward that arrived with env n's first observation of this batch;
    ``episode[n]`` its current episode count. Both are updated in place.
    """
    n_envs, steps = batch.shape
    nxt = batch["next"]
    keys = [k for k in OBS_KEYS if k in batch.keys()]
    done = nxt["done"].reshape(n_envs, steps)
    is_first = batch["is_first"].reshape(n_envs, steps)
    reward_next = nxt["reward"].reshape(n_envs, steps).float()
    action = batch["action"].float()
    out = []
    for n in range(n_envs):
        arrived = torch.cat([carry_reward[n : n + 1], reward_next[n, :-1]])
        arrived = torch.where(is_first[n], torch.zeros_like(arrived), arrived)
        ends_before = torch.cumsum(done[n].long(), 0) - done[n].long()
        ep = (episode[n] + ends_before) * num_envs + n
        zeros = torch.zeros(steps, dtype=torch.bool)
        first = TensorDict(
            {
                **{k: batch[n][k] for k in keys},
                "action": action[n],
                "reward": arrived,
                "is_first": is_first[n],
                "is_last": zeros,
                "terminated": zeros,
                "truncated": zeros,
                "episode": ep,
            },
            batch_size=[steps],
        )
        last = TensorDict(
            {
                **{k: nxt[n][k] for k in keys},
                "action": torch.zeros_like(action[n]),
                "reward": reward_next[n],
                "is_first": zeros,
                "is_last": torch.ones(steps, dtype=torch.bool),
                "terminated": nxt["terminated"][n].reshape(steps),
                "truncated": nxt["truncated"][n].reshape(steps) & ~nxt["terminated"][n].reshape(
                    steps),
                "episode": ep,
            },
            batch_size=[steps],
        )
        keep = torch.stack([torch.ones(steps, dtype=torch.bool), done[n]], dim=1)
        rows = torch.stack([first, last], dim=1)[keep]
        out.append(rows)
        carry_reward[n] = 0.0 if done[n, -1] else reward_next[n, -1]
        episode[n] += done[n].sum()
    return out


class Replay:
    """The replay of one run: add collector batches, sample ``[B, T]`` TensorDicts, checkpoint.

    Args:
        directory: where the memory-mapped storage lives (``RUN_DIR/replay``).
        capacity: rows kept in total across env copies (FIFO).
        num_envs: env copies feeding the buffer (one stream each).
        batch_size, seq_len: the sampled shape ``[batch_size, seq_len]``.
        sampler: ``uniform`` (DreamerV3).
        seed: seeds the sampler's generator.
    """

    def __init__(self, directory: str | Path, capacity: int, num_envs: int, batch_size: int,
                 seq_len: int, sampler: str = "uniform", seed: int = 0):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown replay sampler {sampler!r}; choose one of: "
                             f"{', '.join(SAMPLERS)}")
        steps = capacity // num_envs
        if steps < seq_len:
            raise ValueError(f"replay capacity {capacity} holds {steps} steps per env, fewer "
                             f"than seq_len={seq_len}")
        self.directory = Path(directory)
        self.num_envs = num_envs
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.sampler = SequenceSampler(seq_len, torch.Generator().manual_seed(seed))
        self.storage = LazyMemmapStorage(steps, scratch_dir=self.directory, existsok=True)
        self.buffer = ReplayBuffer(
            storage=self.storage, sampler=self.sampler, writer=RoundRobinWriter(),
            batch_size=batch_size * seq_len,
        )
        self._pending: list[TensorDict | None] = [None] * num_envs
        self._carry_reward = torch.zeros(num_envs)
        self._episode = torch.zeros(num_envs, dtype=torch.long)
        self.rows_added = 0

    def __len__(self) -> int:
        """Rows stored (all streams)."""
        return len(self.storage) * self.num_envs

    def steps_per_stream(self) -> int:
        return len(self.storage)

    def add(self, batch: TensorDictBase) -> int:
        """Add a collector batch (``[T]`` or ``[num_envs, T]``); returns rows written to disk."""
        if batch.ndim == 1:
            batch = batch.unsqueeze(0)
        if batch.shape[0] != self.num_envs:
            raise ValueError(f"batch has {batch.shape[0]} env streams, replay expects "
                             f"{self.num_envs}")
        rows = _transitions_to_rows(batch, self._carry_reward, self._episode, self.num_envs)
        for n, r in enumerate(rows):
            self._pending[n] = r if self._pending[n] is None else torch.cat([self._pending[n], r])
        k = min(len(p) for p in self._pending)
        if k == 0:
            return 0
        block = torch.stack([p[:k] for p in self._pending], dim=1)  # [k, num_envs]
        self._pending = [p[k:] for p in self._pending]
        self.buffer.extend(block)
        self.sampler.cursor = self.buffer.writer._cursor
        self.rows_added += k * self.num_envs
        return k * self.num_envs

    def ready(self) -> bool:
        return len(self.storage) >= self.seq_len

    def sample(self) -> TensorDict:
        """A ``[batch_size, seq_len]`` TensorDict (in memory, not memory-mapped)."""
        data = self.buffer.sample()
        return data.reshape(self.batch_size, self.seq_len).clone()

    def state_dict(self) -> dict[str, Any]:
        """Counters and cursors (the rows themselves stay on disk)."""
        return {
            "len": len(self.storage),
            "writer": self.buffer.writer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "pending": [p.clone() if p is not None else None for p in self._pending],
            "carry_reward": self._carry_reward.clone(),
            "episode": self._episode.clone(),
            "rows_added": self.rows_added,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reopen the rows on disk and restore counters saved by :meth:`state_dict`."""
        if state["len"] > 0:
            meta = self.directory / "meta.json"
            if not meta.exists():
                raise FileNotFoundError(
                    f"checkpoint expects {state['len']} replay steps in {self.directory}, "
                    "but no replay storage is there"
                )
            data = TensorDict.load_memmap(self.directory)
            if data.shape[0] != self.storage.max_size or data.shape[1] != self.num_envs:
                raise ValueError(f"replay on disk has shape {tuple(data.shape)}, expected "
                                 f"({self.storage.max_size}, {self.num_envs})")
            self.storage._storage = data
            self.storage.initialized = True
        self.storage._len = state["len"]
        self.buffer.writer.load_state_dict(state["writer"])
        self.sampler.load_state_dict(state["sampler"])
        self._pending = list(state["pending"])
        self._carry_reward = state["carry_reward"].clone()
        self._episode = state["episode"].clone()
        self.rows_added = state["rows_added"]
