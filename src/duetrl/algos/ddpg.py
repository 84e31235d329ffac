"""DDPG (Lillicrap et al. 2016): TD3 with one critic, no policy delay and no target smoothing.

The update is TD3's own code with these settings, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from duetrl.algos.td3 import TD3, TD3Config


@dataclass
class DDPGConfig(TD3Config):
    """``td3`` with DDPG's settings: a single critic, actor updated every step, no target policy smoothing."""

    n_critics: int = 1
    policy_delay: int = 1
    target_noise: float = 0.0


class DDPG(TD3):
    name = "ddpg"
