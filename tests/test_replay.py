"""Replay: DreamerV3 row layout, [B, T] windows, episode starts, FIFO, bounded memory, resume."""

import os

import pytest
import torch
from tensordict import TensorDict
from tensordict.memmap import MemoryMappedTensor

from tests.helpers import collect
from worldrl.replay import Replay


def transitions(obs, next_obs, reward, done, terminated, is_first):
    """A hand-made collector batch [1, T] with vector observations."""
    steps = len(obs)
    b = lambda x: torch.tensor(x).reshape(1, steps, 1)  # noqa: E731
    v = lambda x: torch.tensor(x, dtype=torch.float32).reshape(1, steps, 1)  # noqa: E731
    return TensorDict({
        "vector": v(obs), "is_first": b(is_first), "action": torch.ones(1, steps, 2),
        "next": {"vector": v(next_obs), "reward": v(reward), "done": b(done),
                 "terminated": b(terminated), "truncated": b(done) & ~b(terminated)},
    }, batch_size=[1, steps])


def test_rows_follow_dreamer_layout(tmp_path):
    # episode A: obs 0 -> 1 -> 2 (terminal, reward 5); episode B: obs 10 -> 11 (not yet done)
    batch = transitions(
        obs=[0, 1, 10], next_obs=[1, 2, 11], reward=[1, 5, 7], done=[False, True, False],
        terminated=[False, True, False], is_first=[True, False, True],
    )
    rp = Replay(tmp_path, 100, 1, batch_size=1, seq_len=4)
    assert rp.add(batch) == 4
    rows = rp.storage._storage[:4, 0]
    assert rows["vector"].reshape(-1).tolist() == [0, 1, 2, 10]
    assert rows["reward"].tolist() == [0, 1, 5, 0]          # reward arriving with each obs
    assert rows["is_first"].tolist() == [True, False, False, True]
    assert rows["is_last"].tolist() == [False, False, True, False]
    assert rows["terminated"].tolist() == [False, False, True, False]
    assert rows["action"][2].abs().sum() == 0               # no action at a final obs
    assert rows["episode"][0] == rows["episode"][2] != rows["episode"][3]
    # the next batch continues episode B: its first row gets the reward of 10 -> 11
    rp.add(transitions(obs=[11], next_obs=[12], reward=[3], done=[False], terminated=[False],
                       is_first=[False]))
    assert rp.storage._storage[4, 0]["reward"] == 7


def test_windows_are_contiguous_and_mark_every_episode_start(tmp_path):
    rp = Replay(tmp_path, 10_000, 2, batch_size=64, seq_len=12)
    for b in collect(2, 6):
        rp.add(b)
    batch = rp.sample()
    assert batch.shape == (64, 12)
    env_id, counter, t = batch["vector"].unbind(-1)
    # one stream per window, consecutive steps of it
    assert (env_id == env_id[:, :1]).all()
    assert (counter[:, 1:] - counter[:, :-1] == 1).all()
    # a new episode inside a window is always marked, and only there
    new_episode = batch["episode"][:, 1:] != batch["episode"][:, :-1]
    assert new_episode.any()
    assert torch.equal(new_episode, batch["is_first"][:, 1:])
    assert (t[batch["is_first"]] == 0).all()
    # every episode ends in a final row (terminated or truncated), then starts afresh
    before_start = torch.roll(batch["is_first"], -1, dims=1)[:, :-1]
    assert batch["is_last"][:, :-1][before_start].all()
    last = batch["is_last"]
    assert (batch["terminated"][last] ^ batch["truncated"][last]).all()
    assert (batch["terminated"] & ~last).sum() == 0


def test_fifo_windows_never_cross_the_write_position(tmp_path):
    rp = Replay(tmp_path, 2 * 40, 2, batch_size=256, seq_len=10)  # 40 steps per stream
    for b in collect(2, 12):   # ~200 steps per stream: wrapped several times
        rp.add(b)
    assert len(rp) == 80 and rp.steps_per_stream() == 40
    batch = rp.sample()
    env_id, counter = batch["vector"][..., 0], batch["vector"][..., 1]
    assert (counter[:, 1:] - counter[:, :-1] == 1).all()
    stored = rp.storage._storage["vector"]  # [40, 2, 3]
    for stream in range(2):
        ids = stored[:, stream, 0].unique()
        assert len(ids) == 1
        newest = stored[:, stream, 1].max()
        mine = counter[env_id == ids[0]]
        assert mine.numel() > 0 and (mine > newest - 40).all() and (mine <= newest).all()


def test_storage_stays_on_disk(tmp_path):
    rp = Replay(tmp_path / "replay", 1000, 1, batch_size=2, seq_len=4)
    for b in collect(1, 2):
        rp.add(b)
    stored = rp.storage._storage["vector"]
    assert isinstance(stored, MemoryMappedTensor) and stored.filename.startswith(str(tmp_path))
    assert (tmp_path / "replay" / "meta.json").exists()
    sample = rp.sample()
    assert not isinstance(sample["vector"], MemoryMappedTensor)  # a copy of the batch only


def test_state_dict_reopens_rows_on_disk(tmp_path):
    rp = Replay(tmp_path, 1000, 2, batch_size=4, seq_len=5, seed=3)
    for b in collect(2, 3):
        rp.add(b)
    state = rp.state_dict()
    expected = rp.sample()
    rp.sampler.load_state_dict(state["sampler"])
    again = Replay(tmp_path, 1000, 2, batch_size=4, seq_len=5, seed=99)
    again.load_state_dict(state)
    assert len(again) == len(rp)
    got = again.sample()
    assert torch.equal(got["vector"], expected["vector"])
    assert torch.equal(got["is_first"], expected["is_first"])


def _raw_windows(rp, n=40):
    """Raw sampled rows (with the bookkeeping columns), ``n`` batches."""
    return [rp.buffer.sample().reshape(rp.batch_size, rp.seq_len) for _ in range(n)]


def test_resume_after_a_kill_never_samples_rows_written_after_the_checkpoint(tmp_path):
    """A process checkpoints, then writes on (wrapping the FIFO) and is killed: on resume the rows
    it wrote after the checkpoint are a hole that no window touches until it is overwritten."""
    batches = collect(2, 14, seed=1)
    rp = Replay(tmp_path, 2 * 60, 2, batch_size=32, seq_len=6, seed=0)  # 60 steps per stream
    for b in batches[:8]:
        rp.add(b)
    assert rp.steps_per_stream() == 60  # full: the FIFO has wrapped
    state = rp.state_dict()
    resume_serial = rp.serial
    for b in batches[8:10]:  # written after the checkpoint by the process that is then killed
        rp.add(b)
    stale = rp.serial - resume_serial
    assert 0 < stale < 60
    del rp

    again = Replay(tmp_path, 2 * 60, 2, batch_size=32, seq_len=6, seed=0, generation=1)
    again.load_state_dict(state)
    assert again.sampler.hole == stale and again.steps_per_stream() == 60 - stale
    for batch in _raw_windows(again):
        assert (batch["serial"] < resume_serial).all()
        assert (batch["serial"].diff(dim=-1) == 1).all()
    again.sample()  # its own check passes
    # new rows overwrite the hole from the cursor on; a window may then join old and new rows
    written = again.add(batches[10]) // 2
    assert again.sampler.hole == max(0, stale - written) and written > 0
    new = [b for b in _raw_windows(again) if (b["generation"] == 1).any()]
    assert new, "the rows written after the resume are sampled"
    for batch in new:
        fresh = batch["generation"] == 1
        assert (batch["serial"][fresh] >= resume_serial).all()
        assert (batch["serial"][~fresh] < resume_serial).all()
    # without the hole, the killed process's rows are sampled as if they were old rows
    again.sampler.hole = 0
    leaked = torch.cat([(b["generation"] == 0) & (b["serial"] >= resume_serial)
                        for b in _raw_windows(again)])
    assert leaked.any()
    try:
        for _ in range(40):
            again.sample()
    except RuntimeError as err:
        assert "written after the checkpoint" in str(err) or "not consecutive" in str(err)
    else:
        raise AssertionError("the batch check did not catch the stale rows")


def test_a_second_kill_before_the_hole_is_overwritten_keeps_it(tmp_path):
    batches = collect(1, 12, seed=2)
    rp = Replay(tmp_path, 50, 1, batch_size=8, seq_len=5)
    for b in batches[:5]:
        rp.add(b)
    first = rp.state_dict()
    for b in batches[5:8]:
        rp.add(b)
    rp = Replay(tmp_path, 50, 1, batch_size=8, seq_len=5, generation=1)
    rp.load_state_dict(first)
    hole = rp.sampler.hole
    assert hole > 16
    written = rp.add(batches[8])  # overwrites part of the hole, checkpoints, is killed again
    second = rp.state_dict()
    assert second["sampler"]["hole"] == hole - written
    rp.add(batches[9])
    rp = Replay(tmp_path, 50, 1, batch_size=8, seq_len=5, generation=2)
    rp.load_state_dict(second)
    assert rp.sampler.hole >= hole - written
    for batch in _raw_windows(rp):
        gen, serial = batch["generation"], batch["serial"]
        assert not ((gen == 0) & (serial >= first["rows_added"])).any()
        assert not ((gen == 1) & (serial >= second["rows_added"])).any()


def test_a_kill_half_way_through_a_write_leaves_rows_marked_as_new(tmp_path, monkeypatch):
    """The serial column is written before the rows: a process killed inside the write leaves
    rows whose serial already says 'after the checkpoint', so a resume never samples them."""
    batches = collect(1, 8, seed=3)
    rp = Replay(tmp_path, 60, 1, batch_size=4, seq_len=5)
    for b in batches[:5]:
        rp.add(b)
    state = rp.state_dict()

    def killed(block):
        raise KeyboardInterrupt("killed inside the write")

    monkeypatch.setattr(rp.buffer, "extend", killed)
    with pytest.raises(KeyboardInterrupt):
        rp.add(batches[5])
    again = Replay(tmp_path, 60, 1, batch_size=4, seq_len=5, generation=1)
    again.load_state_dict(state)
    assert again.sampler.hole >= 16


def test_disk_blocks_are_reserved_a_chunk_ahead_not_for_the_whole_capacity(tmp_path, monkeypatch):
    monkeypatch.setattr(Replay, "RESERVE_CHUNK", 256)
    rp = Replay(tmp_path, 100_000, 1, batch_size=2, seq_len=4)
    rp.add(collect(1, 1)[0])
    vector = rp.storage._storage["vector"]
    row_bytes = vector[0].numel() * vector.element_size()
    allocated = os.stat(vector.filename).st_blocks * 512
    assert 256 * row_bytes <= allocated < 100_000 * row_bytes


@pytest.mark.parametrize("smoothing", ["none", "gaussian"])
def test_batches_of_single_streams_write_the_rows_of_whole_batches(tmp_path, smoothing):
    """Collector workers deliver one worker's streams at a time, in any order: the rows on disk
    are those of the same transitions added as whole batches."""
    cfg = {"mode": smoothing, "sigma": 1.0}
    whole = Replay(tmp_path / "a", 500, 3, 2, 8, smoothing=cfg, generation=1)
    parts = Replay(tmp_path / "b", 500, 3, 2, 8, smoothing=cfg, generation=1)
    batches = collect(3, 5, seed=4)
    for b in batches:
        whole.add(b)
    order = [(0,), (2, 1), (2, 1), (0,), (0,), (1, 2), (2, 1), (0,), (1, 2), (0,)]  # skewed
    queue = {0: [b[0:1] for b in batches], (1, 2): [b[1:3] for b in batches]}
    for streams in order:
        key = 0 if streams == (0,) else (1, 2)
        part = queue[key].pop(0)
        parts.add(part if streams != (2, 1) else part.flip(0), streams=list(streams))
    assert len(parts) == len(whole) > 0
    a, b = whole.storage[: len(whole)], parts.storage[: len(parts)]
    for key in ("vector", "reward", "reward_raw", "is_first", "episode", "action"):
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="streams of 0..2"):
        parts.add(batches[0][0:1], streams=[3])
