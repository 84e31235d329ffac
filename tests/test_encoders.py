"""Observations of every space: storage dtypes, encoder shapes (CNN sizes down to MinAtar's 10x10), one-hot
values, Dict/Tuple concatenation, per-key normalisation and the checks of values and spaces."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from duetrl.encoders import (
    CNN,
    EncoderConfig,
    Flatten,
    ObservationError,
    ObsNorm,
    OneHot,
    check_values,
    image_layout,
    make_encoder,
    make_obs_norm,
    to_tensor,
)
from duetrl.errors import UserError
from duetrl.normalize import RunningNorm


@pytest.mark.parametrize(
    "space, kind, features",
    [
        (spaces.Box(-1, 1, (3,), np.float32), Flatten, 3),
        (spaces.Box(-1, 1, (2, 3), np.float32), Flatten, 6),  # a matrix, not an image: flattened
        (spaces.Box(0, 1, (10, 10, 4), bool), CNN, 128),  # MinAtar: HWC, small CNN
        (spaces.Box(0, 255, (84, 84, 4), np.uint8), CNN, 512),  # Atari frames HWC: Nature-CNN
        (spaces.Box(0, 255, (4, 84, 84), np.uint8), CNN, 512),  # frame-stacked grayscale, CHW
        (spaces.Box(0, 255, (84, 84), np.uint8), CNN, 512),  # one grayscale frame
        (spaces.Box(0, 1, (4, 10, 10, 4), bool), CNN, 128),  # MinAtar with frame_stack=4
        (spaces.Discrete(5), OneHot, 5),
        (spaces.MultiDiscrete([3, 2, 4]), OneHot, 9),
        (spaces.MultiBinary(6), Flatten, 6),
    ],
    ids=[
        "flat",
        "matrix",
        "minatar",
        "atari-hwc",
        "atari-chw",
        "gray",
        "stacked-hwc",
        "discrete",
        "multidiscrete",
        "bits",
    ],
)
def test_encoder_per_space_and_its_feature_size(space, kind, features):
    encoder = make_encoder(space)
    assert isinstance(encoder, kind) and encoder.features == features
    batch = to_tensor(space, np.stack([space.sample() for _ in range(5)]))
    out = encoder(batch)
    assert out.shape == (5, features) and out.dtype == torch.float32
    # time-major batches [T, N, ...] (rollouts) encode the same way
    assert encoder(torch.stack([batch, batch])).shape == (2, 5, features)


def test_flat_float_box_is_the_identity():
    space = spaces.Box(-1, 1, (3,), np.float32)
    encoder = make_encoder(space)
    obs = torch.randn(4, 3)
    assert encoder.identity and encoder(obs) is obs and not list(encoder.parameters())


def test_image_layouts():
    assert image_layout((10, 10, 4)) == (True, 4, 10, 10)
    assert image_layout((4, 84, 84)) == (False, 4, 84, 84)
    assert image_layout((210, 160, 3)) == (True, 3, 210, 160)
    assert image_layout((4, 84, 84, 3)) == (True, 12, 84, 84)  # stacked RGB frames join the channels
    assert image_layout((84, 84)) == (False, 1, 84, 84)


def test_cnn_choice_sizes_and_configuration():
    minatar = spaces.Box(0, 1, (10, 10, 4), bool)
    small = make_encoder(minatar)
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [(4, 16, (3, 3), (1, 1))]
    assert small.linear[0].in_features == 16 * 8 * 8
    atari = make_encoder(spaces.Box(0, 255, (4, 84, 84), np.uint8))
    convs = [m for m in atari.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64] and atari.linear[0].in_features == 64 * 7 * 7
    custom = make_encoder(minatar, EncoderConfig("small_cnn", features=32, channels=(8, 8)))
    assert custom.features == 32 and [c.out_channels for c in custom.conv if isinstance(c, torch.nn.Conv2d)] == [8, 8]
    assert isinstance(make_encoder(minatar, EncoderConfig("flatten")), Flatten)  # an MLP on the 400 pixels
    with pytest.raises(UserError, match="at least 36x36"):  # SB3's NatureCNN refuses these; duetrl says why
        make_encoder(minatar, EncoderConfig("nature_cnn"))


def test_uint8_pixels_are_scaled_inside_the_network():
    space = spaces.Box(0, 255, (84, 84), np.uint8)
    encoder = make_encoder(space)
    white = torch.full((1, 84, 84), 255, dtype=torch.uint8)
    ones = torch.ones(1, 1, 84, 84)
    assert torch.allclose(encoder(white), encoder.linear(encoder.conv(ones)))


def test_one_hot_values():
    discrete = make_encoder(spaces.Discrete(3, start=1))
    assert discrete(torch.tensor([1, 3])).tolist() == [[1, 0, 0], [0, 0, 1]]
    multi = make_encoder(spaces.MultiDiscrete([3, 2]))
    assert multi(torch.tensor([[2, 0], [0, 1]])).tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]


def test_dict_and_tuple_concatenate_their_parts_in_key_order():
    space = spaces.Dict(
        {
            "a": spaces.Box(-1, 1, (2,), np.float32),
            "b": spaces.Discrete(3),
            "img": spaces.Box(0, 255, (10, 10, 3), np.uint8),
        }
    )
    encoder = make_encoder(space)
    assert encoder.features == 2 + 3 + 128
    obs = to_tensor(space, {"a": np.ones((4, 2)), "b": np.array([0, 1, 2, 0]), "img": np.zeros((4, 10, 10, 3))})
    out = encoder(obs)
    assert out.shape == (4, 133)
    assert out[:, :2].tolist() == [[1.0, 1.0]] * 4 and out[1, 2:5].tolist() == [0, 1, 0]
    pair = make_encoder(spaces.Tuple((spaces.Discrete(2), spaces.Box(-1, 1, (1,), np.float32))))
    assert pair((torch.tensor([1]), torch.tensor([[0.5]]))).tolist() == [[0.0, 1.0, 0.5]]


def test_storage_dtypes():
    image = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    space = spaces.Dict({"img": image, "pos": spaces.Box(-1, 1, (2,), np.float64), "k": spaces.Discrete(4)})
    batch = to_tensor(space, {"img": np.zeros((2, 8, 8, 3), np.uint8), "pos": np.zeros((2, 2)), "k": np.array([1, 2])})
    assert (batch["img"].dtype, batch["pos"].dtype, batch["k"].dtype) == (torch.uint8, torch.float32, torch.int64)
    bits = to_tensor(spaces.Box(0, 1, (10, 10, 4), bool), np.ones((1, 10, 10, 4), bool))
    assert bits.dtype == torch.uint8


def test_obs_norm_per_key_skips_images_and_indices():
    flat = make_obs_norm(spaces.Box(-1, 1, (3,), np.float32))
    assert type(flat) is RunningNorm  # the module (and checkpoint keys) of vector observations, as before
    assert make_obs_norm(spaces.Box(0, 255, (84, 84, 4), np.uint8)) is None
    space = spaces.Dict({"img": spaces.Box(0, 255, (8, 8, 1), np.uint8), "pos": spaces.Box(-9, 9, (2,), np.float32)})
    norm = make_obs_norm(space)
    assert isinstance(norm, ObsNorm) and list(norm.parts) == ["pos"]
    obs = {"img": torch.full((64, 8, 8, 1), 200, dtype=torch.uint8), "pos": torch.randn(64, 2) * 3 + 5}
    norm.update(obs)
    out = norm(obs)
    assert out["img"] is obs["img"]
    assert out["pos"].mean(0).abs().max() < 1e-4 and (out["pos"].std(0) - 1).abs().max() < 0.05


def test_check_values_names_the_key():
    space = spaces.Dict({"goal": spaces.Box(-1, 1, (2,), np.float32), "pos": spaces.Box(-1, 1, (2,), np.float32)})
    check_values(space, {"goal": np.zeros((3, 2)), "pos": np.ones((3, 2))})
    with pytest.raises(ObservationError, match="'pos' holds NaN"):
        check_values(space, {"goal": np.zeros((3, 2)), "pos": np.array([[0, 0], [0, np.nan], [0, 0]])})
    with pytest.raises(ObservationError, match=r"'goal' left its Box: 2.0 is outside \[-1.0, 1.0\]"):
        check_values(space, {"goal": np.array([[0, 0], [2.0, 0], [0, 0]]), "pos": np.zeros((3, 2))})


def test_an_unsupported_space_is_one_clear_error():
    with pytest.raises(UserError, match=r"observation space Text.* is not supported: duetrl takes Box, Discrete"):
        make_encoder(spaces.Text(5))
    with pytest.raises(UserError, match=r"part 'words'"):
        make_encoder(spaces.Dict({"words": spaces.Sequence(spaces.Discrete(3)), "x": spaces.Discrete(2)}))


def test_gymnasium_space_of_a_frame_stacked_minatar_env():
    # what --set frame_stack=4 gives on MinAtar: a rank-4 box the small CNN takes, frames joining the channels
    env = gym.wrappers.FrameStackObservation(gym.make("CartPole-v1"), 4)
    assert make_encoder(env.observation_space).features == 16  # a stacked vector: flattened
    env.close()
