"""What SAC, TD3 and DDPG share: a replay buffer, random actions until ``learning_starts``, actions in
[-1, 1] scaled to the env's bounds, an update-to-data ratio, and Polyak-averaged target networks.

With memory (``rnn=lstm`` or ``gru``) every network reads the features of a :class:`Recurrent` body (its own
encoder, then a recurrent core) instead of the observation: the actor has one and the critics share one (as they
share their encoder), and each target network has a copy of its network's body. The actor's and the critics'
bodies are separate for the reason :mod:`duetrl.cores` gives (the critic's larger TD gradient would reshape the
actor's memory); the twin critics share theirs, as they share an encoder, because they see the same history and
a second core per critic would double the cost of the longest part of the update for no information. Replay is of
sequences (:mod:`duetrl.sequence_replay`, R2D2): each body is unrolled from its stored state, refreshed by
``rnn_burn_in`` steps without gradient, over ``rnn_seq_len`` steps; the steps a loss may see are then gathered into
rows, and the algorithm's per-row losses run on them unchanged (:class:`Inputs`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import Agent, Decision, Deployable, anneal_lr, clip_and_step
from duetrl.buffers import ReplayBuffer
from duetrl.config import RunConfig
from duetrl.cores import RNN_KINDS, CarriedState, Core
from duetrl.encoders import EncoderKeys, Obs, batch_size, leaves, make_encoder, select, to_device, tree_map
from duetrl.errors import UserError
from duetrl.nets import ACTIVATIONS, EnsembleQ, EnsembleQValues
from duetrl.noise import ColoredNoise, OrnsteinUhlenbeckNoise
from duetrl.policy import action_dim, action_kind, rescale
from duetrl.returns import td_targets
from duetrl.sequence_replay import SequenceReplay
from duetrl.validate import check_choice, check_range, check_widths


class DeployedActor(Deployable):
    """The off-policy agents' deterministic policy for export: raw observation -> (with ``rnn``, the actor's
    encoder and recurrent core) -> the actor's deterministic action in [-1, 1] (SAC's tanh of the mean, TD3's and
    DDPG's mu) -> rescaled onto the env's bounds. With a core it is ``(obs, state) -> (action, next_state)``, as
    :meth:`OffPolicyAgent.act_step` with ``deterministic=True``."""

    def __init__(self, actor: nn.Module, unit_action: Any, low: Tensor, high: Tensor, body: Recurrent | None = None):
        super().__init__()
        # unit_action(x): the agent's, through this actor; x is the observation, or with a body its core's features
        self.actor, self.unit_action, self.body = actor, unit_action, body
        self.state_dim = body.core.state_dim if body is not None else 0
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, obs: Obs, state: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if self.body is None:
            return rescale(self.unit_action(obs), self.low, self.high)
        features, next_state = self.body.step(obs, state)
        return rescale(self.unit_action(features), self.low, self.high), next_state

    def state_parts(self) -> list[tuple[str, int]]:
        return self.body.core.state_parts() if self.body is not None else []


@dataclass
class OffPolicyConfig(EncoderKeys):
    """Settings every off-policy actor-critic shares (defaults: the SAC/TD3 papers', as in SB3/CleanRL)."""

    # The papers' warm-up of random actions (SAC 5,000 here; TD3/DDPG 25,000 in td3.py): what learning_starts=None
    # gives on a long run. A shorter run starts after a tenth of its steps, so a 10,000-step run still learns.
    PAPER_LEARNING_STARTS: ClassVar[int] = 5_000

    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target networks
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int | None = None  # env steps of uniform random actions first; None = auto (resolve_auto)
    utd: float = 1.0  # gradient steps per env step
    policy_delay: int = 1  # actor update every n critic updates
    n_critics: int = 2
    critic_layer_norm: bool = False
    critic_dropout: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping
    noise_beta: float = 0.0  # colour of SAC's sampling / TD3's "colored" noise: 0 white, 1 pink (see noise.py)
    noise_length: int = 1000  # steps per noise sequence (an episode's length, or more)
    save_buffer: bool = False  # keep the replay buffer in checkpoints (exact resume)
    anneal_lr: bool = False  # actor and critic learning rates fall linearly to 0 over the run
    rnn: str = "none"  # memory: none, lstm or gru (a recurrent core for the actor and one the critics share)
    rnn_hidden: int = 64  # width of each recurrent core (rnn=lstm or gru)
    rnn_input_scale: float = 1.0  # the cores read their input times this: larger steps on small input changes
    rnn_seq_len: int = 16  # steps of each replayed sequence the losses learn from; batch_size // this sequences
    rnn_burn_in: int = 8  # steps before them that only refresh the stored core states, without loss (R2D2)

    def validate(self) -> None:
        for key in ("actor_lr", "critic_lr", "utd", "max_grad_norm"):
            check_range(key, getattr(self, key), 0.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("tau", self.tau, 0.0, 1.0)
        check_range("critic_dropout", self.critic_dropout, 0.0, 0.99)
        for key in ("batch_size", "buffer_size", "policy_delay", "n_critics"):
            check_range(key, getattr(self, key), 1)
        if self.learning_starts is not None:
            check_range("learning_starts", self.learning_starts, 0)
        check_range("noise_beta", self.noise_beta, 0.0, 3.0)
        check_range("noise_length", self.noise_length, 2)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_widths("actor_hidden", self.actor_hidden)
        check_widths("critic_hidden", self.critic_hidden)
        self.validate_encoder()
        check_choice("rnn", self.rnn, RNN_KINDS)
        check_range("rnn_hidden", self.rnn_hidden, 1)
        check_range("rnn_input_scale", self.rnn_input_scale, 1e-3, 1e3)
        check_range("rnn_seq_len", self.rnn_seq_len, 1)
        check_range("rnn_burn_in", self.rnn_burn_in, 0)
        if self.buffer_size < self.batch_size:
            raise UserError(f"buffer_size={self.buffer_size} must be at least batch_size={self.batch_size}")

    def resolve_auto(self, steps: int) -> None:
        """Fill learning_starts=None from the run's budget: min(the paper's, max(batch_size, steps // 10))."""
        if self.learning_starts is None:
            self.learning_starts = min(self.PAPER_LEARNING_STARTS, max(self.batch_size, steps // 10))

    def ignored_settings(self) -> dict[str, str]:
        """Keys that the other settings make ignored: key -> why (see config.ignored_settings_warnings); each
        algorithm adds its own."""
        if self.rnn == "none":
            why = "it applies only with a recurrent core, and rnn=none"
            return {key: why for key in ("rnn_hidden", "rnn_input_scale", "rnn_seq_len", "rnn_burn_in")}
        return {}

    def sequences_per_batch(self) -> int:
        """Sequences per gradient step with memory: about ``batch_size`` learned steps in all (at least one)."""
        return max(1, self.batch_size // self.rnn_seq_len)

    def budget_warnings(self, run: RunConfig) -> list[str]:
        """A run that ends before the first update (see :func:`duetrl.config.budget_warnings`)."""
        # Unresolved (no budget known), the agent falls back on the paper's warm-up: so does this check.
        starts = self.PAPER_LEARNING_STARTS if self.learning_starts is None else self.learning_starts
        key, value = ("learning_starts", starts) if starts >= self.batch_size else ("batch_size", self.batch_size)
        if run.steps > value:
            return []
        return [
            f"steps={run.steps} is not more than {key}={value}: the agent acts at random for the whole run and "
            f"learns nothing; raise steps or lower {key}"
        ]


def averaged_tensors(module: nn.Module) -> list[Tensor]:
    """What Polyak averaging moves: the parameters and the floating-point buffers (not counters)."""
    return list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]


def polyak(target: list[Tensor], source: list[Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, in one foreach op over :func:`averaged_tensors` lists
    (gathered once by the caller: walking the modules every step costs more than the update).

    ``torch._foreach_lerp_`` is private (in torch since 2.0, pytorch/pytorch#87562): without it, one ``lerp_``
    per tensor, which is what the foreach op itself does on CPU."""
    with torch.no_grad():
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(target, source, tau)
        else:
            for t, s in zip(target, source, strict=True):
                t.lerp_(s, tau)


def critic_loss(critic: nn.Module, obs: Tensor, action: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Every Q critic's squared error to the Bellman target ``[B]``: (0.5 * sum_i mean_b (Q_i - target)^2, mean Q).

    A pure function of the critic and the batch: :meth:`OffPolicyAgent.critic_step` calls it, and a population
    (:mod:`duetrl.population`) calls it under ``torch.func.vmap`` with each member's weights."""
    q = critic(obs, action)  # [E, B]
    return 0.5 * (q - target).pow(2).mean(1).sum(), q.detach().mean()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy that no optimiser touches."""
    import copy

    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class Recurrent(nn.Module):
    """An encoder of the observations, then a recurrent core: what a network with memory reads its features from
    (its head sits after it). ``target`` copies of it are unrolled the same way."""

    def __init__(self, encoder: nn.Module, core: Core):
        super().__init__()
        self.encoder, self.core = encoder, core

    def encode(self, obs: Obs) -> Tensor:
        """Encoder features ``[T, B, features]`` of observations ``[T, B, ...]``."""
        steps, rows = leaves(obs)[0].shape[:2]
        return self.encoder(tree_map(lambda v: v.flatten(0, 1), obs)).view(steps, rows, -1)

    def step(self, obs: Obs, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of every env: (features ``[B, out_dim]``, next state ``[B, S]``)."""
        return self.core.step(self.encoder(obs), state)

    def unroll(self, seq: dict[str, Any], state_key: str, burn_in: int) -> tuple[Tensor, Tensor]:
        """Replay windows ``seq`` (``[L, B, ...]``, see :meth:`SequenceReplay.sample`) from their stored first
        state ``seq[state_key][0]``: the first ``burn_in`` steps without gradient (they only refresh the state),
        then the rest. Returns the features at each remaining step's observation and at its next observation (the
        state after the step carried on, not reset: a truncated episode's final observation is seen with its own
        memory), ``[L - burn_in, B, out_dim]`` each."""
        state, starts = seq[state_key][0], seq["start"]
        if burn_in:
            with torch.no_grad():
                early = select(seq["obs"], slice(None, burn_in))
                state = self.core.sequence(self.encode(early), state, starts[:burn_in])[1][-1]
        late = select(seq["obs"], slice(burn_in, None))
        features, after = self.core.sequence(self.encode(late), state, starts[burn_in:])
        next_encoded = self.encode(select(seq["next_obs"], slice(burn_in, None)))
        next_features, _ = self.core.step(next_encoded.flatten(0, 1), after.flatten(0, 1))
        return features, next_features.view(*features.shape)


@dataclass
class Inputs:
    """What each network reads for the rows of one gradient step: the observations without memory; with memory,
    the features each body computed at the steps a loss may see (``[M, features]``)."""

    actor: Any  # the actor's input at s (gradient into the actor's body)
    critic: Any  # the critic's input at s (gradient into the critic's body)
    critic_for_actor: Any  # the critic's input at s in the actor's loss (no gradient into any body)
    next_actor: Any  # the input of the actor that picks a' at s' (SAC's actor, TD3's target actor)
    next_critic: Any  # the target critic's input at s'

    @staticmethod
    def of_observations(batch: dict[str, Any]) -> Inputs:
        return Inputs(batch["obs"], batch["obs"], batch["obs"], batch["next_obs"], batch["next_obs"])


class OffPolicyAgent(Agent):
    """Config fields used: ``buffer_size``, ``batch_size``, ``learning_starts``, ``utd`` (gradient steps per env
    step), ``save_buffer``, the critic's (``critic_*``, ``n_critics``, ``gamma``, ``max_grad_norm``) and memory's
    (``rnn``, ``rnn_hidden``, ``rnn_input_scale``, ``rnn_seq_len``, ``rnn_burn_in``).

    An algorithm builds its actor on :meth:`actor_input`, then its critic with :meth:`make_critic` (in that order:
    the initial weights follow the seed), then its target networks (with :meth:`target_bodies` under memory) and
    calls :meth:`remember`; it supplies the critic's bootstrap (:meth:`next_value`) and its ``gradient_step``,
    which starts with the shared :meth:`critic_step`. Actions here are in [-1, 1] (the buffer's ``action``, the
    critics' input); the env receives them rescaled to its bounds."""

    name = "off-policy"
    critic: EnsembleQ  # Q_i(s, a) of every member: [E, B]
    critic_params: list[Tensor]  # what the critic's optimizer (``optimizers["critic"]``) steps
    actor_body: Recurrent  # with memory: the actor's encoder and core (``actor_input``)
    critic_body: Recurrent  # with memory: the critics' shared encoder and core (``make_critic``)
    next_actor_body = "actor_body"  # with memory: the body of the actor that picks a' (TD3: its target's)

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        replay_width = self.init_actions(act_space)
        self.recurrent = cfg.rnn != "none"
        # With memory the buffer of sequences comes in remember(), once the cores' state widths are known.
        self.buffer: ReplayBuffer | SequenceReplay | None = (
            None if self.recurrent else ReplayBuffer(cfg.buffer_size, obs_space, replay_width, device)
        )
        # A config that never went through config.resolve (no budget known) keeps the paper's warm-up.
        self.learning_starts = cfg.PAPER_LEARNING_STARTS if cfg.learning_starts is None else cfg.learning_starts
        self.updates_owed = 0.0
        self.gradient_steps = 0
        # Exploration noise with memory, when the algorithm uses it: restarted as episodes end (``observe``) and
        # kept in checkpoints.
        self.noise: ColoredNoise | OrnsteinUhlenbeckNoise | None = None

    def init_actions(self, act_space: gym.Space) -> int:
        """Check the action space and keep what acting in it needs (``act_dim``, ``act_shape``, the bounds);
        returns the width of a replayed action. Here a bounded Box of any shape, flattened: [-1, 1]^act_dim."""
        if action_kind(act_space) != "gaussian":
            raise UserError(f"--algo {self.name} needs a continuous (Box) action space, not {act_space}")
        self.act_dim = action_dim(act_space)
        self.act_shape = tuple(act_space.shape)
        self.low = torch.as_tensor(act_space.low, dtype=torch.float32, device=self.device).reshape(-1)
        self.high = torch.as_tensor(act_space.high, dtype=torch.float32, device=self.device).reshape(-1)
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise UserError(f"--algo {self.name} needs a bounded action space, not {act_space}")
        return self.act_dim

    def random_action(self, n: int) -> Tensor:
        """What the agent does before ``learning_starts``: uniform random actions ``[n, act_dim]`` in [-1, 1]."""
        return torch.rand(n, self.act_dim, device=self.device) * 2 - 1

    def make_encoder(self) -> nn.Module:
        """A fresh encoder of the observations (every network owns its own; the critic's members share one)."""
        return make_encoder(self.obs_space, self.cfg.encoder_config())

    def make_body(self) -> tuple[int, nn.Module | None, Recurrent | None]:
        """(width, encoder, body) of what a network's head reads: without memory the network owns an encoder of
        the observations (body None); with memory a :class:`Recurrent` body owns it, before its core, and the head
        reads the core's features (encoder None)."""
        encoder = self.make_encoder()
        if not self.recurrent:
            return encoder.features, encoder, None
        core = Core(self.cfg.rnn, encoder.features, self.cfg.rnn_hidden, self.cfg.rnn_input_scale)
        body = Recurrent(encoder, core).to(self.device)
        return body.core.out_dim, None, body

    def actor_input(self) -> tuple[int, nn.Module | None]:
        """(width, encoder) for the actor's network; with memory its body becomes ``actor_body``."""
        width, encoder, body = self.make_body()
        if body is not None:
            self.actor_body = body
        return width, encoder

    def to_env(self, action: Tensor) -> Tensor:
        """Actions in [-1, 1] ``[B, act_dim]`` as the env takes them: rescaled to its bounds, in its shape."""
        action = rescale(action, self.low, self.high)
        return action if len(self.act_shape) == 1 else action.reshape(-1, *self.act_shape)

    def colored_noise(self, beta: float, scale: float = 1.0) -> ColoredNoise:
        """Per-env noise sequences of colour ``beta``."""
        return ColoredNoise(beta, self.num_envs, self.act_dim, self.cfg.noise_length, self.device, scale)

    def make_critic(self, kind: type[EnsembleQ] | type[EnsembleQValues] = EnsembleQ) -> EnsembleQ | EnsembleQValues:
        """The ensemble of Q critics every off-policy algorithm here trains (twin by default): Q(s, a), or with
        ``kind=EnsembleQValues`` Q(s, .) over discrete actions (discrete SAC); with memory their shared body becomes
        ``critic_body``."""
        cfg = self.cfg
        width, encoder, body = self.make_body()
        if body is not None:
            self.critic_body = body
        return kind(
            width,
            self.act_dim,
            encoder=encoder,
            hidden=cfg.critic_hidden,
            ensemble=cfg.n_critics,
            activation=cfg.activation,
            layer_norm=cfg.critic_layer_norm,
            dropout=cfg.critic_dropout,
        ).to(self.device)

    def target_bodies(self, *names: str) -> list[nn.Module]:
        """With memory: frozen copies ``<name>_target`` of the named bodies (e.g. ``critic_body``), registered as
        modules; returns [target, source, target, source, ...] for Polyak averaging (empty without memory)."""
        pairs: list[nn.Module] = []
        for name in names if self.recurrent else ():
            target = frozen_copy(getattr(self, name))
            setattr(self, f"{name}_target", target)
            self.modules[f"{name}_target"] = target
            pairs += [target, getattr(self, name)]
        return pairs

    def body_parameters(self, name: str) -> list[Tensor]:
        """The parameters of body ``name`` (what its network's optimiser steps too); none without memory."""
        return list(getattr(self, name).parameters()) if self.recurrent else []

    def remember(self) -> None:
        """With memory, once the networks exist: the states carried per env, the buffer of sequences, and the
        bodies in the checkpoint's modules. Without memory, nothing."""
        if not self.recurrent:
            return
        cfg = self.cfg
        widths = {"actor": self.actor_body.core.state_dim, "critic": self.critic_body.core.state_dim}
        self.memory = CarriedState(widths, self.num_envs).to(self.device)
        states = {f"{name}_state": width for name, width in widths.items()}
        self.buffer = SequenceReplay(cfg.buffer_size, self.obs_space, self.act_dim, self.num_envs, states, self.device)
        self.window = cfg.rnn_burn_in + cfg.rnn_seq_len
        self.buffer.check_length(self.window)
        self.modules.update(actor_body=self.actor_body, critic_body=self.critic_body, memory=self.memory)

    # ------------------------------------------------------------------------------------------ acting
    @abstractmethod
    def exploration_action(self, obs: Tensor) -> Tensor:
        """Actions in [-1, 1] for collecting data (with the algorithm's exploration); ``obs`` is what the actor
        reads (the actor body's features, with memory)."""

    @abstractmethod
    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions in [-1, 1] of the learned policy (``obs`` as in :meth:`exploration_action`)."""

    @torch.no_grad()
    def explore(self, obs: Obs, env_steps: int) -> Decision:
        obs = to_device(obs, self.device)
        record: dict[str, Tensor] = {"obs": obs}
        actor_in = obs
        if self.recurrent:  # step both cores, and keep their states before the step for the replay
            states = self.memory.current()  # [N, S] each, zeroed where an episode starts
            actor_in, actor_next = self.actor_body.step(obs, states["actor"])
            _, critic_next = self.critic_body.step(obs, states["critic"])
            record.update(start=self.memory.starts.clone(), actor_state=states["actor"], critic_state=states["critic"])
            self.memory.carry({"actor": actor_next, "critic": critic_next})
        if env_steps < self.learning_starts:
            action = self.random_action(batch_size(obs))
        else:
            action = self.exploration_action(actor_in)
        record["action"] = action
        return Decision(env_steps, self.to_env(action), record)

    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        if self.recurrent:
            self.buffer.add(**decision.record, reward=reward, terminated=terminated, truncated=truncated,
                            next_obs=next_obs)  # fmt: skip
            self.memory.episodes_ended((terminated | truncated).to(self.device))
        else:
            self.buffer.add(**decision.record, reward=reward, terminated=terminated, next_obs=next_obs)
        if self.noise is not None:
            self.noise.restart((terminated | truncated).to(self.device))
        if decision.env_steps + self.num_envs >= max(self.learning_starts, self.cfg.batch_size):
            self.updates_owed += self.cfg.utd * self.num_envs

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:  # the actor and critic only: alpha keeps its rate, so the entropy target holds
            anneal_lr(self.optimizers, {"actor": self.cfg.actor_lr, "critic": self.cfg.critic_lr}, fraction)

    def ready(self) -> bool:
        if self.recurrent and not self.buffer.can_sample(self.window):
            return False
        return self.updates_owed >= 1 and len(self.buffer) >= self.cfg.batch_size

    def act(self, obs: Obs, deterministic: bool = False) -> Tensor:
        if self.recurrent:
            raise TypeError("a recurrent policy acts with its state: use act_step(obs, state) (see initial_state)")
        with torch.no_grad():
            return self.to_env(self.policy_action(to_device(obs, self.device), deterministic))

    def initial_state(self, n: int) -> Tensor:
        """The actor core's state of ``n`` envs at an episode start (zeros ``[n, S]``)."""
        return self.actor_body.core.initial_state(n, self.device)

    @torch.no_grad()
    def act_step(self, obs: Obs, state: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(env actions, next state) for a batch of observations ``[B, ...]`` seen with ``state [B, S]``."""
        features, state = self.actor_body.step(to_device(obs, self.device), state.to(self.device))
        return self.to_env(self.policy_action(features, deterministic)), state

    def deployable(self) -> DeployedActor:
        # Every off-policy agent keeps its policy in ``self.actor`` (and its memory in ``self.actor_body``); their
        # weights are the module's, so torch.export sees them as parameters while policy_action reads them.
        body = self.actor_body if self.recurrent else None
        return DeployedActor(self.actor, lambda x: self.policy_action(x, True), self.low, self.high, body)

    # ------------------------------------------------------------------------------------------ learning
    @abstractmethod
    def next_value(self, next_actor_in: Tensor, next_critic_in: Tensor) -> Tensor:
        """The value of the next states ``[B]`` that the critic's target bootstraps from, from the target networks
        (called without gradient), given what the next-action actor and the target critic read at s' (both the
        next observations without memory)."""

    def critic_step(self, batch: dict[str, Tensor], inputs: Inputs | None = None) -> dict[str, Tensor]:
        """One gradient step of every Q critic towards the Bellman target r + gamma * (1 - terminated) * V(s'),
        with V(s') from :meth:`next_value`; returns the critic's metrics as 0-d tensors."""
        inputs = Inputs.of_observations(batch) if inputs is None else inputs
        with torch.no_grad():
            next_value = self.next_value(inputs.next_actor, inputs.next_critic)
            target = td_targets(batch["reward"], next_value, batch["terminated"], self.cfg.gamma)  # [B]
        loss, q_mean = critic_loss(self.critic, inputs.critic, batch["action"], target)
        clip_and_step(self.optimizers["critic"], loss, self.critic_params, self.cfg.max_grad_norm)
        return {"critic_loss": loss.detach(), "q_mean": q_mean}

    @abstractmethod
    def gradient_step(self, batch: dict[str, Tensor], inputs: Inputs | None = None) -> dict[str, Tensor]:
        """One update of every network from one sampled batch of rows (the critic's by :meth:`critic_step`, then
        the algorithm's own), its networks reading ``inputs`` (the observations when None); returns metrics as 0-d
        tensors."""

    def replayed(self, seq: dict[str, Any]) -> tuple[dict[str, Tensor], Inputs]:
        """Sequences ``[L, B, ...]`` replayed through the bodies (see :meth:`Recurrent.unroll`), then the steps a
        loss may see (past the burn-in, before any later episode start) gathered into rows ``[M, ...]``: the
        batch and the :class:`Inputs` of :meth:`gradient_step`."""
        burn_in = self.cfg.rnn_burn_in
        alive = seq["alive"][burn_in:].flatten()  # [(L - burn_in) * B]

        def rows(x: Tensor) -> Tensor:
            return x.flatten(0, 1)[alive]

        actor, actor_next = self.actor_body.unroll(seq, "actor_state", burn_in)
        critic, _ = self.critic_body.unroll(seq, "critic_state", burn_in)
        with torch.no_grad():
            _, target_next = self.critic_body_target.unroll(seq, "critic_state", burn_in)
            if self.next_actor_body == "actor_body":
                next_actor = actor_next.detach()
            else:
                next_actor = getattr(self, self.next_actor_body).unroll(seq, "actor_state", burn_in)[1]
        batch = {key: rows(seq[key][burn_in:]) for key in ("action", "reward", "terminated")}
        # The actor's loss reads the critic's features of this unroll, detached: it trains the actor (its body
        # and head) against the critic, never the critic's core.
        inputs = Inputs(rows(actor), rows(critic), rows(critic).detach(), rows(next_actor), rows(target_next))
        return batch, inputs

    def sample(self) -> tuple[dict[str, Tensor], Inputs | None]:
        """One gradient step's batch: rows of transitions, or (with memory) replayed sequences' rows."""
        if not self.recurrent:
            return self.buffer.sample(self.cfg.batch_size), None
        return self.replayed(self.buffer.sample(self.cfg.sequences_per_batch(), self.window))

    def update(self) -> dict[str, float]:
        steps = int(self.updates_owed)
        self.updates_owed -= steps
        totals: dict[str, list[Tensor]] = {}
        for _ in range(steps):
            batch, inputs = self.sample()
            metrics = self.gradient_step(batch) if inputs is None else self.gradient_step(batch, inputs)
            for key, value in metrics.items():
                totals.setdefault(key, []).append(value)
            self.gradient_steps += 1
        return {key: torch.stack(values).mean().item() for key, values in totals.items()}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["counters"] = {
            "updates_owed": self.updates_owed,
            "gradient_steps": self.gradient_steps,
        }
        if self.cfg.save_buffer:
            state["buffer"] = self.buffer.state_dict()
        if self.noise is not None:
            state["noise"] = self.noise.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        super().load_state_dict(state, weights_only)
        if weights_only:
            return
        counters = state.get("counters", {})
        self.updates_owed = float(counters.get("updates_owed", 0.0))
        self.gradient_steps = int(counters.get("gradient_steps", 0))
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.noise is not None and "noise" in state:
            self.noise.load_state_dict(state["noise"])
