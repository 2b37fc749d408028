"""Shared code of the state-space world-model backbones (``s4``, ``mamba``).

The S4WM / R2I / Drama layout, in our index convention (``observe(..., action, ...)`` takes at
``t`` the action that led to observation ``t``):

* **posterior** ``q(z_t | embed_t)`` from the observation embedding alone (R2I, S4WM, Drama), so
  every posterior of a replayed sequence is computed at once;
* **sequence model**: ``x_t = stem([z_{t-1}, a_{t-1}])`` (Linear -> RMSNorm -> SiLU, Drama's stem;
  zeros for ``z``/``a`` where ``is_first``), a stack of residual SSM layers over ``x`` (a parallel
  scan over ``T`` that resets its state where ``is_first``), a final RMSNorm -> ``deter_t``;
* **prior** ``p(z_t | deter_t)``: ``deter_t`` has read ``z_{<t}, a_{<t}``, so this is the
  "predict ``z_{t+1}`` from the SSM output after ``(z_t, a_t)``" of R2I and Drama, shifted by one.

``feat = concat(deter_t, z_t)`` as for the RSSM. A state holds ``deter``, ``stoch`` and each
layer's recurrent state (``<prefix><layer>``); sequences never keep the per-step SSM states of all
``T`` steps (only the last one, and, for :meth:`imagination_starts`, those of the start steps).

Latent code is the RSSM's: the same ``OneHot`` categorical with unimix, straight-through samples,
KL with free nats and entropy metrics (:mod:`worldrl.backbones.rssm`'s methods, reused as is).

Subclasses implement the layer stack: ``_layer_spec``, ``_layers_seq`` and ``_layers_step``.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from worldrl.backbones.base import Backbone, State
from worldrl.backbones.rssm import RSSM
from worldrl.nets import MLP, Linear, Norm, get_act


class SSMBackbone(Backbone):
    """Base of the SSM backbones (see the module docstring).

    Args:
        embed_size, action_size: sizes of the embedding and the action vector.
        d_model: width of the SSM stack (= ``deter`` features).
        hidden: units of the posterior / prior MLPs.
        stoch, classes: categorical latent (``stoch`` groups of ``classes``).
        unimix, act, norm, imglayers, obslayers, outscale: as the RSSM's.
        imag_context: imagination starts (:meth:`imagination_starts`): ``> 0`` burns in the SSM
            state over the last ``imag_context`` replayed steps before each start from a fresh
            state (Drama: 8); ``0`` takes the exact states of the whole replayed sequence (R2I).
    """

    #: prefix of the per-layer state keys
    layer_prefix = "ssm"

    def __init__(self, embed_size: int, action_size: int, *, d_model: int, hidden: int,
                 stoch: int, classes: int, unimix: float = 0.01, act: str = "silu",
                 norm: str = "rms", imglayers: int = 1, obslayers: int = 1,
                 outscale: float = 1.0, imag_context: int = 8):
        super().__init__()
        for name, value in dict(embed_size=embed_size, action_size=action_size, d_model=d_model,
                                hidden=hidden, stoch=stoch, classes=classes).items():
            if value < 1:
                raise ValueError(f"{type(self).__name__} {name} must be >= 1, got {value}")
        if imag_context < 0:
            raise ValueError(f"imag_context must be >= 0 (0: exact states), got {imag_context}")
        self.embed_size, self.action_size = embed_size, action_size
        self.d_model, self.hidden, self.stoch, self.classes = d_model, hidden, stoch, classes
        self.unimix, self.imag_context = unimix, imag_context
        self.deter_size = d_model
        self.stoch_size = stoch * classes
        self.feat_size = d_model + stoch * classes
        self.stem = nn.Sequential(Linear(self.stoch_size + action_size, d_model),
                                  Norm(d_model, norm), get_act(act))
        self.out_norm = Norm(d_model, norm)
        self.obsnet = MLP(embed_size, obslayers, hidden, act, norm)
        self.obslogit = Linear(self.obsnet.out_features, self.stoch_size, outscale=outscale)
        self.imgnet = MLP(d_model, imglayers, hidden, act, norm)
        self.imglogit = Linear(self.imgnet.out_features, self.stoch_size, outscale=outscale)

    # ------------------------------------------------------------------- the layer stack (abc)
    @abc.abstractmethod
    def _layer_spec(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of one layer's recurrent state, ``{suffix: shape}``."""

    @abc.abstractmethod
    def _layers_seq(self, x: Tensor, reset: Tensor, states: list[dict[str, Tensor]],
                    tail: int = 0) -> tuple[Tensor, list[dict[str, Tensor]], list | None]:
        """Run the stack over ``x [B, T, d_model]``; ``reset [B, T]`` drops the carried state
        before a step. Returns ``(y [B, T, d_model], last states, tail states)``; with
        ``tail = K > 0`` also each layer's state after each of the last ``K`` steps,
        ``{suffix: [B, K, ...]}`` (else ``None``)."""

    @abc.abstractmethod
    def _layers_step(self, x: Tensor, states: list[dict[str, Tensor]]
                     ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """One recurrent step of the stack: ``x [B, d_model]`` -> ``(y, new states)``."""

    @property
    @abc.abstractmethod
    def num_layers(self) -> int: ...

    # ----------------------------------------------------------------------------------- state
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"deter": (self.d_model,), "stoch": (self.stoch_size,)}
        for i in range(self.num_layers):
            for suffix, shape in self._layer_spec().items():
                spec[f"{self.layer_prefix}{i}_{suffix}"] = shape
        return spec

    def initial(self, batch_size: int) -> State:
        dev = self._device()
        return {k: torch.zeros(batch_size, *s, device=dev) for k, s in self.state_spec().items()}

    def _split(self, state: State) -> list[dict[str, Tensor]]:
        return [{s: state[f"{self.layer_prefix}{i}_{s}"] for s in self._layer_spec()}
                for i in range(self.num_layers)]

    def _join(self, layers: list[dict[str, Tensor]]) -> State:
        return {f"{self.layer_prefix}{i}_{s}": v for i, st in enumerate(layers)
                for s, v in st.items()}

    # ---------------------------------------------------------------------------------- latent
    dist = RSSM.dist
    _stoch = RSSM._stoch
    kl_losses = RSSM.kl_losses
    latent_metrics = RSSM.latent_metrics

    def _post_logits(self, embed: Tensor) -> Tensor:
        x = self.obslogit(self.obsnet(embed))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def _prior_logits(self, deter: Tensor) -> Tensor:
        x = self.imglogit(self.imgnet(deter))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def _inputs(self, prev_stoch: Tensor, prev_action: Tensor) -> Tensor:
        """Stem input ``[z_{t-1}, a_{t-1}]`` -> ``x_t`` (actions divided by ``max(1, |a|)``)."""
        prev_action = prev_action / torch.clamp_min(prev_action.abs(), 1.0).detach()
        return self.stem(torch.cat([prev_stoch, prev_action], -1))

    def _shifted_inputs(self, stoch: Tensor, action: Tensor, is_first: Tensor,
                        state: State) -> Tensor:
        """``x [B, T, d_model]`` from the posterior latents of a sequence (see ``observe``)."""
        keep = (~is_first).to(stoch.dtype)[..., None]
        prev = torch.cat([state["stoch"][:, None], stoch[:, :-1]], 1)
        return self._inputs(prev * keep, action * keep)

    # ------------------------------------------------------------------------------- interface
    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State, State]:
        """Posterior/prior over ``[B, T]``, all steps at once (parallel scan over ``T``)."""
        B, T = self._check_sequence(embed, action, is_first)
        if state is None:
            state = self.initial(B)
        is_first = is_first.bool()
        post_logits = self._post_logits(embed)
        stoch = self._stoch(post_logits, sample)
        x = self._shifted_inputs(stoch, action, is_first, state)
        y, layers, _ = self._layers_seq(x, is_first, self._split(state))
        deter = self.out_norm(y)
        prior_logits = self._prior_logits(deter)
        post = {"deter": deter, "stoch": stoch, "logits": post_logits}
        prior = {"deter": deter, "stoch": self._stoch(prior_logits, sample),
                 "logits": prior_logits}
        last = {"deter": deter[:, -1], "stoch": stoch[:, -1], **self._join(layers)}
        return post, prior, last

    def imagine_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        B = state["stoch"].shape[0]
        assert action.shape == (B, self.action_size), (action.shape, self.action_size)
        x = self._inputs(state["stoch"], action)
        y, layers = self._layers_step(x, self._split(state))
        deter = self.out_norm(y)
        logits = self._prior_logits(deter)
        return {"deter": deter, "stoch": self._stoch(logits, sample), **self._join(layers)}

    @torch.no_grad()
    def imagination_starts(self, post: State, action: Tensor, is_first: Tensor,
                           last: int) -> State:
        """Start states at each of the last ``last`` replayed steps, ``[B * last, ...]``.

        ``imag_context > 0`` (Drama): for a start at ``t`` the stack is re-run from a fresh state
        over the ``imag_context`` steps ending at ``t`` (their replayed posterior latents and
        actions; episode starts inside still reset), so ``deter`` is the burnt-in one, ``stoch``
        the posterior ``z_t``. ``imag_context = 0`` (R2I): the exact states after step ``t`` of the
        whole sequence, keeping only the ``last`` start steps' layer states.
        Assumes the sequence started from the initial state (as ``WorldModel.loss`` does).
        """
        B, T = is_first.shape
        K = min(last or T, T)
        is_first = is_first.bool().clone()
        is_first[:, 0] = True  # the sequence began from the initial state
        x = self._shifted_inputs(post["stoch"], action, is_first, self.initial(B))
        stoch = post["stoch"][:, T - K:].reshape(B * K, -1)
        C = self.imag_context
        if C == 0:
            y, _, tail = self._layers_seq(x, is_first, self._split(self.initial(B)), tail=K)
            deter = self.out_norm(y[:, T - K:]).reshape(B * K, -1)
            layers = [{s: v.reshape(B * K, *v.shape[2:]) for s, v in st.items()} for st in tail]
        else:
            # windows of C inputs ending at each start step, left-padded (the pad is reset away)
            pad = x.new_zeros(B, C - 1, x.shape[-1])
            xw = torch.cat([pad, x], 1).unfold(1, C, 1)[:, T - K:]  # [B, K, d, C]
            xw = xw.permute(0, 1, 3, 2).reshape(B * K, C, -1)
            rpad = torch.cat([is_first.new_ones(B, C - 1), is_first], 1)
            rw = rpad.unfold(1, C, 1)[:, T - K:].reshape(B * K, C).clone()
            rw[:, 0] = True  # each window starts from a fresh state
            y, layers, _ = self._layers_seq(xw, rw, self._split(self.initial(B * K)))
            deter = self.out_norm(y[:, -1])
        return {"deter": deter, "stoch": stoch, **self._join(layers)}
