"""Observations of any Gymnasium space: how they are stored, normalised and encoded into features.

One module owns the mapping from an observation space to
- its **storage** (:func:`to_tensor`, :func:`storage_dtype`): float32 for float boxes, uint8 for images (and any
  uint8 or bool box), int64 for ``Discrete``/``MultiDiscrete``, uint8 for ``MultiBinary``; a ``Dict`` is a dict of
  tensors and a ``Tuple`` a tuple of them (an :data:`Obs` tree), each with the batch dimensions in front;
- its **encoder** (:func:`make_encoder`): an ``nn.Module`` obs -> features ``[..., features]`` and its feature
  size. A flat float ``Box`` is the identity (the MLP trunks then apply as before), an image a CNN chosen by its
  size (a small one for MinAtar's 10x10, Nature-CNN from 36x36 on; uint8 scaled to [0, 1] inside the network),
  ``Discrete``/``MultiDiscrete`` one-hot, ``MultiBinary`` a float vector, ``Dict``/``Tuple`` one encoder per part,
  concatenated. Actor and critic heads see features, never raw spaces;
- its **normalisation** (:func:`make_obs_norm`): running statistics per float box, none for images or indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from duetrl.errors import UserError
from duetrl.normalize import RunningNorm
from duetrl.validate import check_choice, check_range

Obs = Tensor | dict[str, "Obs"] | tuple["Obs", ...]  # a batch of observations: a tensor, or a tree of them

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of these"
ENCODERS = ("auto", "flatten", "small_cnn", "nature_cnn")
NATURE_MIN_SIZE = 36  # Nature-CNN's three convolutions need at least 36x36 pixels


@dataclass(frozen=True)
class EncoderConfig:
    """How observations become features (the public keys ``encoder``, ``encoder_features``, ``cnn_channels``)."""

    kind: str = "auto"  # auto | flatten | small_cnn | nature_cnn
    features: int = 0  # width of a CNN's output layer; 0 = the CNN's own (512 Nature, 128 small)
    channels: tuple[int, ...] = ()  # the CNN's convolution channels; () = the CNN's own


@dataclass
class EncoderKeys:
    """The public keys of the encoder, shared by every algorithm's config (a base of each config dataclass)."""

    encoder: str = "auto"  # auto (by space: CNN for images, flatten or one-hot else) | flatten | small_cnn | nature_cnn
    encoder_features: int = 0  # width of the CNN's output layer; 0 = the CNN's own (512 Nature, 128 small)
    cnn_channels: list[int] = field(default_factory=list)  # channels of the CNN's convolutions; [] = its own

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(self.encoder, self.encoder_features, tuple(self.cnn_channels))

    def validate_encoder(self) -> None:
        check_choice("encoder", self.encoder, ENCODERS)
        check_range("encoder_features", self.encoder_features, 0)
        for width in self.cnn_channels:
            check_range("cnn_channels", width, 1)


# ---------------------------------------------------------------------------------------------- trees


def tree_map(fn: Callable[..., Tensor], tree: Obs, *rest: Obs) -> Obs:
    """``fn`` applied to every tensor of one or more trees of the same structure."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree))
    return fn(tree, *rest)


def to_device(tree: Obs, device: torch.device) -> Obs:
    """Observations moved to ``device`` (a no-op where they are)."""
    return tree.to(device) if isinstance(tree, Tensor) else tree_map(lambda x: x.to(device), tree)


def select(tree: Obs, index: Any) -> Obs:
    """``x[index]`` of every tensor of a tree: rows of a batch, a slice, a permutation."""
    return tree_map(lambda x: x[index], tree)


def leaves(tree: Obs) -> list[Tensor]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in leaves(v)]
    if isinstance(tree, tuple):
        return [leaf for v in tree for leaf in leaves(v)]
    return [tree]


def batch_size(tree: Obs) -> int:
    """The leading dimension of an observation batch."""
    return leaves(tree)[0].shape[0]


def stack(trees: list[Obs]) -> Obs:
    """Observation batches ``[N, ...]`` stacked to ``[T, N, ...]``."""
    return tree_map(lambda *xs: torch.stack(xs), *trees)


# ---------------------------------------------------------------------------------------------- spaces


def is_image(space: gym.Space) -> bool:
    """A box of rank 3 (HWC or CHW), rank 4 (frames stacked in front of HWC or CHW), or a uint8 box of rank 2 (a
    grayscale image, frames stacked or not)."""
    if not isinstance(space, gym.spaces.Box):
        return False
    rank = len(space.shape)
    return rank in (3, 4) or (rank == 2 and space.dtype == np.uint8)


def has_images(space: gym.Space) -> bool:
    """True when an observation (or a part of a Dict or Tuple one) is an image."""
    if isinstance(space, gym.spaces.Dict):
        return any(has_images(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return any(has_images(s) for s in space.spaces)
    return is_image(space)


def check_space(space: gym.Space, key: str = "") -> None:
    """A UserError naming what is supported when ``space`` (or a part of it) is not."""
    if isinstance(space, gym.spaces.Dict):
        for name, sub in space.spaces.items():
            check_space(sub, f"{key}{name}.")
        return
    if isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            check_space(sub, f"{key}{i}.")
        return
    if isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        if isinstance(space, gym.spaces.Box) and len(space.shape) > 4:
            raise UserError(
                f"observation {_where(key)}{space} has rank {len(space.shape)}: duetrl takes boxes up to rank 4"
            )
        return
    raise UserError(f"observation space {_where(key)}{space} is not supported: duetrl takes {SUPPORTED}")


def _where(key: str) -> str:
    return f"part {key.rstrip('.')!r} " if key else ""


def storage_dtype(space: gym.Space) -> torch.dtype:
    """The dtype a leaf space is stored in: uint8 for uint8/bool boxes and MultiBinary, int64 for indices."""
    if isinstance(space, gym.spaces.Box):
        return torch.uint8 if space.dtype in (np.uint8, np.bool_) else torch.float32
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return torch.int64
    return torch.uint8  # MultiBinary


def leaf_shape(space: gym.Space) -> tuple[int, ...]:
    return () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)


def to_tensor(space: gym.Space, array: Any, device: torch.device | str = "cpu") -> Obs:
    """A numpy batch of observations (as a Gymnasium vector env returns them) in its storage form on ``device``."""
    if isinstance(space, gym.spaces.Dict):
        return {k: to_tensor(sub, array[k], device) for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(to_tensor(sub, array[i], device) for i, sub in enumerate(space.spaces))
    dtype = storage_dtype(space)
    numpy_dtype = {torch.uint8: np.uint8, torch.int64: np.int64, torch.float32: np.float32}[dtype]
    return torch.as_tensor(np.asarray(array, dtype=numpy_dtype), device=device)


def zeros(space: gym.Space, batch: tuple[int, ...], device: torch.device | str = "cpu") -> Obs:
    """Preallocated storage for ``batch`` observations (the replay buffer's)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: zeros(sub, batch, device) for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(zeros(sub, batch, device) for sub in space.spaces)
    return torch.zeros(*batch, *leaf_shape(space), dtype=storage_dtype(space), device=device)


def is_batch(space: gym.Space, obs: Obs) -> bool:
    """True for a batch of observations ``[B, ...]``, False for a single one (the first leaf says)."""
    while isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        key = next(iter(space.spaces)) if isinstance(space, gym.spaces.Dict) else 0
        space, obs = space.spaces[key], obs[key]
    return np.ndim(obs) > len(leaf_shape(space))


def batch_of_one(space: gym.Space, obs: Any) -> Any:
    """One (numpy) observation as a batch of one."""
    if isinstance(space, gym.spaces.Dict):
        return {k: batch_of_one(sub, obs[k]) for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(batch_of_one(sub, obs[i]) for i, sub in enumerate(space.spaces))
    return np.asarray(obs)[None]


class ObservationError(Exception):
    """An observation that left its declared box, or holds a NaN (raised by the env layer, said by the loop)."""


def check_values(space: gym.Space, array: Any, key: str = "") -> None:
    """Raise :class:`ObservationError` naming the key when a float box's batch holds NaN or leaves its bounds.
    Runs in numpy on the env's own arrays, once per step: a few microseconds."""
    if isinstance(space, gym.spaces.Dict):
        for name, sub in space.spaces.items():
            check_values(sub, array[name], f"{key}{name}.")
        return
    if isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            check_values(sub, array[i], f"{key}{i}.")
        return
    if not isinstance(space, gym.spaces.Box) or not np.issubdtype(space.dtype, np.floating):
        return
    array = np.asarray(array, dtype=space.dtype)  # in the space's precision: float64 rounding is no violation
    name = f"observation {key.rstrip('.')!r}" if key else "the observation"
    if np.isnan(array).any():
        raise ObservationError(f"{name} holds NaN")
    below, above = array < space.low, array > space.high
    if below.any() or above.any():
        bad = np.flatnonzero((below | above).reshape(-1))[0]
        value = array.reshape(-1)[bad]
        low = np.broadcast_to(space.low, array.shape).reshape(-1)[bad]
        high = np.broadcast_to(space.high, array.shape).reshape(-1)[bad]
        raise ObservationError(f"{name} left its Box: {value} is outside [{low}, {high}]")


# ---------------------------------------------------------------------------------------------- encoders


class Flatten(nn.Module):
    """A box as a float vector ``[..., prod(shape)]``; uint8 and bool scaled to [0, 1]. The identity for a flat
    float box, so a vector observation reaches the MLP trunks untouched."""

    def __init__(self, space: gym.spaces.Box | gym.spaces.MultiBinary):
        super().__init__()
        self.shape = tuple(space.shape)
        self.features = int(np.prod(self.shape)) if self.shape else 1
        self.scale = 1 / 255 if space.dtype == np.uint8 and isinstance(space, gym.spaces.Box) else 1.0
        self.identity = storage_dtype(space) == torch.float32 and len(self.shape) == 1  # networks skip the call

    def forward(self, obs: Tensor) -> Tensor:
        if self.identity:
            return obs
        batch = obs.shape[: obs.dim() - len(self.shape)]
        return obs.reshape(*batch, self.features).float() * self.scale


class OneHot(nn.Module):
    """``Discrete(n)`` -> one-hot ``[..., n]``; ``MultiDiscrete(nvec)`` -> the one-hots of every entry,
    concatenated ``[..., sum(nvec)]``."""

    def __init__(self, space: gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        super().__init__()
        if isinstance(space, gym.spaces.Discrete):
            sizes, start, self.rank = [int(space.n)], [int(space.start)], 0
        else:
            sizes, start, self.rank = space.nvec.reshape(-1).tolist(), space.start.reshape(-1).tolist(), space.nvec.ndim
        self.features = int(sum(sizes))
        offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # where each entry's one-hot starts
        self.register_buffer("shift", torch.as_tensor(offset - np.asarray(start, dtype=np.int64)), persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        batch = obs.shape[: obs.dim() - self.rank]
        index = obs.long().reshape(*batch, -1) + self.shift  # [..., entries]: positions of the ones
        hot = torch.zeros(*batch, self.features, device=obs.device)
        return hot.scatter_(-1, index, 1.0)


def image_layout(shape: tuple[int, ...]) -> tuple[bool, int, int, int]:
    """(channels_last, channels, height, width) of an image box: channels are the smaller of the first and last
    dimension of a rank-3 image; frames stacked in front (rank 4) join the channels; rank 2 is one channel."""
    if len(shape) == 2:
        return False, 1, shape[0], shape[1]
    frames, image = (shape[0], shape[1:]) if len(shape) == 4 else (1, shape)
    channels_last = image[-1] < image[0]
    c, h, w = (image[2], image[0], image[1]) if channels_last else image
    return channels_last, frames * c, h, w


class CNN(nn.Module):
    """Convolutions then a linear layer: pixels ``[..., *image_shape]`` -> features ``[..., features]``.

    ``small``: MinAtar's network (Young & Tian 2019): one 3x3 convolution, stride 1 (16 channels), for images as
    small as 10x10. Otherwise Nature-CNN (Mnih et al. 2015): 8x8/4, 4x4/2, 3x3/1 (32, 64, 64 channels), for 36x36
    and up. HWC or CHW, stacked frames or not; uint8 scaled to [0, 1] inside."""

    def __init__(self, space: gym.spaces.Box, small: bool, features: int = 0, channels: tuple[int, ...] = ()):
        super().__init__()
        self.shape = tuple(space.shape)
        self.channels_last, c, h, w = image_layout(self.shape)
        self.scale = 1 / 255 if space.dtype == np.uint8 else 1.0
        if small:
            kernels = [(3, 1)] * len(channels or (16,))
            channels, features = channels or (16,), features or 128
        else:
            if min(h, w) < NATURE_MIN_SIZE:
                raise UserError(
                    f"encoder=nature_cnn needs images of at least {NATURE_MIN_SIZE}x{NATURE_MIN_SIZE}, not {h}x{w}; "
                    "use encoder=small_cnn (or auto)"
                )
            channels, features = channels or (32, 64, 64), features or 512
            kernels = [(8, 4), (4, 2), (3, 1)][: len(channels)] + [(3, 1)] * max(0, len(channels) - 3)
        layers: list[nn.Module] = []
        for width, (kernel, stride) in zip(channels, kernels, strict=True):
            layers += [nn.Conv2d(c, width, kernel, stride), nn.ReLU()]
            c = width
        layers.append(nn.Flatten())
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, image_layout(self.shape)[1], h, w)).shape[1]
        self.linear = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.features, self.hw = features, (h, w)

    def forward(self, obs: Tensor) -> Tensor:
        batch = obs.shape[: obs.dim() - len(self.shape)]
        x = obs.reshape(-1, *self.shape)
        if len(self.shape) == 2:
            x = x.unsqueeze(1)
        elif self.channels_last:  # [..., H, W, C] -> [..., C, H, W]
            x = x.movedim(-1, -3)
        x = x.reshape(x.shape[0], -1, *self.hw)  # stacked frames join the channels
        # oneDNN's CPU convolutions run fastest on NHWC ("channels_last") inputs; the conv then takes its (small)
        # weights in that layout too. Nature-CNN forward+backward of 256 84x84x4 images, one thread on this 2-core
        # CPU: 582 ms NCHW, 380 ms NHWC. The layout is set while still uint8 (a quarter of the bytes to move), then
        # scaled to [0, 1]. The sums run in another order: results agree with NCHW's to float rounding (2e-8).
        x = x.contiguous(memory_format=torch.channels_last).float()
        if self.scale != 1.0:  # uint8 pixels; boolean planes (MinAtar's) are 0/1 already
            x = x * self.scale
        return self.linear(self.conv(x)).reshape(*batch, self.features)


class Concat(nn.Module):
    """One encoder per part of a Dict (by key) or Tuple (by index), their features concatenated."""

    def __init__(self, space: gym.spaces.Dict | gym.spaces.Tuple, config: EncoderConfig):
        super().__init__()
        items = space.spaces.items() if isinstance(space, gym.spaces.Dict) else enumerate(space.spaces)
        self.keys = [k for k, _ in items]
        subs = space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces
        self.parts = nn.ModuleList(make_encoder(sub, config) for sub in subs)
        self.features = sum(part.features for part in self.parts)

    def forward(self, obs: Obs) -> Tensor:
        return torch.cat([part(obs[key]) for key, part in zip(self.keys, self.parts, strict=True)], dim=-1)


def make_encoder(space: gym.Space, config: EncoderConfig = EncoderConfig()) -> nn.Module:
    """The encoder of an observation space; its ``features`` attribute is the width of what it returns."""
    check_space(space)
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return Concat(space, config)
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return OneHot(space)
    if isinstance(space, gym.spaces.MultiBinary):
        return Flatten(space)
    kind = config.kind
    if kind == "auto":
        if not is_image(space):
            kind = "flatten"
        else:
            _, _, h, w = image_layout(tuple(space.shape))
            kind = "nature_cnn" if min(h, w) >= NATURE_MIN_SIZE else "small_cnn"
    if kind == "flatten" or not is_image(space):
        return Flatten(space)
    return CNN(space, small=kind == "small_cnn", features=config.features, channels=config.channels)


# ---------------------------------------------------------------------------------------------- normalisation


def normalizable(space: gym.Space) -> bool:
    """Float boxes that are not images: what running statistics standardise."""
    return isinstance(space, gym.spaces.Box) and not is_image(space) and storage_dtype(space) == torch.float32


class ObsNorm(nn.Module):
    """Running normalisation of a Dict/Tuple observation: one :class:`RunningNorm` per float box (by key); images,
    indices and binary parts pass through."""

    def __init__(self, space: gym.spaces.Dict | gym.spaces.Tuple):
        super().__init__()
        items = space.spaces.items() if isinstance(space, gym.spaces.Dict) else enumerate(space.spaces)
        self.keys, self.tuple = [], isinstance(space, gym.spaces.Tuple)
        self.parts = nn.ModuleDict()
        for key, sub in items:
            norm = make_obs_norm(sub)
            if norm is not None:
                self.parts[str(key)] = norm
            self.keys.append(key)

    @torch.no_grad()
    def update(self, obs: Obs) -> None:
        for key in self.keys:
            if str(key) in self.parts:
                self.parts[str(key)].update(obs[key])

    def forward(self, obs: Obs) -> Obs:
        out = [self.parts[str(k)](obs[k]) if str(k) in self.parts else obs[k] for k in self.keys]
        return tuple(out) if self.tuple else dict(zip(self.keys, out, strict=True))


def make_obs_norm(space: gym.Space) -> nn.Module | None:
    """Running statistics for ``space``: a :class:`RunningNorm` for a float box (the same module, and state, as
    before observations of other spaces existed), an :class:`ObsNorm` for Dict/Tuple; None when nothing is
    normalisable (images, indices)."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        norm = ObsNorm(space)
        return norm if len(norm.parts) else None
    if normalizable(space):
        return RunningNorm(tuple(space.shape))
    return None
