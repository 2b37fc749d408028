"""The conftest's order of the heaviest test files names files that exist (a renamed file would
silently fall back to the end of the queue)."""

from pathlib import Path

from conftest import HEAVY_FIRST


def test_every_heavy_file_named_first_exists():
    here = Path(__file__).parent
    missing = [name for name in HEAVY_FIRST if not (here / name).exists()]
    assert not missing, missing
    assert len(set(HEAVY_FIRST)) == len(HEAVY_FIRST)
