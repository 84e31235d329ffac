"""The algorithm registry: name -> config dataclass and agent class."""

from __future__ import annotations

import difflib

from duetrl.algos.a2c import A2CConfig
from duetrl.algos.ac import ACConfig, ActorCritic
from duetrl.algos.base import Agent, AlgoSpec
from duetrl.algos.ddpg import DDPG, DDPGConfig
from duetrl.algos.ppo import PPO, PPOConfig
from duetrl.algos.sac import SAC, DiscreteSAC, SACConfig
from duetrl.algos.td3 import TD3, TD3Config
from duetrl.errors import UserError

ALGOS: dict[str, AlgoSpec] = {
    "ac": AlgoSpec("ac", ACConfig, ActorCritic, "the chapter's actor-critic and its variants (V/Q, MC/TD/n-step/GAE)"),
    "a2c": AlgoSpec("a2c", A2CConfig, ActorCritic, "advantage actor-critic: ac with n-step batches over parallel envs"),
    "ppo": AlgoSpec("ppo", PPOConfig, PPO, "proximal policy optimisation: clipped surrogate, minibatch epochs"),
    "sac": AlgoSpec(
        "sac",
        SACConfig,
        SAC,
        "soft actor-critic: twin Q critics, squashed Gaussian (categorical on Discrete), auto entropy",
        discrete_agent_cls=DiscreteSAC,
    ),
    "td3": AlgoSpec(
        "td3", TD3Config, TD3, "twin delayed DDPG: clipped double-Q, delayed actor, target smoothing", discrete=False
    ),
    "ddpg": AlgoSpec(
        "ddpg", DDPGConfig, DDPG, "deep deterministic policy gradient: TD3 with one critic", discrete=False
    ),
}


def get_algo(name: str) -> AlgoSpec:
    """The registered algorithm, or a UserError with the closest names."""
    if name not in ALGOS:
        close = difflib.get_close_matches(name, ALGOS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown algorithm {name!r} (known: {', '.join(ALGOS)}){hint}")
    return ALGOS[name]


__all__ = ["ALGOS", "Agent", "AlgoSpec", "get_algo"]
