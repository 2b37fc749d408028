"""The conftest's order of the heaviest test files names files that exist (a renamed file would
silently fall back to the end of the queue)."""

import importlib.util
from pathlib import Path

HERE = Path(__file__).parent


def test_every_heavy_file_named_first_exists():
    # by path: the module name ``conftest`` is also tests/kernels' conftest
    spec = importlib.util.spec_from_file_location("tests_conftest", HERE / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    missing = [name for name in conftest.HEAVY_FIRST if not (HERE / name).exists()]
    assert not missing, missing
    assert len(conftest.HEAVY_FIRST) >= 5
    assert len(set(conftest.HEAVY_FIRST)) == len(conftest.HEAVY_FIRST)
