"""DreamSmooth reward smoothing (worldrl.smoothing) and its place in replay (worldrl.replay)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve, gaussian_filter1d

from tests.helpers import collect
from worldrl.replay import Replay
from worldrl.smoothing import RewardSmoother, kernel, make_smoother, smooth_episode

torch.set_num_threads(1)


def episodes_stream(lengths, rng, density=0.2):
    """Raw rewards of consecutive episodes (0 on each reset row) and their is_first / is_last."""
    eps = []
    for n in lengths:
        r = (rng.random(n) < density) * rng.normal(size=n)
        r[0] = 0.0
        eps.append(r)
    first = np.concatenate([np.arange(n) == 0 for n in lengths])
    last = np.concatenate([np.arange(n) == n - 1 for n in lengths])
    return eps, np.concatenate(eps), first, last


def push_in_chunks(sm, raw, first, last, rng, stream=0):
    out, i = [], 0
    while i < len(raw):
        k = int(rng.integers(1, 20))
        out.append(sm.push(stream, torch.tensor(raw[i:i + k]), torch.tensor(first[i:i + k]),
                           torch.tensor(last[i:i + k])).numpy())
        i += k
    return np.concatenate(out)


def reference(eps, mode, edge="nearest", sigma=3.0, window=9, alpha=0.33):
    if mode == "gaussian":
        f = [gaussian_filter1d(e, sigma, mode=edge) for e in eps]
    elif mode == "uniform":
        f = [convolve(e, np.ones(window) / window, mode=edge) for e in eps]
    elif mode == "ema":
        f = [smooth_episode(e, "ema", alpha=alpha) for e in eps]
    else:
        f = eps
    return np.concatenate(f)


@pytest.mark.parametrize("mode,edge,sigma,window", [
    ("gaussian", "nearest", 3.0, 9), ("gaussian", "reflect", 1.5, 9),
    ("gaussian", "constant", 2.0, 9), ("uniform", "nearest", 3.0, 9),
    ("uniform", "reflect", 3.0, 4), ("uniform", "constant", 3.0, 1),
    ("ema", "nearest", 3.0, 9), ("none", "nearest", 3.0, 9),
])
def test_streaming_matches_scipy_on_whole_episodes(mode, edge, sigma, window):
    rng = np.random.default_rng(0)
    # long and short episodes, some shorter than the kernel radius (12 for sigma 3)
    eps, raw, first, last = episodes_stream([40, 2, 1, 7, 60, 13, 3], rng)
    sm = RewardSmoother(mode, 1, sigma=sigma, window=window, edge=edge)
    out = push_in_chunks(sm, raw, first, last, rng)
    ref = reference(eps, mode, edge, sigma, window)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert sm.pending(0) == 0
    for e, whole in zip(eps, np.split(ref, np.cumsum([len(e) for e in eps])[:-1])):
        np.testing.assert_allclose(smooth_episode(e, mode, sigma, window, edge=edge), whole,
                                   atol=1e-9)


def test_hand_cases():
    # a lone reward in the middle of an episode: the kernel itself, mass 1
    r = np.zeros(41)
    r[20] = 1.0
    y = smooth_episode(r, "gaussian", sigma=3.0)
    w, left = kernel("gaussian", sigma=3.0)
    assert left == 12 and len(w) == 25  # truncated at int(4 * 3 + 0.5) = 12 steps each side
    np.testing.assert_allclose(y[8:33], w)
    assert y[:8].sum() == 0 and abs(y.sum() - 1) < 1e-12
    # a reward on the final step (terminal or truncated alike): nearest counts the edge again,
    # reflect conserves the episode's sum, constant leaks mass past the end
    r = np.zeros(30)
    r[-1] = 1.0
    assert smooth_episode(r, "gaussian", edge="nearest").sum() > 1.5
    assert abs(smooth_episode(r, "gaussian", edge="reflect").sum() - 1.0) < 1e-12
    assert smooth_episode(r, "gaussian", edge="constant").sum() < 0.6
    # a reward right after the reset row spreads back onto the reset row (its reward is 0 raw)
    r = np.zeros(20)
    r[1] = 1.0
    y = smooth_episode(r, "gaussian")
    assert y[0] > 0.1 and y[0] == pytest.approx(gaussian_filter1d(r, 3.0, mode="nearest")[0])
    # EMA: r~_0 = r_0, then alpha * previous + (1 - alpha) * r
    np.testing.assert_allclose(smooth_episode([0.0, 1.0, 0.0, 0.0], "ema", alpha=0.33),
                               [0.0, 0.67, 0.2211, 0.072963])
    # uniform window 9: a box of 1/9 centred on the reward
    r = np.zeros(20)
    r[10] = 1.0
    np.testing.assert_allclose(smooth_episode(r, "uniform", window=9)[6:15], np.full(9, 1 / 9))


def test_episodes_do_not_leak_into_each_other():
    # the last reward of one episode never reaches the next one (is_first starts a new filter)
    raw = np.array([0, 0, 0, 5.0, 0, 0, 0, 0])
    first = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    last = np.array([0, 0, 0, 1, 0, 0, 0, 1], bool)
    for mode in ("gaussian", "uniform", "ema"):
        sm = RewardSmoother(mode, 1)
        y = sm.push(0, torch.tensor(raw), torch.tensor(first), torch.tensor(last)).numpy()
        assert len(y) == 8 and np.all(y[4:] == 0), mode
        assert y[:4].sum() > 0


def test_rows_are_held_only_radius_steps():
    # a long episode that never ends: every row but the newest `radius` is released at once
    sm = RewardSmoother("gaussian", 2, sigma=3.0)
    assert sm.lookahead == 12
    released = 0
    for i in range(50):
        y = sm.push(1, torch.ones(10), torch.tensor([i == 0] + [False] * 9), torch.zeros(10))
        released += len(y)
        assert sm.pending(1) == min(12, 10 * (i + 1)) and sm.pending(0) == 0
        assert len(sm.streams[1].raw) <= 2 * 12 + 10  # raw history is trimmed as well
    assert released == 500 - 12
    np.testing.assert_allclose(y.numpy(), 1.0)  # interior of a constant reward stays constant
    assert RewardSmoother("ema").lookahead == 0


def test_state_dict_roundtrip_mid_episode():
    rng = np.random.default_rng(1)
    eps, raw, first, last = episodes_stream([30, 25], rng, density=0.5)
    whole = RewardSmoother("gaussian", 1)
    ref = whole.push(0, torch.tensor(raw), torch.tensor(first), torch.tensor(last)).numpy()
    a = RewardSmoother("gaussian", 1)
    y1 = a.push(0, torch.tensor(raw[:17]), torch.tensor(first[:17]), torch.tensor(last[:17]))
    b = RewardSmoother("gaussian", 1)
    b.load_state_dict(a.state_dict())
    y2 = b.push(0, torch.tensor(raw[17:]), torch.tensor(first[17:]), torch.tensor(last[17:]))
    np.testing.assert_allclose(np.concatenate([y1.numpy(), y2.numpy()]), ref, atol=1e-6)
    with pytest.raises(ValueError, match="ema"):
        RewardSmoother("ema").load_state_dict(a.state_dict())


def test_bad_config_names_the_choices():
    with pytest.raises(ValueError, match="gaussian, uniform, ema"):
        RewardSmoother("median")
    with pytest.raises(ValueError, match="nearest"):
        RewardSmoother("gaussian", edge="wrap")
    with pytest.raises(ValueError, match="sigma"):
        RewardSmoother("gaussian", sigma=0)
    sm = make_smoother({"mode": "uniform", "window": 5}, 3)
    assert sm.mode == "uniform" and len(sm.weights) == 5 and len(sm.streams) == 3
    with pytest.raises(ValueError, match=r"unknown replay.smoothing key\(s\) \['smoothing_sigma'\]"
                       r"; valid: \['mode', 'sigma', 'window', 'alpha', 'edge'\]"):
        make_smoother({"mode": "gaussian", "smoothing_sigma": 1.0})


@pytest.mark.parametrize("mode", ["gaussian", "ema"])
def test_replay_rows_carry_raw_and_smoothed_reward(tmp_path, mode):
    # CounterEnv: reward = step within the episode; episodes of 3-9 steps, even lengths end by
    # truncation, odd ones by termination; two env streams written in lock-step
    batches = collect(num_envs=2, batches=12)
    plain = Replay(tmp_path / "plain", 1000, 2, 2, 4)
    smooth = Replay(tmp_path / "smooth", 1000, 2, 2, 4,
                    smoothing={"mode": mode, "sigma": 2.0})
    for b in batches:
        plain.add(b)
        smooth.add(b)
        assert max(len(p) for p in smooth._pending) <= 2 * 8 + 16  # radius 8, lock-step slack
    n = smooth.steps_per_stream()
    assert 0 < n <= plain.steps_per_stream()
    raw_rows = plain.storage._storage[:n]
    rows = smooth.storage._storage[:n]
    # the raw reward is kept untouched as reward_raw; without smoothing reward == reward_raw
    torch.testing.assert_close(rows["reward_raw"], raw_rows["reward"])
    torch.testing.assert_close(raw_rows["reward_raw"], raw_rows["reward"])
    checked = 0
    for s in range(2):
        first = rows["is_first"][:, s].nonzero().flatten().tolist()
        last = rows["is_last"][:, s].nonzero().flatten().tolist()
        for a, z in zip(first, [i for i in last if i >= first[0]]):
            ep = rows[a:z + 1, s]
            assert ep["is_first"][0] and ep["is_last"][-1] and ep["reward_raw"][0] == 0
            ref = (gaussian_filter1d(ep["reward_raw"].double().numpy(), 2.0, mode="nearest")
                   if mode == "gaussian" else smooth_episode(ep["reward_raw"].numpy(), "ema"))
            np.testing.assert_allclose(ep["reward"].numpy(), ref, atol=1e-5)
            checked += 1
    assert checked >= 20
    truncated = rows["truncated"] & rows["is_last"]
    assert truncated.any() and (rows["terminated"] & rows["is_last"]).any()
    # sampled batches carry both columns; the state survives a checkpoint
    assert {"reward", "reward_raw"} <= set(smooth.sample().keys())
    state = smooth.state_dict()
    again = Replay(tmp_path / "smooth", 1000, 2, 2, 4,
                   smoothing={"mode": mode, "sigma": 2.0})
    again.load_state_dict(state)
    assert again.smoother.state_dict()["streams"][0]["released"] == \
        smooth.smoother.state_dict()["streams"][0]["released"]


def test_replay_memory_stays_bounded_for_long_episodes(tmp_path):
    # episodes of up to 2000 steps: the pending area stays at the kernel radius per stream
    batches = collect(num_envs=1, batches=20, max_len=2000)
    rp = Replay(tmp_path, 1000, 1, 2, 4, smoothing="gaussian")
    for b in batches:
        rp.add(b)
        assert len(rp._pending[0]) <= 12
    assert rp.steps_per_stream() >= 20 * 16 - 12
