"""The one-shot GPU check: kernel tests, kernel bench, update speed and a timed Atari100k run.

    python -m benchmarks.device --out DIR [--budget-s 480] [--skip STEP ...] [--work DIR]
        [--cap STEP=S ...] [--kernel-tests PATH ...] [--bench-ops OP ...] [--train-compile M]
    python -m benchmarks.device --print-run       # the device tool's run call (JSON), see below
    python -m benchmarks.device --from DIR --commit-results  # DIR's results -> results/*_gpu.*
    python -m benchmarks.device --check-wheels .whl  # the wheel set's requirements are all met
    python -m benchmarks.device --list-steps

On the lent device machine (one H100; python3 is 3.12 with torch 2.11+cu130 and triton 3.6 but no
torchrl, tensordict, gymnasium, ale-py, hydra-core, omegaconf: they travel as wheels). Here, once:
``bash scripts/device_wheels.sh`` (fills the ignored .whl/, ~8 MiB). Then ONE ``run`` call with
the arguments that ``--print-run`` prints (RUN_COMMAND, RUN_CARRY, RUN_TIMEOUT_S):
``carry: [".whl"]``, ``timeout_s: 540`` (of the 600 a command may take: the budget ends the steps
at 480 s, the wheels' install takes ~15 s, the rest is slack) and the command, on one line::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
      --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
      || exit; nvidia-smi -L; python3 -m benchmarks.device --out $OUT --budget-s 480

The repository comes first on PYTHONPATH: the torchrl and tensordict wheels also install top-level
folders named ``benchmarks`` and ``scripts`` (without __init__.py) into /tmp/site.
torchrl's C++ extension (torchrl/_torchrl.so, built against another torch) does not load under
torch 2.11 (undefined symbol, seen with the same wheels on Python 3.12 + torch 2.11.0 here);
torchrl then only loses its prioritized samplers' segment trees, which worldrl does not use;
tensordict/_C.so links no libtorch and loads. The probe step reports both.

What comes back (files_at) is ``$OUT`` (flat, 8 files at most, as the tool allows): summary.json
(every step's rc, wall time, timeout, attempts and key numbers, the probe of the machine),
device.log (each step's output: its first 16 KB and last 200 KB), gpu_kernel_tests.xml,
kernels_gpu.json/.png, train_speed_gpu.json, train_run.tar.gz (the run's metrics.jsonl,
episodes.csv, eval.csv, config.yaml) and compile_cache.tar.gz (the steps' Inductor and Triton
caches, when under 16 MiB). Then, here: ``python -m benchmarks.device --from FILES_AT
[FILES_AT_2 ...] --commit-results`` copies them to results/kernels_gpu.{json,png},
results/train_speed_gpu.{json,md}, results/device_check_gpu.{json,md} (refused when a probe saw
no CUDA device; several calls, oldest first, are merged) and keeps the cache as
.compile_cache/compile_cache.tar.gz (ignored by git), which ``--print-run`` then carries and
passes as ``--cache-from``: on the H200 one compile of the size-S update took over 120 s, and
with a warm cache Inductor and Triton skip their work. A rerun on the still
warm machine: the same command with ``--budget-s`` what is left and ``--skip`` the steps that are
done (names: ``--list-steps``; a prefix skips all that start with it, e.g. ``train_speed``): their
files, kept in the scratch folder /tmp/worldrl_device, come back again.

The steps run in order, each a subprocess in its own session with a timeout out of the remaining
budget (STEP_BUDGET: its cap, but never eating into the later steps' minimum plus the kill's
GRACE_S and OVERHEAD_S each), output streamed to stdout and to a log; a step that fails goes on
to the next. A step with alternatives tries the next one when an attempt fails within FAST_FAIL_S
(the summary says which attempt ran): flags the code under test may not have yet
(``train.compile``, train_speed's compile modes), pytest without xdist, kernels.bench without
accelerated-scan (whose Triton kernel is unverified with triton 3.6). A timed-out step is stopped
with SIGTERM to its process group, then SIGKILL after GRACE_S; for the training run that is its
normal end.

The flags this check assumes are in one place each: KERNEL_TEST_ARGS, KERNEL_BENCH_ARGS,
TRAIN_SPEED_ARGS / TRAIN_SPEED_VARIANTS and TRAIN_OVERRIDES. This module imports only the standard
library at its top (the probe, run as a subprocess, imports the rest).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.etree import ElementTree

from benchmarks.machine import commit as machine_commit  # stdlib-only at import

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ the machine

#: Python packages in the device machine's image (KINDS.md, 'Python packages already there', as
#: read on 2026-11-17), normalised names. Whatever worldrl needs beyond these travels as a wheel
#: (scripts/device_wheels.sh).
GPU_MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())

#: never carried: the machine's own CUDA builds must be the ones imported
NEVER_CARRY = frozenset({"torch", "triton", "numpy"})

#: the environment markers of the device machine's python3, for wheels' Requires-Dist
MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "implementation_version": "3.12.3",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "os_name": "posix", "extra": "",
}

#: what the tool brings back from $OUT (device README, Limits)
OUT_MAX_FILES = 8
OUT_MAX_FILE_BYTES = 16 * 2**20
OUT_MAX_TOTAL_BYTES = 64 * 2**20
OUT_MAX_DEPTH = 2  # $OUT/a/b/file comes back
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

#: the device tool's ``run`` arguments for this check (``--print-run``)
RUN_BUDGET_S = 480
RUN_TIMEOUT_S = 540
RUN_CARRY = [".whl"]
RUN_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 || exit; "
    f"nvidia-smi -L; python3 -m benchmarks.device --out $OUT --budget-s {RUN_BUDGET_S}"
)


def run_arguments(with_cache: bool, commit: str | None = None) -> dict:
    """The device tool's ``run`` arguments; ``with_cache``: carry CACHE_CARRY and seed from it;
    ``commit``: this tree's commit, which the copy there reports (its own .git HEAD is the
    session's first commit)."""
    if commit is not None:  # "<sha> (given)" when this tree's own commit was given to it
        commit = commit.split()[0]
    command = RUN_COMMAND if commit is None else f"export WORLDRL_COMMIT={commit}; {RUN_COMMAND}"
    if not with_cache:
        return {"command": command, "carry": RUN_CARRY, "timeout_s": RUN_TIMEOUT_S}
    return {"command": f"{command} --cache-from {CACHE_CARRY}",
            "carry": [*RUN_CARRY, str(CACHE_CARRY.parent)], "timeout_s": RUN_TIMEOUT_S}

# ------------------------------------------------------------------------------ the steps' flags

#: (a) the GPU tests (the ``gpu`` marker of setup.cfg; they skip without CUDA): the kernels' and
#: the whole-update CUDA graph's (train.cuda_graph); -n: xdist workers (installed there) overlap
#: the Triton compiles
KERNEL_TEST_PATHS = ["tests/kernels", "tests/test_cuda_graph.py"]
KERNEL_TEST_ARGS = ["-m", "gpu", "-q", "-n", "4", "-p", "no:cacheprovider"]
#: (b) kernels.bench on CUDA, one interleaved round and a short timing budget (the defaults, 3
#: rounds of up to 2 s, would take most of the budget on the per-step loop references at T=16k)
KERNEL_BENCH_ARGS = ["--device", "cuda", "--rounds", "1", "--reps", "5", "--budget", "0.5"]
#: kernels.bench with accelerated_scan unimportable (its fallback attempt; argv follows)
WITHOUT_ACCELERATED_SCAN = (
    "import runpy, sys; sys.modules['accelerated_scan'] = None; "
    "sys.argv = ['kernels.bench', *sys.argv[1:]]; "
    "runpy.run_module('kernels.bench', run_name='__main__', alter_sys=True)"
)
#: (c) benchmarks.train_speed: common flags, then one subprocess per variant (a crash or timeout
#: of one keeps the others' rows). Each variant lists alternative flag sets: the first that runs
#: is used (a set the script does not parse fails at once and the next is tried). train_speed
#: always measures eager float32; ``--amp`` adds bf16 autocast to every mode and ``--compile
#: [MODE ...]`` adds torch.compile modes (agents.dreamer.COMPILE_MODES; ``default`` = True). The
#: older ``--compile`` without modes (float32 only) is the fallback. The compiled variants time
#: size s only: compiling the update takes a good part of their cap (their eager rows repeat the
#: eager variant's and are dropped from the merged report).
TRAIN_SPEED_ARGS = ["--device", "cuda", "--repeats", "5", "--warmup", "2"]
TRAIN_SPEED_VARIANTS: list[tuple[str, list[list[str]]]] = [
    ("eager", [["--sizes", "s", "m", "--amp"]]),
    # the whole update as one CUDA graph (train.cuda_graph), before the per-region graphs of
    # reduce-overhead (measured on 2026-11-30: 90-118 ms, host-bound): eager parts (no compile:
    # quick), then default-compiled parts (fused kernels, one graph launch)
    ("cuda_graph_eager", [["--sizes", "s", "--amp-only", "--cuda-graph"]]),
    ("cuda_graph_compiled", [["--sizes", "s", "--amp-only", "--no-eager", "--compile",
                              "default", "--cuda-graph"]]),
    # CUDA graphs first: the mode that the 40 ms target needs
    # bf16 alone (the timed run's precision): each variant is a compile of its own, and one
    # reduce-overhead compile of the size-S update took over 120 s on the H200
    ("reduce_overhead", [["--sizes", "s", "--amp-only", "--no-eager", "--compile",
                          "reduce-overhead"]]),
    ("compiled", [["--sizes", "s", "--amp-only", "--no-eager", "--compile", "default"],
                  ["--sizes", "s", "--no-eager", "--compile"]]),
]
#: kernels.bench's ops (kernels.bench.OPS; a test keeps the two equal)
BENCH_OPS = ("linear_scan", "selective_scan", "ssd_chunk_scan")
#: ``--train-compile`` values: ``train.compile`` (agents.dreamer.COMPILE_MODES; a test keeps them)
TRAIN_COMPILE_VALUES = ("false", "true", "default", "reduce-overhead", "max-autotune",
                        "max-autotune-no-cudagraphs", "false+graph", "true+graph",
                        "max-autotune-no-cudagraphs+graph")
#: (d) the timed Atari100k run (``worldrl train`` = agents.cli); stopped by the budget. The first
#: set has ``train.compile`` (being added); the second is the fallback without it.
TRAIN_OVERRIDES = [
    "env=atari100k", "env.task=boxing", "size=s", "device=cuda", "seed=0", "train.amp=true",
    "train.progress=false", "train.log_every=500", "train.video_every=0",
    "train.checkpoint_every=1000000", "eval.every=0", "replay.capacity=100000", "overwrite=true",
]
TRAIN_OPTIONAL_OVERRIDES = ["train.compile=true"]
#: the timed run's ``train.compile`` is picked from the train_speed rows measured before it
#: (:func:`pick_train_compile`): size s with bf16 (the run's ``size``/``train.amp``)
TRAIN_PICK_SIZE, TRAIN_PICK_AMP = "s", True

#: each step's (cap, minimum) in seconds: at most cap (None: the rest of the budget); skipped
#: when less than its minimum is left, and earlier steps leave it that minimum
#: (seen on an H200, 2026-11-29: probe 17-19 s, kernel tests 74-85 s, the bench unfinished at
#: 100 s, eager train_speed s+m 41 s, the size-S reduce-overhead compile unfinished at 130 s)
STEP_BUDGET: dict[str, tuple[float | None, float]] = {
    "probe": (60, 15), "gpu_kernel_tests": (90, 30), "kernels_bench": (100, 45),
    "train_speed_eager": (60, 30), "train_speed_cuda_graph_eager": (60, 30),
    "train_speed_cuda_graph_compiled": (200, 30), "train_speed_reduce_overhead": (200, 30),
    "train_speed_compiled": (75, 30), "train_run": (None, 60),
}
#: extra environment of some steps: the reduce-overhead compile says why a region is not
#: captured as a CUDA graph ("skipping cudagraphs due to ...") and what recompiles
STEP_ENV: dict[str, dict[str, str]] = {
    "train_speed_reduce_overhead": {"TORCH_LOGS": "perf_hints,recompiles"},
}
#: an attempt that fails within this many seconds gives way to the step's next alternative
FAST_FAIL_S = 60.0
#: SIGTERM, then this many seconds, then SIGKILL
GRACE_S = 15.0
#: seconds kept back at the end: the last step's SIGTERM grace, the summary, the tarball
RESERVE_S = 20.0
#: seconds a step may overrun its timeout besides GRACE_S (start-up, the kill, the summary):
#: each later step is left its minimum plus GRACE_S plus this
OVERHEAD_S = 2.0
#: per step in device.log: its first and last bytes
LOG_HEAD_BYTES = 16 * 1024
LOG_TAIL_BYTES = 200 * 1024

# the files of DIR (flat)
SUMMARY = "summary.json"
LOG = "device.log"
JUNIT = "gpu_kernel_tests.xml"
KERNELS_JSON = "kernels_gpu.json"
KERNELS_PNG = "kernels_gpu.png"
TRAIN_SPEED = "train_speed_gpu"  # .json and .md
TRAIN_TAR = "train_run.tar.gz"
#: the compile caches (Inductor's FX graphs and AOT autograd, Triton's kernels) of the call,
#: to carry into the next one: compiling the size-S update took over 120 s there, and with a
#: warm cache Inductor and Triton skip their work (TorchDynamo still traces)
CACHE_TAR = "compile_cache.tar.gz"
#: where a returned CACHE_TAR is kept here (ignored by git) and carried from
CACHE_CARRY = Path(".compile_cache") / CACHE_TAR
#: what ``--commit-results`` copies into results/ (DIR name -> results name)
COMMIT_MAP = {
    KERNELS_JSON: "kernels_gpu.json", KERNELS_PNG: "kernels_gpu.png",
    TRAIN_SPEED + ".json": "train_speed_gpu.json",
    SUMMARY: "device_check_gpu.json",
}
#: the run-directory files that go into TRAIN_TAR (each at most TAR_MAX_FILE bytes)
RUN_FILES = ("metrics.jsonl", "episodes.csv", "eval.csv", "config.yaml", "summary.json")
TAR_MAX_FILE = 4 * 2**20


@dataclass
class Step:
    """One subprocess step. ``attempts``: alternative commands, tried in order while one fails
    fast. ``cap``: seconds at most (None: the rest of the budget); ``min_s``: below this it is
    skipped, and earlier steps leave it this much. ``until_timeout``: the timeout is its end."""

    name: str
    attempts: list[list[str]]
    cap: float | None
    min_s: float
    until_timeout: bool = False
    env: dict[str, str] = field(default_factory=dict)


def build_steps(work: Path, python: str = sys.executable,
                caps: dict[str, float] | None = None, tests: list[str] | None = None,
                bench_ops: list[str] | None = None,
                train_compile: str | None = None) -> list[Step]:
    """The steps; every file they write goes to ``work`` (Check.finish copies to DIR).
    ``caps``: seconds at most for some steps instead of STEP_BUDGET's (``--cap``); ``tests``:
    the kernel-test paths instead of tests/kernels (``--kernel-tests``); ``bench_ops``:
    kernels.bench's ``--ops`` (``--bench-ops``); ``train_compile``: the timed run's
    ``train.compile`` instead of the picked one (``--train-compile``)."""
    py = [python]
    junit = ["--junitxml", str(work / JUNIT)]
    bench = [*KERNEL_BENCH_ARGS, *(["--ops", *bench_ops] if bench_ops else []),
             "--out", str(work / KERNELS_JSON), "--png", str(work / KERNELS_PNG)]
    test_args = [*(tests or KERNEL_TEST_PATHS), *KERNEL_TEST_ARGS]
    commands: list[tuple[str, list[list[str]]]] = [
        ("probe", [[*py, "-m", "benchmarks.device", "--probe"]]),
        ("gpu_kernel_tests", [
            [*py, "-m", "pytest", *test_args, *junit],
            # without pytest-xdist's -n
            [*py, "-m", "pytest", *_drop_option(test_args, "-n"), *junit]]),
        ("kernels_bench", [
            [*py, "-m", "kernels.bench", *bench],
            # accelerated-scan's Triton kernel is unverified with triton 3.6 (it failed in the
            # Triton interpreter here): without it, when the first attempt fails fast
            [*py, "-c", WITHOUT_ACCELERATED_SCAN, *bench]]),
    ]
    for name, alternatives in TRAIN_SPEED_VARIANTS:
        target = str(work / f"train_speed_{name}")
        commands.append((f"train_speed_{name}", [
            [*py, "-m", "benchmarks.train_speed", *TRAIN_SPEED_ARGS, *flags, "--out", target]
            for flags in alternatives]))
    run_dir = f"run_dir={work / 'train_run'}"
    train = [*py, "-m", "agents.cli", "train", *TRAIN_OVERRIDES]
    run = [[*train, *TRAIN_OPTIONAL_OVERRIDES, run_dir], [*train, run_dir]]
    commands.append(("train_run", run if train_compile is None
                     else with_train_compile(run, train_compile)))
    caps = caps or {}
    return [Step(name, attempts, caps.get(name, STEP_BUDGET[name][0]), STEP_BUDGET[name][1],
                 until_timeout=name == "train_run", env=dict(STEP_ENV.get(name, {})))
            for name, attempts in commands]


def parse_caps(items: list[str], names: list[str]) -> dict[str, float]:
    """``["kernels_bench=110", ...]`` as {step: seconds}; ValueError naming the item and the
    steps."""
    caps = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--cap {item!r}: expected STEP=SECONDS with STEP one of "
                             f"{', '.join(names)}")
        try:
            caps[name] = float(value)
        except ValueError:
            raise ValueError(f"--cap {item!r}: {value!r} is not a number of seconds") from None
        if caps[name] <= 0:
            raise ValueError(f"--cap {item!r}: seconds must be > 0")
    return caps


def _drop_option(args: list[str], option: str) -> list[str]:
    """``args`` without ``option`` and the value after it."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        else:
            out.append(a)
    return out


# ------------------------------------------------------------------------------ budget


def plan_timeout(remaining: float, cap: float | None, later_min: float,
                 floor: float) -> float | None:
    """Seconds a step may run: ``remaining`` less what the later steps need at least
    (``later_min``), at most ``cap``; None when that is below the step's own ``floor``."""
    t = remaining - later_min
    if cap is not None:
        t = min(t, cap)
    return t if t >= floor else None


# ------------------------------------------------------------------------------ running


def run_command(cmd: list[str], timeout: float, log_path: Path, env: dict | None = None,
                grace: float = GRACE_S, echo=sys.stdout) -> dict:
    """Run ``cmd`` in its own session, its output (stdout and stderr) appended to ``log_path``
    and echoed; stopped after ``timeout`` s (SIGTERM to the group, SIGKILL after ``grace``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            log.write(f"could not start: {err}\n".encode())
            return {"cmd": cmd, "rc": None, "wall_s": 0.0, "timed_out": False,
                    "error": str(err)}

        def pump():
            out = getattr(echo, "buffer", None)
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if out is not None:
                    out.write(chunk)
                    out.flush()
                elif echo is not None:
                    echo.write(chunk.decode(errors="replace"))
                    echo.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = killed = False
        try:
            proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                killed = True
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=10)
        wall = time.monotonic() - start
        note = (f"[device] stopped after {timeout:.0f} s"
                f"{' (SIGKILL)' if killed else ' (SIGTERM)'}\n") if timed_out else ""
        log.write(f"{note}[device] rc={proc.returncode} wall={wall:.1f}s\n".encode())
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 2), "timed_out": timed_out,
            "killed": killed}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the session we started for it (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def run_step(step: Step, timeout: float, log_path: Path, fast_fail_s: float = FAST_FAIL_S,
             grace: float = GRACE_S, echo=sys.stdout) -> dict:
    """Run the step's attempts in order until one does not fail fast; the step's record."""
    start = time.monotonic()
    attempts = []
    for i, cmd in enumerate(step.attempts):
        left = timeout - (time.monotonic() - start)
        if i and left < max(1.0, step.min_s):  # too little time for the next alternative
            break
        res = run_command(cmd, left, log_path, step.env, grace=grace, echo=echo)
        attempts.append(res)
        failed = res["rc"] != 0 and not res["timed_out"]
        # a training run that crashed gives way to its next attempt however late (the rest of
        # the budget is its time); other steps only when they fail fast
        early = res["wall_s"] < fast_fail_s or step.until_timeout
        if not (failed and early and i + 1 < len(step.attempts)):
            break
    last = attempts[-1] if attempts else {"rc": None, "timed_out": False}
    if last["timed_out"]:
        status = "stopped" if step.until_timeout else "timeout"
    elif last["rc"] == 0:
        status = "ok"
    else:
        status = "failed"
    return {"name": step.name, "status": status, "rc": last["rc"],
            "wall_s": round(time.monotonic() - start, 2), "timeout_s": round(timeout, 1),
            "attempt_used": len(attempts) - 1, "attempts": attempts}


# ------------------------------------------------------------------------------ the run's mode


#: a ``--train-compile`` / picked value's suffix: the run also sets ``train.cuda_graph=true``
GRAPH_SUFFIX = "+graph"


def _compile_override(torch_compile, cuda_graph: bool = False) -> str:
    """A train_speed row's ``torch_compile`` (and ``cuda_graph``) as a ``train.compile=`` value,
    with GRAPH_SUFFIX when the row captured the whole update."""
    if torch_compile in (False, None, "False", "false"):
        value = "false"
    elif torch_compile in (True, "True", "true", "default"):
        value = "true"
    else:
        value = str(torch_compile)
    return value + (GRAPH_SUFFIX if cuda_graph else "")


def pick_train_compile(rows: list[dict], seconds: float, size: str = TRAIN_PICK_SIZE,
                       amp: bool = TRAIN_PICK_AMP) -> tuple[str, dict] | None:
    """The ``train.compile`` value whose measured update fits the most updates into ``seconds``:
    ``(value, why)``, or None when no row of ``size`` with bf16 ``amp`` has a time.

    Each row's count is ``(seconds - first_update_s) / train_step_s`` (its first update holds
    the compile; a row without one counts it as one plain update)."""
    best = None
    counts = {}
    for r in rows:
        step = r.get("train_step_s")
        if r.get("size") != size or bool(r.get("bf16_autocast")) != amp or not step:
            continue
        value = _compile_override(r.get("torch_compile"), bool(r.get("cuda_graph")))
        first = r.get("first_update_s") or step
        n = max(0.0, (seconds - first) / step)
        counts[value] = round(n, 1)
        if best is None or n > best[1]:
            best = (value, n)
    if best is None:
        return None
    return best[0], {"seconds": round(seconds, 1), "updates_expected": counts}


def with_train_compile(attempts: list[list[str]], value: str) -> list[list[str]]:
    """The train run's attempts with ``train.compile=value`` first (``VALUE+graph``: and
    ``train.cuda_graph=true``), then plain eager (once)."""
    base = [a for a in attempts[-1]
            if not a.startswith(("train.compile=", "train.cuda_graph="))]
    mode = value.removesuffix(GRAPH_SUFFIX)
    extra = ["train.cuda_graph=true"] if value.endswith(GRAPH_SUFFIX) else []
    first = [*base[:-1], f"train.compile={mode}", *extra, base[-1]]  # run_dir= stays last
    return [first] if value == "false" else [first, [*base[:-1], "train.compile=false",
                                                      base[-1]]]


# ------------------------------------------------------------------------------ key numbers


def junit_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as err:
        return {"error": f"unreadable: {err}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {k: sum(int(s.get(k, 0)) for s in suites)
           for k in ("tests", "failures", "errors", "skipped")}
    out["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 2)
    bad = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            bad.append(f"{case.get('classname')}::{case.get('name')}")
    out["failed_tests"] = bad[:20]
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out


_LS_LINE = re.compile(r"linear_scan T=(\d+): ours fwd ([\d.]+) ms, loop ([\d.]+) ms "
                      r"\(x([\d.]+)\); fwd\+bwd x([\d.]+)")
_SS_LINE = re.compile(r"selective_scan L=(\d+): ours fwd ([\d.]+) ms, ref ([\d.]+) ms "
                      r"\(x([\d.]+)\); fwd\+bwd x([\d.]+)")


def kernels_summary(json_path: Path, log_text: str = "") -> dict | None:
    """The bench's headline numbers: from its JSON for the ops it finished (it writes after each
    op), from its log lines for the others (stopped mid-op, or a JSON cut short)."""
    res = None
    if json_path.exists():
        try:
            res = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            res = None  # cut short: the log has the rows
    logged = {"linear_scan": _LS_LINE.findall(log_text),
              "selective_scan": _SS_LINE.findall(log_text)}
    if res is None and not any(logged.values()):
        return None
    copy = _COPY_LINE.search(log_text)
    out = {"source": "log (the bench wrote no JSON)",
           "copy_gb_per_s": float(copy.group(1)) if copy else None}
    if res is not None:
        out = {"source": "json", "gpu": res.get("machine", {}).get("gpu"),
               "copy_gb_per_s": res.get("copy_gb_per_s", out["copy_gb_per_s"]),
               "min_speedup_T_ge_256": res.get("min_speedup_T_ge_256")}
    for op in ("linear_scan", "selective_scan"):
        if res is not None and op in res:
            out[op] = [_json_row(row) for row in res[op].get("rows", [])]
        elif logged[op]:
            out[op] = [{"T": int(t), "ours_fwd_ms": float(o), "loop_fwd_ms": float(lp),
                        "speedup_vs_loop": {"fwd": float(f), "fwd_bwd": float(fb)},
                        "from_log": True} for t, o, lp, f, fb in logged[op]]
    return out


def _json_row(row: dict) -> dict:
    ours = row.get("ours", {})
    r = {"T": row.get("T"), "ours_fwd_ms": ours.get("fwd", {}).get("time_ms"),
         "ours_fwd_bwd_ms": ours.get("fwd_bwd", {}).get("time_ms"),
         "ours_fwd_gb_per_s": ours.get("fwd", {}).get("gb_per_s"),
         "speedup_vs_loop": row.get("speedup_vs_loop")}
    frac = ours.get("fwd", {}).get("fraction_of_copy_bw")
    if frac is not None:
        r["fwd_fraction_of_copy_bw"] = frac
    if "accelerated_scan" in row:
        r["accelerated_scan_fwd_ms"] = row["accelerated_scan"]["fwd"]["time_ms"]
        r["accelerated_scan_fwd_bwd_ms"] = row["accelerated_scan"]["fwd_bwd"]["time_ms"]
    return r


_COPY_LINE = re.compile(r"copy bandwidth ([\d.]+) GB/s")
_TS_LINE = re.compile(r"size=(\S+)\s+amp=(\S+)\s+compile=(\S+)\s+(cuda_graph )?"
                      r"params=([\d.]+)M.*?wm update (?:([\d.]+)s|n/a)\s+train step ([\d.]+)s")


def _flag(text: str):
    return {"True": True, "False": False}.get(text, text)


def train_speed_rows(json_path: Path, log_text: str = "") -> tuple[list[dict], dict | None]:
    """The variant's result rows and its JSON report (None when it wrote none: then the rows
    come from its printed lines, which round to 10 ms)."""
    if json_path.exists():
        try:
            report = json.loads(json_path.read_text())
            return list(report.get("results", [])), report
        except json.JSONDecodeError:
            pass
    rows = []
    for m in _TS_LINE.finditer(log_text):
        size, amp, comp, graphed, params, wm, full = m.groups()
        row = {"size": size, "bf16_autocast": _flag(amp), "torch_compile": _flag(comp),
               "cuda_graph": bool(graphed), "params_M": float(params),
               "wm_update_s": None if wm is None else float(wm),
               "train_step_s": float(full), "from_log": True}
        graphs = re.search(r"graphs=(\S+) breaks=(\S+)", m.group(0))
        if graphs:
            row["compiled_graphs"], row["graph_breaks"] = graphs.groups()
        first = re.search(r"first ([\d.]+)s", m.group(0))
        if first:
            row["first_update_s"] = float(first.group(1))
        rows.append(row)
    return rows, None


def merge_train_speed(variants: list[tuple[str, list[dict], dict | None]]) -> dict:
    """One report from the variants' rows: each (size, bf16, compile) once, the first seen."""
    seen, rows, base = set(), [], None
    for name, vrows, report in variants:
        if report is not None and base is None:
            base = {k: v for k, v in report.items() if k != "results"}
        for r in vrows:
            key = (r.get("size"), r.get("bf16_autocast"), str(r.get("torch_compile")),
                   bool(r.get("cuda_graph")))
            if key in seen:
                continue
            seen.add(key)
            rows.append({**r, "variant": name})
    return {**(base or {}), "results": rows,
            "merged_by": "benchmarks.device (one benchmarks.train_speed process per variant)"}


def train_speed_markdown(report: dict) -> str:
    m = report.get("machine", {})
    lines = ["# DreamerV3 update speed, Atari100k config (GPU)", ""]
    if m:
        lines.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, GPU {m.get('gpu')}; "
                     f"torch {m.get('torch')}. Commit `{report.get('commit')}`, "
                     f"{report.get('date')}.")
    lines += [f"Merged by benchmarks.device from one `python -m benchmarks.train_speed` per "
              f"variant; common flags `{' '.join(TRAIN_SPEED_ARGS)}`.", ""]
    if report.get("what"):
        lines += [report["what"], ""]
    lines += ["| variant | size | params | bf16 | compile | graphs / breaks | first update (s) "
              "| WM update (s) | train step (s) | train steps/s | replayed steps/s |",
              "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report.get("results", []):
        full = r.get("train_step_s")
        rate = f"{1 / full:.2f}" if full else "-"
        replayed = r.get("replayed_steps_per_s")
        if replayed is None and full and r.get("batch") and r.get("seq_len"):
            replayed = r["batch"] * r["seq_len"] / full
        lines.append(
            f"| {r.get('variant')} | {r.get('size')} | {r.get('params_M', 0):.1f}M | "
            f"{r.get('bf16_autocast')} | {r.get('torch_compile')}"
            f"{' + CUDA graph' if r.get('cuda_graph') else ''} | "
            f"{r.get('compiled_graphs', '-')} / {r.get('graph_breaks', '-')} | "
            f"{_num(r.get('first_update_s'), 1)} | {_num(r.get('wm_update_s'), 4)} | "
            f"{_num(full, 4)} | {rate} | {_num(replayed, 0)} |")
    return "\n".join(lines) + "\n"


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def train_run_summary(run_dir: Path) -> dict | None:
    """Env steps, updates and their rates from a (stopped) run's metrics.jsonl and CSVs.

    metrics.jsonl rows carry ``env_steps_per_s`` since the run's start, so a row's time since the
    start is ``step / env_steps_per_s``; the learning-phase rates are taken between the first row
    with updates and the last row."""
    if not run_dir.exists():
        return None
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written at the kill
    rows = [r for r in rows if "env_steps_per_s" in r and r.get("env_steps_per_s")]
    out: dict = {"metric_rows": len(rows)}
    if rows:
        last = rows[-1]
        out.update(env_steps=last["step"], updates=int(last.get("updates", 0)),
                   wall_s_at_last_row=round(last["step"] / last["env_steps_per_s"], 1),
                   env_steps_per_s_overall=round(last["env_steps_per_s"], 2))
        learning = [r for r in rows if r.get("updates", 0) > 0]
        if len(learning) >= 2:
            a, b = learning[0], learning[-1]
            dt = b["step"] / b["env_steps_per_s"] - a["step"] / a["env_steps_per_s"]
            if dt > 0:
                out["learning_env_steps_per_s"] = round((b["step"] - a["step"]) / dt, 2)
                out["learning_updates_per_s"] = round((b["updates"] - a["updates"]) / dt, 3)
                out["learning_window_s"] = round(dt, 1)
        for key in ("loss/total", "wm_loss", "episode/return"):
            if key in last:
                out[f"last_{key}"] = last[key]
    for name in ("episodes", "eval"):
        path = run_dir / f"{name}.csv"
        if path.exists():
            with open(path, newline="") as f:
                table = list(csv.DictReader(f))
            out[f"{name}_rows"] = len(table)
            if name == "episodes" and table:
                rets = [float(r["return"]) for r in table if r.get("return")]
                out["episode_returns_last10"] = rets[-10:]
            if name == "eval" and table:
                out["eval_last"] = table[-1]
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            out["run_summary"] = json.loads(summary.read_text())
        except json.JSONDecodeError:
            pass
    return out


def tar_run(run_dir: Path, dest: Path) -> list[str]:
    """RUN_FILES of ``run_dir`` (each cut to its last TAR_MAX_FILE bytes) into ``dest``."""
    names = []
    with tarfile.open(dest, "w:gz") as tar:
        for name in RUN_FILES:
            path = run_dir / name
            if not path.is_file():
                continue
            data = path.read_bytes()[-TAR_MAX_FILE:]
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            names.append(name)
    return names


# ------------------------------------------------------------------------------ output folder


def cut_log(data: bytes, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> bytes:
    if len(data) <= head + tail:
        return data
    return (data[:head] + f"\n[... {len(data) - head - tail} bytes cut ...]\n".encode()
            + data[-tail:])


def check_out_dir(out: Path) -> list[str]:
    """What in ``out`` breaks the device tool's limits on returned files (empty: nothing)."""
    problems, files, total = [], 0, 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        for part in rel.parts:
            if not OUT_NAME.match(part):
                problems.append(f"{rel}: name has characters other than letters, digits, ._-")
                break
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{rel}: not a plain file or folder")
            continue
        if path.is_file():
            files += 1
            size = path.stat().st_size
            total += size
            if len(rel.parts) - 1 > OUT_MAX_DEPTH:
                problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
            if size > OUT_MAX_FILE_BYTES:
                problems.append(f"{rel}: {size} bytes, over {OUT_MAX_FILE_BYTES}")
    if files > OUT_MAX_FILES:
        problems.append(f"{files} files, over {OUT_MAX_FILES}")
    if total > OUT_MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all, over {OUT_MAX_TOTAL_BYTES}")
    return problems


# ------------------------------------------------------------------------------ the check


class Check:
    """Runs the steps with ``work`` as their scratch folder and keeps ``out`` (the folder that
    comes back) flat and small: after every step, :meth:`finish` rewrites it from ``work``.

    A rerun with the same ``work`` (a warm machine keeps /tmp) and ``--skip`` of the steps that
    are done reports those steps' files again; each step that runs starts from a clean slate."""

    def __init__(self, out: Path, work: Path, budget_s: float, skip=(), steps=None,
                 reserve_s: float = RESERVE_S, fast_fail_s: float = FAST_FAIL_S,
                 grace: float = GRACE_S, overhead_s: float = OVERHEAD_S, echo=sys.stdout,
                 command: str | None = None, pick_compile: bool = True,
                 caps: dict[str, float] | None = None, cache_from: Path | None = None):
        self.out, self.work = Path(out), Path(work)
        self.budget_s, self.reserve_s = budget_s, reserve_s
        self.skip = tuple(skip)
        self.fast_fail_s, self.grace, self.echo = fast_fail_s, grace, echo
        self.overhead_s = overhead_s
        self.pick_compile = pick_compile
        self.command = command or " ".join(["python3", "-m", "benchmarks.device", *sys.argv[1:]])
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps = steps if steps is not None else build_steps(self.work, caps=caps)
        self.records: dict[str, dict] = {}
        self.start = time.monotonic()
        # every step compiles into one cache (TORCHINDUCTOR_CACHE_DIR; Triton's is inside it),
        # seeded from an earlier call's CACHE_TAR when one was carried
        self.cache = self.work / "compile_cache"
        self.cache.mkdir(exist_ok=True)
        self.cache_seeded = None
        if cache_from is not None:  # optional: a bad cache must not cost the call
            try:
                with tarfile.open(cache_from) as tar:
                    tar.extractall(self.cache, filter="data")
                self.cache_seeded = {"from": str(cache_from),
                                     "bytes": Path(cache_from).stat().st_size}
            except (OSError, tarfile.TarError) as err:
                self.cache_seeded = {"from": str(cache_from),
                                     "error": f"{type(err).__name__}: {err}"}
                self.say(f"compile cache not seeded ({self.cache_seeded['error']}); "
                         "compiling from scratch")

    def skipped(self, name: str) -> bool:
        return any(name == s or name.startswith(s) for s in self.skip)

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def say(self, msg: str) -> None:
        if self.echo is not None:
            self.echo.write(f"[device] {msg}\n")
            self.echo.flush()

    def _clean(self, step: Step) -> None:
        """Remove what an earlier call's run of this step left in ``work``."""
        self.log_path(step.name).unlink(missing_ok=True)
        if step.name == "gpu_kernel_tests":
            (self.work / JUNIT).unlink(missing_ok=True)
        elif step.name == "kernels_bench":
            for name in (KERNELS_JSON, KERNELS_PNG):
                (self.work / name).unlink(missing_ok=True)
        elif step.name.startswith("train_speed_"):
            for ext in (".json", ".md"):
                (self.work / f"{step.name}{ext}").unlink(missing_ok=True)
        elif step.name == "train_run":
            for old in [self.work / "train_run", *self.work.glob("train_run.old-*")]:
                shutil.rmtree(old, ignore_errors=True)

    def run(self) -> dict:
        todo = [s for s in self.steps if not self.skipped(s.name)]
        need = sum(s.min_s + self.grace + self.overhead_s for s in todo) + self.reserve_s
        if self.budget_s < need:  # each step leaves the later ones their minimum
            self.say(f"budget {self.budget_s:.0f} s is below the {need:.0f} s these steps need "
                     "at least: the earliest will be skipped (--skip some, or a larger "
                     "--budget-s)")
        for s in self.steps:
            if self.skipped(s.name):
                self.records[s.name] = {"name": s.name, "status": "skipped", "reason": "--skip"}
        for i, step in enumerate(todo):
            remaining = self.budget_s - self.reserve_s - (time.monotonic() - self.start)
            # a step stopped at its timeout may take GRACE_S + OVERHEAD_S more: later steps are
            # left that on top of their minimum, so that each still gets its minimum
            later_min = sum(s.min_s + self.grace + self.overhead_s for s in todo[i + 1:])
            timeout = plan_timeout(remaining, step.cap, later_min, step.min_s)
            if timeout is None:
                self.say(f"{step.name}: skipped, {remaining:.0f} s left "
                         f"({later_min:.0f} s kept for later steps, {step.min_s:.0f} s needed)")
                self.records[step.name] = {"name": step.name, "status": "skipped",
                                           "reason": f"budget: {remaining:.0f} s left"}
                continue
            picked = None
            if step.name == "train_run" and self.pick_compile:
                step, picked = self._pick_compile(step, timeout)
            elif step.name == "train_run":  # as given (--train-compile) or as built
                value = next((a.split("=", 1)[1] for a in step.attempts[0]
                              if a.startswith("train.compile=")), "false")
                picked = {"train.compile": value, "why": "given, not picked"}
            self.say(f"{step.name}: up to {timeout:.0f} s ({remaining:.0f} s left)")
            step = replace(step, env={**step.env, "TORCHINDUCTOR_CACHE_DIR": str(self.cache)})
            self._clean(step)
            rec = run_step(step, timeout, self.log_path(step.name), self.fast_fail_s,
                           self.grace, self.echo)
            if picked is not None:
                rec["picked"] = picked
            self.records[step.name] = rec
            self.say(f"{step.name}: {rec['status']} (rc {rec['rc']}, {rec['wall_s']:.1f} s)")
            self.finish()
        return self.finish(final=True)

    def _pick_compile(self, step: Step, seconds: float) -> tuple[Step, dict]:
        """The train run with the ``train.compile`` that the train_speed rows measured fastest
        for its length (the step as built when there are none)."""
        rows = merge_train_speed(self._train_speed_variants())["results"]
        pick = pick_train_compile(rows, seconds)
        if pick is None:  # a compile of unmeasured length can take the whole run (seen on
            # the H200: train.compile=true was still compiling when its 98 s ended)
            value, why = "false", {"why": "no size-s bf16 train_speed row"}
        else:
            value, why = pick
            self.say(f"train_run: train.compile={value} (updates expected in {seconds:.0f} s: "
                     f"{why['updates_expected']})")
        return (replace(step, attempts=with_train_compile(step.attempts, value)),
                {"train.compile": value, **why})

    def _train_speed_variants(self) -> list[tuple[str, list[dict], dict | None]]:
        out = []
        for name, _ in TRAIN_SPEED_VARIANTS:
            rows, report = train_speed_rows(self.work / f"train_speed_{name}.json",
                                            self.step_log(f"train_speed_{name}"))
            out.append((name, rows, report))
        return out

    def _pack_cache(self) -> dict:
        return _pack_cache_into(self.cache, self.out / CACHE_TAR)

    def step_log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def finish(self, final: bool = False) -> dict:
        """(Re)write ``out`` from what the steps left in ``work`` so far; at the ``final`` call
        the compile cache too (CACHE_TAR, when it fits the tool's file limit)."""
        key: dict = {}
        probe = _probe_from_log(self.step_log("probe"))
        for name in (JUNIT, KERNELS_JSON, KERNELS_PNG):
            if (self.work / name).is_file():
                shutil.copyfile(self.work / name, self.out / name)
        junit = junit_summary(self.work / JUNIT)
        if junit is not None:
            key["gpu_kernel_tests"] = junit
        kern = kernels_summary(self.work / KERNELS_JSON, self.step_log("kernels_bench"))
        if kern is not None:
            key["kernels_bench"] = kern
        variants = self._train_speed_variants()
        if any(rows for _, rows, _ in variants):
            report = merge_train_speed(variants)
            (self.out / f"{TRAIN_SPEED}.json").write_text(json.dumps(report, indent=1) + "\n")
            key["train_speed"] = [
                {k: r.get(k) for k in ("variant", "size", "bf16_autocast", "torch_compile",
                                       "cuda_graph", "first_update_s", "compiled_graphs",
                                       "graph_breaks", "wm_update_s", "train_step_s",
                                       "replayed_steps_per_s")}
                for r in report["results"]]
        run_dir = self.work / "train_run"
        run = train_run_summary(run_dir)
        if run is not None:
            run["files"] = tar_run(run_dir, self.out / TRAIN_TAR)
            key["train_run"] = run
        # the steps' logs, in step order, each cut to its head and tail
        with open(self.out / LOG, "wb") as f:
            for step in self.steps:
                path = self.log_path(step.name)
                if path.exists():
                    status = self.records.get(step.name, {}).get("status", "?")
                    if status == "skipped":
                        status = "skipped now; the log of an earlier call"
                    f.write(f"\n===== {step.name} ({status}) =====\n".encode())
                    f.write(cut_log(path.read_bytes()))
        summary = {
            "what": "benchmarks.device: the one-shot GPU check",
            "command": self.command,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": machine_commit(),
            "budget_s": self.budget_s,
            "elapsed_s": round(time.monotonic() - self.start, 1),
            "flags": {"kernel_tests": KERNEL_TEST_ARGS, "kernel_bench": KERNEL_BENCH_ARGS,
                      "train_speed": TRAIN_SPEED_ARGS,
                      "train_speed_variants": dict(TRAIN_SPEED_VARIANTS),
                      "train_overrides": TRAIN_OVERRIDES + TRAIN_OPTIONAL_OVERRIDES},
            "probe": probe,
            "steps": [self.records[s.name] for s in self.steps if s.name in self.records],
            "key": key,
            "compile_cache": {"seeded": self.cache_seeded,
                              **(self._pack_cache() if final else {})},
        }
        # written twice: the check of the folder counts summary.json itself
        for _ in range(2):
            (self.out / SUMMARY).write_text(json.dumps(summary, indent=1, default=str) + "\n")
            summary["out_dir_problems"] = check_out_dir(self.out)
        return summary


def _pack_cache_into(cache: Path, dest: Path, limit: int = OUT_MAX_FILE_BYTES) -> dict:
    """``cache``'s files as ``dest`` (tar.gz), kept only when at most ``limit`` bytes."""
    files = [f for f in sorted(cache.rglob("*")) if f.is_file() and not f.is_symlink()]
    if not files:
        dest.unlink(missing_ok=True)
        return {"files": 0, "returned": False}
    tmp = dest.with_name(dest.name + ".part")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for f in files:
                if f.suffix in (".lock", ".tmp"):
                    continue
                tar.add(f, arcname=str(f.relative_to(cache)))
        size = tmp.stat().st_size
    except (OSError, tarfile.TarError) as err:  # the summary must still be written
        tmp.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        return {"files": len(files), "returned": False, "why": f"{type(err).__name__}: {err}"}
    if size > limit:
        tmp.unlink()
        dest.unlink(missing_ok=True)
        return {"files": len(files), "bytes": size, "returned": False,
                "why": f"over the {limit} bytes a returned file may have"}
    tmp.replace(dest)
    return {"files": len(files), "bytes": size, "returned": True}


# ------------------------------------------------------------------------------ the probe

PROBE_TAG = "DEVICE_PROBE_JSON "
PROBE_MODULES = ("benchmarks", "tensordict", "torchrl", "gymnasium", "ale_py", "hydra",
                 "omegaconf", "cv2", "einops", "accelerated_scan", "kernels", "worldrl", "envs",
                 "agents")


def probe() -> dict:
    """What the machine has: versions, CUDA, whether each import loads (and what it warns),
    torchrl's and tensordict's compiled extensions, and a few steps of Atari Pong."""
    import importlib
    import platform
    import traceback
    import warnings

    info: dict = {"python": sys.version.split()[0], "executable": sys.executable,
                  "platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "pythonpath": os.environ.get("PYTHONPATH", "")}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda=torch.cuda.is_available())
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
    modules = {}
    for name in ("triton", *PROBE_MODULES):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mod = importlib.import_module(name)
                entry = {"ok": True, "version": getattr(mod, "__version__", None),
                         "file": getattr(mod, "__file__", None)}
            except Exception as err:  # noqa: BLE001 - any import failure is the finding
                entry = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        entry["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:300]}"
                                    for w in caught})[:10]
        modules[name] = entry
    info["imports"] = modules
    ext = {}
    for name in ("tensordict._C", "torchrl._torchrl"):
        try:
            importlib.import_module(name)
            ext[name] = "loaded"
        except Exception as err:  # noqa: BLE001
            ext[name] = f"{type(err).__name__}: {str(err)[:300]}"
    try:
        from torchrl.data.replay_buffers.samplers import prioritized

        ext["torchrl_segment_tree"] = prioritized.SumSegmentTreeFp32 is not None
    except Exception as err:  # noqa: BLE001
        ext["torchrl_segment_tree"] = f"{type(err).__name__}: {err}"
    info["extensions"] = ext
    try:
        import kernels
        from kernels import _native

        info["kernels"] = {"has_triton": kernels.HAS_TRITON, "native": _native.available(),
                           "native_reason": _native.unavailable_reason()}
    except Exception as err:  # noqa: BLE001
        info["kernels"] = f"{type(err).__name__}: {err}"
    try:
        from envs import make_gym, wrap

        env = wrap(lambda: make_gym("atari100k", "pong"))
        td = env.rollout(8)
        info["atari_pong"] = {"ok": True, "pixels": list(td["pixels"].shape)}
        env.close()
    except Exception as err:  # noqa: BLE001
        info["atari_pong"] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                              "trace": traceback.format_exc()[-1500:]}
    return info


def _probe_from_log(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith(PROBE_TAG):
            try:
                return json.loads(line[len(PROBE_TAG):])
            except json.JSONDecodeError:
                return None
    return None


# ------------------------------------------------------------------------------ wheels


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", errors="replace")
    name = version = ""
    requires = []
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("Requires-Dist:"):
            requires.append(line.split(":", 1)[1].strip())
    return name, version, requires


def unmet_requirements(requires: list[str], available: set[str]) -> list[str]:
    """The requirements (for MARKER_ENV, extras ignored) whose package is not in ``available``."""
    from packaging.requirements import Requirement

    missing = []
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
            continue
        if _norm(req.name) not in available:
            missing.append(text)
    return missing


def check_wheels(whl_dir: Path) -> list[str]:
    """Problems of a wheel set for the device machine: duplicates, packages it must not carry,
    and requirements neither in the set nor on the machine."""
    wheels = sorted(Path(whl_dir).glob("*.whl"))
    if not wheels:
        return [f"no wheels in {whl_dir}"]
    metas = [wheel_metadata(w) for w in wheels]
    names = [_norm(n) for n, _, _ in metas]
    problems = [f"{n}: more than one wheel" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"{n}: must not travel (the machine's own build is used)" for n in names
                 if n in NEVER_CARRY]
    available = set(names) | {_norm(p) for p in GPU_MACHINE_PACKAGES}
    for (name, version, requires), path in zip(metas, wheels):
        for req in unmet_requirements(requires, available):
            problems.append(f"{name} {version} ({path.name}) needs {req}: not carried, "
                            "not on the machine")
    return problems


# ------------------------------------------------------------------------------ results


def _read_summary(src: Path, force: bool) -> dict:
    summary_file = Path(src) / SUMMARY
    if not summary_file.exists():
        raise ValueError(f"{src}: no {SUMMARY}: not a benchmarks.device output folder")
    summary = json.loads(summary_file.read_text())
    if not force and not (summary.get("probe") or {}).get("cuda"):
        raise ValueError(f"{summary_file}: the probe saw no CUDA device; these are not GPU "
                         "results (--force copies them anyway)")
    return summary


def commit_results(src, results: Path, force: bool = False, note: str = "",
                   cache_dest: Path | None = None) -> list[str]:
    """Copy the key files of one output folder, or of several calls' folders (oldest first), to
    results/ under their ``_gpu`` names, and write results/device_check_gpu.md from them.
    Several folders: device_check_gpu.json holds every call's summary, the train_speed rows are
    merged (a (size, bf16, compile) row once, the first call's), kernels_gpu.* come from the last
    call that has them. The newest folder's compile cache goes to ``cache_dest`` (for the next
    call's ``--cache-from``). Refused (ValueError, nothing written) when a summary's probe saw no
    CUDA device, unless ``force``."""
    srcs = [Path(x) for x in (src if isinstance(src, list | tuple) else [src])]
    results = Path(results)
    summaries = [_read_summary(x, force) for x in srcs]  # every check before any write
    results.mkdir(parents=True, exist_ok=True)
    copied = []

    def put(name: str, text: str) -> None:
        (results / name).write_text(text)
        copied.append(str(results / name))

    if len(srcs) == 1:
        for name, target in COMMIT_MAP.items():
            if (srcs[0] / name).is_file():
                shutil.copyfile(srcs[0] / name, results / target)
                copied.append(str(results / target))
        if (srcs[0] / f"{TRAIN_SPEED}.json").is_file():
            put("train_speed_gpu.md", train_speed_markdown(
                json.loads((srcs[0] / f"{TRAIN_SPEED}.json").read_text())))
    else:
        put(COMMIT_MAP[SUMMARY], json.dumps(
            {"what": "benchmarks.device: the GPU check in several calls (oldest first)",
             "calls": summaries}, indent=1, default=str) + "\n")
        variants = []
        for i, x in enumerate(srcs, 1):
            f = x / f"{TRAIN_SPEED}.json"
            if f.is_file():
                report = json.loads(f.read_text())
                for r in report.get("results", []):
                    variants.append((r.get("variant", "?"), [{**r, "call": i}], report))
        if variants:
            merged = merge_train_speed(variants)
            merged["merged_by"] += f"; rows of {len(srcs)} calls (row['call'])"
            put("train_speed_gpu.json", json.dumps(merged, indent=1) + "\n")
            put("train_speed_gpu.md", train_speed_markdown(merged))
        for name in (KERNELS_JSON, KERNELS_PNG):
            last = [x for x in srcs if (x / name).is_file()]
            if last:
                shutil.copyfile(last[-1] / name, results / COMMIT_MAP[name])
                copied.append(str(results / COMMIT_MAP[name]))
    put("device_check_gpu.md", check_markdown(summaries, note))
    # the newest compile cache, to carry into the next call (not a result: ignored by git)
    caches = [x / CACHE_TAR for x in srcs if (x / CACHE_TAR).is_file()]
    if caches and cache_dest is not None:
        cache_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(caches[-1], cache_dest)
        copied.append(str(cache_dest))
    return copied


def _gbps_from_log(kern: dict) -> dict:
    """A log-sourced kernels summary with linear_scan's forward GB/s (kernels.bench's bytes
    model at its CUDA sizes) and, where the copy bandwidth is known, its fraction of it."""
    if not any(r.get("from_log") or "ours_fwd_gb_per_s" not in r
               for r in kern.get("linear_scan", [])):
        return kern
    from kernels.bench import SIZES, linear_scan_bytes

    size = SIZES["cuda"]["linear_scan"]
    rows = []
    for r in kern.get("linear_scan", []):
        r = dict(r)
        if r.get("ours_fwd_ms") and "ours_fwd_gb_per_s" not in r:
            fwd, _ = linear_scan_bytes(size["B"], r["T"], size["D"])
            r["ours_fwd_gb_per_s"] = round(fwd / (r["ours_fwd_ms"] / 1e3) / 1e9, 1)
            if kern.get("copy_gb_per_s"):
                r["fwd_fraction_of_copy_bw"] = fwd / (r["ours_fwd_ms"] / 1e3) / 1e9 / kern[
                    "copy_gb_per_s"]
        rows.append(r)
    return {**kern, "linear_scan": rows}


def check_markdown(summaries: list[dict], note: str = "") -> str:
    """results/device_check_gpu.md: each call's steps, then the kernel tests, the kernel bench,
    the update speed and the timed run, from the calls' summaries (``note`` under the title)."""
    lines = ["# The GPU check (`python -m benchmarks.device`)", ""]
    if note:
        lines += [note, ""]
    for i, sm in enumerate(summaries, 1):
        pr = sm.get("probe") or {}
        lines += [f"## Call {i}: {sm.get('date')}, commit `{sm.get('commit')}`", "",
                  f"`{sm.get('command')}`; budget {sm.get('budget_s')} s, elapsed "
                  f"{sm.get('elapsed_s')} s. Machine: {pr.get('gpu')} ({pr.get('sms')} SMs, "
                  f"{pr.get('gpu_memory_gib')} GiB), {pr.get('cpu_count')} CPU cores, Python "
                  f"{pr.get('python')}, torch {pr.get('torch')} (CUDA {pr.get('torch_cuda')}).",
                  "", "| step | status | wall (s) | timeout (s) | attempt used |",
                  "|---|---|---:|---:|---:|"]
        for r in sm.get("steps", []):
            if r.get("status") == "skipped":
                lines.append(f"| {r['name']} | skipped ({r.get('reason')}) | - | - | - |")
                continue
            extra = ""
            if r.get("picked"):
                extra = (f" (train.compile={r['picked']['train.compile']})"
                         if not r.get("attempt_used") else " (its eager fallback)")
            lines.append(f"| {r['name']}{extra} | {r.get('status')} | {_num(r.get('wall_s'), 1)}"
                         f" | {_num(r.get('timeout_s'), 0)} | {r.get('attempt_used')} |")
        key = sm.get("key", {})
        tests = key.get("gpu_kernel_tests")
        if tests:
            lines += ["", f"GPU kernel tests: {tests.get('passed')} passed, "
                          f"{tests.get('failures')} failed, {tests.get('errors')} errors of "
                          f"{tests.get('tests')} ({tests.get('time_s')} s)."]
            lines += [f"- failed: `{t}`" for t in tests.get("failed_tests", [])]
        kern = key.get("kernels_bench")
        if kern:
            kern = _gbps_from_log(kern)
            copy = kern.get("copy_gb_per_s")
            lines += ["", f"Kernel bench ({kern.get('source')}); copy bandwidth "
                          f"{_num(copy, 0)} GB/s." if copy else
                      f"Kernel bench ({kern.get('source')}); the copy bandwidth was not "
                      "recorded.", "", "| op | T | ours fwd (ms) | ours fwd GB/s | of copy | "
                      "x loop fwd | x loop fwd+bwd |", "|---|---:|---:|---:|---:|---:|---:|"]
            for op in ("linear_scan", "selective_scan"):
                for r in kern.get(op, []):
                    sp = r.get("speedup_vs_loop") or {}
                    frac = r.get("fwd_fraction_of_copy_bw")
                    lines.append(f"| {op} | {r.get('T')} | {_num(r.get('ours_fwd_ms'), 3)} | "
                                 f"{_num(r.get('ours_fwd_gb_per_s'), 0)} | "
                                 f"{'-' if frac is None else f'{frac:.0%}'} | "
                                 f"{_num(sp.get('fwd'), 1)} | {_num(sp.get('fwd_bwd'), 1)} |")
        for r in key.get("train_speed", []):
            if r.get("train_step_s"):
                lines.append(f"- update, {r['variant']}: size {r['size']}, bf16 "
                             f"{r['bf16_autocast']}, compile {r['torch_compile']}"
                             f"{', one CUDA graph' if r.get('cuda_graph') else ''}: "
                             f"{r['train_step_s'] * 1e3:.0f} ms per update")
        run = key.get("train_run")
        if run:
            lines += ["", f"Timed run: {run.get('env_steps')} env steps, {run.get('updates')} "
                          f"updates; learning phase {run.get('learning_env_steps_per_s', '-')} "
                          f"env steps/s, {run.get('learning_updates_per_s', '-')} updates/s over "
                          f"{run.get('learning_window_s', '-')} s."]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (on the device: $OUT)")
    p.add_argument("--budget-s", type=float, default=float(RUN_BUDGET_S),
                   help="seconds for all the steps together (default 480)")
    p.add_argument("--skip", nargs="+", default=[], metavar="STEP",
                   help="steps to skip (a name or a prefix; see --list-steps)")
    p.add_argument("--cap", nargs="+", default=[], metavar="STEP=SECONDS",
                   help="at most this long for these steps (instead of the built-in caps)")
    p.add_argument("--kernel-tests", nargs="+", default=None, metavar="PATH",
                   help="the GPU tests to run (pytest paths; default: "
                        f"{' '.join(KERNEL_TEST_PATHS)})")
    p.add_argument("--bench-ops", nargs="+", default=None, choices=BENCH_OPS, metavar="OP",
                   help=f"kernels.bench's ops (default all: {', '.join(BENCH_OPS)})")
    p.add_argument("--train-compile", default=None, choices=TRAIN_COMPILE_VALUES,
                   help="the timed run's train.compile (default: picked from the train_speed "
                        "rows measured in this call, eager without one)")
    p.add_argument("--cache-from", type=Path, default=None, metavar="TAR",
                   help=f"seed the compile cache from an earlier call's {CACHE_TAR} "
                        f"(--commit-results keeps the newest as {CACHE_CARRY})")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for the run dir and logs (default /tmp/worldrl_device)")
    p.add_argument("--from", dest="from_dir", type=Path, nargs="+", default=None,
                   metavar="DIR", help="with --commit-results: copy from these finished output "
                   "folders (several calls: oldest first), run nothing")
    p.add_argument("--commit-results", action="store_true",
                   help="copy the key results into --results-dir with _gpu names")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results")
    p.add_argument("--force", action="store_true", help="--commit-results even without CUDA")
    p.add_argument("--note", default="",
                   help="with --from: a paragraph for device_check_gpu.md under its title")
    p.add_argument("--list-steps", action="store_true")
    p.add_argument("--print-run", action="store_true",
                   help="print the device tool's run arguments for this check (JSON)")
    p.add_argument("--check-wheels", type=Path, default=None, metavar="WHL_DIR")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.probe:
        print(PROBE_TAG + json.dumps(probe(), default=str), flush=True)
        return 0
    if args.check_wheels is not None:
        problems = check_wheels(args.check_wheels)
        for line in problems:
            print(f"check-wheels: {line}", file=sys.stderr)
        if not problems:
            print(f"check-wheels: {args.check_wheels}: every requirement is carried or on the "
                  "device machine")
        return 1 if problems else 0
    if args.print_run:
        print(json.dumps(run_arguments((ROOT / CACHE_CARRY).is_file(), machine_commit()), indent=1))
        return 0
    if args.list_steps:
        for s in build_steps(Path("WORK")):
            cap = "rest" if s.cap is None else f"{s.cap:.0f} s"
            print(f"{s.name}: cap {cap}, min {s.min_s:.0f} s, {len(s.attempts)} attempt(s)")
        return 0
    if args.from_dir is not None:
        if not args.commit_results:
            p.error("--from needs --commit-results")
        try:
            copied = commit_results(args.from_dir, args.results_dir, args.force, args.note,
                                    cache_dest=ROOT / CACHE_CARRY)
        except ValueError as err:
            print(f"benchmarks.device: error: {err}", file=sys.stderr)
            return 2
        print("\n".join(copied))
        return 0
    if args.out is None:
        p.error("--out is required (or --from DIR --commit-results, --check-wheels, --list-steps)")
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    for path in args.kernel_tests or []:
        if not (ROOT / path.split("::")[0]).exists():
            p.error(f"--kernel-tests {path}: no such test file or folder under {ROOT}")
    names = [s.name for s in build_steps(Path("WORK"))]
    for s in args.skip:
        if not any(n == s or n.startswith(s) for n in names):
            p.error(f"--skip {s}: no such step; steps: {', '.join(names)}")
    try:
        caps = parse_caps(args.cap, names)
    except ValueError as err:
        p.error(str(err))
    work = args.work or Path("/tmp/worldrl_device")
    out = args.out.resolve()
    if work.resolve() == out or out in work.resolve().parents:
        p.error("--work must not be inside --out (only the flat results go there)")
    steps = build_steps(work, caps=caps, tests=args.kernel_tests, bench_ops=args.bench_ops,
                        train_compile=args.train_compile)
    summary = Check(out, work, args.budget_s, args.skip, steps=steps,
                    pick_compile=args.train_compile is None, cache_from=args.cache_from).run()
    print(json.dumps({"steps": [{k: r.get(k) for k in ("name", "status", "rc", "wall_s")}
                                for r in summary["steps"]],
                      "key": summary["key"], "out_dir_problems": summary["out_dir_problems"]},
                     indent=1, default=str))
    if args.commit_results:
        print("\n".join(commit_results(out, args.results_dir, args.force)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
