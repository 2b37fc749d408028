"""DreamerV3 world model: encoder + backbone + decoder + reward + continue heads.

Batch layout (from replay, ``[B, T, ...]``):

* observations: every key of the observation space that has a kind (:mod:`worldrl.obs`), e.g.
  ``pixels`` uint8 ``[B, T, 3, H, W]``, ``vector`` float ``[B, T, D]``, ``audio`` float
  ``[B, T, F, M]``;
* ``action`` float ``[B, T, A]``: the action taken *at* obs ``t`` (one-hot for discrete);
  the backbone gets ``prev_action[:, t] = action[:, t-1]`` (zero at ``t = 0`` and wherever
  ``is_first``);
* ``reward`` float ``[B, T]``: received on arriving at obs ``t``;
* ``is_first`` bool ``[B, T]``: episode starts (the state is reset there; rows may cross episode
  boundaries);
* ``terminated`` bool ``[B, T]``: obs ``t`` is terminal; continue target
  ``(1 - terminated) * cont_target_scale`` (DreamerV3 ``contdisc``: the scale is ``1 - 1/333``).

Loss terms (each ``[B, T]``, total = ``sum(scale * term.mean())``): one reconstruction term per
decoded key (scale ``rec`` unless the key has its own scale), ``rew``, ``con``, ``dyn`` (1.0) and
``rep`` (0.1), the KLs clipped below at ``free_nats = 1``. The reward and continue heads read the
posterior ``feat`` with gradients into the representation (DreamerV3 ``reward_grad: True``).

**Loss balancing** (``loss_balance``). ``none``: the fixed scales above. ``harmony``: HarmonyDream
(Ma et al., ICML 2024; ``thuml/HarmonyDream``, ``dreamerv3-jax``): one learnable ``s_i`` per task
(``rew``, each decoded observation key, and the dynamics ``dyn`` for the KL terms), initialised at
0, with the rectified loss ``L_i / sigma_i + log(1 + sigma_i)``, ``sigma_i = exp(s_i)``. As in
the paper's DreamerV3 code the dynamics task is ``(dyn_scale * dyn + rep_scale * rep) /
(dyn_scale + rep_scale)`` under one ``s``, the continue loss keeps its fixed scale, and the
configured ``rec``/``rew``/per-key scales are replaced by the learned ones. The ``s_i`` are
parameters of the world model and train with its optimiser. For a fixed ``L`` the minimiser is
``sigma^2 / (1 + sigma) = L``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from worldrl.backbones import make_backbone
from worldrl.backbones.base import State
from worldrl.config import CONFIG_DIR
from worldrl.heads import ContinueHead, RewardHead
from worldrl.obs import MODALITIES, MultiDecoder, MultiEncoder

__all__ = ["WorldModel", "shift_actions", "DEFAULT_LOSS_SCALES", "LOSS_BALANCES"]

#: ``rec, rew, con, dyn, rep``: DreamerV3's scales, as the agent's YAML sets them (the one place)
DEFAULT_LOSS_SCALES = {k: float(v) for k, v in OmegaConf.load(
    CONFIG_DIR / "agent" / "dreamer.yaml").world_model.loss_scales.items()}


class FixedScales(nn.Module):
    """``loss_balance=none``: ``sum(scale * term.mean())`` with the configured scales."""

    def __init__(self, wm: WorldModel):
        super().__init__()

    def total(self, wm: WorldModel, terms: Mapping[str, Tensor]) -> Tensor:
        return sum(wm.scale(k) * v.mean() for k, v in terms.items())

    def metrics(self) -> dict[str, Tensor]:
        return {}


class HarmonyDream(nn.ParameterDict):
    """``loss_balance=harmony``: one learnable ``s`` per task (module docstring)."""

    def __init__(self, wm: WorldModel):
        tasks = ["rew", *wm.decoder_keys(), "dyn"]
        super().__init__({t: nn.Parameter(torch.zeros(())) for t in tasks})

    def total(self, wm: WorldModel, terms: Mapping[str, Tensor]) -> Tensor:
        sd, sr = wm.scale("dyn"), wm.scale("rep")
        tasks = {k: terms[k].mean() for k in self if k != "dyn"}
        tasks["dyn"] = (sd * terms["dyn"].mean() + sr * terms["rep"].mean()) / (sd + sr)
        total = wm.scale("con") * terms["con"].mean()
        for k, loss in tasks.items():
            s = self[k]
            total = total + loss * torch.exp(-s) + F.softplus(s)
        return total

    def metrics(self) -> dict[str, Tensor]:
        """The learned weight ``1 / sigma`` of each task."""
        return {f"harmony/{k}": torch.exp(-s.detach()) for k, s in self.items()}


#: ``world_model.loss_balance`` -> the module that turns the loss terms into the total (built
#: from the world model; its parameters train with the world model's). A new balancer is a class
#: with ``total(wm, terms)`` and ``metrics()`` and an entry here.
LOSS_BALANCES = {"none": FixedScales, "harmony": HarmonyDream}


def _older_keys(state_dict, prefix, *args) -> None:
    """Checkpoints from before the balancer registry kept HarmonyDream's ``s`` under
    ``harmony.``; they load into ``balancer.``."""
    for key in [k for k in state_dict if k.startswith(prefix + "harmony.")]:
        state_dict[prefix + "balancer." + key[len(prefix + "harmony."):]] = state_dict.pop(key)


def shift_actions(action: Tensor, is_first: Tensor) -> Tensor:
    """``prev[:, t] = action[:, t-1]``, zero at ``t = 0`` and where ``is_first[:, t]``."""
    prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    return prev * (~is_first.bool())[..., None].to(prev.dtype)


class WorldModel(nn.Module):
    """Encoder, backbone (picked by name), decoder, reward and continue heads.

    Args:
        obs_space: ``{key: (shape, dtype)}``.
        action_size: action vector size ``A``.
        backbone: registry name (``worldrl.backbones.BACKBONES``).
        backbone_cfg: keyword config of the backbone.
        obs_keys: observation keys to encode and decode (``None``: all usable keys).
        encoder, decoder, reward_head, cont_head: keyword configs of
            :class:`~worldrl.obs.MultiEncoder`, :class:`~worldrl.obs.MultiDecoder`,
            :class:`~worldrl.heads.RewardHead`, :class:`~worldrl.heads.ContinueHead`.
        loss_scales: ``rec, rew, con, dyn, rep`` (and optionally per-observation-key) scales.
        free_nats: KL clip.
        reward_grad: reward head gradients reach the representation.
        cont_target_scale: factor on the continue target (``1 - 1/horizon`` with ``contdisc``).
        loss_balance: ``none`` (fixed scales) or ``harmony`` (HarmonyDream, module docstring).
    """

    def __init__(self, obs_space: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 action_size: int, backbone: str = "rssm",
                 backbone_cfg: Mapping[str, Any] | None = None, *,
                 obs_keys: Sequence[str] | None = None, encoder: dict | None = None,
                 decoder: dict | None = None, reward_head: dict | None = None,
                 cont_head: dict | None = None, loss_scales: Mapping[str, float] | None = None,
                 free_nats: float = 1.0, reward_grad: bool = True,
                 cont_target_scale: float = 1.0, loss_balance: str = "none"):
        super().__init__()
        self.encoder = MultiEncoder(obs_space, obs_keys, **(encoder or {}))
        self.backbone = make_backbone(backbone, self.encoder.out_features, action_size,
                                      backbone_cfg or {})
        bb = self.backbone
        self.decoder = MultiDecoder(obs_space, bb.deter_size, bb.stoch_size, obs_keys,
                                    **(decoder or {}))
        self.reward_head = RewardHead(bb.feat_size, **(reward_head or {}))
        self.cont_head = ContinueHead(bb.feat_size, **(cont_head or {}))
        self.obs_keys = list(self.encoder.keys)
        self.image_keys = self.decoder.keys_of("image")
        self.audio_keys = self.decoder.keys_of("audio")
        self.action_size = action_size
        scales = {**DEFAULT_LOSS_SCALES, **dict(loss_scales or {})}
        unknown = set(scales) - set(DEFAULT_LOSS_SCALES) - set(self.obs_keys)
        if unknown:
            raise ValueError(f"unknown world-model loss scale(s) {sorted(unknown)}; valid: "
                             f"{sorted(set(DEFAULT_LOSS_SCALES) | set(self.obs_keys))}")
        self.scales = {k: float(v) for k, v in scales.items()}
        self.free_nats = float(free_nats)
        self.reward_grad = reward_grad
        self.cont_target_scale = float(cont_target_scale)
        if loss_balance not in LOSS_BALANCES:
            raise ValueError(f"unknown world-model loss_balance {loss_balance!r}; choose one of: "
                             f"{', '.join(LOSS_BALANCES)}")
        self.loss_balance = loss_balance
        self.balancer = LOSS_BALANCES[loss_balance](self)
        self._register_load_state_dict_pre_hook(_older_keys)

    def decoder_keys(self) -> list[str]:
        return list(self.decoder.keys)

    def balance(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The total world-model loss from its ``[B, T]`` terms (:data:`LOSS_BALANCES`)."""
        return self.balancer.total(self, terms)

    def scale(self, term: str) -> float:
        if term in self.scales:
            return self.scales[term]
        if term in self.obs_keys:
            return self.scales["rec"]
        raise KeyError(f"no loss scale for term {term!r}")

    def check_batch(self, batch: Mapping[str, Tensor]) -> tuple[int, int]:
        """Validate the batch layout; return ``(B, T)``."""
        need = [*self.obs_keys, "action", "reward", "is_first", "terminated"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
        B, T = batch["is_first"].shape[:2]
        if batch["is_first"].shape != (B, T):
            raise ValueError(f"is_first must be [B, T], got {tuple(batch['is_first'].shape)}")
        expect = {"action": (B, T, self.action_size), "reward": (B, T), "terminated": (B, T)}
        for k, shape in expect.items():
            if tuple(batch[k].shape) != shape:
                raise ValueError(
                    f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected {shape}")
        for k in self.obs_keys:
            if tuple(batch[k].shape[:2]) != (B, T):
                raise ValueError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected "
                                 f"[{B}, {T}, ...]")
        return B, T

    def observe(self, batch: Mapping[str, Tensor], state: State | None = None,
                sample: bool = True) -> tuple[Tensor, State, State, State]:
        """Encode and run the backbone: ``(embed, post, prior, last_state)``."""
        embed = self.encoder({k: batch[k] for k in self.obs_keys})
        is_first = batch["is_first"].bool()
        prev_action = shift_actions(batch["action"].float(), is_first)
        post, prior, last = self.backbone.observe(embed, prev_action, is_first, state, sample)
        return embed, post, prior, last

    def loss(self, batch: Mapping[str, Tensor], state: State | None = None
             ) -> tuple[Tensor, dict[str, Tensor], State, dict[str, Tensor]]:
        """World-model loss: ``(total, terms {name: [B, T]}, post, metrics)``."""
        B, T = self.check_batch(batch)
        embed, post, prior, _ = self.observe(batch, state)
        terms, metrics = self.terms(post, prior, batch)
        for k, v in terms.items():
            assert v.shape == (B, T), (k, v.shape)
        total = self.balance(terms)
        metrics["wm_loss"] = total.detach()
        metrics.update(self.balancer.metrics())
        return total, terms, post, metrics

    def terms(self, post: State, prior: State, batch: Mapping[str, Tensor]
              ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The loss terms ``{name: [B, T]}`` of the posterior (KLs, decoders, reward, continue)
        and their metrics: every head of the update after the backbone, one region to compile."""
        feat = self.backbone.get_feat(post)
        terms: dict[str, Tensor] = {}
        terms["dyn"], terms["rep"] = self.backbone.kl_losses(post, prior, self.free_nats)
        for key, dist in self.decoder(feat).items():
            terms[key] = dist.loss(batch[key])
        rew_in = feat if self.reward_grad else feat.detach()
        reward = self.reward_head(rew_in)
        terms["rew"] = reward.loss(batch["reward"].float())
        cont = (1.0 - batch["terminated"].float()) * self.cont_target_scale
        terms["con"] = self.cont_head.loss(feat, cont)
        with torch.no_grad():
            raw_dyn, _ = self.backbone.kl_losses(post, prior, free_nats=0.0)
            metrics = {f"loss/{k}": v.mean().detach() for k, v in terms.items()}
            metrics["kl/dyn"] = raw_dyn.mean()  # the rep KL has the same value (not its grads)
            metrics["reward_max_data"] = batch["reward"].abs().max().float()
            metrics["reward_max_pred"] = reward.pred().detach().abs().max()
            metrics.update(self.backbone.latent_metrics(post, prior))
        return terms, metrics

    @torch.no_grad()
    def predict_open_loop(self, batch: Mapping[str, Tensor], context: int = 5,
                          max_batch: int = 6) -> dict[str, Any]:
        """Observe ``context`` steps, then imagine the rest with the replayed actions.

        Returns ``{key: distribution}`` of the decoder over all ``T`` steps of the first
        ``max_batch`` sequences (posterior reconstructions for ``t < context``, open-loop
        predictions after).
        """
        self.check_batch(batch)
        B, T = batch["is_first"].shape
        if not 0 < context < T:
            raise ValueError(f"open_loop context must be in [1, T-1] with T={T}, got {context}")
        n = min(max_batch, B)
        data = {k: v[:n] for k, v in batch.items() if isinstance(v, Tensor)}
        obs_part = {k: v[:, :context] for k, v in data.items()}
        _, post, _, state = self.observe(obs_part)
        feats = [self.backbone.get_feat(post)]
        action = data["action"].float()
        imagined = []
        for t in range(context, T):
            state = self.backbone.imagine_step(state, action[:, t - 1])
            imagined.append(self.backbone.get_feat(state))
        feats.append(torch.stack(imagined, 1))
        return self.decoder(torch.cat(feats, 1))

    @torch.no_grad()
    def open_loop(self, batch: Mapping[str, Tensor], context: int = 5, max_batch: int = 6
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Open-loop prediction: observe ``context`` steps, then imagine with the replayed actions.

        Returns ``(videos, metrics)``: ``videos[key]`` the picture of each key whose kind draws
        one (its :class:`~worldrl.obs.Modality` ``picture``: images as truth / model / error
        stacked along the height, uint8 ``[B', T, C, 3H, W]``; audio as one RGB spectrogram image
        per sequence, uint8 ``[B', 3, 3M, T*F]``; vectors none) and
        ``metrics['openloop/<key>_mse']`` for every decoded key (mean squared error of the
        open-loop part per element, in the kind's units).
        """
        recons = self.predict_open_loop(batch, context, max_batch)
        videos: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        for key, dist in recons.items():
            truth = batch[key][: dist.pred().shape[0]]
            picture, diff = MODALITIES[self.decoder.kind(key)].picture(truth, dist, context)
            if picture is not None:
                videos[key] = picture
            metrics[f"openloop/{key}_mse"] = diff.square().mean()
        return videos, metrics
