"""The backbone seam: the recurrent/sequence core of a world model.

A backbone maps observation embeddings and previous actions to latent states. States are dicts of
tensors with a leading batch axis (``[B, ...]`` for one step, ``[B, T, ...]`` for sequences) and
always contain ``deter`` (the recurrent / hidden features) and ``stoch`` (the sampled latent,
flattened); ``feat = concat(deter, stoch)`` is what heads read. The imagination engine and the
world model use only this surface, so RSSM, S4-family and Mamba backbones are interchangeable.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class Backbone(nn.Module, abc.ABC):
    """Abstract backbone. Subclasses set ``deter_size``, ``stoch_size`` and ``feat_size``.

    Action convention: ``observe(..., action, ...)`` takes at index ``t`` the *previous* action,
    the one that led to observation ``t`` (zeros at the start of an episode); ``imagine_step``
    takes the action taken at ``state``.
    """

    deter_size: int
    stoch_size: int
    feat_size: int

    @abc.abstractmethod
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the entries of a state (what :meth:`initial` returns)."""

    @abc.abstractmethod
    def initial(self, batch_size: int) -> State:
        """State at an episode start, ``{name: [batch_size, *shape]}`` (zeros for the RSSM)."""

    @abc.abstractmethod
    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State, State]:
        """Posterior and prior over a sequence.

        Args:
            embed: ``[B, T, E]`` observation embeddings.
            action: ``[B, T, A]``; ``action[:, t]`` is the previous action (led to obs ``t``).
            is_first: ``[B, T]`` bool; where true the state *and* the previous action are reset to
                the initial state / zeros before the step.
            state: state before the sequence (``None``: :meth:`initial`).
            sample: sample the stochastic latents (``False``: take the mode; deterministic).

        Returns:
            ``(post, prior, last_state)``: ``post``/``prior`` hold ``[B, T, ...]`` tensors
            (``deter``, ``stoch`` and whatever :meth:`kl_losses` needs, e.g. ``logits``);
            ``last_state`` is the posterior state after the last step (``[B, ...]``).
        """

    @abc.abstractmethod
    def imagine_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        """One prior step from ``state`` ``[B, ...]`` taking ``action`` ``[B, A]``."""

    @abc.abstractmethod
    def kl_losses(self, post: State, prior: State, free_nats: float = 1.0
                  ) -> tuple[Tensor, Tensor]:
        """``(dyn, rep)`` KL losses ``[B, T]``, each clipped below at ``free_nats``."""

    def compile_steps(self, **options) -> None:
        """``torch.compile`` (with ``options``) the per-step functions that the update loops
        over: :meth:`imagine_step` here; backbones with a step loop in :meth:`observe` add it."""
        self.imagine_step = torch.compile(self.imagine_step, **options)

    def get_feat(self, state: State) -> Tensor:
        """``concat(deter, stoch)`` along the last axis."""
        return torch.cat([state["deter"], state["stoch"]], -1)

    def latent_metrics(self, post: State, prior: State) -> dict[str, Tensor]:
        """Optional scalar diagnostics (entropies, ...)."""
        return {}

    def imagination_starts(self, post: State, action: Tensor, is_first: Tensor,
                           last: int) -> State:
        """Detached imagination start states ``[B * K, ...]`` from a replayed batch, one per step
        of the last ``K = min(last or T, T)`` steps.

        ``post`` is :meth:`observe`'s posterior of the batch (begun from the initial state),
        ``action [B, T, A]`` / ``is_first [B, T]`` its inputs. Default (RSSM): the posterior
        states themselves, flattened. Backbones whose states are not all in ``post`` (the SSMs)
        recompute them here (e.g. after a burn-in over the replayed steps before each start).
        """
        B, T = is_first.shape
        K = min(last or T, T)
        return {k: post[k][:, T - K:].reshape(B * K, *post[k].shape[2:]).detach()
                for k in self.state_keys()}

    def state_keys(self) -> tuple[str, ...]:
        return tuple(self.state_spec())

    def _check_sequence(self, embed: Tensor, action: Tensor, is_first: Tensor) -> tuple[int, int]:
        """Shapes of ``observe``'s inputs: ``embed [B, T, E]``, ``action [B, T, A]``,
        ``is_first [B, T]``; returns ``(B, T)``."""
        B, T = embed.shape[:2]
        assert embed.shape == (B, T, self.embed_size), (embed.shape, self.embed_size)
        assert action.shape == (B, T, self.action_size), (action.shape, self.action_size)
        assert is_first.shape == (B, T), (is_first.shape, (B, T))
        return B, T

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
