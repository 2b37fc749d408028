"""DreamerV3 agent: world model + actor-critic + optimiser behind a small contract.

``cfg`` is the ``agent`` config node as ``worldrl train`` composes it
(``worldrl/configs/agent/dreamer.yaml``, the ``size`` preset under ``size`` and the backbone group
under ``backbone``). A partial config (a dict in code) is read over those same files
(:func:`resolve_config`), so every default lives in the YAML. Sections, each one constructor's
keyword options:

* ``size``: ``deter, hidden, stoch, classes, units, depth``; the YAML's size keys interpolate
  them (``${agent.size.units}``); explicit values win;
* ``world_model``: :class:`worldrl.world_model.WorldModel` (``obs_keys, free_nats, reward_grad,
  loss_scales, loss_balance, encoder, decoder, reward_head, cont_head``);
* ``backbone``: ``name`` (registry key) + the backbone's keyword options;
* ``actor``, ``critic``: :class:`worldrl.behavior.Actor` / :class:`worldrl.heads.CriticHead`;
* ``behavior``: :class:`worldrl.behavior.ActorCritic` options plus ``loss_scales`` (``policy,
  value, repval``);
* ``optim``: :class:`worldrl.optim.LaProp` (one optimiser over all modules, as DreamerV3), plus
  ``group_lr: {world_model, actor, critic}`` (null: ``lr``) for separate learning rates, as the
  DreamerV3 paper's first version had (world model 1e-4, actor and critic 3e-5).

Unknown keys raise a ValueError that lists the valid ones.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import Tensor

from agents.base import Agent
from agents.ddp import all_reduce_grads
from worldrl.backbones import BACKBONES
from worldrl.behavior import ActorCritic
from worldrl.config import CONFIG_DIR, SIZE_KEYS, fill_null_sizes
from worldrl.obs import MODALITIES
from worldrl.optim import LaProp
from worldrl.world_model import WorldModel, shift_actions

__all__ = ["DreamerAgent", "resolve_config"]

TOP_KEYS = ("name", "size", "world_model", "backbone", "actor", "critic", "behavior", "optim")
MODES = ("train", "eval")
#: LaProp parameter groups; ``agent.optim.group_lr.NAME`` overrides ``agent.optim.lr`` for one
OPTIM_GROUPS = ("world_model", "actor", "critic")
#: torch.compile modes for :meth:`DreamerAgent.setup_update`
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _plain(cfg: Any) -> Any:
    """OmegaConf DictConfig / ListConfig / Mapping -> plain dicts and lists (resolved)."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [_plain(v) for v in cfg]
    return cfg


def _check_keys(cfg: Mapping[str, Any], valid: list[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid: {sorted(valid)}")


def _options(cls: type, computed: tuple[str, ...] = ()) -> list[str]:
    """What a config section may set: the keyword-only parameters of ``cls``'s constructor, but
    ``computed`` (those the agent passes itself)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name not in computed]


def _defaults(backbone: str) -> DictConfig:
    """``agent/dreamer.yaml`` with ``backbone/NAME.yaml`` under ``backbone``, unresolved. A
    registered backbone without a YAML takes the size keys its constructor accepts from
    ``agent.size`` and its constructor's defaults for the rest."""
    cfg = OmegaConf.load(CONFIG_DIR / "agent" / "dreamer.yaml")
    path = CONFIG_DIR / "backbone" / f"{backbone}.yaml"
    if path.exists():
        cfg.backbone = OmegaConf.load(path)
    else:
        accepted = inspect.signature(BACKBONES[backbone].__init__).parameters
        cfg.backbone = {"name": backbone, **{k: f"${{agent.size.{k}}}" for k in SIZE_KEYS
                                             if k in accepted}}
    return cfg


def resolve_config(cfg: Any) -> dict[str, Any]:
    """The whole agent config as a plain dict: ``cfg`` over the YAML defaults
    (:func:`_defaults`), sizes interpolated from ``agent.size``."""
    cfg = copy.deepcopy(_plain(cfg))
    if not isinstance(cfg, dict):
        raise TypeError(f"agent cfg must be a mapping, got {type(cfg).__name__}")
    _check_keys(cfg, TOP_KEYS, "the agent config")
    _check_keys(cfg.get("size") or {}, ("name", *SIZE_KEYS), "agent.size")
    name = (cfg.get("backbone") or {}).get("name", "rssm")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choices: {sorted(BACKBONES)}")
    user = {k: v for k, v in cfg.items() if v is not None}
    merged = OmegaConf.merge({"agent": _defaults(name)}, {"agent": user})
    try:
        return fill_null_sizes(OmegaConf.to_container(merged, resolve=True)["agent"])
    except InterpolationResolutionError as err:
        key = str(getattr(err, "full_key", "") or "?")
        leaf = key.rsplit(".", 1)[-1]
        raise ValueError(f"{key} is not set and agent.size.{leaf} is missing; pick a size "
                         "preset (xs, s, m, l, xl) or set it explicitly") from None


#: the modes in which inductor captures CUDA graphs (each update must mark a new step)
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(value: bool | str, name: str = "compile mode") -> str | None:
    """``train.compile`` / ``setup_update(compile=...)`` as a torch.compile mode (``None``:
    eager); anything else raises a ValueError that names ``name`` and the choices."""
    if value is False or value is None:
        return None
    mode = "default" if value is True else value
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown {name} {value!r}; choices: {[False, True, *COMPILE_MODES]}")
    return mode


#: eager updates before :class:`_GraphedStep` captures one (optimiser state, cuDNN's algorithm
#: choice and any compilation happen in them, none of which a capture may do)
GRAPH_WARMUP = 3


def check_cuda_graph(cuda_graph: bool, device: torch.device, mode: str | None,
                     world: Any = None, name: str = "cuda_graph") -> None:
    """Raise a ValueError naming ``name`` when a whole-update CUDA graph cannot be had."""
    if not cuda_graph:
        return
    if device.type != "cuda":
        raise ValueError(f"{name}=true captures the update as a CUDA graph and needs a CUDA "
                         f"device; the agent is on {device.type!r}")
    if mode in CUDAGRAPH_MODES:
        raise ValueError(f"{name}=true cannot hold compile mode {mode!r}, which makes CUDA "
                         f"graphs of its own; compile choices with it: false, true, default, "
                         f"max-autotune-no-cudagraphs")
    if world is not None:
        raise ValueError(f"{name}=true is not for data-parallel training (the gradients' "
                         "all-reduce is not captured)")


class _GraphedStep:
    """The whole update as one CUDA graph (PyTorch's whole-network capture).

    The first GRAPH_WARMUP calls update eagerly on a side stream; the next one captures
    :meth:`DreamerAgent._update` on static batch tensors, with the metrics stacked into one
    static tensor, and every call from then on copies its batch into the static tensors and
    replays the graph. Each call is one update on its own batch (capturing computes nothing,
    so the capturing call replays once). The optimiser steps with device-side counts
    (``LaProp.capturable``) and random numbers come from the graph-safe CUDA generator, so a
    replay is the update an eager call would make, not a repeat of the captured one."""

    def __init__(self):  # (no reference to the agent: no cycle keeping a graph's memory alive)
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, Tensor] | None = None
        self.names: list[str] = []
        self.stacked: Tensor | None = None
        self.others: dict[str, Tensor] = {}

    def _load(self, batch: Mapping[str, Any], device: torch.device) -> None:
        batch = {k: torch.as_tensor(v) for k, v in batch.items()
                 if isinstance(v, Tensor | np.ndarray)}
        if self.static is None:
            self.static = {k: v.to(device, copy=True) for k, v in batch.items()}
            return
        want = {k: (tuple(v.shape), v.dtype) for k, v in self.static.items()}
        got = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
        if got != want:
            raise ValueError(f"cuda_graph: a batch of another layout than the captured one; "
                             f"captured {want}, got {got}")
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)

    def __call__(self, agent: DreamerAgent, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        dev = agent.device
        self._load(batch, dev)
        if self.warm < GRAPH_WARMUP:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                out = agent._fresh(agent._update(self.static))
            torch.cuda.current_stream(dev).wait_stream(side)
            self.warm += 1
            return out
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            # a compile inside a capture fails obscurely (it reads the generator's state): the
            # warm-ups compiled every region, and anything new is an error that says so
            with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(graph):
                out = agent._update(self.static)
                frozen = sorted(k for k, v in out.items() if v.device != dev)
                if frozen:  # a host value would be a constant of the graph
                    raise RuntimeError(f"cuda_graph: metrics {frozen} are not on {dev}; a "
                                       "captured update would report their first value forever")
                self.names = [k for k, v in out.items() if v.dim() == 0]
                self.stacked = torch.stack([out[k].detach().float() for k in self.names])
                self.others = {k: v.detach() for k, v in out.items() if v.dim() > 0}
            self.graph = graph
        self.graph.replay()
        metrics: dict[str, Tensor] = dict(zip(self.names, self.stacked.clone().unbind(0)))
        metrics.update({k: v.clone() for k, v in self.others.items()})
        return metrics


class DreamerAgent(Agent):
    """DreamerV3 learner (see the module docstring for the config).

    Args:
        obs_space: ``{key: (shape, dtype)}``; images uint8 ``[3, 64, 64]``, vectors float ``[D]``.
        act_space: ``{'discrete': bool, 'n': int, 'low': ..., 'high': ...}``. Continuous actions
            are produced and expected in ``[-1, 1]``; mapping to ``low``/``high`` is the
            environment's job.
        cfg: the agent config (plain dict or OmegaConf).
    """

    def __init__(self, obs_space: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 act_space: Mapping[str, Any], cfg: Any):
        super().__init__()
        for key in ("discrete", "n"):
            if key not in act_space:
                raise ValueError(f"act_space lacks {key!r}; it has {sorted(act_space)}")
        self.discrete = bool(act_space["discrete"])
        self.action_size = int(act_space["n"])
        if self.action_size < 1:
            raise ValueError(f"act_space['n'] must be >= 1, got {act_space['n']}")
        self.obs_space = {k: (tuple(int(s) for s in v[0]), v[1]) for k, v in obs_space.items()}
        self.cfg = cfg = resolve_config(cfg)

        beh = dict(cfg["behavior"])
        self.ac_scales = dict(beh.pop("loss_scales"))
        _check_keys(self.ac_scales, ("policy", "value", "repval"), "agent.behavior.loss_scales")
        _check_keys(beh, _options(ActorCritic, ("actor", "critic")), "agent.behavior")

        backbone = dict(cfg["backbone"])
        backbone_name = backbone.pop("name")
        wm_cfg = dict(cfg["world_model"])
        _check_keys(wm_cfg, _options(WorldModel, ("cont_target_scale",)), "agent.world_model")
        contdisc, horizon = beh["contdisc"], float(beh["horizon"])
        self.wm = WorldModel(self.obs_space, self.action_size, backbone_name, backbone,
                             cont_target_scale=(1.0 - 1.0 / horizon) if contdisc else 1.0,
                             **wm_cfg)
        self.ac = ActorCritic(self.wm.backbone.feat_size, self.action_size, self.discrete,
                              actor=cfg["actor"], critic=cfg["critic"], **beh)
        assert self.ac.cont_target_scale == self.wm.cont_target_scale

        optim = dict(cfg["optim"])
        group_lr = dict(optim.pop("group_lr", None) or {})
        _check_keys(optim, _options(LaProp), "agent.optim")
        _check_keys(group_lr, OPTIM_GROUPS, "agent.optim.group_lr")
        modules = {"world_model": self.wm, "actor": self.ac.actor, "critic": self.ac.critic}
        groups = []
        for name in OPTIM_GROUPS:
            group = {"params": list(modules[name].parameters()), "name": name}
            if group_lr.get(name) is not None:
                group["lr"] = float(group_lr[name])
            groups.append(group)
        self.opt = LaProp(groups, **optim)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.amp = False
        self.compiled: str | None = None
        self.cuda_graph = False
        self._graph: _GraphedStep | None = None
        self.world = None  # agents.ddp.World when training data-parallel

    def __getstate__(self) -> dict:
        # a copy sent to a collector worker only acts: it needs no process group and no graph
        return {**self.__dict__, "world": None, "_graph": None}

    def setup_distributed(self, world: Any) -> None:
        """Average the gradients over ``world``'s ranks before each optimiser step, and take the
        actor-critic's normaliser statistics over all ranks' returns (:mod:`agents.ddp`)."""
        if self.compiled:
            raise ValueError("call setup_distributed before setup_update compiles the update")
        self.world = world
        for norm in (self.ac.retnorm, self.ac.valnorm, self.ac.advnorm):
            norm.group = world.group

    def setup_update(self, amp: bool = False, compile: bool | str = False,
                     cuda_graph: bool = False) -> None:
        """How :meth:`train_step` computes.

        ``amp``: bf16 autocast for the losses (their float32 parts stay float32: norms,
        distributions, two-hot, KL, return normaliser; the optimiser runs outside it).
        ``compile``: ``torch.compile`` the update's parts with static shapes (``True`` for the
        default mode, or a mode name such as ``"reduce-overhead"`` for CUDA graphs): the encoder,
        the backbone's step functions (the posterior loop's body and the imagination step), the
        actor, the reward and continue heads, the world-model loss terms (decoders, heads, KL)
        and the actor-critic losses. The Python loops over time stay outside, so that compiling
        takes the same time for any sequence length or horizon. ``False``: eager.
        ``cuda_graph``: on CUDA, capture the whole update (losses, backward, optimiser, slow
        critic, metrics) as one CUDA graph after GRAPH_WARMUP eager updates, and replay it for
        every later batch (:class:`_GraphedStep`): one launch instead of thousands, with eager
        or default-compiled parts inside (not with a CUDA-graph compile mode, which cannot
        nest). The batches must keep their shapes, and the learning rates are the graph's:
        change ``opt.param_groups`` before the capture, or call this again to capture anew.
        """
        mode = compile_mode(compile)
        check_cuda_graph(cuda_graph, self.device, mode, self.world)
        if cuda_graph and self.ac.slow_critic.every != 1:
            raise ValueError("cuda_graph needs the slow critic updated every update "
                             f"(agent.behavior slow every=1), got every="
                             f"{self.ac.slow_critic.every}")
        if bool(amp) != self.amp or bool(cuda_graph) != self.cuda_graph or (
                mode is not None and mode != self.compiled):
            self._graph = None  # a captured update keeps the precision and kernels it had
        self.amp = bool(amp)
        self.cuda_graph = bool(cuda_graph)
        self.opt.capturable = self.cuda_graph
        if mode is None or mode == self.compiled:  # compiled code cannot be taken back
            return
        if self.compiled:
            raise ValueError(f"the update is already compiled with mode {self.compiled!r}")
        # static shapes: acting (batch 1) and evaluation compile graphs of their own instead of
        # turning the update's graphs dynamic on the first other shape (torch's default)
        options = {"dynamic": False, **({} if mode == "default" else {"mode": mode})}
        self.wm.encoder.compile(**options)
        self.wm.backbone.compile_steps(**options)
        self.wm.terms = torch.compile(self.wm.terms, **options)
        for module in (self.ac.actor, self.wm.reward_head, self.wm.cont_head):
            module.compile(**options)
        self.ac.imag_loss = torch.compile(self.ac.imag_loss, **options)
        self.ac.replay_value_loss = torch.compile(self.ac.replay_value_loss, **options)
        self.compiled = mode

    @property
    def device(self) -> torch.device:
        return self.updates.device

    def optim_state_dict(self) -> dict[str, Any]:
        """The optimiser's state (not part of ``state_dict``); checkpoints save both."""
        return self.opt.state_dict()

    def load_optim_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)
        self._graph = None  # the graph holds the old state's tensors: warm up and capture anew

    # ---------------------------------------------------------------------------------- acting
    def carry_spec(self) -> dict[str, tuple[int, ...]]:
        return {**self.wm.backbone.state_spec(), "prev_action": (self.action_size,)}

    def initial_carry(self, batch_size: int) -> dict[str, Tensor]:
        state = self.wm.backbone.initial(batch_size)
        return {**state, "prev_action": torch.zeros(batch_size, self.action_size,
                                                     device=self.device)}

    @torch.no_grad()
    def act(self, obs: Mapping[str, Tensor], is_first: Tensor, carry: Mapping[str, Tensor],
            mode: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        """One policy step. ``mode='train'`` samples, ``'eval'`` takes the mode. The carry (state
        and previous action) is reset where ``is_first``. Returns ``(action [B, A], carry)``:
        one-hot float for discrete actions, ``[-1, 1]`` for continuous ones."""
        if mode not in MODES:
            raise ValueError(f"unknown act mode {mode!r}; choices: {list(MODES)}")
        missing = [k for k in self.carry_spec() if k not in carry]
        if missing:
            raise KeyError(f"carry lacks {missing}; expected keys {list(self.carry_spec())}")
        dev = self.device
        obs = {k: torch.as_tensor(obs[k], device=dev) for k in self.wm.obs_keys}
        is_first = torch.as_tensor(is_first, device=dev).bool().reshape(-1)
        B = is_first.shape[0]
        embed = self.wm.encoder(obs)
        assert embed.shape == (B, self.wm.encoder.out_features), embed.shape
        state = {k: carry[k].to(dev) for k in self.wm.backbone.state_keys()}
        prev = carry["prev_action"].to(dev).float()
        _, _, state = self.wm.backbone.observe(embed[:, None], prev[:, None], is_first[:, None],
                                               state)
        feat = self.wm.backbone.get_feat(state)
        dist = self.ac.policy(feat)
        action = dist.sample() if mode == "train" else dist.mode()
        action = action.detach()
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        assert action.shape == (B, self.action_size), action.shape
        return action, {**state, "prev_action": action}

    # -------------------------------------------------------------------------------- training
    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()
                if isinstance(v, Tensor | np.ndarray)}

    def losses(self, batch: Mapping[str, Tensor]
               ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """All DreamerV3 losses on one batch: ``(total, terms, metrics)`` (no update)."""
        batch = self._to_device(batch)
        wm_total, terms, post, metrics = self.wm.loss(batch)
        B, T = batch["is_first"].shape
        K = min(self.ac.imag_last or T, T)
        last_k = {k: v[:, T - K:] for k, v in post.items()}
        is_first = batch["is_first"].bool()
        start = self.wm.backbone.imagination_starts(
            post, shift_actions(batch["action"].float(), is_first), is_first, K)
        traj = self.ac.rollout(self.wm.backbone, self.wm.reward_head, self.wm.cont_head, start)
        ac_terms, outs, ac_metrics = self.ac.imag_loss(traj, update=self.training)
        terms = {**terms, **ac_terms}
        total = wm_total
        total = total + self.ac_scales["policy"] * ac_terms["policy"].mean()
        total = total + self.ac_scales["value"] * ac_terms["value"].mean()
        if self.ac.repval_loss and K > 1:
            feat = self.wm.backbone.get_feat(last_k)
            boot = outs["ret"][0].reshape(B, K)
            sl = {k: batch[k][:, T - K:] if k in batch else None
                  for k in ("reward", "terminated", "is_first", "is_last")}
            repval = self.ac.replay_value_loss(feat, sl["reward"], sl["terminated"],
                                               sl["is_first"], boot, sl["is_last"],
                                               update=self.training)
            terms["repval"] = repval
            total = total + self.ac_scales["repval"] * repval.mean()
        metrics.update({f"loss/{k}": v.mean().detach() for k, v in ac_terms.items()})
        if "repval" in terms:
            metrics["loss/repval"] = terms["repval"].mean().detach()
        metrics.update({f"actor/{k}": v for k, v in ac_metrics.items()})
        metrics["loss/total"] = total.detach()
        return total, terms, metrics

    def train_step(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One world-model + actor-critic update (one optimiser step, then the slow critic).

        Returns the metrics as detached tensors on the agent's device, so that the update never
        waits for the device; read them (``float``) once per log interval."""
        self.train()
        if self.cuda_graph:
            if self._graph is None:
                self._graph = _GraphedStep()
            return self._graph(self, batch)
        return self._fresh(self._update(batch))

    def _update(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The update itself (:meth:`train_step` without the metrics' copy)."""
        if self.compiled in CUDAGRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new iteration begins
        # (autocast's weight cache cannot be held by a captured graph)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=not self.cuda_graph):
            total, _, metrics = self.losses(batch)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.world is not None:
            all_reduce_grads([p for g in self.opt.param_groups for p in g["params"]], self.world)
        self.opt.step()
        self.ac.update_slow()
        self.updates += 1
        out = dict(metrics)
        out.update({f"grad/{k}": torch.as_tensor(v) for k, v in self.opt.last_metrics.items()})
        out["lr"] = torch.as_tensor(self.opt.last_metrics.get(
            f"{OPTIM_GROUPS[0]}/lr", self.opt.param_groups[0]["lr"]))
        return out

    def _fresh(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The metrics on the agent's device as views of one new float32 tensor (one stack).

        Under CUDA graphs (``reduce-overhead``) a compiled region's outputs live in the graphs'
        memory, which the next update overwrites; the training loop keeps each update's
        metrics until its log interval, so none of them may be such an output."""
        keys = [k for k, v in metrics.items() if v.device == self.device and v.dim() == 0]
        if keys:
            stacked = torch.stack([metrics[k].detach().float() for k in keys])
            metrics.update(zip(keys, stacked.unbind(0)))
        for k, v in metrics.items():
            if v.device == self.device and v.dim() > 0:
                metrics[k] = v.detach().clone()
        return metrics

    # ----------------------------------------------------------------------------- diagnostics
    @torch.no_grad()
    def diagnostics(self, batch: Mapping[str, Tensor], context: int = 5
                    ) -> dict[str, np.ndarray]:
        """One open-loop pass: ``{key: picture}`` for every decoded key whose kind draws one
        (:mod:`worldrl.obs`; ``Modality.show``): images as uint8 frames ``[T, 3H, B'W, C]``
        (rows truth / model / error, columns up to 6 batch entries), audio as one uint8 image
        ``[3M * B', T*F, 3]`` (per batch entry, truth / model / ``|error|`` panels stacked down;
        :func:`worldrl.audio.spectrogram_image`). Vectors draw none."""
        was = self.training
        self.eval()
        try:
            batch = self._to_device(batch)
            T = batch["is_first"].shape[1]
            pictures, _ = self.wm.open_loop(batch, context=min(context, T - 1))
        finally:
            self.train(was)
        shown = {}
        for key, picture in sorted(pictures.items()):
            show = MODALITIES[self.wm.decoder.kind(key)].show
            if show is not None:
                shown[key] = show(picture).cpu().numpy()
        return shown
