"""Drama's dynamic frequency-based sampling (worldrl.replay.DFSSampler, replay.sampler=dfs)."""

import pytest
import torch

from tests.test_replay import transitions
from worldrl.config import load_config
from worldrl.replay import SAMPLERS, DFSSampler, Replay


def fill(rp: Replay, n: int, first: int = 0) -> None:
    """Add ``n`` rows of one long episode whose ``vector`` is the global row number."""
    obs = list(range(first, first + n))
    rp.add(transitions(obs=obs, next_obs=[o + 1 for o in obs], reward=[0.0] * n,
                       done=[False] * n, terminated=[False] * n,
                       is_first=[first == 0] + [False] * (n - 1)))


def starts(batch) -> list[int]:
    return batch["vector"][:, 0, 0].long().tolist()


def drama_weights(wm, tau=10.0):
    """Drama's replay_buffer.py (world-model weights), written out independently."""
    score = -wm.double() / tau
    e = torch.exp(score - score.max())
    return e / e.sum()


def test_registered_and_uniform_stays_default(tmp_path):
    assert tuple(SAMPLERS) == ("uniform", "dfs")
    assert load_config([]).replay.sampler == "uniform"
    assert load_config(["replay.sampler=dfs"]).replay.sampler == "dfs"
    assert isinstance(Replay(tmp_path, 50, 1, 2, 4, sampler="dfs").sampler, DFSSampler)
    with pytest.raises(ValueError, match="uniform, dfs"):
        Replay(tmp_path, 50, 1, 2, 4, sampler="prioritized")


def test_counts_update_on_training_samples_only(tmp_path):
    rp = Replay(tmp_path, 100, 1, batch_size=4, seq_len=5, sampler="dfs")
    fill(rp, 30)
    s = rp.sampler
    assert s.wm_count.shape == (100, 1) and s.wm_count.dtype == torch.int32  # one int per row
    b = rp.sample()
    assert len(set(starts(b))) == 4  # drawn without replacement
    expect = torch.zeros(100, 1, dtype=torch.int32)
    expect[starts(b), 0] = 1
    assert torch.equal(s.wm_count, expect)
    with s.using("peek"):
        rp.sample()
    assert torch.equal(s.wm_count, expect) and s.mode == "record"
    b = rp.sample()
    expect[starts(b), 0] += 1
    assert torch.equal(s.wm_count, expect)
    with pytest.raises(ValueError, match="record, peek"):
        with s.using("imagination"):
            pass


def test_weights_match_drama_definition(tmp_path):
    rp = Replay(tmp_path, 40, 1, batch_size=2, seq_len=5, sampler="dfs")
    fill(rp, 40)
    fill(rp, 7, first=40)  # the FIFO wrapped: the oldest row is now time row 7
    s = rp.sampler
    g = torch.Generator().manual_seed(0)
    s.wm_count.copy_(torch.randint(0, 30, (40, 1), generator=g))
    time, stream, p = s.weights(rp.storage)
    # valid starts: oldest first, windows ending before the write cursor
    assert time.tolist() == [(7 + i) % 40 for i in range(40 - 5 + 1)]
    assert (stream == 0).all()
    torch.testing.assert_close(p, drama_weights(s.wm_count[time, 0]))


def test_fresh_data_is_preferred_and_overwritten_rows_restart_at_zero(tmp_path):
    rp = Replay(tmp_path, 200, 1, batch_size=8, seq_len=4, sampler="dfs", seed=1)
    fill(rp, 60)
    for _ in range(200):  # the world model trains on the old rows for a while
        rp.sample()
    fill(rp, 20, first=60)  # fresh rows 60..79: windows starting at 57..76 see fresh data
    s = rp.sampler
    assert (s.wm_count[60:80] == 0).all()
    time, _, p = s.weights(rp.storage)
    assert p[time >= 60].min() > 5 * p[time < 50].max()  # unseen windows weigh the most
    picks = [t for _ in range(5) for t in starts(rp.sample())]
    fresh = sum(t >= 57 for t in picks) / len(picks)
    assert fresh > 0.6, fresh  # uniform sampling would give 20 / 77 = 0.26
    # FIFO: rows written over old ones get fresh counts
    small = Replay(tmp_path / "fifo", 20, 1, batch_size=4, seq_len=4, sampler="dfs")
    fill(small, 20)
    for _ in range(10):
        small.sample()
    assert small.sampler.wm_count[:5].sum() > 0
    fill(small, 5, first=20)
    assert (small.sampler.wm_count[:5] == 0).all()


def test_counts_persist_in_checkpoints(tmp_path):
    rp = Replay(tmp_path, 100, 2, batch_size=6, seq_len=5, sampler="dfs", seed=3)
    batch = transitions(obs=list(range(30)), next_obs=list(range(1, 31)), reward=[0.0] * 30,
                        done=[False] * 30, terminated=[False] * 30,
                        is_first=[True] + [False] * 29)
    rp.add(torch.cat([batch, batch], 0))
    for _ in range(5):
        rp.sample()
    state = rp.state_dict()
    assert state["sampler"]["wm_count"].sum() == 30
    again = Replay(tmp_path, 100, 2, batch_size=6, seq_len=5, sampler="dfs", seed=3)
    again.load_state_dict(state)
    assert torch.equal(again.sampler.wm_count, rp.sampler.wm_count)
    # the restored sampler continues exactly as the original would
    assert torch.equal(again.sample()["vector"], rp.sample()["vector"])
    wrong = Replay(tmp_path / "other", 60, 2, batch_size=6, seq_len=5, sampler="dfs")
    with pytest.raises(ValueError, match="wm_count"):
        wrong.sampler.load_state_dict(state["sampler"])
    # a checkpoint from before the imagination count went (it was never used for weights)
    old = {**state["sampler"], "imag_count": torch.ones_like(rp.sampler.wm_count),
           "mode": "joint"}
    older = Replay(tmp_path / "older", 100, 2, batch_size=6, seq_len=5, sampler="dfs", seed=3)
    older.sampler.load_state_dict(old)
    assert torch.equal(older.sampler.wm_count, state["sampler"]["wm_count"])
    assert older.sampler.mode == "record"


def test_config_knobs_reach_the_sampler(tmp_path):
    cfg = load_config(["replay.sampler=dfs", "replay.dfs.tau=2.5"])
    rp = Replay(tmp_path, 40, 1, batch_size=2, seq_len=5, sampler="dfs", dfs=cfg.replay.dfs)
    s = rp.sampler
    assert s.tau == 2.5
    fill(rp, 40)
    s.wm_count[:, 0] = torch.arange(40, dtype=torch.int32) % 7
    time, _, probs = s.weights(rp.storage)
    assert torch.allclose(probs, drama_weights(s.wm_count[time, 0], tau=2.5))
    with pytest.raises(ValueError, match=r"unknown replay.dfs key\(s\) \['imag_tau'\]"):
        Replay(tmp_path / "bad", 40, 1, 2, 5, sampler="dfs", dfs={"imag_tau": 1.0})
    with pytest.raises(ValueError, match="replay.dfs.tau must be > 0, got 0"):
        Replay(tmp_path / "bad", 40, 1, 2, 5, sampler="dfs", dfs={"tau": 0})


def test_diagnostic_samples_leave_counts_alone(tmp_path):
    rp = Replay(tmp_path, 100, 1, batch_size=4, seq_len=5, sampler="dfs", seed=2)
    fill(rp, 50)
    rp.sample()
    wm = rp.sampler.wm_count.clone()
    peeked = rp.sample(record=False)
    assert peeked.shape == (4, 5)
    assert torch.equal(rp.sampler.wm_count, wm)
    assert rp.sampler.mode == "record"
    rp.sample()
    assert int(rp.sampler.wm_count.sum()) == int(wm.sum()) + 4
