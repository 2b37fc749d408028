"""Configuration: Hydra composition of ``worldrl/configs`` with command-line overrides.

Groups: ``env/``, ``backbone/``, ``agent/``, ``size/``, ``preset/``. Each part of the system gets
its own sub-config (``cfg.env``, ``cfg.agent``, ``cfg.replay`` ...), never the root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"
GROUPS = ("env", "backbone", "agent", "size", "preset")


class ConfigError(ValueError):
    """A bad config name or override; the message names the value and the valid choices."""


def group_options(group: str) -> list[str]:
    """The names a config group accepts, e.g. ``group_options('env')``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _check_groups(overrides: Sequence[str]) -> None:
    for item in overrides:
        m = re.match(r"^[+~]?(\w+)=(.*)$", item)
        if m and m.group(1) in GROUPS:
            group, value = m.groups()
            if value in ("null", "none", "") and group == "preset":
                continue
            choices = group_options(group)
            if value not in choices:
                raise ConfigError(
                    f"unknown {group} {value!r}; choose one of: {', '.join(choices)}"
                )


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the root config with ``overrides`` (Hydra syntax: ``env=dmc env.task=cheetah_run``).

    Raises :class:`ConfigError` for unknown group names or keys, listing what is valid.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigKeyError

    overrides = list(overrides)
    _check_groups(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, ConfigKeyError) as err:
        raise ConfigError(_explain(err, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return cfg


def _explain(err: Exception, overrides: Sequence[str]) -> str:
    """Turn Hydra's composition error into one naming the bad key and the valid ones."""
    text = str(err)
    m = re.search(r"Key '([^']+)' is not in struct", text) or re.search(
        r"Could not override '([^']+)'", text
    )
    if m:
        dotted = m.group(1)
        for item in overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            if key.endswith(dotted) or dotted.endswith(key):
                dotted = key
                break
        parent, _, leaf = dotted.rpartition(".")
        try:
            with_defaults = load_config([o for o in overrides if not o.startswith(dotted)])
            node = OmegaConf.select(with_defaults, parent) if parent else with_defaults
            valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "?"
        except ConfigError:
            valid = "?"
        where = f"under '{parent}'" if parent else "at the top level"
        return f"unknown config key {dotted!r}; valid keys {where}: {valid}"
    return text


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
