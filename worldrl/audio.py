"""Audio diagnostics: spectrogram images, log-mel -> waveform (inverse mel, Griffin-Lim), WAV.

The audio observation of ``atari100k_av`` (``envs/atari_av.py``) is, per agent step, a log-mel
spectrogram ``[F, M]`` of the step's raw samples: ``audio = ln(mel + offset) - ln(offset)`` (0 is
silence) with a mel power spectrogram from an ``n_fft``-point STFT with a periodic Hann window,
hop ``hop`` and no padding inside the step, normalised by ``sum(window ** 2)``. This module inverts
that, given the same parameters and filterbank (``envs.atari_av.mel_filterbank``); it imports
torch only, so ``worldrl`` stays independent of ``envs``.

Inversion (:func:`logmel_to_waveform`):

1. ``mel = exp(audio) * offset - offset``, clipped at 0;
2. inverse mel: non-negative least squares against the ``[n_freq, M]`` filterbank (100
   multiplicative updates; energy inside a band is spread over its FFT bins, harmonics finer than
   a band are lost);
3. Griffin-Lim (fast GL with momentum 0.99, Perraudin et al. 2013) on the stream's regular grid of
   frames (``hop`` apart, across steps); the one frame per step boundary that straddles two steps
   is not in the observation and is left free (its magnitude is that of the current estimate);
4. the waveform is zero-mean (the encoder removed each step's DC offset).

Quality limits: phase is estimated, not known (GL's metallic/phasey artefacts, worst on the
square-wave tones of the Atari TIA chip); 40 mel bands over 0-15.7 kHz smear pitch (a band is
about 60 Hz wide at the bottom and 1 kHz at the top); a world model's blurred or averaged
spectrogram turns into noise-like sound. It is a diagnostic to listen to what the model predicts,
not a faithful reconstruction.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "spectrogram_image",
    "mel_to_power",
    "griffin_lim",
    "logmel_to_waveform",
    "write_wav",
    "read_wav",
]

# a small perceptual colour map (viridis anchors) for spectrogram images
_CMAP = torch.tensor([
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
], dtype=torch.float32)


def _colour(x: Tensor) -> Tensor:
    """``[...]`` in [0, 1] -> uint8 RGB ``[..., 3]``."""
    pos = x.clamp(0, 1) * (len(_CMAP) - 1)
    i0 = pos.floor().long().clamp(max=len(_CMAP) - 2)
    frac = (pos - i0)[..., None]
    rgb = _CMAP[i0] * (1 - frac) + _CMAP[i0 + 1] * frac
    return rgb.round().to(torch.uint8)


def spectrogram_image(truth: Tensor, model: Tensor, context: int = 0,
                      vmax: float | None = None) -> Tensor:
    """Open-loop spectrograms as an RGB image per batch entry: uint8 ``[B, 3, 3M, T*F]``.

    ``truth`` and ``model`` are ``[B, T, F, M]`` log-mel steps. Panels from top: truth, model,
    ``|model - truth|``; time runs left to right (``F`` columns per step), low frequencies at the
    bottom of each panel; the colour scale is ``[0, vmax]`` (default: the largest value of
    ``truth`` and ``model``). A white column marks where imagination starts (after ``context``
    steps).
    """
    if truth.shape != model.shape or truth.ndim != 4:
        raise ValueError(f"truth and model must both be [B, T, F, M], got {tuple(truth.shape)} "
                         f"and {tuple(model.shape)}")
    B, T, F, M = truth.shape
    truth, model = truth.detach().float().cpu(), model.detach().float().cpu()
    top = vmax if vmax is not None else max(float(truth.max()), float(model.max()), 1e-6)

    def panel(x: Tensor) -> Tensor:  # [B, T, F, M] -> [B, M, T*F], low frequency at the bottom
        return x.reshape(B, T * F, M).transpose(1, 2).flip(1)

    rows = torch.cat([panel(truth), panel(model), panel((model - truth).abs())], 1) / top
    img = _colour(rows)  # [B, 3M, T*F, 3]
    if 0 < context < T:
        img[:, :, context * F] = 255
    return img.permute(0, 3, 1, 2).contiguous()


def mel_to_power(logmel: Tensor, fbank: Tensor, offset: float, iters: int = 100) -> Tensor:
    """Log-mel ``[..., F, M]`` -> power spectrogram ``[..., F, n_freq]``: non-negative least
    squares ``min |p @ fbank - mel|^2, p >= 0`` by multiplicative updates (Lee & Seung), started
    from ``mel @ fbank.T``. (The pseudo-inverse rings into negative values; clipped, they leak
    energy into silent bands, which the log scale magnifies.)"""
    mel = (torch.exp(logmel.double()) * offset - offset).clamp_min(0.0)
    fb = fbank.double()
    num = mel @ fb.T
    p = num.clamp_min(1e-12)
    gram = fb @ fb.T  # [n_freq, n_freq]
    for _ in range(iters):
        p = p * num / (p @ gram + 1e-12)
    return p.float()


def _window(n_fft: int) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float64)


def _stft(x: Tensor, n_fft: int, hop: int) -> Tensor:
    frames = x.unfold(-1, n_fft, hop) * _window(n_fft)
    return torch.fft.rfft(frames, dim=-1)  # [J, n_freq]


def _istft(spec: Tensor, n_fft: int, hop: int, length: int) -> Tensor:
    win = _window(n_fft)
    frames = torch.fft.irfft(spec, n=n_fft, dim=-1) * win  # [J, n_fft]
    J = frames.shape[0]
    idx = (torch.arange(J)[:, None] * hop + torch.arange(n_fft)).reshape(-1)
    out = torch.zeros(length, dtype=frames.dtype).index_add_(0, idx, frames.reshape(-1))
    norm = torch.zeros(length, dtype=frames.dtype).index_add_(0, idx, win.square().repeat(J))
    return out / norm.clamp_min(1e-3)


def griffin_lim(magnitude: Tensor, known: Tensor, n_fft: int, hop: int, iters: int = 64,
                momentum: float = 0.99, seed: int = 0) -> Tensor:
    """Fast Griffin-Lim on a regular frame grid.

    ``magnitude [J, n_freq]``: STFT magnitudes of frames ``j * hop``; ``known [J]`` bool: frames
    whose magnitude is given (the others follow the current estimate). Returns the waveform
    ``[(J - 1) * hop + n_fft]`` (float64).
    """
    J, n_freq = magnitude.shape
    if n_freq != n_fft // 2 + 1:
        raise ValueError(f"magnitude has {n_freq} bins; n_fft={n_fft} gives {n_fft // 2 + 1}")
    length = (J - 1) * hop + n_fft
    mag = magnitude.double()
    gen = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * torch.pi * torch.rand(J, n_freq, generator=gen, dtype=torch.float64))
    known = known.bool()[:, None]
    rebuilt = torch.zeros(J, n_freq, dtype=torch.complex128)
    prev = torch.zeros_like(rebuilt)
    for _ in range(iters):
        target = torch.where(known, mag, rebuilt.abs())
        x = _istft(target * angles, n_fft, hop, length)
        rebuilt = _stft(x, n_fft, hop)
        angles = rebuilt - (momentum / (1 + momentum)) * prev
        angles = angles / (angles.abs() + 1e-16)
        prev = rebuilt
    target = torch.where(known, mag, rebuilt.abs())
    return _istft(target * angles, n_fft, hop, length)


def logmel_to_waveform(audio: Tensor, fbank: Tensor, *, n_fft: int, hop: int, offset: float,
                       iters: int = 64, seed: int = 0) -> Tensor:
    """Log-mel steps ``[T, F, M]`` -> float waveform ``[T * ((F - 1) * hop + n_fft)]``.

    The frames of step ``t`` sit at ``t * S + k * hop`` (``S = (F - 1) * hop + n_fft`` samples per
    step); ``S`` must be a multiple of ``hop`` so that all frames lie on one grid.
    """
    if audio.ndim != 3:
        raise ValueError(f"audio must be [T, F, M], got {tuple(audio.shape)}")
    T, F, M = audio.shape
    S = (F - 1) * hop + n_fft
    if S % hop:
        raise ValueError(f"samples per step {S} is not a multiple of hop={hop}")
    per = S // hop  # grid frames per step: F observed + the rest straddle the step boundary
    power = mel_to_power(audio, fbank, offset).double()  # [T, F, n_freq]
    mag = (power * _window(n_fft).square().sum()).sqrt()
    J = (T - 1) * per + F
    grid = torch.zeros(J, n_fft // 2 + 1, dtype=torch.float64)
    known = torch.zeros(J, dtype=torch.bool)
    for t in range(T):
        grid[t * per:t * per + F] = mag[t]
        known[t * per:t * per + F] = True
    x = griffin_lim(grid, known, n_fft, hop, iters=iters, seed=seed)
    return x[:T * S].float()


def write_wav(path: str | Path, waveform: Tensor | np.ndarray, sample_rate: int) -> Path:
    """Mono 16-bit PCM WAV of a float waveform in ``[-1, 1]`` (clipped)."""
    x = np.clip(np.asarray(waveform, dtype=np.float64).reshape(-1), -1.0, 1.0)
    pcm = (x * 32767.0).round().astype("<i2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(float waveform in [-1, 1], sample_rate)`` of a mono 16-bit WAV written by
    :func:`write_wav`."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        rate = f.getframerate()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return data.astype(np.float64) / 32767.0, rate
