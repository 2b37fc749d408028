"""Replay: TorchRL's ``ReplayBuffer`` over a memory-mapped storage in the run directory.

Rows follow DreamerV3's layout, one per observation: ``obs_t`` (``pixels``/``vector``/...), the
``action`` taken at ``obs_t`` (float; one-hot for discrete actions; zeros on a final row),
``reward`` received on arriving at ``obs_t`` (0 on ``is_first``), ``is_first``, ``is_last``,
``terminated`` (``obs_t`` is terminal), ``truncated`` and ``episode`` (an id). TorchRL
collectors emit transitions ``(obs_t, action_t, next: obs_{t+1}, reward, done)``;
:meth:`Replay.add` turns them into rows and adds the final observation of each episode as a row of
its own (``is_last``), so that the continue and reward heads see terminal observations.

**Reward smoothing** (DreamSmooth, :mod:`worldrl.smoothing`; ``replay.smoothing``). Every
row also carries ``reward_raw``, the environment's reward; ``reward`` is the smoothed reward the
reward head learns (equal to ``reward_raw`` with ``none``). Gaussian and uniform smoothing see
``radius`` future rewards of the same episode, so :meth:`Replay.add` holds an env stream's newest
rows in its pending area until ``radius`` later rows of their episode (or its final row) have
arrived: at most ``radius`` rows per stream beyond the lock-step slack, whatever the episode
length. EMA smoothing is causal and writes at once.

Storage is time-major, ``[capacity / num_envs, num_envs]``: one stream per env copy, written in
lock-step. Sampling draws ``[batch_size, seq_len]`` windows of consecutive rows of one stream.

**Episode boundaries.** A window may span the end of one episode and the start of the next; every
episode start inside a window is marked ``is_first=True`` (the world model resets its state
there, as DreamerV3 does). A window never spans the FIFO's write position (it never joins the
newest rows to the oldest).

Only the sampled batch is read into memory; the buffer stays on disk (``LazyMemmapStorage``).

**Crash consistency.** Every time row carries ``serial`` (its index in the run's write order) and
``generation`` (the run's resume count when it was written). A checkpoint saves the cursors, but
a killed process may have gone on writing rows after it; on resume, :meth:`Replay.load_state_dict`
finds those rows (``serial`` at or past the checkpoint's) and treats them as a *hole* after the
write cursor: no window is drawn from them, and the hole shrinks as new rows overwrite it. A run
loses at most what the killed process overwrote; no window joins rows of two processes without an
``is_first`` at the seam. :meth:`Replay.sample` checks every batch against this.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, ReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import RoundRobinWriter

from worldrl.obs import RESERVED
from worldrl.smoothing import RewardSmoother, make_smoother


class SequenceSampler(Sampler):
    """Uniform ``[B, T]`` windows over a time-major ``[steps, streams]`` FIFO storage.

    Returns ``(time_index, stream_index)``, each ``[B * T]``. Windows never cross the write cursor.
    """

    @classmethod
    def build(cls, seq_len: int, steps: int, streams: int, generator: torch.Generator,
              knobs: Mapping[str, float]) -> SequenceSampler:
        """The sampler of a replay of ``steps`` rows per stream (``knobs``: ``replay.dfs``)."""
        return cls(seq_len, generator)

    def __init__(self, seq_len: int, generator: torch.Generator | None = None):
        super().__init__()
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.generator = generator or torch.Generator().manual_seed(0)
        self.cursor = 0  # next time row to be written (set by the Replay after each write)
        self.hole = 0  # rows after the cursor left by a killed process: never sampled

    def valid_steps(self, storage) -> int:
        """Time rows that may be sampled: the newest ``len(storage)``, less the hole."""
        return max(0, min(len(storage), storage.max_size - self.hole))

    def oldest(self, storage) -> int:
        """Storage index of the oldest time row that may be sampled."""
        return (self.cursor - self.valid_steps(storage)) % storage.max_size

    def window_starts(self, storage, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = self.valid_steps(storage)
        capacity = storage.max_size
        streams = storage._storage.shape[1]
        if steps < self.seq_len:
            raise RuntimeError(
                f"replay holds {steps} steps per stream, fewer than seq_len={self.seq_len}"
            )
        # age-ordered offset: 0 is the oldest row kept, steps - 1 the newest
        offset = torch.randint(0, steps - self.seq_len + 1, (batch_size,),
                               generator=self.generator)
        start = (self.oldest(storage) + offset) % capacity
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
        self.hole = 0

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "generator": self.generator.get_state(),
                "hole": self.hole}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cursor = state_dict["cursor"]
        self.generator.set_state(state_dict["generator"])
        self.hole = state_dict.get("hole", 0)

    def dumps(self, path):  # pragma: no cover - Replay checkpoints through state_dict
        torch.save(self.state_dict(), Path(path) / "sampler.pt")

    def loads(self, path):  # pragma: no cover
        self.load_state_dict(torch.load(Path(path) / "sampler.pt"))


class DFSSampler(SequenceSampler):
    """Drama's dynamic frequency-based sampling (DFS) of ``[B, T]`` windows, world-model weights.

    Per stored row (time, stream) a count of how often a window starting there was drawn for an
    update (int32, zeroed when the FIFO overwrites the row). Window starts are drawn with weights
    ``softmax(-count / tau)`` over the valid starts (``realwenlongwang/drama``,
    ``replay_buffer.py``), so the world model prefers windows it has trained on least: fresh
    data. Starts are drawn without replacement (with replacement only when a batch needs more
    starts than there are windows). Drama's default: ``tau = 10``.

    Drama also draws a *second* batch per update, of short windows to start imagination from,
    with weights ``softmax((wm - alpha im - beta relu(wm - im)) / imag_tau)`` over a second
    count. DreamerV3's loop, which ours is, imagines from every replayed state of the training
    batch instead, so there is no second batch to weight: that half of DFS is not here.

    ``with sampler.using("peek")``: same weights, no count changes (diagnostics such as
    open-loop videos must not look like training use).
    """

    MODES = ("record", "peek")
    #: The knobs a config may set (``replay.dfs``); their defaults are the constructor's.
    KNOBS = ("tau",)

    @classmethod
    def build(cls, seq_len: int, steps: int, streams: int, generator: torch.Generator,
              knobs: Mapping[str, float]) -> DFSSampler:
        return cls(seq_len, steps, streams, generator, **{k: float(v) for k, v in knobs.items()})

    def __init__(self, seq_len: int, steps: int, streams: int,
                 generator: torch.Generator | None = None, *, tau: float = 10.0):
        super().__init__(seq_len, generator)
        if not tau > 0:
            raise ValueError(f"replay.dfs.tau must be > 0, got {tau}")
        self.tau = tau
        self.wm_count = torch.zeros(steps, streams, dtype=torch.int32)
        self.mode = "record"

    @contextlib.contextmanager
    def using(self, mode: str):
        """``with sampler.using('peek'): replay.sample()``."""
        if mode not in self.MODES:
            raise ValueError(f"unknown DFS mode {mode!r}; choose one of: {', '.join(self.MODES)}")
        old, self.mode = self.mode, mode
        try:
            yield self
        finally:
            self.mode = old

    def valid_starts(self, storage) -> tuple[torch.Tensor, torch.Tensor]:
        """All window starts ``(time, stream)``, oldest first, that do not cross the cursor."""
        steps, capacity = self.valid_steps(storage), storage.max_size
        streams = self.wm_count.shape[1]
        if steps < self.seq_len:
            raise RuntimeError(
                f"replay holds {steps} steps per stream, fewer than seq_len={self.seq_len}")
        time = (self.oldest(storage) + torch.arange(steps - self.seq_len + 1)) % capacity
        return (time[:, None].expand(-1, streams).reshape(-1),
                torch.arange(streams).repeat(time.shape[0]))

    def weights(self, storage) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(time, stream, probability)`` of every valid window start."""
        time, stream = self.valid_starts(storage)
        score = -self.wm_count[time, stream].double() / self.tau
        return time, stream, torch.softmax(score, 0)

    def window_starts(self, storage, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        time, stream, probs = self.weights(storage)
        replace = batch_size > int((probs > 0).sum())
        pick = torch.multinomial(probs, batch_size, replacement=replace,
                                 generator=self.generator)
        start, stream = time[pick], stream[pick]
        if self.mode == "record":
            self.wm_count.index_put_((start, stream), torch.ones_like(start, dtype=torch.int32),
                                     accumulate=True)
        return start, stream

    def extend(self, index) -> None:
        """New rows were written at time rows ``index``: fresh data, zero counts."""
        self.wm_count[torch.as_tensor(index).reshape(-1)] = 0

    def add(self, index) -> None:
        self.extend(index)

    def _empty(self):
        super()._empty()
        self.wm_count.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wm_count": self.wm_count.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also reads checkpoints from before the imagination count went (it is ignored)."""
        super().load_state_dict(state_dict)
        count = state_dict["wm_count"]
        if tuple(count.shape) != tuple(self.wm_count.shape):
            raise ValueError(f"DFS wm_count in the checkpoint has shape {tuple(count.shape)}, "
                             f"expected {tuple(self.wm_count.shape)}")
        self.wm_count.copy_(count)


#: ``replay.sampler`` -> its class; a new sampler is a :class:`SequenceSampler` subclass with
#: ``build`` and an entry here
SAMPLERS = {"uniform": SequenceSampler, "dfs": DFSSampler}


def _transitions_to_rows(
    batch: TensorDictBase, carry_reward: torch.Tensor, episode: torch.Tensor, num_envs: int,
    streams: list[int] | None = None,
) -> list[TensorDict]:
    """Collector transitions ``[N, T]`` -> one TensorDict of rows per env (see module docstring).

    Row ``i`` of the batch is env stream ``streams[i]`` (default: ``i``). ``carry_reward[n]`` is
    the reward that arrived with stream n's first observation of this batch; ``episode[n]`` its
    current episode count. Both are updated in place.
    """
    n_envs, steps = batch.shape
    nxt = batch["next"]
    keys = [k for k in batch.keys() if k not in RESERVED]  # the observations (worldrl.obs)
    done = nxt["done"].reshape(n_envs, steps)
    is_first = batch["is_first"].reshape(n_envs, steps)
    reward_next = nxt["reward"].reshape(n_envs, steps).float()
    action = batch["action"].float()
    out = []
    for i, n in enumerate(range(n_envs) if streams is None else streams):
        arrived = torch.cat([carry_reward[n : n + 1], reward_next[i, :-1]])
        arrived = torch.where(is_first[i], torch.zeros_like(arrived), arrived)
        ends_before = torch.cumsum(done[i].long(), 0) - done[i].long()
        ep = (episode[n] + ends_before) * num_envs + n
        zeros = torch.zeros(steps, dtype=torch.bool)
        first = TensorDict(
            {
                **{k: batch[i][k] for k in keys},
                "action": action[i],
                "reward": arrived,
                "is_first": is_first[i],
                "is_last": zeros,
                "terminated": zeros,
                "truncated": zeros,
                "episode": ep,
            },
            batch_size=[steps],
        )
        last = TensorDict(
            {
                **{k: nxt[i][k] for k in keys},
                "action": torch.zeros_like(action[i]),
                "reward": reward_next[i],
                "is_first": zeros,
                "is_last": torch.ones(steps, dtype=torch.bool),
                "terminated": nxt["terminated"][i].reshape(steps),
                "truncated": nxt["truncated"][i].reshape(steps) & ~nxt["terminated"][i].reshape(
                    steps),
                "episode": ep,
            },
            batch_size=[steps],
        )
        keep = torch.stack([torch.ones(steps, dtype=torch.bool), done[i]], dim=1)
        rows = torch.stack([first, last], dim=1)[keep]
        out.append(rows)
        carry_reward[n] = 0.0 if done[i, -1] else reward_next[i, -1]
        episode[n] += done[i].sum()
    return out


class Replay:
    """The replay of one run: add collector batches, sample ``[B, T]`` TensorDicts, checkpoint.

    Args:
        directory: where the memory-mapped storage lives (``RUN_DIR/replay``).
        capacity: rows kept in total across env copies (FIFO).
        num_envs: env copies feeding the buffer (one stream each).
        batch_size, seq_len: the sampled shape ``[batch_size, seq_len]``.
        sampler: ``uniform`` (DreamerV3) or ``dfs`` (Drama's :class:`DFSSampler`).
        seed: seeds the sampler's generator.
        dfs: DFS knobs (``replay.dfs``: ``tau``; absent ones keep Drama's defaults, the
            constructor's); only with ``sampler='dfs'``.
        smoothing: DreamSmooth: the ``replay.smoothing`` config node (``mode``, ``sigma``,
            ``window``, ``alpha``, ``edge``: :class:`~worldrl.smoothing.RewardSmoother`'s
            arguments), a mode name or a :class:`~worldrl.smoothing.RewardSmoother`.
        generation: written into every row (the run's resume count); see "Crash consistency".
    """

    #: bookkeeping columns of every row (not part of the sampled batch)
    BOOKKEEPING = ("serial", "generation")

    def __init__(self, directory: str | Path, capacity: int, num_envs: int, batch_size: int,
                 seq_len: int, sampler: str = "uniform", seed: int = 0,
                 smoothing: Any = None, dfs: Mapping[str, float] | None = None,
                 generation: int = 0):
        self.check_args(capacity, num_envs, seq_len, sampler, dfs)
        steps = capacity // num_envs
        self.directory = Path(directory)
        self.num_envs = num_envs
        self.batch_size = batch_size
        self.seq_len = seq_len
        generator = torch.Generator().manual_seed(seed)
        self.sampler = SAMPLERS[sampler].build(seq_len, steps, num_envs, generator, dict(dfs or {}))
        self.storage = LazyMemmapStorage(steps, scratch_dir=self.directory, existsok=True)
        self.buffer = ReplayBuffer(
            storage=self.storage, sampler=self.sampler, writer=RoundRobinWriter(),
            batch_size=batch_size * seq_len,
        )
        self._pending: list[TensorDict | None] = [None] * num_envs
        self._carry_reward = torch.zeros(num_envs)
        self._episode = torch.zeros(num_envs, dtype=torch.long)
        self.rows_added = 0
        self._reserved = 0  # time rows with their disk blocks reserved
        self.generation = generation
        self.resume_serial = 0  # first serial this process writes
        self.smoother = (smoothing if isinstance(smoothing, RewardSmoother)
                         else make_smoother(smoothing, num_envs))

    @staticmethod
    def check_args(capacity: int, num_envs: int, seq_len: int, sampler: str = "uniform",
                   dfs: Mapping[str, float] | None = None) -> None:
        """The constructor's checks, without touching the disk (``worldrl train`` runs them
        before it makes the run directory)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown replay sampler {sampler!r}; choose one of: "
                             f"{', '.join(SAMPLERS)}")
        steps = capacity // max(num_envs, 1)
        if steps < seq_len:
            raise ValueError(f"replay capacity {capacity} holds {steps} steps per env "
                             f"({num_envs} env copies), fewer than seq_len={seq_len}")
        dfs = dict(dfs or {})
        unknown = sorted(set(dfs) - set(DFSSampler.KNOBS))
        if unknown:
            raise ValueError(f"unknown replay.dfs key(s) {unknown}; valid: "
                             f"{sorted(DFSSampler.KNOBS)}")
        if "tau" in dfs and not float(dfs["tau"]) > 0:
            raise ValueError(f"replay.dfs.tau must be > 0, got {dfs['tau']}")

    def __len__(self) -> int:
        """Rows that may be sampled (all streams)."""
        return self.steps_per_stream() * self.num_envs

    def steps_per_stream(self) -> int:
        return self.sampler.valid_steps(self.storage)

    @property
    def serial(self) -> int:
        """The next time row's serial: time rows written to disk so far, over all processes."""
        return self.rows_added // self.num_envs

    def add(self, batch: TensorDictBase, streams: Sequence[int] | None = None) -> int:
        """Add a collector batch (``[T]`` or ``[num_envs, T]``); returns rows written to disk.

        ``streams``: which env streams the batch's rows are (default: all, in order), for
        collector workers whose batches arrive one worker at a time. Rows are written once every
        stream has them (each stream's rows wait in memory until then)."""
        if batch.ndim == 1:
            batch = batch.unsqueeze(0)
        streams = list(range(self.num_envs)) if streams is None else [int(n) for n in streams]
        if batch.shape[0] != len(streams) or not set(streams) <= set(range(self.num_envs)):
            raise ValueError(f"batch has {batch.shape[0]} env streams {streams}, replay expects "
                             f"streams of 0..{self.num_envs - 1}")
        rows = _transitions_to_rows(batch, self._carry_reward, self._episode, self.num_envs,
                                    streams)
        for n, r in zip(streams, rows):
            r["reward_raw"] = r["reward"].clone()
            smoothed = self.smoother.push(n, r["reward"], r["is_first"], r["is_last"])
            self._pending[n] = r if self._pending[n] is None else torch.cat([self._pending[n], r])
            final = len(self._pending[n]) - self.smoother.pending(n)  # rows with a final reward
            self._pending[n]["reward"][final - len(smoothed):final] = smoothed
        k = min(len(p) - self.smoother.pending(n) if p is not None else 0
                for n, p in enumerate(self._pending))
        if k == 0:
            return 0
        block = torch.stack([p[:k] for p in self._pending], dim=1)  # [k, num_envs]
        self._pending = [p[k:] for p in self._pending]
        serial = torch.arange(self.serial, self.serial + k)
        block["serial"] = serial[:, None].expand(k, self.num_envs).clone()
        block["generation"] = torch.full((k, self.num_envs), self.generation, dtype=torch.int32)
        if not self.storage.initialized:
            self.storage._init(block[0])  # the memory-mapped files, before any row is written
        self.reserve(min(self.storage.max_size, len(self.storage) + k))
        # the bookkeeping columns first: a kill half-way through the write below leaves rows
        # that already carry their new serial, so a resume counts them in the hole
        at = (self.buffer.writer._cursor + torch.arange(k)) % self.storage.max_size
        for key in self.BOOKKEEPING:
            self.storage._storage[key][at] = block[key]
        self.buffer.extend(block)
        self.sampler.cursor = self.buffer.writer._cursor
        self.sampler.hole = max(0, self.sampler.hole - k)
        self.rows_added += k * self.num_envs
        return k * self.num_envs

    #: time rows reserved on disk at a time, ahead of the writes (see :meth:`reserve`)
    RESERVE_CHUNK = 4096

    def reserve(self, rows: int) -> None:
        """Give the memory-mapped files their disk blocks for the first ``rows`` time rows, in
        chunks of :attr:`RESERVE_CHUNK` ahead of the writes (``posix_fallocate``).

        The files are sparse: on a full disk, a write into an unbacked page of the mapping kills
        the process with SIGBUS, with no error to catch. Reserved ahead, a full disk fails here
        instead, as an ``OSError`` naming the file (ENOSPC), before any row is lost; a run never
        holds more than one chunk beyond what it has written.
        """
        if not self.storage.initialized or not hasattr(os, "posix_fallocate"):
            return
        capacity = self.storage.max_size
        if rows <= self._reserved:
            return
        target = min(capacity, -(-rows // self.RESERVE_CHUNK) * self.RESERVE_CHUNK)
        for tensor in self.storage._storage.values(include_nested=True, leaves_only=True):
            name = getattr(tensor, "filename", None)
            if not name:
                continue
            row = tensor.numel() // capacity * tensor.element_size()
            fd = os.open(name, os.O_RDWR)
            try:
                os.posix_fallocate(fd, self._reserved * row, (target - self._reserved) * row)
            except OSError as err:
                raise OSError(err.errno, f"{err.strerror} (reserving replay rows "
                              f"{self._reserved}-{target})", name) from None
            finally:
                os.close(fd)
        self._reserved = target

    def ready(self) -> bool:
        return self.steps_per_stream() >= self.seq_len

    def sample(self, record: bool = True) -> TensorDict:
        """A ``[batch_size, seq_len]`` TensorDict (in memory, not memory-mapped).

        ``record=False`` (diagnostics): a DFS sampler draws with its world-model weights but
        leaves its use counts alone."""
        if not record and isinstance(self.sampler, DFSSampler):
            with self.sampler.using("peek"):
                data = self.buffer.sample()
        else:
            data = self.buffer.sample()
        data = data.reshape(self.batch_size, self.seq_len).clone()
        self.check_windows(data)
        return data.exclude(*self.BOOKKEEPING)

    def check_windows(self, data: TensorDictBase) -> None:
        """Every window is consecutive rows of one write order, none left by a killed process
        after its checkpoint (``generation`` older than ours, ``serial`` at or past the
        checkpoint's). A failure is a bug in the replay, not in the data."""
        serial, gen = data["serial"], data["generation"]
        stale = (gen != self.generation) & (serial >= self.resume_serial)
        if bool(stale.any()):
            raise RuntimeError(
                f"replay sampled {int(stale.sum())} rows written after the checkpoint by a killed "
                f"process (serial >= {self.resume_serial}, generation < {self.generation})")
        if serial.shape[-1] > 1 and not bool((serial.diff(dim=-1) == 1).all()):
            raise RuntimeError("replay sampled a window whose rows are not consecutive writes")

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
            "smoothing": self.smoother.state_dict(),
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
            missing = [k for k in self.BOOKKEEPING if k not in data.keys()]
            if missing:
                raise ValueError(f"replay in {self.directory} was written by an older worldrl "
                                 f"(no {missing} columns) and cannot be resumed; start a new run")
            self.storage._storage = data
            self.storage.initialized = True
        self.storage._len = state["len"]
        self.buffer.writer.load_state_dict(state["writer"])
        self.sampler.load_state_dict(state["sampler"])
        self._pending = list(state["pending"])
        self._carry_reward = state["carry_reward"].clone()
        self._episode = state["episode"].clone()
        self.rows_added = state["rows_added"]
        if "smoothing" in state:
            self.smoother.load_state_dict(state["smoothing"])
        self.resume_serial = self.serial
        if state["len"] > 0 or self.directory.joinpath("meta.json").exists():
            self._find_hole()
        # rows written so far have their blocks; the next chunk is reserved before it is written
        self._reserved = len(self.storage) if self.storage.initialized else 0

    def _find_hole(self) -> None:
        """Rows at or past the checkpoint's serial were written by a process killed after it:
        widen the sampler's hole after the cursor to cover them."""
        if not self.storage.initialized:
            data = TensorDict.load_memmap(self.directory)
            if "serial" not in data.keys():
                return
            self.storage._storage = data
            self.storage.initialized = True
        capacity = self.storage.max_size
        serial = self.storage._storage["serial"][:, 0]
        stale = torch.nonzero(serial >= self.resume_serial).reshape(-1)
        if len(stale):
            reach = int(((stale - self.sampler.cursor) % capacity).max()) + 1
            self.sampler.hole = max(self.sampler.hole, reach)
