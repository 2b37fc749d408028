"""Our DreamerV3 update beside sheeprl 0.8.4's (its DreamerV3 of the Nature paper), on the CPU.

    python -m benchmarks.peer_speed          # sizes s and xs, fp32 and bf16, 1 and 2 threads
    python -m benchmarks.peer_speed --sizes xs --precisions fp32 --threads 1 --rounds 1
    python -m benchmarks.peer_speed --setup-only      # only make sheeprl's virtual environment

Both sides time one full update (world model, imagination, actor and critic, one optimiser step and
the slow critic) on a random Atari-shaped batch of 16 sequences x 64 steps: pixels uint8 [3, 64,
64], 6 one-hot actions (Pong's), random rewards, few is_first (the arithmetic does not depend on
the values). Ours: `DreamerAgent.train_step` built by `benchmarks.train_speed.build_update`.
sheeprl: its own `build_agent` and `train` of `sheeprl.algos.dreamer_v3_5` (and
`update_target_critic`, as its training loop does after every gradient step) on its own Hydra
config, with its Lightning Fabric on the CPU and its metric aggregator (as with its default
`metric.log_level=1`). Each side runs in a long-lived worker process of its own virtual environment
that builds its model once and warms up; then the parent asks the two workers in turn for one timed
update per round (the first side alternates between rounds), so that only one of them computes at
any time. Times are the median and the minimum over the rounds.

sheeprl's environment (made by `ensure_venv`, idempotent; default ~/.cache/worldrl-peer/
sheeprl-0.8.4, or `--venv`): `python -m venv`, then `pip install torch==2.13.0` on its own (the CPU
wheel, or TORCH_INDEX_URL's, as scripts/setup.sh does), then `pip install torch==2.13.0
sheeprl==0.8.4 lightning==2.6.6`. sheeprl 0.8.4 asks for torch>=2.6, lightning>=2.6.1,
hydra-core>=1.3.2,<1.4, gymnasium>=1.1,<2, numpy>=1.26,<3: nothing is older than ours, and this
combination (torch 2.13.0+cpu, lightning 2.6.6, hydra-core 1.3.8, gymnasium 1.4.0) installs and
imports as it is. No Atari package is needed: no environment is made.

The peers. Our agent is DreamerV3 of the 2024+ official code (block GRU, RMSNorm, one LaProp
optimiser, replayed-value loss), which sheeprl 0.8.4 implements as `dreamer_v3_5`; its
`dreamer_v3` (`dreamer_v3_XS` ... `dreamer_v3_XL`) is the 2023 paper's agent. Our `size=s` is the
official `size12m`, sheeprl's algo config `dreamer_v3_5_12M` (same layers and sizes). Our `xs` is
our own CPU preset, smaller than any official size in parts and with stride-2 convolutions;
sheeprl's nearest is `dreamer_v3_5_1M` (the official `size1m`). Both on sheeprl's Atari 100k
experiment `dreamer_v3_5_100k_ms_pacman` (batch 16 x 64), whose environment is not built.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHEEPRL_VERSION = "0.8.4"
TORCH_VERSION = "2.13.0"
LIGHTNING_VERSION = "2.6.6"
DEFAULT_VENV = Path.home() / ".cache" / "worldrl-peer" / f"sheeprl-{SHEEPRL_VERSION}"
PEER_EXP = "dreamer_v3_5_100k_ms_pacman"
PEER_ALGO = {"s": "dreamer_v3_5_12M", "xs": "dreamer_v3_5_1M"}
PRECISIONS = {"fp32": {"amp": False, "fabric": "32-true"},
              "bf16": {"amp": True, "fabric": "bf16-mixed"}}
SIDES = ("ours", "sheeprl")
ACTIONS = 6
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# What reading both codes found (ours: agents/dreamer.py, worldrl/nets.py,
# worldrl/backbones/rssm.py, worldrl/configs; sheeprl 0.8.4: sheeprl/algos/dreamer_v3_5/
# {agent,dreamer_v3_5}.py and sheeprl/configs/algo/dreamer_v3_5*.yaml).
ARCHITECTURE = """\
- Same layer graph at `s` / `dreamer_v3_5_12M` (the official size12m): CNN encoder of 5x5
  stride-1 "same" convolutions, each followed by a 2x2 max-pool, an RMSNorm over the channels and
  SiLU, channels 16 x [2, 3, 4, 4] (64x64 -> 4x4x64 = 1024 features); block GRU with deter 2048 in
  8 blocks, hidden 256, one block-linear dynamics layer, 32 categoricals of 16 classes, 1% unimix,
  prior MLP of 2 layers, posterior of 1; image decoder from a block-linear projection of deter (8
  blocks) plus a 2-layer MLP (2 x 256 units) of the stochastic state, summed, RMSNorm + SiLU, then
  nearest 2x upsampling + 5x5 convolution per stage, sigmoid output; reward (255 bins) and continue
  heads of 1 layer, actor and critic (255 bins) of 3 layers of 256 units; one LaProp optimiser
  (lr 4e-5, eps 1e-20, AGC 0.3, warm-up 1000) over the three parts; slow critic (EMA 0.02);
  replayed-value loss (scale 0.3) with gradients into the world model. The parameter counts
  agree to the unit (8,849,603 / 789,510 / 853,503 when this was written).
- Differences in how the same maths is computed: sheeprl projects the observations for the
  posterior's first layer and the actions for the GRU for the whole sequence at once, outside the
  time loop (ours runs both inside the loop, per step, on `concat(deter, embed)`); sheeprl's
  RMSNorm is the fused `F.rms_norm` in the input's precision (ours upcasts to float32 and back);
  sheeprl's upsampling is an expand + reshape (ours `nn.Upsample(mode="nearest")`). Both
  imagine under `torch.no_grad` (REINFORCE); sheeprl runs the critic on the imagined states twice
  (values in `imagine`, then the loss), ours once (the loss's forward pass gives the values).
- Differences in what is computed: sheeprl's `replay_context: 1` starts each sequence from the
  latent state stored for the step before it (65 steps sampled, 64 trained) and returns the latent
  states to write back into the buffer; ours starts each sequence from zeros. bf16: ours runs the
  losses under one `torch.autocast(bfloat16)`; sheeprl's Fabric `bf16-mixed` runs every module call
  in autocast inside a disabled outer autocast that keeps the cast weights cached.
- `xs` against `dreamer_v3_5_1M`: ours deter 256, hidden 128, 8 x 8 latent, units 128, CNN depth
  8 with stride-2 convolutions (no max-pool) and stride-2 transposed convolutions in the decoder;
  sheeprl deter 512, hidden 64, 32 x 4 latent, units 64, CNN depth 4 with stride-1 convolutions
  and max-pool / upsampling at full resolution. Not the same model: the row compares the
  smallest configs each side ships, not equal arithmetic.
"""


# ------------------------------------------------------------------------------ sheeprl's venv
def peer_python(venv: Path | str) -> Path:
    return Path(venv) / "bin" / "python"


_CHECK = ("import json, torch, lightning, hydra, sheeprl; "
          "import sheeprl.algos.dreamer_v3_5.dreamer_v3_5; "
          "print(json.dumps({'torch': torch.__version__, 'lightning': lightning.__version__, "
          "'hydra': hydra.__version__, 'sheeprl': sheeprl.__version__}))")


def peer_versions(python: Path | str) -> dict | None:
    """The versions in sheeprl's environment, or None where it does not import."""
    if not Path(python).exists():
        return None
    r = subprocess.run([str(python), "-I", "-c", _CHECK], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None


def versions_ok(v: dict | None) -> bool:
    return bool(v) and v["sheeprl"] == SHEEPRL_VERSION and \
        v["torch"].split("+")[0] == TORCH_VERSION


def ensure_venv(venv: Path | str, log=print) -> dict:
    """Make sheeprl's virtual environment at ``venv`` unless it is already there."""
    py = peer_python(venv)
    v = peer_versions(py)
    if versions_ok(v):
        log(f"sheeprl environment {venv}: already there ({v})")
        return v
    if not py.exists():
        log(f"sheeprl environment {venv}: python -m venv")
        Path(venv).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    torch_pin = f"torch=={TORCH_VERSION}"
    index = os.environ.get("TORCH_INDEX_URL")
    log(f"sheeprl environment {venv}: pip install {torch_pin}")
    subprocess.run(pip + [torch_pin] + (["--index-url", index] if index else []), check=True)
    log(f"sheeprl environment {venv}: pip install sheeprl=={SHEEPRL_VERSION}")
    subprocess.run(pip + [torch_pin, f"sheeprl=={SHEEPRL_VERSION}",
                          f"lightning=={LIGHTNING_VERSION}"], check=True)
    v = peer_versions(py)
    if not versions_ok(v):
        raise RuntimeError(f"sheeprl environment {venv} does not import as expected: {v}")
    log(f"sheeprl environment {venv}: ready ({v})")
    return v


# ------------------------------------------------------------------------------------ workers
def _count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _build_ours(spec: dict):
    import torch

    from benchmarks.train_speed import build_update, param_counts

    agent, _, step = build_update(spec["size"], "cpu", amp=PRECISIONS[spec["precision"]]["amp"],
                                  compile_=spec["compile"], batch=spec["batch"],
                                  seq=spec["seq"], actions=ACTIONS)
    size = dict(agent.cfg.get("size") or {})
    enc = agent.cfg["world_model"].get("encoder") or {}
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "config": f"env=atari100k size={spec['size']}",
            "model": {**size, "strided": bool(enc.get("strided", False))}}
    return param_counts(agent), info, step


def sheeprl_overrides(spec: dict) -> list[str]:
    """The overrides of sheeprl's Hydra config: its Atari 100k experiment with the algo config of
    ``spec['size']``, on the CPU in the precision, 64x64 RGB pixels only, batch x seq."""
    return [f"exp={PEER_EXP}", f"algo={PEER_ALGO[spec['size']]}",
            "fabric.accelerator=cpu", "fabric.devices=1",
            f"fabric.precision={PRECISIONS[spec['precision']]['fabric']}",
            f"num_threads={spec['threads']}",
            "env.screen_size=64", "env.grayscale=False", "env.num_envs=1",
            "algo.cnn_keys.encoder=[rgb]", "algo.cnn_keys.decoder=[rgb]",
            "algo.mlp_keys.encoder=[]", "algo.mlp_keys.decoder=[]",
            f"algo.per_rank_batch_size={spec['batch']}",
            f"algo.per_rank_sequence_length={spec['seq']}",
            f"algo.compile.enabled={bool(spec.get('peer_compile', False))}",
            "metric.log_level=1"]


def sheeprl_batch(batch: int, seq: int, context: int, deter: int, stoch: int,
                  actions: int = ACTIONS) -> dict:
    """A random batch as sheeprl's buffer gives it: time first, ``seq + context`` steps (the first
    ``context`` steps carry the stored latent states), the dtypes of its training loop."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    T, B = seq + context, batch
    act = torch.randint(0, actions, (T, B), generator=g)
    return {
        "rgb": torch.randint(0, 256, (T, B, 3, 64, 64), dtype=torch.uint8, generator=g),
        "actions": F.one_hot(act, actions).float(),
        "rewards": torch.randn(T, B, 1, generator=g).clamp(-1, 1),
        "terminated": torch.zeros(T, B, 1),
        "truncated": torch.zeros(T, B, 1),
        "is_first": (torch.rand(T, B, 1, generator=g) < 0.01).float(),
        "deter": torch.zeros(T, B, deter, dtype=torch.float16),
        "stoch": torch.zeros(T, B, stoch, dtype=torch.uint8),
    }


def _build_sheeprl(spec: dict):
    import importlib

    import gymnasium as gym
    import hydra
    import lightning
    import numpy as np
    import sheeprl
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from sheeprl.utils.metric import MetricAggregator
    from sheeprl.utils.utils import dotdict

    with initialize_config_module("sheeprl.configs", version_base="1.3"):
        cfg = compose("config", overrides=sheeprl_overrides(spec))
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    name = cfg.algo.name
    task = importlib.import_module(f"sheeprl.algos.{name}.{name}")
    agent_mod = importlib.import_module(f"sheeprl.algos.{name}.agent")
    utils = importlib.import_module(f"sheeprl.algos.{name}.utils")
    # as sheeprl.cli.run_algorithm does
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    torch.distributions.Distribution.set_default_validate_args(cfg.distribution.validate_args)
    for k in set(cfg.metric.aggregator.metrics) - set(getattr(utils, "AGGREGATOR_KEYS", ())):
        cfg.metric.aggregator.metrics.pop(k, None)
    MetricAggregator.disabled = cfg.metric.log_level == 0 or not cfg.metric.aggregator.metrics
    fabric = hydra.utils.instantiate(cfg.fabric, strategy="auto", _convert_="all")
    fabric.launch()
    fabric.seed_everything(cfg.seed)

    obs_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
    actions_dim = (ACTIONS,)
    world_model, actor, critic, target_critic, _ = agent_mod.build_agent(
        fabric, actions_dim, False, cfg, obs_space)
    optimizer = hydra.utils.instantiate(
        cfg.algo.optimizer,
        params=[*world_model.parameters(), *actor.parameters(), *critic.parameters()],
        _convert_="all")
    optimizer = fabric.setup_optimizers(optimizer)
    m = cfg.algo.actor.moments
    moments = utils.Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
    aggregator = None
    if not MetricAggregator.disabled:
        aggregator = hydra.utils.instantiate(cfg.metric.aggregator,
                                             _convert_="all").to(fabric.device)
    wm = cfg.algo.world_model
    data = sheeprl_batch(spec["batch"], spec["seq"], cfg.algo.replay_context,
                         wm.recurrent_model.recurrent_state_size, wm.stochastic_size)
    data = {k: v.to(fabric.device) for k, v in data.items()}
    counter = [0]

    def step():
        task.train(fabric, cfg, world_model, actor, critic, target_critic, optimizer, moments,
                   data, aggregator, actions_dim)
        if counter[0] % cfg.algo.critic.per_rank_target_network_update_freq == 0:
            task.update_target_critic(critic, target_critic, cfg.algo.critic.tau)
        counter[0] += 1

    params = {"world_model": _count(world_model), "actor": _count(actor),
              "critic": _count(critic)}
    info = {"torch": torch.__version__, "lightning": lightning.__version__,
            "sheeprl": sheeprl.__version__, "threads": torch.get_num_threads(),
            "config": f"exp={PEER_EXP} algo={PEER_ALGO[spec['size']]}",
            "algo": name, "precision": cfg.fabric.precision,
            "model": {"deter": wm.recurrent_model.recurrent_state_size,
                      "hidden": wm.recurrent_model.hidden_size,
                      "stoch": wm.stochastic_size, "classes": wm.discrete_size,
                      "units": cfg.algo.dense_units,
                      "depth": wm.encoder.cnn_channels_multiplier,
                      "replay_context": cfg.algo.replay_context}}
    return params, info, step


BUILDERS = {"ours": _build_ours, "sheeprl": _build_sheeprl}


def worker_main(spec: dict) -> int:
    """A worker: build, warm up, say ready (one JSON line), then one timed update per ``step``
    line on stdin, answered with ``{"time": seconds}``; ``quit`` or end of input stops it.

    The JSON lines go to the original stdout; whatever the libraries print goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        import torch

        torch.set_num_threads(int(spec["threads"]))
        params, info, step = BUILDERS[spec["side"]](spec)
        for _ in range(int(spec["warmup"])):
            step()
    except Exception as e:  # reported to the parent, which records it for the row
        send({"error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ready": True, "params": params, "info": info})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "step":
            send({"error": f"unknown command {cmd!r}"})
            continue
        try:
            t = time.perf_counter()
            step()
            send({"time": time.perf_counter() - t})
        except Exception as e:
            send({"error": f"{type(e).__name__}: {e}"})
            return 1
    return 0


def worker_env(threads: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def worker_commands(spec: dict, peer_py: Path | str) -> dict[str, list[str]]:
    """The command of each side's worker for one configuration (run in the repository root)."""
    ours = {**spec, "side": "ours"}
    peer = {**spec, "side": "sheeprl"}
    return {"ours": [sys.executable, "-m", "benchmarks.peer_speed", "--worker", json.dumps(ours)],
            # -I: nothing of this repository or of the environment variables on its path
            "sheeprl": [str(peer_py), "-I", str(Path(__file__).resolve()), "--worker",
                        json.dumps(peer)]}


class Worker:
    """A worker process, its JSON-line replies read by a thread (so that waits can time out)."""

    def __init__(self, cmd: list[str], env: dict | None = None, cwd: Path | str | None = None):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr_tail(self, chars: int = 2000) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()[-chars:].strip()

    def reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply in {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"worker exited ({code}) without a reply: "
                                   f"{self.stderr_tail() or 'no output'}")
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a protocol line
            if isinstance(msg, dict):
                return msg

    def ask(self, cmd: str, timeout: float) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def kill(self):
        """End a worker that did not answer (it may be stuck)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self, timeout: float = 30.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def interleave(commands: dict[str, list[str]], rounds: int, *, env: dict | None = None,
               cwd: Path | str | None = None, timeout: float = 3600.0, log=print) -> dict:
    """Time the sides' workers in ``rounds`` interleaved rounds.

    The workers are started one after the other (each builds and warms up before the next
    starts), then each round asks every side in turn for one timed update, waiting for its reply
    before asking the next; the first side alternates between rounds. A side whose worker fails
    keeps its error (and the times it gave) and is not asked again; the others go on.

    Returns ``{side: {"times": [...], "params": ..., "info": ..., "error": str | None}}``.
    """
    sides = list(commands)
    out = {s: {"times": [], "params": None, "info": None, "error": None} for s in sides}
    workers: dict[str, Worker] = {}
    try:
        for s in sides:
            try:
                workers[s] = Worker(commands[s], env=env, cwd=cwd)
                msg = workers[s].reply(timeout)
            except (OSError, RuntimeError, TimeoutError) as e:
                out[s]["error"] = f"{type(e).__name__}: {e}"
                if s in workers:
                    workers[s].kill()
                log(f"  {s}: {out[s]['error']}")
                continue
            if msg.get("ready"):
                out[s]["params"], out[s]["info"] = msg.get("params"), msg.get("info")
                log(f"  {s}: ready, params {msg.get('params')}")
            else:
                out[s]["error"] = msg.get("error") or f"unexpected reply {msg}"
                log(f"  {s}: {out[s]['error']}")
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                if out[s]["error"] is not None or s not in workers:
                    continue
                try:
                    msg = workers[s].ask("step", timeout)
                except (OSError, RuntimeError, TimeoutError) as e:
                    msg = {"error": f"{type(e).__name__}: {e}"}
                    workers[s].kill()
                if "time" in msg:
                    out[s]["times"].append(float(msg["time"]))
                    log(f"  round {r + 1}/{rounds} {s}: {msg['time']:.3f} s")
                else:
                    out[s]["error"] = msg.get("error") or f"unexpected reply {msg}"
                    log(f"  round {r + 1}/{rounds} {s}: {out[s]['error']}")
    finally:
        for w in workers.values():
            w.close()
    return out


# ------------------------------------------------------------------------------------ results
def summarize(times: list[float]) -> dict:
    if not times:
        return {"median_s": None, "min_s": None, "n": 0}
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def ratio(peer: float | None, ours: float | None) -> float | None:
    """sheeprl's time over ours (above 1: ours is faster)."""
    if peer is None or ours is None or ours <= 0:
        return None
    return peer / ours


def make_row(config: dict, timed: dict) -> dict:
    row = {**config, "peer_config": f"exp={PEER_EXP} algo={PEER_ALGO[config['size']]}"}
    for s in SIDES:
        t = timed.get(s) or {"times": [], "params": None, "info": None, "error": "not run"}
        row[s] = {**summarize(t["times"]), "times": t["times"], "params": t["params"],
                  "info": t["info"], "error": t["error"]}
    row["ratio_median"] = ratio(row["sheeprl"]["median_s"], row["ours"]["median_s"])
    row["ratio_min"] = ratio(row["sheeprl"]["min_s"], row["ours"]["min_s"])
    return row


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _params(p: dict | None) -> str:
    if not p:
        return "-"
    total = sum(p.values())
    return (f"{total / 1e6:.2f}M ({p['world_model'] / 1e6:.2f} / {p['actor'] / 1e6:.2f} / "
            f"{p['critic'] / 1e6:.2f})")


def render_markdown(report: dict) -> str:
    from benchmarks.machine import speed_note

    m = report["machine"]
    rows = report["results"]
    lines = [
        "# DreamerV3 update speed beside sheeprl 0.8.4, CPU", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average at the start "
        f"{m.get('loadavg_at_start')}{speed_note(m)}; ours torch {m['torch']}, sheeprl's "
        "environment "
        f"{report.get('peer_versions')}. Commit `{report['commit']}`, {report['date']}.",
        f"Command: `{report['command']}`.", "", report["what"], "",
        f"Rounds: {report['rounds']} interleaved, after {report['warmup']} untimed warm-up "
        "update(s) in each worker. Ratio: sheeprl's time over ours (above 1: ours is faster). "
        "Parameters: total (world model / actor / critic), trainable, without the slow critic.",
        "",
        "| size (ours / sheeprl) | precision | threads | compiled (ours / sheeprl) "
        "| ours median (s) | ours min (s) "
        "| sheeprl median (s) | sheeprl min (s) | ratio (median) | ratio (min) | ours params "
        "| sheeprl params |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        o, p = r["ours"], r["sheeprl"]
        lines.append(
            f"| {r['size']} / {PEER_ALGO[r['size']]} | {r['precision']} | {r['threads']} | "
            f"{r['compile']} / {r.get('peer_compile', False)} | {_s(o['median_s'])} | "
            f"{_s(o['min_s'])} | {_s(p['median_s'])} | "
            f"{_s(p['min_s'])} | {_r(r['ratio_median'])} | {_r(r['ratio_min'])} | "
            f"{_params(o['params'])} | {_params(p['params'])} |")
    errors = [(r, s) for r in rows for s in SIDES if r[s]["error"]]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {r['size']} {r['precision']} {r['threads']} thread(s) compile={r['compile']}"
                  f", {s}: {r[s]['error']}" for r, s in errors]
    lines += ["", "## The configurations", ""]
    seen = set()
    for r in rows:
        if r["size"] in seen:
            continue
        seen.add(r["size"])
        o, p = r["ours"], r["sheeprl"]
        line = (f"- `{r['size']}`: ours `{(o['info'] or {}).get('config', '-')}` "
                f"{(o['info'] or {}).get('model', '')}; sheeprl `{r['peer_config']}` "
                f"{(p['info'] or {}).get('model', '')}")
        if o["params"] and p["params"]:
            line += (f"; parameters sheeprl / ours: "
                     f"{sum(p['params'].values()) / sum(o['params'].values()):.2f}")
        lines.append(line + ".")
    lines += ["", "## Architecture, read from both codes", "", ARCHITECTURE]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["s", "xs"], choices=sorted(PEER_ALGO))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=3, help="timed updates per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates per worker first")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--compile", action="store_true",
                   help="our update compiled (train.compile=true), sheeprl's as it ships")
    p.add_argument("--peer-compile", action="store_true",
                   help="sheeprl's update compiled too (algo.compile.enabled=True)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds to wait for a worker's build or one update")
    p.add_argument("--out", default="results/peer_speed_cpu")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="sheeprl's virtual environment")
    p.add_argument("--setup-only", action="store_true",
                   help="make sheeprl's virtual environment and stop")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        if args.rounds < 1 or args.warmup < 0 or min(args.threads) < 1:
            p.error("--rounds and --threads must be >= 1, --warmup >= 0")
    return args


def configs(args: argparse.Namespace) -> list[dict]:
    return [{"size": size, "precision": prec, "threads": threads, "compile": bool(args.compile),
             "peer_compile": bool(args.peer_compile), "batch": args.batch, "seq": args.seq,
             "warmup": args.warmup}
            for size in args.sizes for prec in args.precisions for threads in args.threads]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(json.loads(args.worker))
    peer = ensure_venv(args.venv)
    if args.setup_only:
        return 0
    from benchmarks.machine import stamp, write_report

    rows = []
    for spec in configs(args):
        print(f"size={spec['size']} precision={spec['precision']} threads={spec['threads']} "
              f"compile={spec['compile']}", flush=True)
        timed = interleave(worker_commands(spec, peer_python(args.venv)), args.rounds,
                           env=worker_env(spec["threads"]), cwd=REPO, timeout=args.timeout)
        row = make_row(spec, timed)
        rows.append(row)
        print(f"  ours {_s(row['ours']['median_s'])} s, sheeprl {_s(row['sheeprl']['median_s'])}"
              f" s, ratio {_r(row['ratio_median'])}", flush=True)
    report = {**stamp("python -m benchmarks.peer_speed " + " ".join(sys.argv[1:]
                                                                    if argv is None else argv)),
              "what": __doc__.split("\n\n")[2].replace("\n", " "),
              "peer_versions": peer, "rounds": args.rounds, "warmup": args.warmup,
              "results": rows}
    write_report(args.out, report, render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
