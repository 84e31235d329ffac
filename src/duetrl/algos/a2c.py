"""A2C (Mnih et al. 2016, synchronous): the chapter's actor-critic on n-step batches from parallel envs.

It is ``ac`` with other defaults -- the update is the same code -- so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from duetrl.algos.ac import ACConfig


@dataclass
class A2CConfig(ACConfig):
    """``ac`` with A2C's defaults: GAE over 5-step batches, RMSprop, state-independent std (``ent_coef`` adds
    the entropy bonus)."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    actor_lr: float = 7e-4
    critic_lr: float = 7e-4
    optimizer: str = "rmsprop"
    advantage: str = "gae"
    gae_lambda: float = 1.0
    update_every: int = 5
    normalize_advantage: bool = False
    max_grad_norm: float = 0.5
    ent_coef: float = 0.0
    state_dependent_std: bool = False
    ortho_init: bool = True
