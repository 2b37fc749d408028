"""benchmarks.device and scripts/device_wheels.sh without a GPU: the wheel list against the code's
imports, pyproject.toml and the installed metadata; the budget arithmetic; running steps (fake
ones, tiny Python programs that succeed, fail, fail fast, time out, ignore SIGTERM); the summary,
the flat output folder within the device tool's limits, and the copy into results/."""

from __future__ import annotations

import ast
import csv
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks import device as dev

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_wheels.sh"
PY = sys.executable

# modules whose distribution is named otherwise
DIST_OF = {"cv2": "opencv-python-headless", "ale_py": "ale-py", "hydra": "hydra-core",
           "yaml": "pyyaml", "PIL": "pillow", "accelerated_scan": "accelerated-scan"}
#: imported by parts the GPU check never runs (DMC; POPGym; `worldrl report`, run on the results
#: here)
NOT_ON_THE_GPU_RUN = {"dm_control", "mujoco", "popgym", "rliable"}
LOCAL = {"worldrl", "agents", "envs", "kernels", "benchmarks", "tests"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def pinned() -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    specs = dict(line.split("==") for line in out)
    return {norm(k): v for k, v in specs.items()}


def carried_or_there(pinned) -> set[str]:
    return set(pinned) | {norm(p) for p in dev.GPU_MACHINE_PACKAGES}


# ------------------------------------------------------------------------------ the wheel list


def test_wheel_list_is_pinned_unique_and_carries_no_torch(pinned):
    out = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    assert len(out) == len(pinned), "a package is listed twice"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", s) for s in out), out
    assert not set(pinned) & dev.NEVER_CARRY
    assert {"torchrl", "tensordict", "gymnasium", "ale-py", "hydra-core", "omegaconf",
            "antlr4-python3-runtime", "accelerated-scan"} <= set(pinned)
    # carried only when the machine lacks it
    assert not set(pinned) & {norm(p) for p in dev.GPU_MACHINE_PACKAGES}


def test_wheel_pins_are_the_versions_installed_here(pinned):
    checked = 0
    for name, version in pinned.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue
        assert installed == version, f"{name}: .venv has {installed}, the wheel list {version}"
        checked += 1
    if not checked:
        pytest.skip("none of the carried packages is installed here")
    assert checked >= 5


def test_pyproject_dependencies_are_carried_or_on_the_machine(pinned):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("atari", "tensorboard", "triton", "bench"):
        reqs += project["optional-dependencies"][extra]
    names = {norm(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs}
    assert {"torchrl", "ale-py", "accelerated-scan"} <= names  # what the parsing must see
    missing = sorted(names - carried_or_there(pinned))
    assert not missing, f"neither carried (scripts/device_wheels.sh) nor on the machine: {missing}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_import_of_the_packages_is_carried_or_on_the_machine(pinned):
    mods = set()
    for pkg in ("worldrl", "agents", "envs", "kernels"):
        for path in (ROOT / pkg).rglob("*.py"):
            mods |= _imports(path)
    third_party = {m for m in mods
                   if m not in sys.stdlib_module_names and m not in LOCAL and m != "__future__"}
    assert {"torch", "torchrl", "tensordict", "gymnasium", "ale_py", "hydra"} <= third_party
    unmet = sorted(m for m in third_party - NOT_ON_THE_GPU_RUN
                   if norm(DIST_OF.get(m, m)) not in carried_or_there(pinned))
    assert not unmet, f"imported but neither carried nor on the device machine: {unmet}"


def test_installed_requirements_of_the_carried_packages_are_met(pinned):
    pytest.importorskip("packaging")
    available = carried_or_there(pinned)
    checked = 0
    for name in pinned:
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        checked += 1
        assert dev.unmet_requirements(requires, available) == [], name
    if not checked:
        pytest.skip("none of the carried packages is installed here")


def test_unmet_requirements_reads_markers_for_python_312_and_ignores_extras():
    pytest.importorskip("packaging")
    reqs = ["orjson; python_version < '3.13'", "tomli; python_version < '3.11'",
            "pytest; extra == 'tests'", "pywin32; sys_platform == 'win32'", "numpy>=1"]
    assert dev.unmet_requirements(reqs, {"numpy"}) == ["orjson; python_version < '3.13'"]
    assert dev.unmet_requirements(reqs, {"numpy", "orjson"}) == []


def _fake_wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nlong description\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return path


def test_check_wheels_finds_unmet_needs_duplicates_and_torch(tmp_path):
    pytest.importorskip("packaging")
    _fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "numpy", "cloudpickle",
                                          "gamma; extra == 'x'"])
    _fake_wheel(tmp_path, "beta", "2.0")
    assert dev.check_wheels(tmp_path) == []
    _fake_wheel(tmp_path, "delta", "0.1", ["not-on-the-machine"])
    _fake_wheel(tmp_path, "beta", "3.0")
    _fake_wheel(tmp_path, "torch", "2.11.0")
    problems = "\n".join(dev.check_wheels(tmp_path))
    assert "not-on-the-machine" in problems
    assert "beta: more than one wheel" in problems
    assert "torch: must not travel" in problems
    assert dev.check_wheels(tmp_path / "none") == [f"no wheels in {tmp_path / 'none'}"]


def test_wheel_script_parses_and_ignores_its_folder():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert "/.whl/" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------------------------ the real steps


def test_real_steps_use_flags_that_exist_today(tmp_path):
    steps = {s.name: s for s in dev.build_steps(tmp_path, "python3")}
    assert list(steps) == list(dev.STEP_BUDGET)
    bench_src = (ROOT / "kernels" / "bench.py").read_text()
    for flag in [a for a in dev.KERNEL_BENCH_ARGS if a.startswith("--")] + ["--out", "--png"]:
        assert f'add_argument("{flag}"' in bench_src, flag
    ts_src = (ROOT / "benchmarks" / "train_speed.py").read_text()
    modes_src = (ROOT / "agents" / "dreamer.py").read_text()
    # every variant's first flag set: its flags exist, the compile modes are the agent's
    for name, alternatives in dev.TRAIN_SPEED_VARIANTS:
        flags = dev.TRAIN_SPEED_ARGS + alternatives[0]
        for flag in [a for a in flags if a.startswith("--")]:
            assert f'add_argument("{flag}"' in ts_src, (name, flag)
        if "--compile" in flags:
            for mode in flags[flags.index("--compile") + 1:]:
                if mode.startswith("--"):
                    break
                assert f'"{mode}"' in modes_src, (name, mode)
    assert "gpu:" in (ROOT / "setup.cfg").read_text()
    tests = steps["gpu_kernel_tests"].attempts
    assert "-n" in tests[0] and "-n" not in tests[1]
    assert tests[1][-2:] == ["--junitxml", str(tmp_path / dev.JUNIT)]
    run = steps["train_run"]
    assert run.until_timeout and run.cap is None
    assert run.attempts[0][-1] == f"run_dir={tmp_path / 'train_run'}"
    assert set(run.attempts[0]) - set(run.attempts[1]) == set(dev.TRAIN_OPTIONAL_OVERRIDES)


def test_step_options_narrow_tests_bench_and_force_the_run_compile(tmp_path):
    from agents.dreamer import COMPILE_MODES
    from kernels.bench import OPS

    assert dev.BENCH_OPS == OPS
    from agents.dreamer import CUDAGRAPH_MODES

    plain = {"false", "true", *COMPILE_MODES}
    graphed = {m + dev.GRAPH_SUFFIX for m in plain - {"default", *CUDAGRAPH_MODES}}
    assert set(dev.TRAIN_COMPILE_VALUES) == plain | graphed
    steps = {s.name: s for s in dev.build_steps(
        tmp_path, PY, tests=["tests/kernels/test_linear_scan.py"], bench_ops=["linear_scan"],
        train_compile="reduce-overhead")}
    for attempt in steps["gpu_kernel_tests"].attempts:
        assert attempt[3] == "tests/kernels/test_linear_scan.py" and "tests/kernels" not in attempt
        assert "-m" in attempt[4:] and "gpu" in attempt
    for attempt in steps["kernels_bench"].attempts:
        i = attempt.index("--ops")
        assert attempt[i + 1:i + 2] == ["linear_scan"] and attempt[i + 2].startswith("--")
    run = steps["train_run"].attempts
    assert "train.compile=reduce-overhead" in run[0] and "train.compile=false" in run[1]
    assert run[0][-1].startswith("run_dir=") and len(run) == 2
    # the reduce-overhead step says why a region is not captured
    assert "perf_hints" in steps["train_speed_reduce_overhead"].env["TORCH_LOGS"]
    # defaults: every kernel test, every op, the run's compile picked later
    plain = {s.name: s for s in dev.build_steps(tmp_path, PY)}
    assert plain["gpu_kernel_tests"].attempts[0][3:5] == ["tests/kernels",
                                                          "tests/test_cuda_graph.py"]
    for path in dev.KERNEL_TEST_PATHS:
        assert (ROOT / path).exists(), path
    assert "--ops" not in plain["kernels_bench"].attempts[0]


@pytest.mark.parametrize("argv, message", [
    (["--bench-ops", "scan"], "invalid choice: 'scan'"),
    (["--train-compile", "fast"], "invalid choice: 'fast'"),
    (["--kernel-tests", "tests/kernels/nope.py"], "no such test file"),
])
def test_bad_step_options_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        dev.main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_kernels_bench_fallback_runs_the_bench_with_its_arguments(tmp_path):
    bench = {s.name: s for s in dev.build_steps(tmp_path, PY)}["kernels_bench"].attempts
    assert bench[0][1:3] == ["-m", "kernels.bench"] and bench[1][1:3] == [
        "-c", dev.WITHOUT_ACCELERATED_SCAN]
    assert bench[0][3:] == bench[1][3:]
    out = subprocess.run([PY, "-c", dev.WITHOUT_ACCELERATED_SCAN, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--budget" in out.stdout, out.stderr[-2000:]


def test_train_overrides_compose():
    pytest.importorskip("hydra")
    from worldrl.config import load_config

    cfg = load_config([*dev.TRAIN_OVERRIDES, "run_dir=/tmp/x"])
    assert cfg.env.suite == "atari100k" and cfg.env.task == "boxing" and cfg.device == "cuda"
    assert cfg.train.amp is True and cfg.eval.every == 0 and cfg.train.progress is False


def test_drop_option():
    assert dev._drop_option(["a", "-n", "4", "-q"], "-n") == ["a", "-q"]
    assert dev._drop_option(["a"], "-n") == ["a"]


# ------------------------------------------------------------------------------ budget


@pytest.mark.parametrize("remaining,cap,later,floor,expect", [
    (400, 100, 200, 30, 100),      # the cap binds
    (250, 100, 200, 30, 50),       # the later steps' minimum binds
    (220, 100, 200, 30, None),     # 20 s is below the floor: skipped
    (300, None, 0, 60, 300),       # the last step takes the rest
    (50, None, 0, 60, None),
])
def test_plan_timeout(remaining, cap, later, floor, expect):
    assert dev.plan_timeout(remaining, cap, later, floor) == expect


def fake_step(name, code, cap=None, min_s=0.0, until_timeout=False, alternatives=()):
    attempts = [[PY, "-c", c] for c in (*alternatives, code)]
    return dev.Step(name, attempts, cap, min_s, until_timeout)


def test_budget_leaves_later_steps_their_minimum_and_skips_what_does_not_fit(tmp_path):
    steps = [fake_step("first", "import time; time.sleep(30)", cap=100, min_s=0.5),
             fake_step("second", "print('second ran')", cap=None, min_s=1.0),
             fake_step("third", "print('never')", cap=None, min_s=50)]
    check = dev.Check(tmp_path / "out", tmp_path / "work", budget_s=4.0, steps=steps,
                      reserve_s=0.5, grace=0.5, overhead_s=0.2, echo=None)
    summary = check.run()
    # third's 50 s minimum leaves nothing to the others, and does not fit itself
    assert [r["status"] for r in summary["steps"]] == ["skipped"] * 3
    assert all("budget" in r["reason"] for r in summary["steps"])

    steps[2] = fake_step("third", "print('third ran')", cap=None, min_s=0.5)
    check = dev.Check(tmp_path / "out2", tmp_path / "work2", budget_s=6.0, steps=steps,
                      reserve_s=0.5, grace=0.5, overhead_s=0.2, echo=None)
    summary = check.run()
    rec = {r["name"]: r for r in summary["steps"]}
    # first may use 5.5 - (1.0 + 0.7) - (0.5 + 0.7) = 2.6 s and is stopped; the others still run
    assert rec["first"]["status"] == "timeout"
    assert rec["first"]["timeout_s"] == pytest.approx(2.6, abs=0.1)
    assert rec["first"]["wall_s"] < 2.6 + 0.5 + 3  # timeout, grace, a loaded CPU
    assert rec["second"]["status"] == "ok" and rec["third"]["status"] == "ok"
    assert rec["second"]["timeout_s"] >= 1.0
    assert "second ran" in check.step_log("second")


def test_skip_by_name_and_prefix(tmp_path):
    steps = [fake_step("train_speed_a", "print(1)"), fake_step("train_speed_b", "print(2)"),
             fake_step("train_run", "print('ran')")]
    summary = dev.Check(tmp_path / "o", tmp_path / "w", 30, skip=["train_speed"], steps=steps,
                        reserve_s=0, echo=None, pick_compile=False).run()
    assert [r["status"] for r in summary["steps"]] == ["skipped", "skipped", "ok"]


# ------------------------------------------------------------------------------ running


def test_run_step_ok_failed_timeout_and_stopped(tmp_path):
    log = tmp_path / "x.log"
    ok = dev.run_step(fake_step("a", "print('hello')"), 20, log, echo=None)
    assert ok["status"] == "ok" and ok["rc"] == 0 and "hello" in log.read_text()
    bad = dev.run_step(fake_step("b", "import sys; sys.exit(3)"), 20, log, echo=None)
    assert bad["status"] == "failed" and bad["rc"] == 3
    slow = dev.run_step(fake_step("c", "import time; print('go', flush=True); time.sleep(30)"),
                        1.0, log, grace=2, echo=None)
    assert slow["status"] == "timeout" and slow["wall_s"] < 8
    assert not slow["attempts"][0]["killed"]
    run = dev.run_step(fake_step("d", "import time; time.sleep(30)", until_timeout=True),
                       1.0, log, grace=2, echo=None)
    assert run["status"] == "stopped"
    assert "stopped after 1 s (SIGTERM)" in log.read_text()


def test_a_step_that_ignores_sigterm_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child_alive"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(2); "
            f"open(r\"{marker}\", \"w\").write(\"x\")']); time.sleep(30)")
    res = dev.run_step(fake_step("e", code), 1.0, tmp_path / "e.log", grace=0.5, echo=None)
    assert res["status"] == "timeout" and res["attempts"][0]["killed"]
    assert res["wall_s"] < 3
    time.sleep(max(0.0, 2.6 - res["wall_s"]))  # past the child's 2 s
    assert not marker.exists(), "the step's child outlived the kill of its process group"


def test_alternatives_are_tried_only_after_a_fast_failure(tmp_path):
    step = fake_step("f", "print('fallback ran')",
                     alternatives=["import sys; print('usage: unknown flag'); sys.exit(2)"])
    res = dev.run_step(step, 20, tmp_path / "f.log", fast_fail_s=60, echo=None)
    assert res["status"] == "ok" and res["attempt_used"] == 1 and len(res["attempts"]) == 2
    res = dev.run_step(step, 20, tmp_path / "g.log", fast_fail_s=0, echo=None)
    assert res["status"] == "failed" and res["attempt_used"] == 0 and res["rc"] == 2


def test_output_is_echoed(tmp_path):
    echo = io.StringIO()
    dev.run_step(fake_step("h", "print('to the screen')"), 20, tmp_path / "h.log", echo=echo)
    assert "to the screen" in echo.getvalue()


# ------------------------------------------------------------------------------ a whole check

PROBE = (f"import json; print({dev.PROBE_TAG!r} + json.dumps({{'cuda': CUDA, 'gpu': 'FakeGPU'}}))")
JUNIT_XML = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
errors="0" failures="1" skipped="2" tests="5" time="3.5"><testcase classname="t" name="a"/>
<testcase classname="t" name="b"><failure message="x"/></testcase></testsuite></testsuites>"""
KERNELS = {"machine": {"gpu": "FakeGPU"}, "copy_gb_per_s": 3000.0,
           "min_speedup_T_ge_256": {"linear_scan": {"fwd": 50.0, "fwd_bwd": 20.0}},
           "linear_scan": {"rows": [{"T": 256, "ours": {"fwd": {"time_ms": 0.1, "gb_per_s": 900,
                                                               "fraction_of_copy_bw": 0.3},
                                                       "fwd_bwd": {"time_ms": 0.3}},
                                     "speedup_vs_loop": {"fwd": 50.0, "fwd_bwd": 20.0}}]},
           "selective_scan": {"rows": []}}
TS_REPORT = {"command": "python -m benchmarks.train_speed", "machine": {"gpu": "FakeGPU"},
             "what": "synthetic", "results": [
                 {"size": "s", "params_M": 11.3, "bf16_autocast": False, "torch_compile": False,
                  "wm_update_s": 0.05, "train_step_s": 0.1, "replayed_steps_per_s": 10240.0,
                  "batch": 16, "seq_len": 64},
                 {"size": "s", "params_M": 11.3, "bf16_autocast": True, "torch_compile": False,
                  "wm_update_s": 0.04, "train_step_s": 0.08, "replayed_steps_per_s": 12800.0,
                  "batch": 16, "seq_len": 64}]}
# a stopped run: sps since the start, so the row times are step / sps = 10, 20, 30 s
METRICS = [{"step": 500, "env_steps_per_s": 50.0, "updates": 0},
           {"step": 1000, "env_steps_per_s": 50.0, "updates": 100, "wm_loss": 3.0},
           {"step": 1300, "env_steps_per_s": 43.33333333, "updates": 175, "wm_loss": 2.0}]


def fake_steps(work: Path, cuda=True) -> list[dev.Step]:
    write = "import json, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    run_dir = work / "train_run"
    train = ("import json, pathlib, time, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(); "
             "(d / 'metrics.jsonl').write_text(sys.argv[-1] + '\\n{\"step\": 14'); "
             "(d / 'episodes.csv').write_text('step,episode,return,length\\n900,1,-21.0,800\\n'); "
             "(d / 'config.yaml').write_text('seed: 0\\n'); (d / 'replay').mkdir(); "
             "(d / 'replay' / 'big.memmap').write_bytes(b'0' * 100000); "
             "print('training', flush=True); time.sleep(60)")
    metrics = "\n".join(json.dumps(r) for r in METRICS)
    return [
        dev.Step("probe", [[PY, "-c", PROBE.replace("CUDA", str(cuda))]], 10, 0),
        dev.Step("gpu_kernel_tests", [[PY, "-c", write, str(work / dev.JUNIT), JUNIT_XML]],
                 10, 0),
        dev.Step("kernels_bench", [[PY, "-c", write + "; print('x' * 300000)",
                                    str(work / dev.KERNELS_JSON), json.dumps(KERNELS)]], 10, 0),
        dev.Step("train_speed_eager", [[PY, "-c", write, str(work / "train_speed_eager.json"),
                                        json.dumps(TS_REPORT)]], 10, 0),
        # prints a row, then hangs in a compile: the row is read back from its log
        dev.Step("train_speed_compiled", [[PY, "-c", (
            "import time; print('size=s   amp=False compile=False params=11.3M wm update 0.05s"
            "  train step 0.10s'); print('size=s   amp=False compile=True            "
            "params=11.3M graphs=3 breaks=0 first 40.1s  wm update 0.02s  train step 0.04s', "
            "flush=True); time.sleep(60)")]], 1.5, 0),
        dev.Step("train_speed_reduce_overhead", [[PY, "-c", "import sys; sys.exit(1)"]], 10, 0),
        dev.Step("train_run", [[PY, "-c", train, str(run_dir), metrics]], 2.0, 0,
                 until_timeout=True),
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    work = tmp / "work"
    check = dev.Check(tmp / "out", work, budget_s=30.0, steps=fake_steps(work), reserve_s=0,
                      grace=0.5, overhead_s=0.1, echo=None,
                      command="python3 -m benchmarks.device --out OUT")
    summary = check.run()
    return tmp, summary


def test_check_summary_has_each_step_and_the_key_numbers(finished):
    tmp, summary = finished
    on_disk = json.loads((tmp / "out" / dev.SUMMARY).read_text())
    assert on_disk["steps"] == json.loads(json.dumps(summary["steps"]))
    assert on_disk["out_dir_problems"] == []
    status = {r["name"]: r["status"] for r in summary["steps"]}
    assert status == {"probe": "ok", "gpu_kernel_tests": "ok", "kernels_bench": "ok",
                      "train_speed_eager": "ok", "train_speed_compiled": "timeout",
                      "train_speed_reduce_overhead": "failed", "train_run": "stopped"}
    for r in summary["steps"]:
        assert {"rc", "wall_s", "timeout_s", "attempts"} <= set(r)
    assert summary["probe"] == {"cuda": True, "gpu": "FakeGPU"}
    key = summary["key"]
    assert key["gpu_kernel_tests"]["tests"] == 5 and key["gpu_kernel_tests"]["passed"] == 2
    assert key["gpu_kernel_tests"]["failed_tests"] == ["t::b"]
    assert key["kernels_bench"]["copy_gb_per_s"] == 3000.0
    assert key["kernels_bench"]["linear_scan"][0]["fwd_fraction_of_copy_bw"] == 0.3
    ts = {(r["variant"], r["bf16_autocast"], r["torch_compile"]): r for r in key["train_speed"]}
    # the compiled variant's eager row duplicates the eager variant's and is dropped
    assert set(ts) == {("eager", False, False), ("eager", True, False),
                       ("compiled", False, True)}
    assert ts[("compiled", False, True)]["train_step_s"] == 0.04
    assert ts[("compiled", False, True)]["first_update_s"] == 40.1
    assert ts[("compiled", False, True)]["compiled_graphs"] == "3"
    run = key["train_run"]
    assert run["env_steps"] == 1300 and run["updates"] == 175
    assert run["wall_s_at_last_row"] == pytest.approx(30.0, abs=0.01)
    # between the rows at 20 s (1000 steps, 100 updates) and 30 s (1300, 175)
    assert run["learning_env_steps_per_s"] == pytest.approx(30.0, abs=0.01)
    assert run["learning_updates_per_s"] == pytest.approx(7.5, abs=0.01)
    assert run["episodes_rows"] == 1 and run["episode_returns_last10"] == [-21.0]
    assert run["last_wm_loss"] == 2.0
    assert summary["out_dir_problems"] == []


def test_the_timed_run_takes_the_compile_mode_measured_fastest_before_it(finished):
    _, summary = finished
    run = next(r for r in summary["steps"] if r["name"] == "train_run")
    # the only size-s bf16 row is the eager variant's: 0.08 s per update, no compile
    assert run["picked"]["train.compile"] == "false"
    assert run["picked"]["updates_expected"] == {
        "false": pytest.approx((run["picked"]["seconds"] - 0.08) / 0.08, abs=0.1)}
    assert "train.compile=false" in run["attempts"][0]["cmd"]
    assert len(run["attempts"]) == 1  # eager was picked: no eager fallback after it


def test_pick_train_compile_weighs_the_compile_time_against_the_time_left():
    rows = [
        {"size": "s", "bf16_autocast": True, "torch_compile": False, "train_step_s": 0.2,
         "first_update_s": 1.0},
        {"size": "s", "bf16_autocast": True, "torch_compile": "default", "train_step_s": 0.1,
         "first_update_s": 50.0},
        {"size": "s", "bf16_autocast": True, "torch_compile": "reduce-overhead",
         "train_step_s": 0.04, "first_update_s": 120.0},
        # other sizes and float32 rows never count, however fast
        {"size": "m", "bf16_autocast": True, "torch_compile": False, "train_step_s": 0.01},
        {"size": "s", "bf16_autocast": False, "torch_compile": False, "train_step_s": 0.01},
    ]
    # 100 s: eager 495 updates, default 500, reduce-overhead 0 (its compile eats it all)
    value, why = dev.pick_train_compile(rows, 100.0)
    assert value == "true" and why["updates_expected"] == {"false": 495.0, "true": 500.0,
                                                           "reduce-overhead": 0.0}
    assert dev.pick_train_compile(rows, 60.0)[0] == "false"  # 295 > 100 > 0
    assert dev.pick_train_compile(rows, 400.0)[0] == "reduce-overhead"  # 7000 > 3500 > 1995
    assert dev.pick_train_compile(rows[3:], 400.0) is None
    assert dev.pick_train_compile([{**rows[1], "first_update_s": None}], 10.0) == (
        "true", {"seconds": 10.0, "updates_expected": {"true": 99.0}})


def test_with_train_compile_puts_the_pick_first_and_eager_after():
    built = {s.name: s for s in dev.build_steps(Path("/w"), PY)}["train_run"].attempts
    got = dev.with_train_compile(built, "reduce-overhead")
    assert len(got) == 2 and got[0][-1] == got[1][-1] == "run_dir=/w/train_run"
    assert [a for a in got[0] if a.startswith("train.compile=")] == [
        "train.compile=reduce-overhead"]
    assert [a for a in got[1] if a.startswith("train.compile=")] == ["train.compile=false"]
    assert set(got[0]) ^ set(got[1]) == {"train.compile=reduce-overhead", "train.compile=false"}
    assert dev.with_train_compile(built, "false") == [got[1]]


def test_a_crashed_training_run_falls_back_however_late(tmp_path):
    crash = [PY, "-c", "import time, sys; time.sleep(0.3); sys.exit(3)"]
    ok = [PY, "-c", "print('second')"]
    run = dev.Step("train_run", [crash, ok], None, 0, until_timeout=True)
    rec = dev.run_step(run, 20.0, tmp_path / "a.log", fast_fail_s=0.1, echo=None)
    assert rec["attempt_used"] == 1 and rec["status"] == "ok"
    other = dev.Step("kernels_bench", [crash, ok], 20, 0)
    rec = dev.run_step(other, 20.0, tmp_path / "b.log", fast_fail_s=0.1, echo=None)
    assert rec["attempt_used"] == 0 and rec["status"] == "failed" and rec["rc"] == 3


def test_check_output_folder_is_flat_small_and_within_the_tool_limits(finished):
    tmp, _ = finished
    out = tmp / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([dev.SUMMARY, dev.LOG, dev.JUNIT, dev.KERNELS_JSON,
                            dev.TRAIN_SPEED + ".json", dev.TRAIN_TAR])
    assert all(p.is_file() for p in out.iterdir())
    assert len(names) + 2 <= dev.OUT_MAX_FILES  # room for kernels_gpu.png and the cache
    assert dev.check_out_dir(out) == []
    with tarfile.open(out / dev.TRAIN_TAR) as tar:
        assert sorted(tar.getnames()) == ["config.yaml", "episodes.csv", "metrics.jsonl"]
    log = (out / dev.LOG).read_text()
    for step in fake_steps(tmp / "work"):
        assert f"===== {step.name} (" in log
    assert "bytes cut" in log  # the kernels step's 300 KB line was cut to head + tail
    assert len(log) < 8 * (dev.LOG_HEAD_BYTES + dev.LOG_TAIL_BYTES)
    report = json.loads((out / (dev.TRAIN_SPEED + ".json")).read_text())
    md_text = dev.train_speed_markdown(report)
    assert md_text.count("\n| ") == 4  # header + 3 rows
    assert "| compiled | s | 11.3M | False | True | 3 / 0 | 40.1 | 0.0200 | 0.0400 | 25.00 |" \
        in md_text


def test_commit_results_copies_gpu_names_and_refuses_without_cuda(finished, tmp_path):
    tmp, _ = finished
    copied = dev.commit_results(tmp / "out", tmp_path / "results")
    assert sorted(Path(c).name for c in copied) == sorted(
        ["kernels_gpu.json", "train_speed_gpu.json", "train_speed_gpu.md",
         "device_check_gpu.json", "device_check_gpu.md"])
    assert json.loads((tmp_path / "results" / "device_check_gpu.json").read_text())["probe"][
        "cuda"] is True
    work = tmp_path / "w"
    nocuda = dev.Check(tmp_path / "o", work, 20, steps=fake_steps(work, cuda=False)[:1],
                       reserve_s=0, echo=None)
    nocuda.run()
    with pytest.raises(ValueError, match="no CUDA device"):
        dev.commit_results(tmp_path / "o", tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    assert len(dev.commit_results(tmp_path / "o", tmp_path / "r2", force=True)) == 2
    with pytest.raises(ValueError, match="not a benchmarks.device output"):
        dev.commit_results(tmp_path / "nothing", tmp_path / "r3")


def test_commit_results_of_two_calls_merges_rows_and_writes_one_report(finished, tmp_path):
    tmp, first = finished
    second = tmp_path / "call2"
    second.mkdir()
    later = {**first, "date": "later", "key": {
        "gpu_kernel_tests": {"tests": 5, "failures": 0, "errors": 0, "skipped": 0,
                             "time_s": 1.0, "failed_tests": [], "passed": 5},
        "kernels_bench": {"source": "log (the bench wrote no JSON)", "copy_gb_per_s": 4000.0,
                          "linear_scan": [{"T": 16384, "ours_fwd_ms": 4.0,
                                           "speedup_vs_loop": {"fwd": 100.0, "fwd_bwd": 90.0}}],
                          "selective_scan": []}}}
    (second / dev.SUMMARY).write_text(json.dumps(later))
    # the second call timed the same eager row again (dropped) and a new compiled one
    rows = [{**TS_REPORT["results"][0], "variant": "eager", "train_step_s": 9.0},
            {**TS_REPORT["results"][1], "variant": "reduce_overhead",
             "torch_compile": "reduce-overhead", "train_step_s": 0.03}]
    (second / f"{dev.TRAIN_SPEED}.json").write_text(json.dumps({**TS_REPORT, "results": rows}))
    out = tmp_path / "results"
    dev.commit_results([tmp / "out", second], out, note="Two calls.")
    both = json.loads((out / "device_check_gpu.json").read_text())
    assert [c["date"] for c in both["calls"]] == [first["date"], "later"]
    merged = json.loads((out / "train_speed_gpu.json").read_text())["results"]
    got = {(r["variant"], r["bf16_autocast"], str(r["torch_compile"])): (r["train_step_s"],
                                                                          r["call"])
           for r in merged}
    assert got[("eager", False, "False")] == (0.1, 1)  # the first call's row is kept
    assert got[("reduce_overhead", True, "reduce-overhead")] == (0.03, 2)
    md = (out / "device_check_gpu.md").read_text()
    assert md.startswith("# The GPU check") and "Two calls." in md
    assert "## Call 1:" in md and "## Call 2: later" in md
    # 3 * 16 * 16384 * 4096 * 4 bytes in 4 ms, against 4000 GB/s
    assert "| linear_scan | 16384 | 4.000 | 3221 | 81% | 100.0 | 90.0 |" in md
    assert "GPU kernel tests: 5 passed, 0 failed" in md
    assert (out / "kernels_gpu.json").read_text() == (tmp / "out" / dev.KERNELS_JSON).read_text()


def test_a_rerun_reports_the_skipped_steps_files_and_cleans_those_it_runs(finished, tmp_path):
    tmp, _ = finished
    work = tmp_path / "work"
    shutil.copytree(tmp / "work", work)
    steps = fake_steps(work)
    steps[-1] = dev.Step("train_run", [[PY, "-c", "print('no run dir this time')"]], None, 0)
    summary = dev.Check(tmp_path / "out", work, 20, skip=["probe", "gpu", "kernels",
                                                          "train_speed"],
                        steps=steps, reserve_s=0, echo=None).run()
    assert summary["key"]["gpu_kernel_tests"]["tests"] == 5  # from the earlier call's files
    assert "train_run" not in summary["key"]  # the old run dir was removed before the step
    assert "earlier call" in (tmp_path / "out" / dev.LOG).read_text()


# ------------------------------------------------------------------------------ pieces


def test_check_out_dir_flags_what_would_not_come_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.json").write_text("{}")
    assert dev.check_out_dir(out) == []
    (out / "bad name.txt").write_text("x")
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "fine.txt").write_text("x")
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(dev.OUT_MAX_FILE_BYTES + 1)
    for i in range(5):
        (out / f"f{i}.txt").write_text("x")
    problems = "\n".join(dev.check_out_dir(out))
    assert "bad name.txt: name" in problems
    assert "deep.txt: more than 2 folders down" in problems and "fine.txt" not in problems
    assert "big.bin" in problems
    assert "10 files, over 8" in problems


def test_cut_log_keeps_head_and_tail():
    data = b"H" * 100 + b"M" * 1000 + b"T" * 100
    cut = dev.cut_log(data, head=100, tail=100)
    assert cut.startswith(b"H" * 100) and cut.endswith(b"T" * 100) and b"M" not in cut
    assert b"1000 bytes cut" in cut
    assert dev.cut_log(b"short", 100, 100) == b"short"


def test_kernels_summary_falls_back_to_the_log_lines(tmp_path):
    log = ("linear_scan T=64: ours fwd 0.050 ms, loop 5.000 ms (x100.0); fwd+bwd x40.0\n"
           "selective_scan L=64: ours fwd 0.100 ms, ref 9.000 ms (x90.0); fwd+bwd x30.0\n")
    got = dev.kernels_summary(tmp_path / "missing.json", log)
    assert got["source"].startswith("log")
    assert got["linear_scan"] == [{"T": 64, "ours_fwd_ms": 0.05, "loop_fwd_ms": 5.0,
                                   "speedup_vs_loop": {"fwd": 100.0, "fwd_bwd": 40.0},
                                   "from_log": True}]
    assert got["selective_scan"][0]["speedup_vs_loop"]["fwd"] == 90.0
    assert dev.kernels_summary(tmp_path / "missing.json", "nothing") is None


def test_train_run_summary_without_a_run_or_rows(tmp_path):
    assert dev.train_run_summary(tmp_path / "none") is None
    (tmp_path / "r").mkdir()
    with open(tmp_path / "r" / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["step", "return_mean"], [1000, "-20.5"]])
    got = dev.train_run_summary(tmp_path / "r")
    assert got["metric_rows"] == 0 and "env_steps" not in got
    assert got["eval_rows"] == 1 and got["eval_last"]["return_mean"] == "-20.5"


# ------------------------------------------------------------------------------ CLI


def test_cli_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dev.main(["--out", str(tmp_path), "--skip", "nope"])
    assert "no such step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dev.main(["--budget-s", "100"])  # no --out
    with pytest.raises(SystemExit):
        dev.main(["--out", str(tmp_path), "--budget-s", "0"])
    with pytest.raises(SystemExit):
        dev.main(["--from", str(tmp_path)])  # without --commit-results
    with pytest.raises(SystemExit):
        dev.main(["--out", str(tmp_path), "--work", str(tmp_path / "w")])  # work inside out
    assert dev.main(["--from", str(tmp_path), "--commit-results"]) == 2  # no summary.json
    args = dev._parser().parse_args(["--out", "o", "--skip", "probe", "train_speed"])
    assert args.budget_s == 480 and args.skip == ["probe", "train_speed"]


def test_print_run_fits_the_device_tool(capsys):
    assert dev.main(["--print-run"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert len(run["command"]) <= 2000 and run["carry"] == [".whl"]
    assert dev.RUN_BUDGET_S + 30 <= run["timeout_s"] <= 600
    cmd = run["command"]
    assert "--no-index --no-deps" in cmd and "--target /tmp/site .whl/*.whl" in cmd
    assert "PYTHONPATH=$PWD:/tmp/site" in cmd  # the repo first: the wheels ship a `benchmarks/`
    assert f"--out $OUT --budget-s {dev.RUN_BUDGET_S}" in cmd
    assert dev.RUN_COMMAND.replace("$PWD:/tmp/site", "") in " ".join(
        dev.__doc__.replace("$PWD:/tmp/site", "").split()), "the docstring's command is stale"


def test_check_wheels_cli(tmp_path, capsys):
    pytest.importorskip("packaging")
    _fake_wheel(tmp_path, "alpha", "1.0", ["missing-thing"])
    assert dev.main(["--check-wheels", str(tmp_path)]) == 1
    assert "missing-thing" in capsys.readouterr().err


def test_without_measured_rows_the_timed_run_is_eager(tmp_path):
    check = dev.Check(tmp_path / "o", tmp_path / "w", 30, echo=None)
    built = {s.name: s for s in check.steps}["train_run"]
    assert any(a.startswith("train.compile=true") for a in built.attempts[0])
    step, picked = check._pick_compile(built, 100.0)
    assert picked == {"train.compile": "false", "why": "no size-s bf16 train_speed row"}
    assert len(step.attempts) == 1 and "train.compile=false" in step.attempts[0]
    assert "train.compile=true" not in step.attempts[0]


def test_the_compile_cache_comes_back_and_seeds_the_next_call(tmp_path):
    """Every step compiles into one cache; the last finish packs it into $OUT, --commit-results
    keeps it, and a next call's --cache-from puts it where its steps compile."""
    write = ("import os, pathlib; d = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']); "
             "(d / 'fxgraph').mkdir(parents=True, exist_ok=True); "
             "(d / 'fxgraph' / 'entry').write_text('compiled')")
    probe = PROBE.replace("CUDA", "True")
    first = dev.Check(tmp_path / "o1", tmp_path / "w1", 30, echo=None, reserve_s=0,
                      steps=[dev.Step("probe", [[PY, "-c", probe]], 10, 0),
                             dev.Step("train_speed_eager", [[PY, "-c", write]], 10, 0)])
    summary = first.run()
    assert summary["compile_cache"]["returned"] is True and summary["compile_cache"]["files"] == 1
    assert summary["compile_cache"]["seeded"] is None
    assert dev.check_out_dir(tmp_path / "o1") == []
    kept = tmp_path / "carry" / dev.CACHE_TAR
    copied = dev.commit_results(tmp_path / "o1", tmp_path / "results", cache_dest=kept)
    assert str(kept) in copied and kept.is_file()
    assert not (tmp_path / "results" / dev.CACHE_TAR).exists()  # not a result
    read = ("import os, pathlib, sys; d = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']); "
            "sys.exit(0 if (d / 'fxgraph' / 'entry').read_text() == 'compiled' else 1)")
    second = dev.Check(tmp_path / "o2", tmp_path / "w2", 30, echo=None, reserve_s=0,
                       cache_from=kept,
                       steps=[dev.Step("probe", [[PY, "-c", read]], 10, 0)])
    summary = second.run()
    assert summary["steps"][0]["status"] == "ok"
    assert summary["compile_cache"]["seeded"] == {"from": str(kept),
                                                  "bytes": kept.stat().st_size}


def test_an_oversized_cache_is_not_returned(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "big").write_bytes(os.urandom(5000))
    got = dev._pack_cache_into(cache, tmp_path / "x.tar.gz", limit=1000)
    assert got["returned"] is False and got["bytes"] > 1000 and "over the 1000" in got["why"]
    assert not (tmp_path / "x.tar.gz").exists() and not (tmp_path / "x.tar.gz.part").exists()
    (tmp_path / "empty").mkdir()
    assert dev._pack_cache_into(tmp_path / "empty", tmp_path / "y.tar.gz") == {
        "files": 0, "returned": False}


def test_print_run_carries_the_cache_when_one_is_kept():
    plain = dev.run_arguments(False)
    assert plain["carry"] == [".whl"] and "--cache-from" not in plain["command"]
    cached = dev.run_arguments(True)
    assert cached["carry"] == [".whl", ".compile_cache"]
    assert cached["command"].endswith(f"--cache-from {dev.CACHE_CARRY}")
    assert ".compile_cache/" in (ROOT / ".gitignore").read_text()


def test_the_run_command_names_this_trees_commit(monkeypatch):
    given = dev.run_arguments(False, "abc123+dirty")
    assert given["command"].startswith("export WORLDRL_COMMIT=abc123+dirty; ")
    monkeypatch.setenv("WORLDRL_COMMIT", "abc123")
    from benchmarks.machine import COMMIT_ENV, commit
    assert COMMIT_ENV == "WORLDRL_COMMIT"
    assert commit() == "abc123 (given)"
    assert dev.run_arguments(False, commit())["command"].startswith(
        "export WORLDRL_COMMIT=abc123; ")
    monkeypatch.delenv("WORLDRL_COMMIT")
    assert "given" not in commit()


def test_a_bad_cache_is_recorded_and_the_call_goes_on(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"not a tar")
    check = dev.Check(tmp_path / "o", tmp_path / "w", 30, echo=None, reserve_s=0,
                      cache_from=bad, steps=[dev.Step("probe", [[PY, "-c", "print(1)"]], 10, 0)])
    summary = check.run()
    assert summary["steps"][0]["status"] == "ok"
    assert summary["compile_cache"]["seeded"]["error"].startswith("ReadError")


def test_a_late_crash_falls_back_only_with_the_steps_minimum_left(tmp_path):
    crash = [PY, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)"]
    ok = [PY, "-c", "print('second')"]
    run = dev.Step("train_run", [crash, ok], None, 5.0, until_timeout=True)
    rec = dev.run_step(run, 5.2, tmp_path / "a.log", fast_fail_s=0.1, echo=None)
    assert rec["attempt_used"] == 0 and rec["status"] == "failed"  # < 5 s left after the crash


def test_the_run_steps_old_folders_are_cleaned(tmp_path):
    check = dev.Check(tmp_path / "o", tmp_path / "w", 30, echo=None)
    for name in ("train_run", "train_run.old-1"):
        (tmp_path / "w" / name / "replay").mkdir(parents=True)
    check._clean({s.name: s for s in check.steps}["train_run"])
    assert not list((tmp_path / "w").glob("train_run*"))


def test_kernel_rows_come_from_the_json_and_the_unfinished_op_from_the_log(tmp_path):
    path = tmp_path / "k.json"
    done = {k: v for k, v in KERNELS.items() if k != "selective_scan"}  # stopped in it
    path.write_text(json.dumps(done))
    log = ("copy bandwidth 4000 GB/s [1.0 s]\n"
           "selective_scan L=64: ours fwd 0.5 ms, ref 5.0 ms (x10.0); fwd+bwd x9.0 [3.0 s]\n")
    got = dev.kernels_summary(path, log)
    assert got["source"] == "json" and got["linear_scan"][0]["fwd_fraction_of_copy_bw"] == 0.3
    assert got["selective_scan"] == [{"T": 64, "ours_fwd_ms": 0.5, "loop_fwd_ms": 5.0,
                                      "speedup_vs_loop": {"fwd": 10.0, "fwd_bwd": 9.0},
                                      "from_log": True}]
    path.write_text('{"machine": {"gpu": "x"}, "linear_sc')  # cut short mid-write
    got = dev.kernels_summary(path, log)
    assert got["source"].startswith("log") and got["copy_gb_per_s"] == 4000.0
    assert "linear_scan" not in got and got["selective_scan"][0]["T"] == 64


def test_the_report_names_an_eager_fallback(finished):
    _, summary = finished
    steps = [dict(r) for r in summary["steps"]]
    run = next(r for r in steps if r["name"] == "train_run")
    run["picked"] = {"train.compile": "reduce-overhead"}
    assert "| train_run (train.compile=reduce-overhead) |" in dev.check_markdown(
        [{**summary, "steps": steps}])
    run["attempt_used"] = 1
    assert "| train_run (its eager fallback) |" in dev.check_markdown(
        [{**summary, "steps": steps}])


def test_a_budget_below_the_steps_minimums_is_announced(tmp_path):
    out = io.StringIO()
    steps = [fake_step("a", "print(1)"), fake_step("b", "print(2)")]
    steps = [dev.Step(s.name, s.attempts, 10, 20.0) for s in steps]
    dev.Check(tmp_path / "o", tmp_path / "w", 30, steps=steps, reserve_s=0, grace=1,
              overhead_s=0, echo=out, pick_compile=False).run()
    assert "budget 30 s is below the 42 s these steps need at least" in out.getvalue()
    quiet = io.StringIO()
    dev.Check(tmp_path / "o2", tmp_path / "w2", 60, steps=steps, reserve_s=0, grace=1,
              overhead_s=0, echo=quiet, pick_compile=False).run()
    assert "is below" not in quiet.getvalue()


def test_a_whole_update_graph_row_is_picked_with_its_run_flag():
    rows = [
        {"size": "s", "bf16_autocast": True, "torch_compile": False, "train_step_s": 0.4,
         "first_update_s": 1.0},
        {"size": "s", "bf16_autocast": True, "torch_compile": False, "cuda_graph": True,
         "train_step_s": 0.08, "first_update_s": 3.0},
        {"size": "s", "bf16_autocast": True, "torch_compile": "default", "cuda_graph": True,
         "train_step_s": 0.04, "first_update_s": 150.0},
    ]
    value, why = dev.pick_train_compile(rows, 100.0)
    assert value == "false+graph" and set(why["updates_expected"]) == {
        "false", "false+graph", "true+graph"}
    assert dev.pick_train_compile(rows, 1000.0)[0] == "true+graph"
    built = {s.name: s for s in dev.build_steps(Path("/w"), PY)}["train_run"].attempts
    first, fallback = dev.with_train_compile(built, "true+graph")
    assert "train.compile=true" in first and "train.cuda_graph=true" in first
    assert first[-1] == "run_dir=/w/train_run"
    assert "train.compile=false" in fallback and not any("cuda_graph" in a for a in fallback)
    # the merged report keeps a graph row beside the plain row of the same compile mode
    merged = dev.merge_train_speed([("eager", rows[:1], None), ("cuda_graph_eager", rows[1:2],
                                                                  None)])
    assert len(merged["results"]) == 2


def test_a_cuda_graph_row_is_read_back_from_its_log_line():
    log = ("size=s   amp=True  compile=True            cuda_graph params=11.3M graphs=10 "
           "breaks=0 first 120.5s  wm update n/a  train step 0.04s\n"
           "size=s   amp=True  compile=False           params=11.3M graphs=0 breaks=0 "
           "first 1.0s  wm update 0.30s  train step 0.43s\n")
    rows, report = dev.train_speed_rows(Path("/nonexistent.json"), log)
    assert report is None and len(rows) == 2
    assert rows[0]["cuda_graph"] and rows[0]["wm_update_s"] is None
    assert rows[0]["train_step_s"] == 0.04 and rows[0]["first_update_s"] == 120.5
    assert not rows[1]["cuda_graph"] and rows[1]["wm_update_s"] == 0.30
    md = dev.train_speed_markdown({"results": [{**r, "variant": "v"} for r in rows]})
    assert "| True + CUDA graph | 10 / 0 | 120.5 | - | 0.0400 |" in md
