"""What every on-policy actor-critic shares: a policy acting on normalised observations, and a rollout of
``[time, env]`` steps that the algorithm's own ``update`` turns into gradients."""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import Agent, Decision, Deployable
from duetrl.buffers import Rollout
from duetrl.cores import RNN_KINDS, CarriedState, Core
from duetrl.encoders import EncoderConfig, Obs, make_encoder, make_obs_norm, to_device
from duetrl.errors import UserError
from duetrl.nets import ACTIVATIONS
from duetrl.normalize import RewardScaler
from duetrl.policy import Policy, PolicyConfig, action_dim
from duetrl.validate import check_choice, check_range, check_widths


class PolicyKeys(Protocol):
    """The public keys that set the policy of an on-policy config (``ac``, ``a2c``, ``ppo``)."""

    hidden: list[int]
    activation: str
    state_dependent_std: bool
    log_std_init: float
    log_std_min: float
    log_std_max: float
    squash: str
    ortho_init: bool
    rnn: str
    rnn_hidden: int
    rnn_input_scale: float

    def encoder_config(self) -> EncoderConfig: ...


def policy_config_of(cfg: PolicyKeys, *, clip_log_prob: bool = False) -> PolicyConfig:
    """The :class:`PolicyConfig` an on-policy config's keys describe (what its ``policy_config()`` returns)."""
    return PolicyConfig(
        hidden=tuple(cfg.hidden),
        activation=cfg.activation,
        state_dependent_std=cfg.state_dependent_std,
        log_std_init=cfg.log_std_init,
        log_std_min=cfg.log_std_min,
        log_std_max=cfg.log_std_max,
        bound_by=cfg.squash,
        clip_log_prob=clip_log_prob,
        ortho_init=cfg.ortho_init,
        encoder=cfg.encoder_config(),
    )


def validate_policy(policy: PolicyConfig) -> None:
    """Checks of an on-policy config's policy settings, in the words of its public keys."""
    check_widths("hidden", list(policy.hidden))
    check_choice("activation", policy.activation, tuple(ACTIVATIONS))
    check_choice("squash", policy.bound_by, ("clip", "tanh"))
    if policy.log_std_min > policy.log_std_max:
        raise UserError(f"log_std_min={policy.log_std_min} must not exceed log_std_max={policy.log_std_max}")


def validate_memory(cfg: PolicyKeys) -> None:
    """Checks of an on-policy config's recurrent core (``rnn``, ``rnn_hidden``, ``rnn_input_scale``)."""
    check_choice("rnn", cfg.rnn, RNN_KINDS)
    check_range("rnn_hidden", cfg.rnn_hidden, 1)
    check_range("rnn_input_scale", cfg.rnn_input_scale, 1e-3, 1e3)


def ignored_policy_settings(policy: PolicyConfig) -> dict[str, str]:
    """The policy keys that an on-policy config's other policy settings make ignored: key -> why (see
    :func:`duetrl.config.ignored_settings_warnings`)."""
    ignored = {}
    if policy.state_dependent_std:
        ignored["log_std_init"] = "it sets a state-independent std only, and state_dependent_std is true"
    if policy.bound_by != "clip":
        ignored["clip_log_prob"] = f"it corrects the log-prob of clipped actions, and squash={policy.bound_by}"
    return ignored


class DeployedPolicy(Deployable):
    """The on-policy agents' deterministic policy for export: raw observation -> (normaliser, when the run
    normalised observations) -> encoder -> (the actor's recurrent core, with ``rnn``) -> the policy's mode in env
    units (argmax, or the mean clipped or squashed). With a core it is ``(obs, state) -> (action, next_state)``,
    as :meth:`OnPolicyAgent.act_step` with ``deterministic=True`` (the state ends with the previous action when the
    core reads it: ``prev_action_dim`` > 0)."""

    def __init__(self, policy: Policy, obs_norm: nn.Module | None, core: Core | None = None, prev_action_dim: int = 0):
        super().__init__()
        self.policy, self.obs_norm, self.core = policy, obs_norm, core
        self.prev_action_dim = prev_action_dim
        self.state_dim = core.state_dim + prev_action_dim if core is not None else 0

    def forward(self, obs: Obs, state: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        obs = obs if self.obs_norm is None else self.obs_norm(obs)
        if self.core is None:
            return self.policy.mode(obs)
        if not self.prev_action_dim:
            features, next_state = self.core.step(self.policy.encode(obs), state)
            return self.policy.mode(obs, features), next_state
        core_state, prev_action = state.split([self.core.state_dim, self.prev_action_dim], dim=-1)
        features, next_state = self.core.step(torch.cat([self.policy.encode(obs), prev_action], -1), core_state)
        action = self.policy.mode(obs, features)
        return action, torch.cat([next_state, self.policy.one_hot(action)], -1)

    def state_parts(self) -> list[tuple[str, int]]:
        if self.core is None:
            return []
        return self.core.state_parts() + ([("prev_action", self.prev_action_dim)] if self.prev_action_dim else [])


class OnPolicyAgent(Agent):
    """Collects ``obs, raw, action, log_prob, reward, terminated, truncated, next_obs`` per step; with a recurrent
    core (``rnn``) also each core's state before the step and whether the step starts an episode, so the update
    replays the rollout's cores exactly (see :mod:`duetrl.cores`).

    With ``rnn_prev_action`` the cores read the previous step's action (one-hot for discrete; zeros at an episode
    start) beside the encoder's features: a memory that sees what it did can tell velocity from the change of
    position that its push explains. The action is carried per env as the cores' states are, and recorded per step
    (``prev_action``), so the replay reads what the rollout read.

    Config fields used: ``policy_config()`` (the policy's settings, passed whole), ``gamma``, ``normalize_obs``,
    ``normalize_reward``, ``rnn``, ``rnn_hidden``, ``rnn_input_scale``, ``rnn_prev_action`` (if the config has it).
    Subclasses build their critic on ``critic_core.out_dim`` inputs.
    """

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        self.act_dim = action_dim(act_space)
        # The cores first: with rnn=none they hold no weights, so a memoryless run draws the same initial weights.
        # They read the encoder's features (encoder, then core, then heads); the width is measured on an encoder
        # built outside the run's random stream, so the policy's own encoder draws the same weights as without rnn.
        width = 0  # a core of none is the identity of any width
        self.prev_action_dim = 0  # width of the previous action that the cores read (rnn_prev_action)
        if cfg.rnn != "none":
            with torch.random.fork_rng(devices=[]):
                width = make_encoder(obs_space, cfg.encoder_config()).features
            self.prev_action_dim = self.act_dim if getattr(cfg, "rnn_prev_action", False) else 0
            width += self.prev_action_dim
        self.actor_core = Core(cfg.rnn, width, cfg.rnn_hidden, cfg.rnn_input_scale).to(device)
        self.critic_core = Core(cfg.rnn, width, cfg.rnn_hidden, cfg.rnn_input_scale).to(device)
        self.recurrent = self.actor_core.recurrent
        head_in = self.actor_core.out_dim if self.recurrent else None
        self.policy = Policy(obs_space, act_space, cfg.policy_config(), in_dim=head_in).to(device)
        # Running statistics of the float boxes (per key for Dict observations; none for images or indices).
        norm = make_obs_norm(obs_space)
        self.obs_norm: nn.Module = (nn.Identity() if norm is None else norm).to(device)
        self.normalizes_obs = bool(cfg.normalize_obs) and norm is not None
        self.reward_scaler = RewardScaler(num_envs, cfg.gamma).to(device)
        self.modules = {"policy": self.policy, "obs_norm": self.obs_norm, "reward_scaler": self.reward_scaler}
        if self.recurrent:
            states = {"actor": self.actor_core.state_dim, "critic": self.critic_core.state_dim}
            if self.prev_action_dim:
                states["prev_action"] = self.prev_action_dim
            self.memory = CarriedState(states, num_envs).to(device)
            self.modules.update(actor_core=self.actor_core, critic_core=self.critic_core, memory=self.memory)
        self.rollout = Rollout()

    def make_encoder(self) -> nn.Module:
        """A fresh encoder of the observations, for a critic (every network owns its own); its ``features`` is
        the width of what it returns."""
        return make_encoder(self.obs_space, self.cfg.encoder_config())

    def _normalize(self, obs: Obs, update: bool = False) -> Obs:
        if not self.normalizes_obs:
            return obs
        if update:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    @torch.no_grad()
    def explore(self, obs: Tensor, env_steps: int) -> Decision:
        obs = self._normalize(to_device(obs, self.device), update=True)
        if not self.recurrent:
            raw, action, log_prob = self.policy.sample(obs)
            return Decision(env_steps, action, {"obs": obs, "raw": raw, "action": action, "log_prob": log_prob})
        states = self.memory.current()  # [N, S] each, zeroed where an episode starts
        prev_action = states.get("prev_action")  # [N, A] or None
        encoded = self.policy.encode(obs)
        features, actor_next = self.actor_core.step(self._core_input(encoded, prev_action), states["actor"])
        critic_in = self._core_input(self.critic_encode(obs, encoded), prev_action)
        _, critic_next = self.critic_core.step(critic_in, states["critic"])
        raw, action, log_prob = self.policy.sample(obs, features)
        record = {"obs": obs, "raw": raw, "action": action, "log_prob": log_prob, "start": self.memory.starts.clone()}
        record.update(actor_state=states["actor"], critic_state=states["critic"])
        carried = {"actor": actor_next, "critic": critic_next}
        if prev_action is not None:
            record["prev_action"] = prev_action
            carried["prev_action"] = self.policy.one_hot(action)
        self.memory.carry(carried)
        return Decision(env_steps, action, record)

    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        reward, terminated, truncated = (
            reward.to(self.device),
            terminated.to(self.device),
            truncated.to(self.device),
        )
        if self.cfg.normalize_reward:
            reward = self.reward_scaler(reward, terminated | truncated)
        self.rollout.add(
            **decision.record,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=self._normalize(to_device(next_obs, self.device)),
        )
        if self.recurrent:
            self.memory.episodes_ended(terminated | truncated)

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        if self.recurrent:
            raise TypeError("a recurrent policy acts with its state: use act_step(obs, state) (see initial_state)")
        return self.policy.act(self._normalize(to_device(obs, self.device)), deterministic)

    def deployable(self) -> DeployedPolicy:
        norm = self.obs_norm if self.normalizes_obs else None
        return DeployedPolicy(self.policy, norm, self.actor_core if self.recurrent else None, self.prev_action_dim)

    # ------------------------------------------------------------------------------------------ memory
    def initial_state(self, n: int) -> Tensor:
        """The actor's state of ``n`` envs at an episode start (zeros ``[n, S]``; ``[n, 0]`` without rnn): its
        core's state, followed by the previous action with ``rnn_prev_action``."""
        return torch.zeros(n, self.actor_core.state_dim + self.prev_action_dim, device=self.device)

    @torch.no_grad()
    def act_step(self, obs: Obs, state: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(env actions, next state) for a batch of observations ``[B, ...]`` seen with ``state [B, S]``."""
        obs = self._normalize(to_device(obs, self.device))
        state = state.to(self.device)
        if not self.prev_action_dim:
            features, state = self.actor_core.step(self.policy.encode(obs), state)
            return self.policy.act(obs, deterministic, features), state
        core_state, prev_action = state.split([self.actor_core.state_dim, self.prev_action_dim], dim=-1)
        features, core_state = self.actor_core.step(self._core_input(self.policy.encode(obs), prev_action), core_state)
        action = self.policy.act(obs, deterministic, features)
        return action, torch.cat([core_state, self.policy.one_hot(action)], -1)

    def _core_input(self, encoded: Tensor, prev_action: Tensor | None) -> Tensor:
        """What a core reads: the encoder's features ``[..., F]``, and the previous action ``[..., A]`` beside
        them with ``rnn_prev_action``."""
        return encoded if prev_action is None else torch.cat([encoded, prev_action], -1)

    def critic_encode(self, obs: Obs, actor_encoded: Tensor | None = None) -> Tensor:
        """What the critic's core reads: the policy's encoder features (PPO's critic shares the encoder;
        ``actor_encoded`` is ``policy.encode(obs)`` when already computed). An agent whose critic has its own
        encoder (ac) overrides this."""
        return self.policy.encode(obs) if actor_encoded is None else actor_encoded

    def actor_features(self, seq: dict[str, Any]) -> Tensor:
        """What the actor's heads see at each step of sequences ``seq["obs"] [T, B, ...]``: the encoder's
        features, and with a core those replayed from their recorded first state (``seq["actor_state"][0]``) with
        the rollout's resets: ``[T, B, features]``."""
        encoded = self.policy.encode(seq["obs"])
        if not self.recurrent:
            return encoded
        encoded = self._core_input(encoded, seq.get("prev_action"))
        return self.actor_core.replay(encoded, seq["actor_state"][0], seq["start"])

    def critic_features(self, seq: dict[str, Any], with_next: bool = False) -> tuple[Tensor, Tensor | None]:
        """What the critic's head sees at each step ``[T, B, features]`` (as :meth:`actor_features`) and, if
        ``with_next``, at each step's next observation: the state after the step carried on, not reset, so an
        episode cut by a time limit is bootstrapped from its final observation seen with its own memory (and, with
        ``rnn_prev_action``, the step's action)."""
        encoded = self.critic_encode(seq["obs"])
        if not self.recurrent:
            return encoded, self.critic_encode(seq["next_obs"]) if with_next else None
        encoded = self._core_input(encoded, seq.get("prev_action"))
        if not with_next:  # the features alone: the fused replay
            return self.critic_core.replay(encoded, seq["critic_state"][0], seq["start"]), None
        features, after = self.critic_core.sequence(encoded, seq["critic_state"][0], seq["start"])
        next_action = self.policy.one_hot(seq["action"]) if self.prev_action_dim else None
        next_encoded = self._core_input(self.critic_encode(seq["next_obs"]), next_action).flatten(0, 1)
        next_features, _ = self.critic_core.step(next_encoded, after.flatten(0, 1))
        return features, next_features.view(*features.shape)
