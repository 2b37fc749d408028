"""The ``worldrl`` command line.

    worldrl train [OVERRIDE ...]          train (or resume) a run; Hydra overrides, e.g.
                                          env=atari100k env.task=pong backbone=rssm size=s seed=1
    worldrl eval CHECKPOINT [--episodes N] [--max-steps N]
                                          evaluate a checkpoint (file or run directory)
    worldrl plot RUN_DIR [--out FILE]     learning-curve PNG from a run's CSVs
    worldrl config [OVERRIDE ...]         print the composed config
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldrl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or resume a run")
    t.add_argument("overrides", nargs="*", help="Hydra overrides: group=name, key=value")
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint", help="checkpoint file or run directory")
    e.add_argument("--episodes", type=int, default=None)
    e.add_argument("--max-steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=12345)
    pl = sub.add_parser("plot", help="plot a run's learning curve")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curve.png)")
    c = sub.add_parser("config", help="print the composed config")
    c.add_argument("overrides", nargs="*")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from agents.run_dir import CheckpointError, RunDirError
    from worldrl.config import ConfigError

    try:
        if args.command == "train":
            from agents.train import train
            from worldrl.config import load_config

            summary = train(load_config(args.overrides))
            print(json.dumps(summary))
        elif args.command == "eval":
            from agents.evaluate import evaluate_checkpoint

            result = evaluate_checkpoint(args.checkpoint, episodes=args.episodes,
                                         max_steps=args.max_steps, seed=args.seed)
            print(json.dumps(result))
        elif args.command == "plot":
            from agents.plot import plot_run

            print(plot_run(Path(args.run_dir), args.out))
        elif args.command == "config":
            from worldrl.config import load_config, to_yaml

            print(to_yaml(load_config(args.overrides)), end="")
    except (ConfigError, RunDirError, CheckpointError, ValueError, ImportError,
            FileNotFoundError) as err:
        print(f"worldrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
