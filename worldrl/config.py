"""Configuration: Hydra composition of ``worldrl/configs`` with command-line overrides.

Groups: ``env/``, ``backbone/``, ``agent/``, ``size/``, ``preset/``. Each part of the system gets
its own sub-config (``cfg.env``, ``cfg.agent``, ``cfg.replay`` ...), never the root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"
GROUPS = ("env", "backbone", "agent", "size", "preset")
#: keys that take more than one type (their own checks name the choices)
UNION_KEYS = ("train.compile",)
#: keys whose default is set but which also take null (documented as "null: none")
NULLABLE_KEYS = ("train.warning_signal",)
#: the keys of ``agent.size``; the agent's YAML interpolates them (``${agent.size.units}``), older
#: run configs wrote ``null`` for "from agent.size"
SIZE_KEYS = ("deter", "hidden", "stoch", "classes", "units", "depth")
#: keys that moved after runs were already being made: old dotted key (or node) -> new one (old
#: run configs are read in the new layout by ``agents.run_dir.upgrade_config``; an override of an
#: old key is refused with its new name)
MOVED_KEYS = {
    "backbone": "agent.backbone",  # composed where the agent reads it
    "replay.reward_smoothing": "replay.smoothing.mode",  # one nesting style for replay options
    **{f"replay.smoothing_{k}": f"replay.smoothing.{k}" for k in ("sigma", "window", "alpha",
                                                                  "edge")},
}


def fill_null_sizes(agent: dict) -> dict:
    """Older run configs wrote ``null`` for a size key to mean "from ``agent.size``": set each
    such key, in every section of the agent config but ``size``, to ``agent["size"]``'s value
    (in place; returns ``agent``). Used wherever a config reaches the agent: reading an old run
    (``agents.run_dir.upgrade_config``) and resolving one (``agents.dreamer.resolve_config``)."""
    size = agent.get("size") or {}

    def fill(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                fill(value)
            elif key in SIZE_KEYS and value is None and size.get(key) is not None:
                node[key] = size[key]

    for key, value in agent.items():
        if key != "size" and isinstance(value, dict):
            fill(value)
    return agent


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
    for item in overrides:
        if re.match(r"^[+~]?hydra[./]", item):
            raise ConfigError(f"{item!r} is a setting of Hydra's launchers and sweeps; it applies "
                              "to sweeps only: worldrl train -m ...")
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
    values = [o for o in overrides if not _is_group_choice(o)]
    if values:
        check_types(cfg, load_config([o for o in overrides if _is_group_choice(o)]), values)
    return cfg


def _is_group_choice(item: str) -> bool:
    m = re.match(r"^[+~]?(\w+)=", item)
    return bool(m and m.group(1) in GROUPS)


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return None


def check_types(cfg: DictConfig, reference: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Every value of ``cfg`` has the type of the same key in ``reference`` (the config without
    the command line's ``key=value`` overrides): an integer stays an integer (``seed=1.5``,
    ``steps=abc`` are refused), a number accepts integers, a boolean only true/false. Keys whose
    default is null, lists and new keys are not checked here."""
    given = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides}

    def walk(node, ref, prefix):
        for key in node:
            path = f"{prefix}.{key}" if prefix else str(key)
            if not isinstance(ref, DictConfig) or key not in ref:
                continue
            value, default = node[key], ref[key]
            if isinstance(value, DictConfig) and isinstance(default, DictConfig):
                walk(value, default, path)
                continue
            want = _kind(default)
            if want is None or path in UNION_KEYS or isinstance(default, (DictConfig, ListConfig)):
                continue
            ok = (_kind(value) == want or value is None and (path not in given
                                                              or path in NULLABLE_KEYS)
                  or want == "a number" and _kind(value) == "an integer")
            if not ok:
                where = f" (from '{given[path]}')" if path in given else ""
                raise ConfigError(f"{path} must be {want} like its default {default!r}, "
                                  f"got {value!r}{where}")

    walk(cfg, reference, "")


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
        for old, new in MOVED_KEYS.items():
            if dotted == old or dotted.startswith(old + "."):
                return f"config key {dotted!r} is now {new + dotted[len(old):]!r}"
        parent, _, leaf = dotted.rpartition(".")
        try:  # the group choices alone: other bad keys on the same line must not hide these
            with_defaults = load_config([o for o in overrides if _is_group_choice(o)])
            node = OmegaConf.select(with_defaults, parent) if parent else with_defaults
            valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "?"
        except ConfigError:
            valid = "?"
        where = f"under '{parent}'" if parent else "at the top level"
        return f"unknown config key {dotted!r}; valid keys {where}: {valid}"
    return text


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
