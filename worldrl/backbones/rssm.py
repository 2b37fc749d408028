"""DreamerV3's RSSM: a block GRU deterministic state and a categorical stochastic state.

Follows ``dreamerv3/rssm.py`` (danijar/dreamerv3, 2024+):

* ``_core``: ``deter``, flattened ``stoch`` and the action (divided by ``max(1, |a|)``) each go
  through Linear -> Norm -> act to ``hidden`` units; the concatenation is broadcast to ``blocks``
  groups and joined with each group's slice of ``deter``; ``dynlayers`` block-linear layers and a
  block-linear GRU (reset, candidate, update gates; update bias -1) give the new ``deter``.
* Posterior ("obs") logits from ``concat(deter, embed)`` through ``obslayers``; prior ("img")
  logits from ``deter`` through ``imglayers``; ``stoch x classes`` categoricals with ``unimix``
  (1%) and straight-through one-hot samples.
* KL: ``dyn = KL(sg(post) || prior)``, ``rep = KL(post || sg(prior))``, summed over the latent
  groups and clipped below at ``free_nats`` (``max(kl, free_nats)``: zero gradient below).

Shapes: ``deter [..., deter]``, ``stoch [..., stoch * classes]`` (flattened one-hot),
``logits [..., stoch, classes]``.

Deviations: the prior of a sequence is computed after the posterior loop from the posterior
``deter`` (as DreamerV3) and additionally sampled so ``prior['stoch']`` exists; ``observe`` can
take the mode instead of sampling (``sample=False``) for deterministic evaluation and tests.
"""

from __future__ import annotations

import einops
import torch
from torch import Tensor, nn

from worldrl.backbones.base import Backbone, State
from worldrl.dists import OneHot
from worldrl.nets import MLP, BlockLinear, Linear, Norm, get_act


class RSSM(Backbone):
    """Recurrent state-space model with a blocked GRU (DreamerV3).

    Args:
        embed_size: size ``E`` of the observation embedding.
        action_size: size ``A`` of the action vector (one-hot size for discrete actions).
        deter, hidden, stoch, classes, blocks: sizes (``deter`` divisible by ``blocks``).
        unimix: uniform mixture of the latent categoricals.
        act, norm: activation / normalisation names.
        imglayers, obslayers, dynlayers: depths of the prior, posterior and core networks.
        absolute: posterior from the embedding alone (no ``deter`` input).
        outscale: init scale of the logit layers.
    """

    def __init__(self, embed_size: int, action_size: int, *, deter: int = 4096,
                 hidden: int = 2048, stoch: int = 32, classes: int = 32, blocks: int = 8,
                 unimix: float = 0.01, act: str = "silu", norm: str = "rms", imglayers: int = 2,
                 obslayers: int = 1, dynlayers: int = 1, absolute: bool = False,
                 outscale: float = 1.0):
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter={deter} must be divisible by blocks={blocks}")
        for name, value in dict(embed_size=embed_size, action_size=action_size, deter=deter,
                                hidden=hidden, stoch=stoch, classes=classes).items():
            if value < 1:
                raise ValueError(f"RSSM {name} must be >= 1, got {value}")
        self.embed_size, self.action_size = embed_size, action_size
        self.deter, self.hidden, self.stoch, self.classes = deter, hidden, stoch, classes
        self.blocks, self.unimix, self.absolute = blocks, unimix, absolute
        self.deter_size = deter
        self.stoch_size = stoch * classes
        self.feat_size = deter + stoch * classes

        def lin_norm_act(i: int) -> nn.Module:
            return nn.Sequential(Linear(i, hidden), Norm(hidden, norm), get_act(act))

        # Core (deterministic transition).
        self.dynin0 = lin_norm_act(deter)
        self.dynin1 = lin_norm_act(self.stoch_size)
        self.dynin2 = lin_norm_act(action_size)
        width = deter + blocks * 3 * hidden
        dyn: list[nn.Module] = []
        for _ in range(dynlayers):
            dyn += [BlockLinear(width, deter, blocks), Norm(deter, norm), get_act(act)]
            width = deter
        self.dynhid = nn.Sequential(*dyn)
        self.dyngru = BlockLinear(width, 3 * deter, blocks)
        # Posterior and prior.
        obs_in = embed_size if absolute else deter + embed_size
        self.obsnet = MLP(obs_in, obslayers, hidden, act, norm)
        self.obslogit = Linear(self.obsnet.out_features, stoch * classes, outscale=outscale)
        self.imgnet = MLP(deter, imglayers, hidden, act, norm)
        self.imglogit = Linear(self.imgnet.out_features, stoch * classes, outscale=outscale)

    # ----------------------------------------------------------------------------------- state
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"deter": (self.deter,), "stoch": (self.stoch_size,)}

    def initial(self, batch_size: int) -> State:
        dev = self._device()
        return {k: torch.zeros(batch_size, *s, device=dev) for k, s in self.state_spec().items()}

    def dist(self, logits: Tensor) -> OneHot:
        """Latent distribution over ``[..., stoch, classes]`` logits (unimix applied)."""
        return OneHot(logits, self.unimix, event_dims=1)

    # ------------------------------------------------------------------------------------ core
    def _core(self, deter: Tensor, stoch: Tensor, action: Tensor) -> Tensor:
        B = deter.shape[0]
        assert deter.shape == (B, self.deter), deter.shape
        assert stoch.shape == (B, self.stoch_size), stoch.shape
        assert action.shape == (B, self.action_size), action.shape
        action = action / torch.clamp_min(action.abs(), 1.0).detach()
        g = self.blocks
        x = torch.cat([self.dynin0(deter), self.dynin1(stoch), self.dynin2(action)], -1)
        x = x[:, None, :].expand(B, g, x.shape[-1])
        x = torch.cat([deter.reshape(B, g, -1), x], -1).reshape(B, -1)
        x = self.dynhid(x)
        x = self.dyngru(x)
        gates = einops.rearrange(x, "b (g h) -> b g h", g=g).chunk(3, -1)
        reset, cand, update = (gate.reshape(B, self.deter) for gate in gates)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * deter

    def _prior_logits(self, deter: Tensor) -> Tensor:
        x = self.imglogit(self.imgnet(deter))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def _post_logits(self, deter: Tensor, embed: Tensor) -> Tensor:
        x = embed if self.absolute else torch.cat([deter, embed], -1)
        x = self.obslogit(self.obsnet(x))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def _stoch(self, logits: Tensor, sample: bool) -> Tensor:
        dist = self.dist(logits)
        x = dist.sample() if sample else dist.mode()
        return x.reshape(*x.shape[:-2], self.stoch_size)

    # ------------------------------------------------------------------------------- interface
    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State, State]:
        """Posterior/prior over ``[B, T]``; ``action[:, t]`` is the action that led to obs ``t``.

        Where ``is_first[:, t]`` the carried state and ``action[:, t]`` are zeroed (the initial
        state) before the step.
        """
        B, T = self._check_sequence(embed, action, is_first)
        if state is None:
            state = self.initial(B)
        deter, stoch = state["deter"], state["stoch"]
        keep = (~is_first.bool()).to(embed.dtype)[..., None]  # [B, T, 1]
        deters, stochs, logits = [], [], []
        for t in range(T):
            deter, stoch, logit = self.obs_step(deter, stoch, action[:, t], embed[:, t],
                                                keep[:, t], sample)
            deters.append(deter)
            stochs.append(stoch)
            logits.append(logit)
        post = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1),
                "logits": torch.stack(logits, 1)}
        prior_logits = self._prior_logits(post["deter"])
        prior = {"deter": post["deter"], "stoch": self._stoch(prior_logits, sample),
                 "logits": prior_logits}
        last = {"deter": deter, "stoch": stoch}
        return post, prior, last

    def obs_step(self, deter: Tensor, stoch: Tensor, action: Tensor, embed: Tensor, keep: Tensor,
                 sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """One posterior step (the body of :meth:`observe`'s loop); ``keep [B, 1]`` is 0 where the
        state resets. Returns ``(deter, stoch, post_logits)``."""
        deter = self._core(deter * keep, stoch * keep, action * keep)
        logit = self._post_logits(deter, embed)
        return deter, self._stoch(logit, sample), logit

    def compile_steps(self, **options) -> None:
        super().compile_steps(**options)
        self.obs_step = torch.compile(self.obs_step, **options)

    def imagine_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        deter = self._core(state["deter"], state["stoch"], action)
        logits = self._prior_logits(deter)
        return {"deter": deter, "stoch": self._stoch(logits, sample)}

    def kl_losses(self, post: State, prior: State, free_nats: float = 1.0
                  ) -> tuple[Tensor, Tensor]:
        pl, ql = post["logits"], prior["logits"]
        assert pl.shape == ql.shape, (pl.shape, ql.shape)
        dyn = self.dist(pl.detach()).kl(self.dist(ql))
        rep = self.dist(pl).kl(self.dist(ql.detach()))
        if free_nats:
            dyn = torch.clamp_min(dyn, free_nats)
            rep = torch.clamp_min(rep, free_nats)
        return dyn, rep

    def latent_metrics(self, post: State, prior: State) -> dict[str, Tensor]:
        return {
            "post_ent": self.dist(post["logits"]).entropy().mean().detach(),
            "prior_ent": self.dist(prior["logits"]).entropy().mean().detach(),
        }
