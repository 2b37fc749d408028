"""Issue 15: checkpoints that load without running code, foreign checkpoints, validation before
the disk, disk errors, partial logs, the summary after a late kill, and clean stops on signals.
The SIGKILL chaos test is in tests/test_chaos.py."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from agents import run_dir as rd
from agents.cli import main
from agents.run_dir import load_checkpoint
from benchmarks.reliability import BAD, tree

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["train.progress=false"]
RANDOM = ["train", "preset=debug", "agent=random", *QUIET]


@pytest.fixture(scope="module")
def dreamer_run(tmp_path_factory):
    """A finished debug run of the DreamerV3 agent (seed 0) and a random-agent run."""
    base = tmp_path_factory.mktemp("runs")
    assert main(["train", "preset=debug", f"run_dir={base / 'dreamer'}", *QUIET]) == 0
    assert main([*RANDOM, f"run_dir={base / 'random'}"]) == 0
    assert main(["train", "preset=debug", "seed=1", f"run_dir={base / 'seed1'}", *QUIET]) == 0
    return base


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_never_runs_code(tmp_path, dreamer_run, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(dreamer_run / "dreamer", run)
    ckpt = run / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["evil"] = Evil(marker)
    torch.save(payload, ckpt)
    before = tree(run)
    for argv in (["eval", str(ckpt)], ["eval", str(run)],
                 ["train", "preset=debug", f"run_dir={run}", "steps=400", *QUIET]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refused to load" in err and "could run code" in err, err
        assert not marker.exists()
    assert tree(run) == before
    # the same file with the user's explicit trust does unpickle (and would run the code)
    os.environ[rd.TRUST_ENV] = "1"
    try:
        load_checkpoint(ckpt)
    finally:
        del os.environ[rd.TRUST_ENV]
    assert marker.exists()


def test_a_genuine_checkpoint_is_tensors_and_plain_data(dreamer_run):
    raw = torch.load(dreamer_run / "dreamer" / "checkpoint.pt", weights_only=True)
    assert raw["version"] == rd.CHECKPOINT_VERSION
    ckpt = load_checkpoint(dreamer_run / "dreamer")
    kind, key, *_ = ckpt["rng"]["numpy"]
    assert kind == "MT19937" and isinstance(key, np.ndarray) and key.dtype == np.uint32
    np.random.set_state(ckpt["rng"]["numpy"])  # decodes back to what numpy takes
    assert isinstance(ckpt["replay"]["pending"][0], (type(None), TensorDict))


def test_encode_decode_round_trip():
    from tensordict import TensorDict

    state = {"a": np.arange(5, dtype=np.uint32), "b": (1, 2.5, "x", None),
             "td": TensorDict({"x": torch.ones(3, 2), "n": {"y": torch.zeros(3)}}, [3]),
             "l": [np.float64(1.5), torch.arange(3)]}
    out = rd.decode(rd.encode(state))
    assert np.array_equal(out["a"], state["a"]) and out["a"].dtype == np.uint32
    assert out["b"] == state["b"] and out["l"][0] == 1.5
    assert out["td"].batch_size == (3,) and torch.equal(out["td"]["n", "y"], torch.zeros(3))


def test_a_version_1_checkpoint_needs_explicit_trust(tmp_path, capsys):
    path = tmp_path / "old.pt"
    torch.save({"version": 1, "agent": {}, "rng": {"numpy": np.random.get_state()}}, path)
    assert main(["eval", str(path)]) == 2
    assert rd.TRUST_ENV in capsys.readouterr().err
    os.environ[rd.TRUST_ENV] = "1"
    try:
        assert load_checkpoint(path)["version"] == 1
    finally:
        del os.environ[rd.TRUST_ENV]


@pytest.mark.parametrize("foreign, changed", [("seed1", "seed: 1 -> 0"),
                                               ("random", "agent.name: 'random' -> 'dreamer'")])
def test_a_foreign_checkpoint_is_refused_with_the_differences(tmp_path, dreamer_run, capsys,
                                                               foreign, changed):
    run = tmp_path / "run"
    shutil.copytree(dreamer_run / "dreamer", run)
    shutil.copy(dreamer_run / foreign / "checkpoint.pt", run / "checkpoint.pt")
    before = tree(run)
    assert main(["train", "preset=debug", f"run_dir={run}", "steps=400", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and changed in err, err
    assert "Traceback" not in err and tree(run) == before




@pytest.mark.parametrize("override, message", BAD)
def test_bad_input_is_refused_before_the_disk(tmp_path, dreamer_run, capsys, override, message):
    fresh = tmp_path / "fresh"
    argv = ["train", "preset=debug", *QUIET, *override.split()]
    assert main([*argv, f"run_dir={fresh}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not fresh.exists()
    run = tmp_path / "run"  # an existing run stays byte-identical, and resumes afterwards
    shutil.copytree(dreamer_run / "dreamer", run)
    before = tree(run)
    assert main([*argv, f"run_dir={run}"]) == 2
    assert message in capsys.readouterr().err
    assert tree(run) == before


def test_the_warning_signal_can_be_turned_off():
    from worldrl.config import load_config

    assert load_config(["train.warning_signal=null"]).train.warning_signal is None


def test_a_truncated_config_yaml_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\ntrain:\n  batch_size: [1,\n")
    assert main([*RANDOM, f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml cannot be read" in err and "Traceback" not in err


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4288 vs 4200"),
     "the write stopped short"),
])
def test_a_failed_checkpoint_write_keeps_the_last_one(tmp_path, monkeypatch, capsys, error,
                                                      cause):
    run = tmp_path / "run"
    assert main([*RANDOM, f"run_dir={run}"]) == 0
    good = (run / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def failing_save(obj, f):
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # a partial file, then the error
        raise error

    monkeypatch.setattr(rd.torch, "save", failing_save)
    assert main([*RANDOM, f"run_dir={run}", "steps=240"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / 'checkpoint.pt'}: {cause}" in err and "Traceback" not in err
    assert (run / "checkpoint.pt").read_bytes() == good
    assert not list(run.glob("*.tmp"))
    monkeypatch.undo()
    assert main([*RANDOM, f"run_dir={run}", "steps=240"]) == 0  # and it resumes from there


def test_a_read_only_run_directory_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([*RANDOM, f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and "Traceback" not in err


def test_debug_flag_shows_the_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "agents.cli", "train", "preset=debug", "seed=abc",
            f"run_dir={tmp_path / 'r'}"]
    quiet = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    loud = subprocess.run([*argv[:3], "--debug", *argv[3:]], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


def test_plot_skips_a_partial_last_row_and_names_a_bad_one(tmp_path, dreamer_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(dreamer_run / "dreamer", run)
    episodes = run / "episodes.csv"
    text = episodes.read_text()
    episodes.write_text(text + "1200,99,4")  # killed mid-row
    assert main(["plot", str(run)]) == 0
    lines = text.splitlines()
    lines.insert(2, "oops,,")
    episodes.write_text("\n".join(lines) + "\n")
    assert main(["plot", str(run)]) == 2
    assert "episodes.csv, line 3: not a row of numbers" in capsys.readouterr().err


def test_logs_are_cut_back_to_the_checkpoint(tmp_path):
    from agents.logger import Logger

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "x": 1}) + "\n" for s in (40, 80, 120)) + '{"step": 16')
    (tmp_path / "eval.csv").write_text("step,return_mean\n40,1\n80,2\n120,3\n")
    (tmp_path / "episodes.csv").write_text("step,episode,return\n50,1,2\n90,2,3\n130,3")
    Logger(tmp_path, tensorboard=False, start_step=80).close()
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text()
            .splitlines()] == [40, 80]
    assert (tmp_path / "eval.csv").read_text() == "step,return_mean\n40,1\n80,2\n"
    assert (tmp_path / "episodes.csv").read_text() == "step,episode,return\n50,1,2\n"
    Logger(tmp_path, tensorboard=False, start_step=0).close()  # a fresh start: headers only
    assert (tmp_path / "eval.csv").read_text() == "step,return_mean\n"


def test_a_kill_after_the_final_checkpoint_still_gets_its_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*RANDOM, f"run_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # killed between the final checkpoint and the summary
    assert main([*RANDOM, f"run_dir={run}"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text()) == summary


def _start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", *RANDOM, f"run_dir={run}", "steps=1000000",
         "train.log_every=40", "replay.capacity=100000", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, times", [("SIGTERM", 1), ("SIGUSR1", 1), ("SIGTERM", 2)])
def test_a_stop_signal_checkpoints_and_exits_cleanly(tmp_path, sig, times):
    """SLURM sends SIGTERM after its warning signal: a second stop signal is still a clean stop."""
    run = tmp_path / "run"
    proc = _start(run)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
                (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
            time.sleep(0.2)
        time.sleep(1.0)
        sent = time.time()
        for _ in range(times):
            proc.send_signal(getattr(signal, sig))
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert took < 30  # the update in flight, a checkpoint, the envs closed (CPU shared)
    assert "Traceback" not in err and "leaked semaphore" not in err
    line = next(x for x in out.splitlines() if x.startswith(f"stopped by {sig}"))
    at = int(line.split("at env step ")[1].split()[0])
    ckpt = load_checkpoint(run)
    assert ckpt["counters"]["env_steps"] == at > 0
    assert "Run the same command to resume" in line
    resumed = subprocess.run(
        [sys.executable, "-m", "agents.cli", *RANDOM, f"run_dir={run}", f"steps={at + 40}",
         "train.log_every=40", "replay.capacity=100000"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {run} at env step {at}" in resumed.stdout
    # eval.csv's wall-clock runs on over the processes of the run
    assert ckpt["counters"]["wall_s"] > 0
    last = (run / "eval.csv").read_text().splitlines()[-1].split(",")
    assert float(last[-1]) > ckpt["counters"]["wall_s"]


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("times", [1, 2])
def test_a_stop_while_the_run_starts_up_is_the_same_clean_stop(tmp_path, times):
    """SIGTERM sent as soon as ``worldrl train`` can catch it, before torch is even imported: the
    run still builds, takes one batch, checkpoints and exits 0 (not killed by the signal). A
    second one before the loop begins ends the process (a start-up that hangs stays stoppable)."""
    run = tmp_path / "run"
    proc = _start(run)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not _catches(
                proc.pid, signal.SIGTERM):
            time.sleep(0.005)
        assert not (run / "config.yaml").exists()  # caught long before the run directory
        for _ in range(times):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    if times == 2:
        assert proc.returncode == -signal.SIGTERM and not (run / "checkpoint.pt").exists()
        return
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    line = next(x for x in out.splitlines() if x.startswith("stopped by SIGTERM"))
    at = int(line.split("at env step ")[1].split()[0])
    assert load_checkpoint(run)["counters"]["env_steps"] == at > 0


def test_a_full_disk_while_logging_is_one_line_naming_the_log(tmp_path, monkeypatch, capsys):
    from agents.logger import Logger

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.f.flush()

        def close(self):
            self.f.close()

    real_init = Logger.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._jsonl = FullDisk(self._jsonl)

    monkeypatch.setattr(Logger, "__init__", init)
    run = tmp_path / "run"
    assert main([*RANDOM, f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / 'metrics.jsonl'}: no space left on the device" in err
    assert "Traceback" not in err


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (needs root, as in a container); unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the monkeypatched "
                        "disk-error tests above cover the same paths")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_real_full_disk_keeps_the_last_checkpoint(tmpfs, capsys):
    disk = tmpfs("disk", "8m")
    run = disk / "run"
    assert main(["train", "preset=debug", f"run_dir={run}", *QUIET]) == 0
    good = (run / "checkpoint.pt").read_bytes()
    with open(disk / "ballast", "wb") as f:  # fill what is left
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    capsys.readouterr()
    assert main(["train", "preset=debug", f"run_dir={run}", "steps=600", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err, err
    assert (run / "checkpoint.pt").read_bytes() == good and not list(run.glob("*.tmp"))
    (disk / "ballast").unlink()
    assert main(["train", "preset=debug", f"run_dir={run}", "steps=600", *QUIET]) == 0


def test_a_real_read_only_file_system_is_one_line(tmpfs, capsys):
    disk = tmpfs("disk", "8m")
    source = disk.parent / "made"
    assert main([*RANDOM, f"run_dir={source}"]) == 0
    run = disk / "run"
    shutil.copytree(source, run)  # closed files only: the remount below needs none open
    before = tree(run)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    capsys.readouterr()
    assert main([*RANDOM, f"run_dir={run}", "steps=240"]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and "Traceback" not in err, err
    assert tree(run) == before
    assert main([*RANDOM, f"run_dir={disk / 'other'}"]) == 2
    assert "read-only file system" in capsys.readouterr().err
