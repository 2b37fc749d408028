"""Audio-visual Atari100k: the Atari100k protocol (``envs/atari.py``) plus the game's sound.

ALE runs with ``sound_obs=True`` and ``frameskip=1``: every raw frame yields the frame and 512
unsigned 8-bit samples of the TIA chip's mono sound (128 is silence). ALE's TIA sound generator
runs at 31,400 Hz (Stella's ``freq`` = ``tiafreq`` = 31400) and emits 512 samples per frame, so the
samples carry the pitch of a 31,400 Hz stream while a 60 Hz frame lasts 16.7 ms (512 samples at
31.4 kHz are 16.3 ms); we use 31,400 Hz (pitch-correct, about 2% faster than real time).

Per agent step (action repeat ``repeat = 4``) the observation has

- ``pixels``: uint8 ``[3, 64, 64]``, the pixel-wise max of the step's last two frames (as
  ``atari100k``);
- ``audio``: float32 ``[F, M]``, the log-mel spectrogram of **all** samples of the step's
  ``repeat`` frames (``repeat * 512 = 2048`` samples), oldest first, so ``audio[t]`` and
  ``pixels[t]`` come from the same raw frames. Exactly: the audio window is the ``repeat`` raw
  frames up to and including the one the pixels end with; it holds silence (128) for frames
  before the episode's reset frame; reset no-ops count as frames; when the episode ends inside a
  step the window reaches back into the previous step, as the pixel max-pool does.

Log-mel parameters (:class:`LogMel`): ``sample_rate = 31400``, ``n_fft = 512`` (16.3 ms, 61 Hz
bins), periodic Hann window, ``hop = 256``, no padding, so ``F = 1 + (2048 - 512) / 256 = 7``
frames per step (frames 0, 2, 4, 6 sit on the 4 raw frames); ``M = n_mels = 40`` HTK-mel
triangular bands from ``f_min = 0`` to ``f_max = 15700`` Hz (no area normalisation, as
torchaudio's ``melscale_fbanks(norm=None, mel_scale='htk')``); waveform ``(x - 128) / 128`` with
the step's mean removed (the TIA's output is unipolar: a tone would otherwise put a DC offset in
the lowest band); power ``|STFT|^2 / sum(window^2)``; ``audio = ln(mel + offset) - ln(offset)``
with ``offset = 1e-3``, so silence is exactly 0 and a full-scale tone is about 9-12.

This module knows nothing of models; ``worldrl.audio`` inverts the transform for listening.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.atari import AtariPreprocessing, ale_id, make_ale

SAMPLE_RATE = 31400  # Hz, ALE/Stella TIA sound
SAMPLES_PER_FRAME = 512
SILENCE = 128


@dataclass(frozen=True)
class LogMel:
    """Log-mel spectrogram parameters (see the module docstring)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    hop: int = 256
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    offset: float = 1e-3

    def frames(self, samples: int) -> int:
        """STFT frames of a ``samples``-long step (no padding)."""
        if samples < self.n_fft:
            raise ValueError(f"{samples} samples per step are fewer than n_fft={self.n_fft}")
        return 1 + (samples - self.n_fft) // self.hop

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: LogMel = LogMel()) -> torch.Tensor:
    """HTK-mel triangular filterbank ``[n_fft // 2 + 1, n_mels]`` (float32, no normalisation)."""
    f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
    n_freq = cfg.n_fft // 2 + 1
    freqs = np.linspace(0.0, cfg.sample_rate / 2, n_freq)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(f_max), cfg.n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    empty = np.flatnonzero(fb.max(0) == 0)
    if len(empty):
        raise ValueError(f"mel bands {empty.tolist()} hold no FFT bin: lower n_mels={cfg.n_mels} "
                         f"or raise n_fft={cfg.n_fft}")
    return torch.as_tensor(fb, dtype=torch.float32)


class LogMelTransform:
    """uint8 samples ``[..., N]`` -> log-mel ``[..., F, M]`` (float32) with torch.stft."""

    def __init__(self, cfg: LogMel = LogMel()):
        self.cfg = cfg
        self.window = torch.hann_window(cfg.n_fft, periodic=True)
        self.fbank = mel_filterbank(cfg)
        self.norm = float(self.window.square().sum())

    def __call__(self, samples) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(samples)).float()
        x = (x - SILENCE) / 128.0
        x = x - x.mean(-1, keepdim=True)
        batch = x.shape[:-1]
        spec = torch.stft(x.reshape(-1, x.shape[-1]), self.cfg.n_fft, self.cfg.hop,
                          window=self.window, center=False, return_complex=True)
        power = spec.abs().square() / self.norm  # [N, n_freq, F]
        mel = power.transpose(-1, -2) @ self.fbank  # [N, F, M]
        out = torch.log(mel + self.cfg.offset) - math.log(self.cfg.offset)
        return out.clamp_min(0.0).reshape(*batch, *out.shape[-2:])


class SoundTap(gym.Wrapper):
    """Splits a frameskip-1 env's ``{'image', 'sound'}`` observation: the image goes on, the sound
    of the last ``frames`` raw frames is kept in :attr:`sound` (oldest first; silence after a
    reset until frames arrive)."""

    def __init__(self, env: gym.Env, frames: int):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or not {"image", "sound"} <= set(space.spaces):
            raise ValueError(f"SoundTap needs an env with 'image' and 'sound' observations "
                             f"(ALE with sound_obs=True), got {space}")
        self.observation_space = space["image"]
        n = int(space["sound"].shape[0])
        self.sound = np.full((frames, n), SILENCE, np.uint8)

    def _push(self, sound) -> None:
        self.sound[:-1] = self.sound[1:]
        self.sound[-1] = np.asarray(sound, np.uint8).reshape(-1)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.sound[:] = SILENCE
        self._push(obs["sound"])
        return obs["image"], info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._push(obs["sound"])
        return obs["image"], reward, terminated, truncated, info


class AtariAVPreprocessing(AtariPreprocessing):
    """:class:`~envs.atari.AtariPreprocessing` over a :class:`SoundTap`, adding ``audio``."""

    def __init__(self, env: SoundTap, repeat: int = 4, size: tuple[int, int] = (64, 64),
                 noops: int = 30, max_frames: int = 108_000, audio: LogMel | None = None):
        if not isinstance(env, SoundTap) or env.sound.shape[0] != repeat:
            raise ValueError("AtariAVPreprocessing needs a SoundTap keeping `repeat` frames")
        super().__init__(env, repeat=repeat, size=size, noops=noops, max_frames=max_frames)
        self._tap = env
        self.logmel = LogMelTransform(audio or LogMel())
        shape = (self.logmel.cfg.frames(env.sound.size), self.logmel.cfg.n_mels)
        self.observation_space = gym.spaces.Dict({
            **self.observation_space.spaces,
            "audio": gym.spaces.Box(0.0, np.inf, shape, np.float32),
        })

    @property
    def waveform(self) -> np.ndarray:
        """uint8 ``[repeat * 512]``: the raw samples behind the current ``audio``."""
        return self._tap.sound.reshape(-1).copy()

    def _obs(self, life_loss: bool) -> dict[str, np.ndarray]:
        obs = super()._obs(life_loss)
        obs["audio"] = self.logmel(self._tap.sound.reshape(-1)).numpy()
        return obs


def wrap_av(env: gym.Env, repeat: int = 4, size=(64, 64), noops: int = 30,
            max_frames: int = 108_000, audio: LogMel | dict | None = None) -> AtariAVPreprocessing:
    """The audio-visual protocol around any frameskip-1 env with ``{'image', 'sound'}``
    observations (ALE with ``sound_obs=True``, or a fake one in tests)."""
    if isinstance(audio, dict):
        audio = LogMel(**audio)
    return AtariAVPreprocessing(SoundTap(env, repeat), repeat=repeat, size=tuple(size),
                                noops=noops, max_frames=max_frames, audio=audio)


def make_atari100k_av(game: str, repeat: int = 4, size=(64, 64), noops: int = 30,
                      max_frames: int = 108_000, audio: dict | None = None) -> gym.Env:
    """Audio-visual Atari100k for one of the 26 games (``pixels``, ``audio``, ``life_loss``)."""
    ale_id(game)  # validates the name before importing anything
    return wrap_av(make_ale(game, sound_obs=True), repeat=repeat, size=size, noops=noops,
                   max_frames=max_frames, audio=audio)
