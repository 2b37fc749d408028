import os

# rendering for DMC pixels on machines without a display
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (minutes each) run only when asked for: ``pytest -m slow``."""
    import pytest

    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
