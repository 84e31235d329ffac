"""Exploration noise with memory: coloured noise (power falling as 1/f^beta with frequency f) and
Ornstein-Uhlenbeck noise, both kept per env and restarted when its episode ends.

White noise (beta = 0) changes its mind every step, so a policy that explores with it dithers in place; on
tasks such as MountainCar it never builds the momentum that reaches the reward. Pink noise (beta = 1) keeps
a memory across the episode without the drift of red noise (beta = 2), and is a strong default for
off-policy exploration (Eberhard et al. 2023, "Pink noise is all you need").
"""

from __future__ import annotations

import torch
from torch import Tensor


def colored_noise(beta: float, shape: tuple[int, ...], length: int, device: torch.device | None = None) -> Tensor:
    """``[*shape, length]`` zero-mean Gaussian sequences with power spectrum proportional to 1/f^beta and unit
    variance at every step (drawn from the global torch RNG, so a seeded run repeats its noise)."""
    freqs = torch.fft.rfftfreq(length, device=device)
    freqs[0] = freqs[1] if length > 1 else 1.0  # the mean component gets the lowest frequency's power, not infinity
    scale = freqs.pow(-beta / 2)
    real = torch.randn(*shape, len(freqs), device=device) * scale
    imag = torch.randn(*shape, len(freqs), device=device) * scale
    imag[..., 0] = 0  # the mean (and, for even lengths, the Nyquist term) of a real signal is real
    weight = torch.full_like(scale, 4.0)  # variance contributed per component, times length^2
    weight[0] = 1.0
    if length % 2 == 0:
        imag[..., -1] = 0
        weight[-1] = 1.0
    sigma = (weight * scale.pow(2)).sum().sqrt() / length
    return torch.fft.irfft(torch.complex(real, imag), n=length) / sigma


class ColoredNoise:
    """One noise sequence per env and action dimension (times ``scale``), read one step per :meth:`sample`; an
    env whose episode ends (:meth:`restart`) or whose sequence runs out starts a fresh one."""

    def __init__(self, beta: float, num_envs: int, act_dim: int, length: int, device: torch.device, scale: float = 1.0):
        self.beta, self.length, self.device, self.scale = beta, length, device, scale
        self.sequences = colored_noise(beta, (num_envs, act_dim), length, device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=device)

    def sample(self) -> Tensor:
        exhausted = self.t >= self.length
        if exhausted.any():
            self.restart(exhausted)
        index = self.t.view(-1, 1, 1).expand(-1, self.sequences.shape[1], 1)
        noise = self.sequences.gather(2, index).squeeze(2) * self.scale
        self.t += 1  # after the gather: ``index`` is a view of ``t``
        return noise

    def restart(self, envs: Tensor) -> None:
        """Fresh sequences for the envs selected by the boolean mask ``envs``."""
        count = int(envs.sum())
        if count:
            self.sequences[envs] = colored_noise(self.beta, (count, self.sequences.shape[1]), self.length, self.device)
            self.t[envs] = 0

    def state_dict(self) -> dict[str, Tensor]:
        return {"sequences": self.sequences, "t": self.t}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sequences.copy_(state["sequences"])
        self.t.copy_(state["t"])


class OrnsteinUhlenbeckNoise:
    """x <- x - theta * x + scale * N(0, 1) each step (dt = 1), per env; back to 0 when an episode ends."""

    def __init__(self, theta: float, num_envs: int, act_dim: int, device: torch.device, scale: float = 1.0):
        self.theta, self.scale = theta, scale
        self.state = torch.zeros(num_envs, act_dim, device=device)

    def sample(self) -> Tensor:
        self.state += -self.theta * self.state + torch.randn(self.state.shape, device=self.state.device) * self.scale
        return self.state.clone()

    def restart(self, envs: Tensor) -> None:
        self.state[envs] = 0.0

    def state_dict(self) -> dict[str, Tensor]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.state.copy_(state["state"])
