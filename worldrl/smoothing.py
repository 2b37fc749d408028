"""DreamSmooth: temporal reward smoothing before replay (Lee, Abbeel, Lee, ICLR 2024).

The reward head learns a smoothed reward ``r~_t = sum_k f(k) r_{clip(t+k)}`` instead of the sparse
raw reward; behaviour learning then maximises the smoothed return, which DreamSmooth shows is
easier for the world model to predict and changes the optimal policy little. Modes and defaults
follow the paper's code (``vint-1/dreamsmooth``, ``embodied/core/smoothing.py`` and the configs
``gaussian_smoothing`` / ``uniform_smoothing`` / ``exp_smoothing``):

* ``gaussian``: ``scipy.ndimage.gaussian_filter1d(r, sigma, mode='nearest')`` over each whole
  episode, ``sigma = 3``; the kernel is truncated at ``int(4 * sigma + 0.5)`` steps each side
  (scipy's ``truncate=4``).
* ``uniform``: ``scipy.ndimage.convolve(r, ones(window) / window, mode='nearest')``,
  ``window = 9`` (centred; an even window has one more tap in the future, as scipy's has).
* ``ema``: ``r~_0 = r_0``, ``r~_t = alpha * r~_{t-1} + (1 - alpha) * r_t`` with ``alpha = 0.33``,
  reset at every episode start (causal: it only delays reward).
* ``none``: ``r~ = r``.

**Episodes.** An episode is the run of replay rows from an ``is_first`` row to its ``is_last`` row
in DreamerV3's layout, so the first entry is the 0 reward of the reset observation, exactly as in
the paper's embodied replay. Terminated and truncated episodes are treated alike, as the paper
does: the filter sees only the episode's own rewards and the ``edge`` mode fills beyond both ends.
``nearest`` (the paper) repeats the first/last reward, so a reward on the final step of an episode
is partly counted again (the smoothed sum exceeds the raw sum); ``reflect`` mirrors and conserves
each episode's sum exactly (symmetric kernels); ``constant`` pads with 0, so mass near the ends
leaks out of the episode. Gaussian and uniform smoothing look ``radius`` steps into the future, so
no smoothed value can be computed at a truncation any better than by extrapolation.

**Streaming (deviation from the paper's implementation, same values).** The paper buffers a whole
episode and smooths it when it ends. A row's smoothed value depends only on rewards within
``radius`` steps of it, so :class:`RewardSmoother` releases a row as soon as ``radius`` later rows
of its episode have arrived (or the episode has ended); the values are identical to smoothing the
whole episode at its end (tests compare with scipy). The replay therefore holds back at most
``radius`` rows per env stream (12 for ``sigma = 3``, 4 for ``window = 9``), whatever the episode
length, instead of a whole episode (a 27k-step Atari episode of 64x64 pixels would be ~330 MB in
memory per env); the raw rewards kept for the filter are trimmed to the same window.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MODES", "KERNELS", "EDGES", "RewardSmoother", "smooth_episode", "make_smoother", "kernel",
]


def _gaussian(sigma: float, window: int, truncate: float) -> tuple[np.ndarray, int]:
    """scipy's ``gaussian_filter1d`` kernel."""
    if sigma <= 0:
        raise ValueError(f"gaussian reward smoothing needs sigma > 0, got {sigma}")
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum(), radius


def _uniform(sigma: float, window: int, truncate: float) -> tuple[np.ndarray, int]:
    """scipy's ``convolve`` with ``ones(window) / window``."""
    window = int(window)
    if window < 1:
        raise ValueError(f"uniform reward smoothing needs window >= 1, got {window}")
    return np.full(window, 1.0 / window), (window - 1) // 2


#: the filters that see both sides of a reward: mode -> ``(sigma, window, truncate) -> (weights,
#: left)``. A new one is a function and an entry here; ``none`` and the causal ``ema`` are the
#: other modes.
KERNELS = {"gaussian": _gaussian, "uniform": _uniform}
MODES = ("none", *KERNELS, "ema")
EDGES = ("nearest", "reflect", "constant")
_NP_PAD = {"nearest": "edge", "reflect": "symmetric", "constant": "constant"}


def kernel(mode: str, sigma: float = 3.0, window: int = 9, truncate: float = 4.0
           ) -> tuple[np.ndarray, int]:
    """``(weights [L], left)``: correlation weights and the number of taps before the centre
    (:data:`KERNELS`). ``y[t] = sum_j weights[j] * x[t - left + j]``."""
    if mode not in KERNELS:
        raise ValueError(f"no kernel for reward smoothing mode {mode!r}")
    return KERNELS[mode](sigma, window, truncate)


def _check(mode: str, edge: str, alpha: float) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown reward smoothing {mode!r}; choose one of: {', '.join(MODES)}")
    if edge not in EDGES:
        raise ValueError(f"unknown reward smoothing edge {edge!r}; choose one of: "
                         f"{', '.join(EDGES)}")
    if mode == "ema" and not 0.0 <= alpha < 1.0:
        raise ValueError(f"ema reward smoothing needs 0 <= alpha < 1, got {alpha}")


def _correlate(x: np.ndarray, weights: np.ndarray, left: int, pad_left: str | None,
               pad_right: str | None, lo: int, hi: int) -> np.ndarray:
    """``y[lo:hi]`` of the filter over ``x``; an end is padded with ``pad_*`` (a numpy pad mode)
    when it is a true episode end, and must otherwise hold enough context."""
    right = len(weights) - 1 - left
    padl = left if pad_left else 0
    padr = right if pad_right else 0
    if padl:
        x = np.pad(x, (padl, 0), mode=pad_left)
    if padr:
        x = np.pad(x, (0, padr), mode=pad_right)
    # output t (original index) reads x_padded[t - left + padl + j]
    start = lo - left + padl
    stop = hi - 1 + right + padl + 1
    assert start >= 0 and stop <= len(x), (start, stop, len(x))
    seg = x[start:stop]
    return np.correlate(seg, weights, mode="valid")


def smooth_episode(reward: np.ndarray | Tensor, mode: str = "gaussian", sigma: float = 3.0,
                   window: int = 9, alpha: float = 0.33, edge: str = "nearest") -> np.ndarray:
    """Smooth one whole episode's rewards ``[L]`` (reference and offline use)."""
    _check(mode, edge, alpha)
    x = np.asarray(reward, dtype=np.float64).reshape(-1)
    if mode == "none" or len(x) == 0:
        return x.copy()
    if mode == "ema":
        out = np.empty_like(x)
        prev = x[0]
        for i, r in enumerate(x):
            prev = alpha * prev + (1.0 - alpha) * r
            out[i] = prev
        return out
    w, left = kernel(mode, sigma, window)
    pad = _NP_PAD[edge]
    return _correlate(x, w, left, pad, pad, 0, len(x))


class _Stream:
    """State of one env stream: the raw rewards of its open episode from episode index ``offset``,
    the episode index of the next row to release and the EMA value."""

    __slots__ = ("raw", "offset", "released", "ema", "open")

    def __init__(self):
        self.raw = np.zeros(0, np.float64)
        self.offset = 0
        self.released = 0
        self.ema = 0.0
        self.open = False


class RewardSmoother:
    """Online DreamSmooth over ``num_streams`` env streams of replay rows.

    :meth:`push` takes the raw rewards of the next consecutive rows of one stream (with their
    ``is_first`` / ``is_last`` flags) and returns the smoothed rewards of the rows that became
    final, in row order: all of them for ``none`` / ``ema``; for ``gaussian`` / ``uniform`` those
    with ``radius`` later rows of the same episode, or whose episode has ended. Rows are never
    released out of order, so the caller holds back the last ``pending(stream)`` rows.
    """

    def __init__(self, mode: str = "none", num_streams: int = 1, *, sigma: float = 3.0,
                 window: int = 9, alpha: float = 0.33, edge: str = "nearest"):
        _check(mode, edge, alpha)
        self.mode, self.edge = mode, edge
        self.sigma, self.window, self.alpha = float(sigma), int(window), float(alpha)
        if mode in KERNELS:
            self.weights, self.left = kernel(mode, sigma, window)
            self.right = len(self.weights) - 1 - self.left
        else:
            self.weights, self.left, self.right = None, 0, 0
        self.streams = [_Stream() for _ in range(num_streams)]

    @property
    def lookahead(self) -> int:
        """Rows of future context a row needs before release (0 for ``none`` / ``ema``)."""
        return self.right

    def pending(self, stream: int) -> int:
        """Rows pushed to ``stream`` and not released yet."""
        if self.weights is None:  # none / ema release every row at once
            return 0
        s = self.streams[stream]
        return s.offset + len(s.raw) - s.released if s.open else 0

    def push(self, stream: int, reward: Tensor, is_first: Tensor, is_last: Tensor) -> Tensor:
        """Raw rewards ``[k]`` of the next ``k`` rows of ``stream`` -> smoothed released ``[j]``."""
        reward = torch.as_tensor(reward).reshape(-1)
        first = torch.as_tensor(is_first).reshape(-1).bool().tolist()
        last = torch.as_tensor(is_last).reshape(-1).bool().tolist()
        x = reward.detach().double().cpu().numpy()
        if self.mode == "none":
            return reward.float().clone()
        s = self.streams[stream]
        out: list[np.ndarray] = []
        start = 0
        for i in range(len(x)):
            if first[i] and i > start:  # an episode start before the open one ended
                out.append(self._extend(s, x[start:i], ended=True))
                start = i
            elif first[i] and s.open:  # the episode open since an earlier push never ended
                out.append(self._extend(s, x[0:0], ended=True))
            if last[i]:
                out.append(self._extend(s, x[start:i + 1], ended=True))
                start = i + 1
        if start < len(x):
            out.append(self._extend(s, x[start:], ended=False))
        res = np.concatenate(out) if out else np.zeros(0)
        return torch.as_tensor(res, dtype=torch.float32)

    def _extend(self, s: _Stream, x: np.ndarray, ended: bool) -> np.ndarray:
        """Append ``x`` to the open episode (opening one if needed); release what is final."""
        if not s.open:
            s.raw, s.offset, s.released, s.open = np.zeros(0, np.float64), 0, 0, True
            s.ema = float(x[0]) if len(x) else 0.0
        if self.mode == "ema":
            out = np.empty_like(x)
            for i, r in enumerate(x):
                s.ema = self.alpha * s.ema + (1.0 - self.alpha) * r
                out[i] = s.ema
            s.released += len(x)
            if ended:
                s.open = False
            return out
        s.raw = np.concatenate([s.raw, x])
        known = s.offset + len(s.raw)  # episode index one past the last known reward
        hi = known if ended else known - self.right
        lo = s.released
        if hi <= lo:
            if ended:
                s.open = False
            return np.zeros(0)
        pad = _NP_PAD[self.edge]
        y = _correlate(s.raw, self.weights, self.left, pad if s.offset == 0 else None,
                       pad if ended else None, lo - s.offset, hi - s.offset)
        s.released = hi
        if ended:
            s.open = False
            s.raw = np.zeros(0, np.float64)
        else:
            # rows from ``hi`` on read rewards from ``hi - left``; while some of them still need
            # the episode start for padding (``hi < left``) everything is kept
            keep_from = max(s.offset, hi - self.left) if hi >= self.left else 0
            s.raw = s.raw[keep_from - s.offset:]
            s.offset = keep_from
        return y

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "streams": [
            {"raw": s.raw.copy(), "offset": s.offset, "released": s.released, "ema": s.ema,
             "open": s.open} for s in self.streams]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint's reward smoothing is {state['mode']!r}, the config's "
                             f"is {self.mode!r}")
        if len(state["streams"]) != len(self.streams):
            raise ValueError(f"checkpoint has {len(state['streams'])} reward smoothing streams, "
                             f"expected {len(self.streams)}")
        for s, d in zip(self.streams, state["streams"]):
            s.raw, s.offset, s.released = np.asarray(d["raw"], np.float64), d["offset"], \
                d["released"]
            s.ema, s.open = d["ema"], d["open"]


#: what ``replay.smoothing`` may set: :class:`RewardSmoother`'s arguments but ``num_streams``
SMOOTHING_OPTIONS = [p for p in inspect.signature(RewardSmoother).parameters if p != "num_streams"]


def make_smoother(cfg: Mapping[str, Any] | str | None, num_streams: int = 1) -> RewardSmoother:
    """A :class:`RewardSmoother` from the ``replay.smoothing`` config node (its arguments:
    ``mode``, ``sigma``, ``window``, ``alpha``, ``edge``; absent ones keep their defaults), from a
    mode name, or ``none`` for ``None``."""
    if cfg is None or isinstance(cfg, str):
        return RewardSmoother(cfg or "none", num_streams)
    options = dict(cfg)
    unknown = sorted(set(options) - set(SMOOTHING_OPTIONS))
    if unknown:
        raise ValueError(f"unknown replay.smoothing key(s) {unknown}; valid: {SMOOTHING_OPTIONS}")
    return RewardSmoother(num_streams=num_streams, **options)
