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


def drama_weights(wm, imag, mode, tau=10.0, imag_tau=10.0, alpha=1.0, beta=1.0, scale=1.0):
    """Drama's replay_buffer.py, written out independently."""
    wm, imag = wm.double(), imag.double() / scale
    if mode == "imagination":
        penalty = torch.maximum(torch.zeros_like(wm), wm - imag)
        score = (wm - alpha * imag - beta * penalty) / imag_tau
    else:
        score = -wm / tau
    e = torch.exp(score - score.max())
    return e / e.sum()


def test_registered_and_uniform_stays_default(tmp_path):
    assert tuple(SAMPLERS) == ("uniform", "dfs")
    assert load_config([]).replay.sampler == "uniform"
    assert load_config(["replay.sampler=dfs"]).replay.sampler == "dfs"
    assert isinstance(Replay(tmp_path, 50, 1, 2, 4, sampler="dfs").sampler, DFSSampler)
    with pytest.raises(ValueError, match="uniform, dfs"):
        Replay(tmp_path, 50, 1, 2, 4, sampler="prioritized")


def test_counts_update_per_purpose(tmp_path):
    rp = Replay(tmp_path, 100, 1, batch_size=4, seq_len=5, sampler="dfs")
    fill(rp, 30)
    s = rp.sampler
    assert s.wm_count.shape == (100, 1) and s.wm_count.dtype == torch.int32  # one int per row
    b = rp.sample()  # joint: the batch trains the world model and seeds imagination
    assert len(set(starts(b))) == 4  # drawn without replacement
    expect = torch.zeros(100, 1, dtype=torch.int32)
    expect[starts(b), 0] = 1
    assert torch.equal(s.wm_count, expect) and torch.equal(s.imag_count, expect)
    with s.using("world_model"):
        b = rp.sample()
    expect_wm = expect.clone()
    expect_wm[starts(b), 0] += 1
    assert torch.equal(s.wm_count, expect_wm) and torch.equal(s.imag_count, expect)
    with s.using("imagination"):
        b = rp.sample()
    expect[starts(b), 0] += 1
    assert torch.equal(s.imag_count, expect) and s.mode == "joint"
    with pytest.raises(ValueError, match="joint, world_model, imagination"):
        with s.using("policy"):
            pass


def test_weights_match_drama_definition(tmp_path):
    rp = Replay(tmp_path, 40, 1, batch_size=2, seq_len=5, sampler="dfs")
    fill(rp, 40)
    fill(rp, 7, first=40)  # the FIFO wrapped: the oldest row is now time row 7
    s = rp.sampler
    g = torch.Generator().manual_seed(0)
    s.wm_count.copy_(torch.randint(0, 30, (40, 1), generator=g))
    s.imag_count.copy_(torch.randint(0, 30, (40, 1), generator=g))
    time, stream, _ = s.weights(rp.storage)
    # valid starts: oldest first, windows ending before the write cursor
    assert time.tolist() == [(7 + i) % 40 for i in range(40 - 5 + 1)]
    assert (stream == 0).all()
    for mode in ("world_model", "imagination", "joint"):
        _, _, p = s.weights(rp.storage, mode)
        ref = drama_weights(s.wm_count[time, 0], s.imag_count[time, 0], mode)
        torch.testing.assert_close(p, ref)
    s.imag_scale = 4.0
    _, _, p = s.weights(rp.storage, "imagination")
    torch.testing.assert_close(p, drama_weights(s.wm_count[time, 0], s.imag_count[time, 0],
                                                "imagination", scale=4.0))


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
    assert (small.sampler.wm_count[:5] == 0).all() and (small.sampler.imag_count[:5] == 0).all()


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
    assert torch.equal(again.sampler.imag_count, rp.sampler.imag_count)
    # the restored sampler continues exactly as the original would
    assert torch.equal(again.sample()["vector"], rp.sample()["vector"])
    wrong = Replay(tmp_path / "other", 60, 2, batch_size=6, seq_len=5, sampler="dfs")
    with pytest.raises(ValueError, match="wm_count"):
        wrong.sampler.load_state_dict(state["sampler"])


def test_config_knobs_reach_the_sampler(tmp_path):
    cfg = load_config(["replay.sampler=dfs", "replay.dfs.tau=2.5", "replay.dfs.beta=0"])
    rp = Replay(tmp_path, 40, 1, batch_size=2, seq_len=5, sampler="dfs", dfs=cfg.replay.dfs)
    s = rp.sampler
    assert (s.tau, s.imag_tau, s.alpha, s.beta, s.imag_scale) == (2.5, 10.0, 1.0, 0.0, 1.0)
    fill(rp, 40)
    s.wm_count[:, 0] = torch.arange(40, dtype=torch.int32) % 7
    s.imag_count[:, 0] = torch.arange(40, dtype=torch.int32) % 3
    time, _, probs = s.weights(rp.storage, "world_model")
    assert torch.allclose(probs, drama_weights(s.wm_count[time, 0], s.imag_count[time, 0],
                                               "world_model", tau=2.5))
    time, _, probs = s.weights(rp.storage, "imagination")
    assert torch.allclose(probs, drama_weights(s.wm_count[time, 0], s.imag_count[time, 0],
                                               "imagination", beta=0.0))
    with pytest.raises(ValueError, match=r"unknown replay.dfs key\(s\) \['temp'\]"):
        Replay(tmp_path / "bad", 40, 1, 2, 5, sampler="dfs", dfs={"temp": 1.0})


def test_diagnostic_samples_leave_counts_alone(tmp_path):
    rp = Replay(tmp_path, 100, 1, batch_size=4, seq_len=5, sampler="dfs", seed=2)
    fill(rp, 50)
    rp.sample()
    wm, imag = rp.sampler.wm_count.clone(), rp.sampler.imag_count.clone()
    peeked = rp.sample(record=False)
    assert peeked.shape == (4, 5)
    assert torch.equal(rp.sampler.wm_count, wm) and torch.equal(rp.sampler.imag_count, imag)
    assert rp.sampler.mode == "joint"
    rp.sample()
    assert int(rp.sampler.wm_count.sum()) == int(wm.sum()) + 4
