"""Audio-visual Atari (envs.atari_av), the audio codecs of the world model, inversion and WAV."""

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from envs.atari_av import LogMel, LogMelTransform, mel_filterbank, wrap_av
from worldrl.audio import logmel_to_waveform, read_wav, spectrogram_image, write_wav
from worldrl.backbones import BACKBONES
from worldrl.obs import MultiEncoder, split
from worldrl.world_model import WorldModel

torch.set_num_threads(1)

CFG = LogMel()
SR = CFG.sample_rate


def tone(freq, seconds_samples=2048, amp=0.5):
    t = np.arange(seconds_samples) / SR
    return np.round(128 + 127 * amp * np.sin(2 * np.pi * freq * t)).clip(0, 255).astype(np.uint8)


def test_logmel_shape_scale_and_silence():
    lm = LogMelTransform()
    assert CFG.frames(2048) == 7 and lm.fbank.shape == (257, 40)
    silence = np.full(2048, 128, np.uint8)
    out = lm(silence)
    assert out.shape == (7, 40) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(7, 40))  # silence: a constant (zero) frame
    # a constant non-128 level is a DC offset, removed per step: also silent
    assert torch.equal(lm(np.full(2048, 200, np.uint8)), torch.zeros(7, 40))
    # a 1 kHz tone at half scale: every frame alike, loudest in the band around 1 kHz
    x = lm(tone(1000.0))
    assert (x.std(0).max() < 0.05) and 8.0 < float(x.max()) < 12.0
    edges = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 15700 / 700), 42) / 2595) - 1)
    band = int(x.mean(0).argmax())
    assert edges[band] < 1000.0 < edges[band + 2]
    # batch shapes pass through; louder is larger (log scale)
    both = lm(np.stack([tone(1000.0, amp=0.25), tone(1000.0, amp=0.5)]))
    assert both.shape == (2, 7, 40) and both[1].max() > both[0].max() + 1.0


def test_filterbank_is_htk_and_rejects_empty_bands():
    fb = mel_filterbank()
    assert (fb >= 0).all() and (fb.max(0).values > 0).all()
    peaks = fb.argmax(0)
    assert (peaks[1:] >= peaks[:-1]).all()  # band centres increase with frequency
    with pytest.raises(ValueError, match="n_mels"):
        mel_filterbank(LogMel(n_mels=128))


class FakeALE(gym.Env):
    """Frameskip-1 env whose frame k has pixels of value k % 256 and 512 sound samples equal to
    k % 256 (frame 0 is the reset frame); terminates after ``length`` frames."""

    def __init__(self, length=1000):
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (210, 160, 3), np.uint8),
            "sound": gym.spaces.Box(0, 255, (512,), np.uint8),
        })
        self.action_space = gym.spaces.Discrete(3)
        self.length, self.k = length, 0

    def _obs(self):
        v = self.k % 256
        return {"image": np.full((210, 160, 3), v, np.uint8), "sound": np.full(512, v, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return self._obs(), {"lives": 3}

    def step(self, action):
        self.k += 1
        return self._obs(), 0.0, self.k >= self.length, False, {"lives": 3}


def frames_of(env):
    return env.waveform.reshape(4, 512)[:, 0].astype(int).tolist()


def test_audio_and_pixels_stay_aligned_through_action_repeat():
    env = wrap_av(FakeALE(length=22), noops=0)
    lm = LogMelTransform()
    obs, _ = env.reset(seed=0)
    assert frames_of(env) == [128, 128, 128, 0]  # before the reset frame: silence
    assert set(obs) == {"pixels", "life_loss", "audio"} and obs["audio"].shape == (7, 40)
    assert env.observation_space["audio"].shape == (7, 40)
    for t in range(1, 6):
        obs, _, terminated, _, _ = env.step(0)
        # the audio window is all 4 frames of this step, oldest first ...
        assert frames_of(env) == [4 * t - 3, 4 * t - 2, 4 * t - 1, 4 * t]
        # ... the pixels the max of its last two frames: the same step
        assert (obs["pixels"] == 4 * t).all()
        np.testing.assert_array_equal(obs["audio"], lm(env.waveform).numpy())
        assert not terminated
    # the episode ends at frame 22, in the middle of step 6: the window reaches back, as pixels do
    obs, _, terminated, _, _ = env.step(0)
    assert terminated and frames_of(env) == [19, 20, 21, 22] and (obs["pixels"] == 22).all()
    # reset no-ops are frames too
    env = wrap_av(FakeALE(), noops=30)
    env.reset(seed=3)
    n = frames_of(env)[-1]
    assert frames_of(env) == ([128] * max(0, 3 - n) + list(range(max(0, n - 3), n + 1)))


def test_atari100k_av_matches_atari100k_pixels():
    pytest.importorskip("ale_py")
    import envs

    av, plain = envs.make("atari100k_av_pong", seed=0), envs.make("atari100k_pong", seed=0)
    assert av.observation_spec["audio"].shape[-2:] == (7, 40)
    actions = torch.randint(0, plain.action_spec.shape[-1], (12,), generator=torch.Generator())
    a_td, p_td = av.reset(), plain.reset()
    for a in actions:
        act = F.one_hot(a, plain.action_spec.shape[-1])
        a_td = av.step(a_td.set("action", act))["next"]
        p_td = plain.step(p_td.set("action", act))["next"]
        assert torch.equal(a_td["pixels"], p_td["pixels"])  # sound_obs changes no emulation
        assert a_td["audio"].dtype == torch.float32 and (a_td["audio"] >= 0).all()
    av.close()
    plain.close()


SPACE = {"pixels": ((3, 64, 64), torch.uint8), "audio": ((7, 40), torch.float32)}
SMALL = dict(deter=64, hidden=16, stoch=4, classes=5)
CODEC = dict(units=32, depth=2, mults=[1, 2, 2, 2], kernel=3, strided=True)


def make_wm(space=SPACE, backbone="rssm", **kw):
    torch.manual_seed(0)
    return WorldModel(space, 3, backbone, SMALL, encoder=CODEC,
                      decoder={**CODEC, "bspace": 0}, reward_head={"units": 8},
                      cont_head={"units": 8}, **kw)


def batch_of(B=2, T=6, seed=0, pixels=True):
    gen = torch.Generator().manual_seed(seed)
    b = {
        "action": F.one_hot(torch.randint(0, 3, (B, T), generator=gen), 3).float(),
        "reward": torch.zeros(B, T), "is_first": torch.zeros(B, T, dtype=torch.bool),
        "terminated": torch.zeros(B, T, dtype=torch.bool),
        "audio": torch.rand(B, T, 7, 40, generator=gen) * 8,
    }
    b["is_first"][:, 0] = True
    if pixels:
        b["pixels"] = torch.randint(0, 256, (B, T, 3, 64, 64), generator=gen, dtype=torch.uint8)
    return b


def test_codecs_take_audio_keys():
    assert split(SPACE)["audio"] == {"audio": (7, 40)}
    assert split(SPACE, ["audio"]) == {"audio": {"audio": (7, 40)}}  # explicit audio keys
    enc = MultiEncoder(SPACE, **CODEC)
    assert enc.keys_of("audio") == ["audio"]
    out = enc({"pixels": torch.zeros(2, 5, 3, 64, 64, dtype=torch.uint8),
               "audio": torch.zeros(2, 5, 7, 40)})
    assert out.shape == (2, 5, enc.out_features) == (2, 5, enc.parts.image.out_features + 32)
    wm = make_wm()
    assert wm.obs_keys == ["audio", "pixels"] and wm.audio_keys == ["audio"]
    total, terms, _, metrics = wm.loss(batch_of())
    assert set(terms) == {"audio", "pixels", "rew", "con", "dyn", "rep"}
    assert terms["audio"].shape == (2, 6) and "loss/audio" in metrics
    total.backward()
    assert all(p.grad is not None for p in wm.encoder.parts.audio.parameters())
    assert all(p.grad is not None for p in wm.decoder.parts.audio.parameters())


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_open_loop_shows_spectrograms(backbone):
    wm = make_wm(backbone=backbone)
    b = batch_of(T=7)
    videos, metrics = wm.open_loop(b, context=3)
    assert set(videos) == {"pixels", "audio"}
    img = videos["audio"]
    assert img.dtype == torch.uint8 and img.shape == (2, 3, 3 * 40, 7 * 7)
    assert torch.isfinite(metrics["openloop/audio_mse"])
    assert (img[:, :, :, 3 * 7] == 255).all()  # where imagination starts
    # the truth panel is the colour-mapped truth: silence is the bottom colour of the map
    quiet = spectrogram_image(torch.zeros(1, 2, 7, 40), torch.zeros(1, 2, 7, 40))
    assert (quiet == quiet[:, :, :1, :1]).all()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_audio_head_overfits_a_fixed_batch(backbone):
    wm = make_wm({"audio": SPACE["audio"]}, backbone)
    b = batch_of(B=2, T=5, pixels=False)
    # tone-like steps: a band of loudness 8 at a random mel band, different at every step
    band = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0)).float()
    bump = 8 * torch.exp(-0.5 * ((torch.arange(40) - band[..., None, None]) / 2) ** 2)
    b["audio"] = bump.expand(2, 5, 7, 40).clone()
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        _, terms, _, _ = wm.loss(b)
        loss = terms["audio"].mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    variance = float(b["audio"].var(dim=(0, 1)).sum())  # loss of predicting the batch mean
    assert losses[-1] < 0.05 * losses[0] and losses[-1] < 0.1 * variance, losses[::20]


def test_griffin_lim_roundtrip_and_wav(tmp_path):
    lm = LogMelTransform()
    steps = np.concatenate([tone(440.0, 2048 * 2), tone(2000.0, 2048 * 2)]).reshape(4, 2048)
    spec = lm(steps)  # [4, 7, 40]
    wave = logmel_to_waveform(spec, lm.fbank, n_fft=512, hop=256, offset=1e-3, iters=32)
    assert wave.shape == (4 * 2048,) and torch.isfinite(wave).all()
    again = lm((wave.clamp(-1, 1) * 128 + 128).round().clamp(0, 255).numpy().reshape(4, 2048))
    # the reconstruction has the same spectral content: the log-mel error is a fraction of the
    # signal (silence would give 1), and each step's loudest band is the tone's
    err = (again - spec).abs().mean() / spec.abs().mean()
    assert err < 0.5, float(err)
    assert torch.equal(again.mean(1).argmax(-1), spec.mean(1).argmax(-1))
    path = write_wav(tmp_path / "x.wav", wave.numpy(), SR)
    back, rate = read_wav(path)
    assert rate == SR and len(back) == 4 * 2048
    np.testing.assert_allclose(back, wave.clamp(-1, 1).numpy(), atol=1e-4)


def _checkpoint(tmp_path, overrides):
    from omegaconf import OmegaConf

    from agents.run_dir import save_checkpoint
    from agents.train import agent_state, build_agent, build_env
    from worldrl.config import load_config

    cfg = load_config(["preset=debug", *overrides])
    env = build_env(cfg.env, seed=0, num_envs=1)
    agent, _ = build_agent(cfg, env, torch.device("cpu"))
    env.close()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"agent": agent_state(agent), "counters": {"env_steps": 0},
                           "config": OmegaConf.to_container(cfg, resolve=True)})
    return path


def test_cli_writes_imagined_audio(tmp_path, capsys):
    pytest.importorskip("ale_py")
    import json

    from agents.cli import main

    ckpt = _checkpoint(tmp_path, ["env=atari100k_av", "env.task=ms_pacman"])
    out, truth, png = tmp_path / "model.wav", tmp_path / "truth.wav", tmp_path / "spec.png"
    assert main(["audio", str(ckpt), "--out", str(out), "--truth", str(truth), "--png", str(png),
                 "--context", "2", "--horizon", "3", "--iters", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 5 and result["sample_rate"] == SR
    for path in (out, truth):
        wave, rate = read_wav(path)
        assert rate == SR and len(wave) == 5 * 2048
    assert png.stat().st_size > 0
    # a checkpoint without audio observations is refused with a clear message
    ckpt = _checkpoint(tmp_path, ["env=gym"])
    assert main(["audio", str(ckpt), "--out", str(out)]) == 2
    assert "atari100k_av" in capsys.readouterr().err
