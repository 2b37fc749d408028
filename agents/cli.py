"""The ``worldrl`` command line.

    worldrl train [OVERRIDE ...]          train (or resume) a run; Hydra overrides, e.g.
                                          env=atari100k env.task=pong backbone=rssm size=s seed=1
    worldrl train -m OVERRIDE ...         a sweep: the product of comma-separated values, one
                                          run each, through a Hydra launcher (agents/sweep.py)
    worldrl eval CHECKPOINT [--episodes N] [--max-steps N] [--sample]
                                          evaluate a checkpoint (file or run directory)
    worldrl plot RUN_DIR [--out FILE]     learning-curve PNG from a run's CSVs
    worldrl report PATH ... [--out DIR]   tables, JSON and curves over every run below the paths:
                                          final evals with CIs over seeds, Atari100k HNS
                                          aggregates with rliable, DreamerV3's curves beside ours
    worldrl config [OVERRIDE ...]         print the composed config
    worldrl audio CHECKPOINT --out X.wav [--context N] [--horizon N] [--truth Y.wav] [--png Z]
                                          a world model's imagined audio of a rollout (audio-visual
                                          envs): observe N steps, imagine the rest, WAV via
                                          inverse mel + Griffin-Lim (worldrl/audio.py)

An expected failure (a bad value, a run directory or checkpoint that does not fit, a full or
read-only disk) prints one line and exits 2; ``--debug`` (or ``WORLDRL_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldrl", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an expected failure (also WORLDRL_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or resume a run")
    t.add_argument("overrides", nargs="*", help="Hydra overrides: group=name, key=value")
    t.add_argument("-m", "--multirun", action="store_true",
                   help="sweep: train the product of comma-separated values (seed=0,1 "
                   "env.task=pong,boxing) through hydra/launcher=basic|joblib|submitit_slurm|"
                   "submitit_local|ray, one run directory per job under hydra.sweep.dir")
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint", help="checkpoint file or run directory")
    e.add_argument("--episodes", type=int, default=None)
    e.add_argument("--max-steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=12345)
    e.add_argument("--sample", action="store_true",
                   help="sample actions (as in training and DreamerV3's evaluation), not the mode")
    pl = sub.add_parser("plot", help="plot a run's learning curve")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curve.png)")
    r = sub.add_parser("report", help="tables and curves over runs and seeds (rliable)")
    r.add_argument("paths", nargs="+", help="run directories or folders holding runs")
    r.add_argument("--out", default="report", help="folder for report.md, report.json, PNGs")
    r.add_argument("--no-plots", action="store_true", help="tables and JSON only")
    c = sub.add_parser("config", help="print the composed config")
    c.add_argument("overrides", nargs="*")
    a = sub.add_parser("audio", help="write the imagined audio of a rollout as a WAV file")
    a.add_argument("checkpoint", help="checkpoint file or run directory (audio-visual env)")
    a.add_argument("--out", required=True, help="WAV path for the model's audio")
    a.add_argument("--context", type=int, default=8, help="steps observed before imagining")
    a.add_argument("--horizon", type=int, default=56, help="steps imagined after the context")
    a.add_argument("--truth", default=None, help="also write the real audio's spectrogram, "
                   "inverted the same way, to this WAV path")
    a.add_argument("--png", default=None, help="also write the truth/model/error spectrogram")
    a.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations")
    a.add_argument("--seed", type=int, default=0)
    return p


def audio_rollout(checkpoint: str | Path, out: str | Path, context: int = 8, horizon: int = 56,
                  truth: str | Path | None = None, png: str | Path | None = None,
                  iters: int = 64, seed: int = 0) -> dict:
    """Run the checkpoint's policy in its env for ``context + horizon`` steps; the world model
    observes the first ``context`` and imagines the rest from the actions taken (open loop); its
    decoded ``audio`` becomes a WAV file (inverse mel + Griffin-Lim; :mod:`worldrl.audio`)."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from agents.acting import ActingModule
    from agents.evaluate import read_checkpoint, trained_agent
    from envs.atari_av import LogMel, mel_filterbank
    from worldrl import audio as wav

    if context < 1 or horizon < 1:
        raise ValueError(f"--context and --horizon must be >= 1, got {context}, {horizon}")
    payload, cfg = read_checkpoint(checkpoint)
    env, agent, obs_keys = trained_agent(checkpoint, payload, cfg, seed, 1, torch.device("cpu"))
    if "audio" not in getattr(getattr(agent, "wm", None), "audio_keys", ()):
        env.close()
        raise ValueError(f"{checkpoint}: the agent has no world model of 'audio' observations "
                         f"(env suite {cfg.env.suite!r}); train on env=atari100k_av")
    policy = ActingModule(agent, obs_keys, env.action_spec, mode="eval")
    with torch.no_grad():
        td = env.rollout(context + horizon, policy, break_when_any_done=True)
    env.close()
    T = td.shape[0]
    if T <= context:
        raise ValueError(f"the episode ended after {T} steps, within --context={context}")
    batch = {k: td[k][None] for k in obs_keys}
    batch.update(action=td["action"].float()[None], is_first=td["is_first"].reshape(1, T),
                 reward=torch.zeros(1, T), terminated=torch.zeros(1, T, dtype=torch.bool))
    agent.eval()
    pred = agent.wm.predict_open_loop(batch, context, max_batch=1)["audio"].pred()[0]
    real = batch["audio"][0].float()
    params = LogMel(**OmegaConf.to_container(cfg.env.options.get("audio") or {}))
    fbank = mel_filterbank(params)
    opts = dict(n_fft=params.n_fft, hop=params.hop, offset=params.offset, iters=iters, seed=seed)
    written = {"out": str(wav.write_wav(out, wav.logmel_to_waveform(pred.clamp_min(0), fbank,
                                                                    **opts),
                                        params.sample_rate))}
    if truth:
        written["truth"] = str(wav.write_wav(truth, wav.logmel_to_waveform(real, fbank, **opts),
                                             params.sample_rate))
    if png:
        import imageio

        img = wav.spectrogram_image(real[None], pred[None], context)[0].permute(1, 2, 0)
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        imageio.imwrite(png, np.repeat(np.repeat(img.numpy(), 2, 0), 2, 1))
        written["png"] = str(png)
    open_loop = (pred[context:] - real[context:]).square().mean()
    copy_last = (real[context - 1:context] - real[context:]).square().mean()
    return {**written, "steps": T, "context": context, "sample_rate": params.sample_rate,
            "openloop_audio_mse": float(open_loop), "copy_last_audio_mse": float(copy_last)}


def _quiet_thread_disk_errors(command: str, storage_error) -> None:
    """A background writer (TensorBoard's event thread) that hits a full or read-only disk
    prints one line, as the main thread's errors do, not a thread traceback."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "worldrl", False):
        return

    def hook(args):
        if issubclass(args.exc_type, OSError):
            err = storage_error(Path(getattr(args.exc_value, "filename", None) or "?"),
                                args.exc_value)
            print(f"worldrl {command}: error: {err} (in a background writer)", file=sys.stderr)
        else:
            previous(args)

    hook.worldrl = True
    threading.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train" and not args.multirun and argv is None:
        from agents.stop import catch_early

        catch_early()  # a SIGTERM while the run starts up: the same clean stop as later
    from agents.run_dir import (
        DISK_ERRNOS,
        CheckpointError,
        RunDirError,
        StorageError,
        storage_error,
    )
    from worldrl.config import ConfigError

    debug = args.debug or os.environ.get("WORLDRL_DEBUG", "") == "1"
    if not debug:
        _quiet_thread_disk_errors(args.command, storage_error)

    try:
        if args.command == "train" and args.multirun:
            from agents.sweep import sweep

            outcomes = sweep(args.overrides)
            return 2 if any(o["status"] in ("failed", "not started") for o in outcomes) else 0
        if args.command == "train":
            from agents.train import train
            from worldrl.config import load_config

            summary = train(load_config(args.overrides))
            if "stopped" in summary:  # stopped cleanly: later stop signals wait for the exit
                import signal

                for sig in (signal.SIGTERM, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_IGN)
            print(json.dumps(summary))
        elif args.command == "eval":
            from agents.evaluate import evaluate_checkpoint

            result = evaluate_checkpoint(args.checkpoint, episodes=args.episodes,
                                         max_steps=args.max_steps, seed=args.seed,
                                         sample=args.sample or None)
            print(json.dumps(result))
        elif args.command == "plot":
            from agents.plot import plot_run

            print(plot_run(Path(args.run_dir), args.out))
        elif args.command == "report":
            from agents.report import report

            result = report(args.paths, args.out, plots=not args.no_plots)
            print((Path(args.out) / "report.md").read_text(), end="")
            print(f"wrote {Path(args.out) / 'report.md'}, report.json and "
                  f"{len([r for r in result['rows'] if r.get('png')])} curve PNGs")
        elif args.command == "config":
            from worldrl.config import load_config, to_yaml

            print(to_yaml(load_config(args.overrides)), end="")
        elif args.command == "audio":
            print(json.dumps(audio_rollout(args.checkpoint, args.out, args.context, args.horizon,
                                           args.truth, args.png, args.iters, args.seed)))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"worldrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, RunDirError, CheckpointError, StorageError, ValueError, ImportError,
            OSError) as err:
        if debug:
            raise
        if isinstance(err, OSError) and err.filename and err.errno in DISK_ERRNOS:
            err = storage_error(Path(err.filename), err)  # disk full, read-only ...
        print(f"worldrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
