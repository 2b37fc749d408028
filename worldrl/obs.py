"""The observation registry: which observation keys a model sees, and how each kind is coded.

An env's observations are a dict of keys. Every key but the env's bookkeeping (:data:`RESERVED`:
``is_first``, ``episode_reward``, the carry, ...) is replayed. Each replayed key has a *kind*,
recognised from its event shape and dtype by the first entry of :data:`MODALITIES` that accepts it:

=========  ========================  ===================================================
kind       accepts                   codec
=========  ========================  ===================================================
image      uint8 ``[C, H, W]``       keys concatenated on channels (one resolution), CNN
vector     float ``[D]``             keys symlog-ed and concatenated, MLP; symlog-MSE
audio      float ``[F, M]``          one MLP codec per key (log-mel spectrograms), MSE
=========  ========================  ===================================================

Boolean keys are *signals* (Atari's ``life_loss``): replayed, never encoded. A key of any other
shape or dtype is an error that names it, its shape and dtype, and the kinds, at the first touch
of the env (:func:`space_of`): a key is never dropped in silence. So a new key of an existing kind
(a second camera, ``proprio``) needs no code, and a new kind is one :class:`Modality` entry: how
it is recognised, its encoder and its decoder (modules that take ``{key: [N, *shape]}`` and give
``[N, features]``, and take ``[N, deter + stoch]`` and the batch shape and give ``{key:
distribution over [*batch, *shape]}``).

:class:`MultiEncoder` and :class:`MultiDecoder` run every kind present, in registry order, keys
sorted within a kind; the embedding is the concatenation in that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from worldrl.dists import MSE, symlog
from worldrl.nets import MLP, ConvDecoder, ConvEncoder, Linear

#: Keys an env or its transforms add for bookkeeping: never replayed as observations.
RESERVED = frozenset({
    "is_first", "is_last", "is_terminal", "is_init", "terminated", "truncated", "done", "reward",
    "action", "prev_action", "episode_reward", "step_count", "carry", "next", "collector",
    "stream",
})

ObsSpace = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


# ------------------------------------------------------------------------------------- codecs
class ImageEncoder(nn.Module):
    """Images (uint8 ``[C, H, W]``, one resolution) concatenated on channels -> CNN."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, depth: int = 64,
                 mults: Sequence[int] = (2, 3, 4, 4), kernel: int = 5, act: str = "silu",
                 norm: str = "rms", strided: bool = False, **_):
        super().__init__()
        self.keys, self.shapes = sorted(shapes), dict(shapes)
        self.cnn = ConvEncoder(_channels(shapes), _resolution(shapes), depth, mults, kernel,
                               act, norm, strided)
        self.out_features = self.cnn.out_features

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        for k in self.keys:
            if obs[k].dtype != torch.uint8:
                raise TypeError(f"image {k!r} must be uint8, got {obs[k].dtype}")
        x = torch.cat([obs[k] for k in self.keys], -3).float() / 255.0 - 0.5
        return self.cnn(x)


class ImageDecoder(nn.Module):
    """``[N, deter + stoch]`` -> ``{key: MSE over [C, H, W] in [0, 1]}`` (one CNN, channels
    split among the keys)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], deter: int, stoch: int, *,
                 units: int = 1024, depth: int = 64, mults: Sequence[int] = (2, 3, 4, 4),
                 kernel: int = 5, act: str = "silu", norm: str = "rms", outscale: float = 1.0,
                 bspace: int = 8, strided: bool = False, **_):
        super().__init__()
        self.keys, self.shapes = sorted(shapes), dict(shapes)
        self.cnn = ConvDecoder(deter, stoch, _channels(shapes), _resolution(shapes), depth, mults,
                               kernel, units, act, norm, outscale, bspace, strided)

    def forward(self, feat: Tensor, bshape: tuple[int, ...]) -> dict[str, MSE]:
        x = self.cnn(feat)
        x, out, start = x.reshape(*bshape, *x.shape[1:]), {}, 0
        for k in self.keys:
            c = self.shapes[k][0]
            out[k] = ImageMSE(x[..., start:start + c, :, :])
            start += c
        return out


class VectorEncoder(nn.Module):
    """Float vectors ``[D]``: symlog (optional), concatenated, MLP."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, units: int = 1024,
                 layers: int = 3, act: str = "silu", norm: str = "rms", symlog: bool = True, **_):
        super().__init__()
        self.keys, self.shapes = sorted(shapes), dict(shapes)
        self.use_symlog = symlog
        self.mlp = MLP(sum(s[0] for s in shapes.values()), layers, units, act, norm)
        self.out_features = self.mlp.out_features

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        x = torch.cat([obs[k].float() for k in self.keys], -1)
        return self.mlp(symlog(x) if self.use_symlog else x)


class VectorDecoder(nn.Module):
    """``[N, deter + stoch]`` -> MLP -> ``{key: symlog-MSE over [D]}``."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], deter: int, stoch: int, *,
                 units: int = 1024, layers: int = 3, act: str = "silu", norm: str = "rms",
                 outscale: float = 1.0, symlog: bool = True, **_):
        super().__init__()
        self.keys, self.shapes = sorted(shapes), dict(shapes)
        self.squash = "symlog" if symlog else None
        self.mlp = MLP(deter + stoch, layers, units, act, norm)
        self.out = Linear(units if layers else deter + stoch, sum(s[0] for s in shapes.values()),
                          outscale=outscale)

    def forward(self, feat: Tensor, bshape: tuple[int, ...]) -> dict[str, MSE]:
        x, out, start = self.out(self.mlp(feat)).reshape(*bshape, -1), {}, 0
        for k in self.keys:
            d = self.shapes[k][0]
            out[k] = MSE(x[..., start:start + d], event_dims=1, squash=self.squash)
            start += d
        return out


class AudioEncoder(nn.Module):
    """``[..., F, M]`` spectrogram -> flatten -> symlog (optional) -> MLP -> ``[..., units]``."""

    def __init__(self, shape: Sequence[int], layers: int = 3, units: int = 1024,
                 act: str = "silu", norm: str = "rms", symlog: bool = True):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.use_symlog = symlog
        self.mlp = MLP(math.prod(self.shape), max(layers, 1), units, act, norm)
        self.out_features = self.mlp.out_features

    def forward(self, x: Tensor) -> Tensor:
        x = x.float().flatten(-2)
        if self.use_symlog:
            x = symlog(x)
        return self.mlp(x)


class AudioDecoder(nn.Module):
    """``feat [..., deter + stoch]`` -> MLP -> ``[..., F, M]``, an :class:`~worldrl.dists.MSE`
    summed over the spectrogram."""

    def __init__(self, in_features: int, shape: Sequence[int], layers: int = 3,
                 units: int = 1024, act: str = "silu", norm: str = "rms", outscale: float = 1.0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.mlp = MLP(in_features, layers, units, act, norm)
        self.out = Linear(self.mlp.out_features, math.prod(self.shape), outscale=outscale)

    def forward(self, feat: Tensor) -> MSE:
        x = self.out(self.mlp(feat))
        return MSE(x.reshape(*x.shape[:-1], *self.shape), event_dims=2)


class AudioEncoders(nn.ModuleDict):
    """One :class:`AudioEncoder` per audio key; their features concatenated in key order."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, units: int = 1024,
                 layers: int = 3, act: str = "silu", norm: str = "rms", symlog: bool = True, **_):
        super().__init__({k: AudioEncoder(shapes[k], layers, units, act, norm, symlog)
                          for k in sorted(shapes)})
        self.out_features = sum(m.out_features for m in self.values())

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([m(obs[k]) for k, m in self.items()], -1)


class AudioDecoders(nn.ModuleDict):
    """One :class:`AudioDecoder` per audio key."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], deter: int, stoch: int, *,
                 units: int = 1024, layers: int = 3, act: str = "silu", norm: str = "rms",
                 outscale: float = 1.0, **_):
        super().__init__({k: AudioDecoder(deter + stoch, shapes[k], layers, units, act, norm,
                                          outscale) for k in sorted(shapes)})

    def forward(self, feat: Tensor, bshape: tuple[int, ...]) -> dict[str, MSE]:
        return {k: MSE(m(feat).mean_.reshape(*bshape, *m.shape), event_dims=2)
                for k, m in self.items()}


class ImageMSE(MSE):
    """MSE over ``[C, H, W]`` in ``[0, 1]``; a uint8 target is divided by 255."""

    def __init__(self, mean: Tensor):
        super().__init__(mean, event_dims=3)

    def loss(self, target: Tensor) -> Tensor:
        if target.dtype == torch.uint8:
            target = target.float() / 255.0
        return super().loss(target)

    def image(self) -> Tensor:
        """Prediction as uint8 ``[..., C, H, W]``."""
        return (self.pred().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _channels(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(s[0] for s in shapes.values())


def _resolution(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    res = {tuple(s[1:]) for s in shapes.values()}
    if len(res) != 1:
        raise ValueError(f"all image keys need one resolution, got {dict(shapes)}")
    return res.pop()


# ------------------------------------------------------------------------------------ pictures
def image_picture(truth: Tensor, dist: ImageMSE, context: int) -> tuple[Tensor, Tensor]:
    """Truth, model and error ``(model - truth + 255) / 2`` stacked along the height, uint8
    ``[B, T, C, 3H, W]``; the error in ``[0, 1]`` units."""
    model = dist.image()
    err = ((model.int() - truth.int() + 255) // 2).to(torch.uint8)
    diff = model[:, context:].float() / 255 - truth[:, context:].float() / 255
    return torch.cat([truth, model, err], -2), diff


def vector_picture(truth: Tensor, dist: MSE, context: int) -> tuple[None, Tensor]:
    """No picture; the error in the vector's units."""
    return None, dist.pred()[:, context:] - truth[:, context:].float()


def audio_picture(truth: Tensor, dist: MSE, context: int) -> tuple[Tensor, Tensor]:
    """One RGB spectrogram image per sequence, uint8 ``[B, 3, 3M, T*F]`` (truth / model /
    ``|error|``, :func:`worldrl.audio.spectrogram_image`); the error in log-mel units."""
    from worldrl.audio import spectrogram_image

    model = dist.pred()
    return (spectrogram_image(truth.float(), model, context),
            model[:, context:] - truth[:, context:].float())


def image_show(picture: Tensor) -> Tensor:
    """``[B, T, C, 3H, W]`` -> frames ``[T, 3H, B*W, C]`` (columns: batch entries)."""
    frames = picture.permute(1, 3, 0, 4, 2)
    T, H3, B, W, C = frames.shape
    return frames.reshape(T, H3, B * W, C)


def audio_show(picture: Tensor) -> Tensor:
    """``[B, 3, 3M, T*F]`` -> ``[3M * B, T*F, 3]`` (batch entries stacked down)."""
    return torch.cat(list(picture.permute(0, 2, 3, 1)), 0)


# ----------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Modality:
    """A kind of observation: which (event shape, dtype) it accepts and its codec factories.

    ``encoder(shapes, **encoder_options)`` and ``decoder(shapes, deter, stoch,
    **decoder_options)`` get every key of the kind (``{key: event shape}``); the options are the
    world model's ``encoder``/``decoder`` config (each factory takes the ones it uses). The encoder
    maps ``{key: [N, *shape]}`` to ``[N, out_features]``; the decoder ``([N, deter + stoch],
    batch shape)`` to ``{key: distribution over [*batch, *shape]}`` (``loss``, ``pred``)."""

    name: str
    accepts: Callable[[tuple[int, ...], torch.dtype], bool]
    encoder: Callable[..., nn.Module]
    decoder: Callable[..., nn.Module]
    describes: str  # what it accepts, for error messages
    #: ``(truth [B, T, *shape], prediction, context) -> (picture or None, open-loop error)``:
    #: what the open-loop diagnostics show of a key, and its error after ``context`` steps
    picture: Callable[[Tensor, MSE, int], tuple[Tensor | None, Tensor]]
    #: a picture as a file shows it: uint8 ``[T, H, W, C]`` (a GIF) or ``[H, W, C]`` (a PNG)
    show: Callable[[Tensor], Tensor] | None = None


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", lambda s, d: len(s) == 3 and d == torch.uint8,
                      ImageEncoder, ImageDecoder, "uint8 [C, H, W]", image_picture,
                      image_show),
    "vector": Modality("vector", lambda s, d: len(s) == 1 and d.is_floating_point,
                       VectorEncoder, VectorDecoder, "float [D]", vector_picture),
    "audio": Modality("audio", lambda s, d: len(s) == 2 and d.is_floating_point,
                      AudioEncoders, AudioDecoders, "float [F, M]", audio_picture,
                      audio_show),
}


def kind_of(shape: Sequence[int], dtype: torch.dtype) -> str | None:
    """The first modality that accepts ``(shape, dtype)``, or None."""
    shape = tuple(int(s) for s in shape)
    return next((m.name for m in MODALITIES.values() if m.accepts(shape, dtype)), None)


def is_signal(dtype: torch.dtype) -> bool:
    """Boolean keys (flags such as ``life_loss``) are replayed, never encoded."""
    return dtype == torch.bool


def split(obs_space: ObsSpace, keys: Sequence[str] | None = None
          ) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{kind: {key: event shape}}`` for the model's keys, kinds in registry order.

    ``keys=None``: every key that is not bookkeeping or a signal (and each must have a kind).
    An explicit ``keys`` list must name existing keys that have a kind."""
    if keys is not None:
        missing = [k for k in keys if k not in obs_space]
        if missing:
            raise ValueError(f"obs keys {missing} not in the observation space {list(obs_space)}")
        names = list(keys)
    else:
        names = [k for k in obs_space if k not in RESERVED and not is_signal(obs_space[k][1])]
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for k in sorted(names):
        shape, dtype = obs_space[k]
        shape = tuple(int(s) for s in shape)
        kind = kind_of(shape, dtype)
        if kind is None:
            raise ValueError(
                f"observation {k!r} has shape {shape} and dtype {dtype}, which no kind of "
                f"observation accepts ({_kinds_table()}); boolean keys are replayed signals. "
                f"Add a Modality to worldrl/obs.py:MODALITIES, or pass world_model.obs_keys "
                f"to leave it out")
        out.setdefault(kind, {})[k] = shape
    if not out:
        raise ValueError(f"no usable observation keys in {list(obs_space)}")
    return {name: out[name] for name in MODALITIES if name in out}


def _kinds_table() -> str:
    return "; ".join(f"{m.name}: {m.describes}" for m in MODALITIES.values())


def space_of(observation_spec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (event shape, dtype)}`` for every replayed key of a TorchRL observation spec:
    not bookkeeping; the spec's batch dims (env copies) removed."""
    batch = len(observation_spec.shape)
    space = {}
    for key in observation_spec.keys():
        if key in RESERVED:
            continue
        spec = observation_spec[key]
        space[key] = (tuple(int(s) for s in spec.shape[batch:]), spec.dtype)
    if not space:
        raise ValueError(f"the env has no observation keys; it has {list(observation_spec.keys())}")
    return space


def model_space(space: ObsSpace) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The keys a model may encode: every key but signals. Each must have a kind, which the
    model checks when it is built (:func:`split`), after ``world_model.obs_keys`` has had its
    chance to leave a key out."""
    return {k: v for k, v in space.items() if not is_signal(v[1])}


def _batch_shape(x: Tensor, event: tuple[int, ...], key: str) -> tuple[int, ...]:
    n = len(event)
    if tuple(x.shape[x.ndim - n:]) != event:
        raise ValueError(
            f"observation {key!r} has shape {tuple(x.shape)}; expected [..., *{event}]")
    return tuple(x.shape[: x.ndim - n])


# -------------------------------------------------------------------------------- multi-codecs
def _rename(renames: dict[str, str], state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in renames.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break


def _upgrade(renames: dict[str, str]):
    """A load-state-dict pre-hook: checkpoints from before the registry named the codecs by
    attribute (``encoder.cnn``, ``decoder.vec_out``, ...); renames their keys in place. (A
    partial, not a closure: modules pickle, for collector worker processes.)"""
    return partial(_rename, renames)


_ENCODER_RENAMES = {"cnn.": "parts.image.cnn.", "mlp.": "parts.vector.mlp.",
                    "audio.": "parts.audio."}
_DECODER_RENAMES = {**_ENCODER_RENAMES, "vec_out.": "parts.vector.out."}

class MultiEncoder(nn.Module):
    """Encodes ``{key: [*batch, *shape]}`` into ``[*batch, embed]``: each kind's encoder on its
    keys (:data:`MODALITIES`), outputs concatenated in registry order."""

    def __init__(self, obs_space: ObsSpace, keys: Sequence[str] | None = None, *,
                 units: int = 1024, depth: int = 64, mults: Sequence[int] = (2, 3, 4, 4),
                 layers: int = 3, kernel: int = 5, act: str = "silu", norm: str = "rms",
                 symlog: bool = True, strided: bool = False):
        super().__init__()
        self.kinds = split(obs_space, keys)
        self.shapes = {k: s for kind in self.kinds.values() for k, s in kind.items()}
        self.keys = sorted(self.shapes)
        options = dict(units=units, depth=depth, mults=mults, layers=layers, kernel=kernel,
                       act=act, norm=norm, symlog=symlog, strided=strided)
        self.parts = nn.ModuleDict({kind: MODALITIES[kind].encoder(shapes, **options)
                                    for kind, shapes in self.kinds.items()})
        self.out_features = sum(p.out_features for p in self.parts.values())
        self._register_load_state_dict_pre_hook(_upgrade(_ENCODER_RENAMES))

    def keys_of(self, kind: str) -> list[str]:
        return sorted(self.kinds.get(kind, {}))

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        bshape = None
        for k in self.keys:
            shape = _batch_shape(obs[k], self.shapes[k], k)
            assert bshape is None or shape == bshape, (bshape, shape)
            bshape = shape
        flat = {k: obs[k].reshape(-1, *self.shapes[k]) for k in self.keys}
        x = torch.cat([part(flat) for part in self.parts.values()], -1)
        return x.reshape(*bshape, self.out_features)


class MultiDecoder(nn.Module):
    """Decodes ``feat [*batch, deter + stoch]`` into ``{key: distribution}``: each kind's
    decoder (:data:`MODALITIES`); losses are summed over the event axes and have the batch
    shape."""

    def __init__(self, obs_space: ObsSpace, deter: int, stoch: int,
                 keys: Sequence[str] | None = None, *, units: int = 1024, depth: int = 64,
                 mults: Sequence[int] = (2, 3, 4, 4), layers: int = 3, kernel: int = 5,
                 act: str = "silu", norm: str = "rms", outscale: float = 1.0, bspace: int = 8,
                 symlog: bool = True, strided: bool = False):
        super().__init__()
        self.kinds = split(obs_space, keys)
        self.shapes = {k: s for kind in self.kinds.values() for k, s in kind.items()}
        self.keys = sorted(self.shapes)
        self.deter, self.stoch = deter, stoch
        options = dict(units=units, depth=depth, mults=mults, layers=layers, kernel=kernel,
                       act=act, norm=norm, outscale=outscale, bspace=bspace, symlog=symlog,
                       strided=strided)
        self.parts = nn.ModuleDict({kind: MODALITIES[kind].decoder(shapes, deter, stoch,
                                                                   **options)
                                    for kind, shapes in self.kinds.items()})
        self._register_load_state_dict_pre_hook(_upgrade(_DECODER_RENAMES))

    def keys_of(self, kind: str) -> list[str]:
        return sorted(self.kinds.get(kind, {}))

    def kind(self, key: str) -> str:
        return next(kind for kind, keys in self.kinds.items() if key in keys)

    def forward(self, feat: Tensor) -> dict[str, MSE]:
        bshape = tuple(feat.shape[:-1])
        flat = feat.reshape(-1, feat.shape[-1])
        return {k: d for part in self.parts.values() for k, d in part(flat, bshape).items()}
