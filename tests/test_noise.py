"""Coloured exploration noise: unit variance at every step, and the promised spectrum."""

import math

import torch

from duetrl.noise import ColoredNoise, colored_noise


def _lag1_autocorrelation(x: torch.Tensor) -> float:
    x = x - x.mean(-1, keepdim=True)
    return float((x[..., 1:] * x[..., :-1]).mean() / x.pow(2).mean())


def test_unit_variance_and_zero_mean_for_every_colour():
    torch.manual_seed(0)
    for beta in (0.0, 1.0, 2.0):
        x = colored_noise(beta, (4000,), 64)
        assert abs(float(x.var(0).mean()) - 1.0) < 0.06, beta  # variance across sequences, at each step
        assert abs(float(x.mean())) < 0.05


def test_spectrum_slope_matches_beta():
    torch.manual_seed(0)
    n = 512
    for beta in (0.0, 1.0, 2.0):
        power = torch.fft.rfft(colored_noise(beta, (2000,), n)).abs().pow(2).mean(0)
        f = torch.fft.rfftfreq(n)
        low, high = power[2:8].mean(), power[64:128].mean()
        slope = -math.log(low / high) / math.log(f[2:8].mean() / f[64:128].mean())
        assert abs(slope - beta) < 0.25, (beta, slope)


def test_white_is_uncorrelated_and_pink_remembers():
    torch.manual_seed(0)
    assert abs(_lag1_autocorrelation(colored_noise(0.0, (500,), 200))) < 0.03
    assert _lag1_autocorrelation(colored_noise(1.0, (500,), 200)) > 0.3


def test_sequences_advance_restart_and_round_trip():
    torch.manual_seed(0)
    noise = ColoredNoise(1.0, num_envs=3, act_dim=2, length=4, device=torch.device("cpu"))
    first = [noise.sample() for _ in range(2)]
    assert first[0].shape == (3, 2)
    torch.testing.assert_close(first[1], noise.sequences[:, :, 1])
    saved = {k: v.clone() for k, v in noise.state_dict().items()}
    noise.restart(torch.tensor([True, False, False]))
    assert noise.t.tolist() == [0, 2, 2]
    assert not torch.equal(noise.sequences[0], saved["sequences"][0])
    assert torch.equal(noise.sequences[1:], saved["sequences"][1:])
    for _ in range(3):  # env 1 and 2 run out after 4 steps and start fresh sequences
        noise.sample()
    assert noise.t.tolist() == [3, 1, 1]
    noise.load_state_dict(saved)
    assert noise.t.tolist() == [2, 2, 2]
