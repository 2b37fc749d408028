"""Backbone registry: ``make_backbone(name, embed_size, action_size, **cfg)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from worldrl.backbones.base import Backbone, State
from worldrl.backbones.mamba import Mamba
from worldrl.backbones.mamba2 import Mamba2
from worldrl.backbones.rssm import RSSM
from worldrl.backbones.s4 import S4

BACKBONES: dict[str, type[Backbone]] = {"rssm": RSSM, "s4": S4, "mamba": Mamba, "mamba2": Mamba2}

__all__ = ["BACKBONES", "Backbone", "Mamba", "Mamba2", "RSSM", "S4", "State", "make_backbone"]


def make_backbone(name: str, embed_size: int, action_size: int,
                  cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> Backbone:
    """Build the backbone registered as ``name`` with keyword arguments ``cfg`` / ``kwargs``.

    A ``name`` key inside ``cfg`` (the backbone config group's own name) is ignored. Unknown names
    and unknown keys raise a ValueError that lists the valid choices.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choices: {sorted(BACKBONES)}")
    cls = BACKBONES[name]
    options = {**dict(cfg or {}), **kwargs}
    options.pop("name", None)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p, v in params.items()
             if v.kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for backbone {name!r}; valid: {valid}")
    return cls(embed_size, action_size, **options)
