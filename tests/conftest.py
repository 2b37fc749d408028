import os

# rendering for DMC pixels on machines without a display
os.environ.setdefault("MUJOCO_GL", "egl")


#: the test files that take longest (minutes each on a 2-core machine, from CI's durations),
#: longest first: they are handed out first, so that the two workers of ``pytest -n 2 --dist
#: loadfile`` do not end with one of them still in a long file while the other waits
HEAVY_FIRST = ("test_train.py", "test_learning_bench.py", "test_update_paths.py",
               "test_sweep.py", "test_audio.py", "test_ddp.py", "test_reliability.py",
               "test_chaos.py", "test_quickstart_bench.py")


def pytest_collection_modifyitems(config, items):
    """The heaviest files first (``HEAVY_FIRST``; the rest in their order); ``slow`` tests
    (minutes each) run only when asked for: ``pytest -m slow``."""
    import pytest

    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
