"""PPO (Schulman et al. 2017): the actor-critic with a clipped surrogate, several epochs per rollout.

Per rollout of ``num_steps`` steps from each env: GAE(lambda) advantages from the critic, then ``epochs``
passes over shuffled minibatches minimising

    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - ent_coef * entropy + vf_coef * 0.5 * (V - return)^2

where ratio = pi(a|s) / pi_old(a|s). The value term carries CleanRL's 0.5; Stable-Baselines3 omits it, so an SB3
(rl-zoo3) ``vf_coef`` is twice ours. Stops the epochs early when the approximate KL exceeds ``target_kl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor
from torch.distributions import Distribution

from duetrl.algos.base import anneal_lr, clip_and_step
from duetrl.algos.onpolicy import (
    OnPolicyAgent,
    ignored_policy_settings,
    policy_config_of,
    validate_memory,
    validate_policy,
)
from duetrl.config import RunConfig
from duetrl.cores import chunk
from duetrl.encoders import EncoderKeys, select, tree_map
from duetrl.errors import UserError
from duetrl.nets import ValueCritic, orthogonal_init
from duetrl.optim import adam
from duetrl.policy import Policy, PolicyConfig
from duetrl.returns import gae, normalize
from duetrl.validate import check_range

LONG_SEQUENCE = 256  # recurrent minibatch sequences longer than this get a warning (the new num_steps is 2048)


@dataclass
class PPOConfig(EncoderKeys):
    """Hyperparameters of ``ppo``. The defaults are what a preset-less env gets (``--preset none``, or an env no
    preset names): SB3's PPO defaults (one env x 2048 steps, 10 epochs of minibatches of 64, lr 3e-4 held constant,
    its value-loss weight) plus rewards scaled by the running std of the discounted return. Measured untuned against
    SB3's defaults (``duetrl bench --tasks defaults --algos ppo``; 100,352 steps, seeds 0-2, 20 held-out episodes,
    the table in docs/benchmarks.md): InvertedDoublePendulum 9,322 / 9,326 / 9,359 (SB3 7,647 / 2,434 / 3,138;
    without the reward scaling 1,776 / 1,567 / 1,938, where the critic fits returns in the thousands from a
    unit-scale init at Adam steps of about lr: its loss, 0.5 * MSE, rose from 225 to 1,980 over seed 0's run),
    Reacher -8.6 / -8.8 / -8.2 (SB3 -11.1 / -19.7 / -29.6), Acrobot -77.3 / -82.2 / -77.6 (SB3 -80.8 / -76.7 /
    -79.7). The earlier defaults (256 steps, annealed lr, half SB3's value weight, no reward scaling) scored 392-460 on
    InvertedDoublePendulum and -500 on Acrobot seed 2. Presets set their own values."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    lr: float = 3e-4
    anneal_lr: bool = False  # off by default, as SB3's PPO (half the mean rate of the same run otherwise)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_steps: int = 2048  # rollout length per env (2048 as SB3 and CleanRL; 256 let Acrobot seed 2 collapse)
    epochs: int = 10
    minibatch_size: int = 64
    clip_coef: float = 0.2
    clip_vf: float = 0.0  # 0 = no value clipping
    ent_coef: float = 0.0
    vf_coef: float = 1.0  # of 0.5 * (V - return)^2, so 1.0 is SB3's vf_coef=0.5 on plain MSE
    max_grad_norm: float = 0.5
    target_kl: float = 0.0  # 0 = no early stop
    recompute_advantages: bool = False  # recompute GAE with the current critic before every epoch after the first
    normalize_advantage: bool = True
    normalize_obs: bool = False
    normalize_reward: bool = True  # on by default: unscaled returns in the thousands cost 5x on InvertedDoublePendulum
    state_dependent_std: bool = False
    log_std_init: float = 0.0
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    squash: str = "clip"  # clip | tanh
    ortho_init: bool = True
    rnn: str = "none"  # memory: none, lstm or gru (a recurrent core for the actor and one for the critic)
    rnn_hidden: int = 64  # width of each recurrent core (rnn=lstm or gru)
    rnn_input_scale: float = 1.0  # the cores read their input times this: larger steps on small input changes
    rnn_seq_len: int = 0  # minibatches of whole sequences this many steps long (0 = num_steps: whole rollouts)
    rnn_prev_action: bool = False  # the cores also read the previous action (zeros at an episode start)

    def validate(self) -> None:
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("lr", self.lr, 0.0)
        check_range("num_steps", self.num_steps, 1)
        check_range("epochs", self.epochs, 1)
        check_range("minibatch_size", self.minibatch_size, 1)
        check_range("clip_coef", self.clip_coef, 0.0)
        check_range("clip_vf", self.clip_vf, 0.0)
        check_range("ent_coef", self.ent_coef, 0.0)
        check_range("vf_coef", self.vf_coef, 0.0)
        check_range("max_grad_norm", self.max_grad_norm, 0.0)
        check_range("target_kl", self.target_kl, 0.0)
        check_range("rnn_seq_len", self.rnn_seq_len, 0)
        self.validate_encoder()
        validate_policy(self.policy_config())
        validate_memory(self)
        if self.rnn != "none" and self.num_steps % self.sequence_length():
            raise UserError(
                f"rnn_seq_len={self.rnn_seq_len} does not divide num_steps={self.num_steps}: the rollout is cut into "
                "sequences of rnn_seq_len steps; choose a divisor of num_steps (or 0 for whole rollouts)"
            )

    def sequence_length(self) -> int:
        """Steps of each minibatch sequence with a recurrent core."""
        return self.rnn_seq_len or self.num_steps

    def policy_config(self) -> PolicyConfig:
        """The policy's settings, passed whole to :class:`~duetrl.policy.Policy`."""
        return policy_config_of(self)

    def ignored_settings(self) -> dict[str, str]:
        """Keys that the other settings make ignored: key -> why (see config.ignored_settings_warnings)."""
        ignored = ignored_policy_settings(self.policy_config())
        if self.rnn == "none":
            for key in ("rnn_hidden", "rnn_input_scale", "rnn_seq_len", "rnn_prev_action"):
                ignored[key] = "it applies only with a recurrent core, and rnn=none"
        return ignored

    def budget_warnings(self, run: RunConfig) -> list[str]:
        """No update within the run, or minibatches larger than a rollout (see config.budget_warnings)."""
        out = []
        batch = self.num_steps * run.num_envs
        if self.num_steps > -(-run.steps // run.num_envs):  # more than the loop's rounds, each stepping every env
            out.append(
                f"{run.algo} first updates after num_steps={self.num_steps} steps of each of num_envs={run.num_envs} "
                f"envs ({batch} env steps), more than steps={run.steps}: no update ever happens; raise steps or "
                "lower num_steps"
            )
        if self.minibatch_size > batch:
            out.append(
                f"minibatch_size={self.minibatch_size} is larger than a rollout (num_steps * num_envs = {batch} "
                "samples), so each epoch is one gradient step on the whole rollout; set minibatch_size to at most "
                f"{batch}, or raise num_steps or num_envs"
            )
        if self.rnn != "none" and self.sequence_length() > LONG_SEQUENCE:
            out.append(
                f"rnn={self.rnn} replays minibatches of whole sequences of {self.sequence_length()} steps "
                f"(rnn_seq_len={self.rnn_seq_len}{' = num_steps' if not self.rnn_seq_len else ''}): backpropagation "
                f"through that many steps is slow and its gradients unstable; set rnn_seq_len to a divisor of "
                f"num_steps={self.num_steps} of at most {LONG_SEQUENCE} (the shipped recurrent presets use 32)"
            )
        return out


class PPO(OnPolicyAgent):
    def __init__(self, cfg: PPOConfig, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        # The critic reads the policy's features (one encoder, trained by both losses, encoded once per minibatch;
        # a flat box's features are the observation itself), through its own core with rnn.
        width = self.critic_core.out_dim if self.recurrent else self.policy.features
        self.critic = ValueCritic(width, hidden=cfg.hidden, activation=cfg.activation).to(device)
        if cfg.ortho_init:
            orthogonal_init(self.critic, last_gain=1.0)
        self.modules["critic"] = self.critic
        params = list(self.policy.parameters()) + list(self.critic.parameters())
        params += list(self.actor_core.parameters()) + list(self.critic_core.parameters())  # none without rnn
        self.optimizers = {"ppo": adam(params, lr=cfg.lr, eps=1e-5)}

    def ready(self) -> bool:
        return len(self.rollout) >= self.cfg.num_steps

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:
            anneal_lr(self.optimizers, {"ppo": self.cfg.lr}, fraction)

    # ------------------------------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        cfg = self.cfg
        batch = self.rollout.stack()  # each [T, N, ...]
        self.rollout.clear()
        optimizer = self.optimizers["ppo"]

        # Advantages and returns with the critic as it was during the rollout.
        values, advantages, returns = self._advantages(batch)
        samples = self._samples(batch, values, advantages, returns)
        stats: dict[str, list[Tensor]] = {
            k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        }
        for epoch in range(cfg.epochs):
            if cfg.recompute_advantages and epoch > 0:
                # Andrychowicz et al. (2020), "What matters in on-policy RL": fresher critic, fresher advantages.
                # The value clip keeps measuring from the rollout's values.
                _, advantages, returns = self._advantages(batch)
                samples = self._samples(batch, values, advantages, returns)
            for mb in self._minibatches(samples):
                mb, actor_features, critic_features = self._replayed(mb)
                loss, terms, dist = ppo_loss(self.policy, self.critic, mb, cfg, actor_features, critic_features)
                clip_and_step(optimizer, loss, optimizer.param_groups[0]["params"], cfg.max_grad_norm)
                for key, value_ in terms.items():
                    stats[key].append(value_.detach())
            if cfg.target_kl > 0 and stats["approx_kl"][-1].item() > cfg.target_kl:
                break
        metrics = {k: torch.stack(v).mean().item() for k, v in stats.items()}
        metrics["actor_loss"], metrics["critic_loss"] = metrics.pop("policy_loss"), metrics.pop("value_loss")
        metrics["explained_variance"] = _explained_variance(values.flatten(), returns.flatten())
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if not self.policy.discrete:
            metrics["policy_std"] = dist.stddev.mean().item()
        return metrics

    def _samples(self, batch: dict[str, Any], values: Tensor, advantages: Tensor, returns: Tensor) -> dict:
        """What the minibatches are cut from: single steps ``[T * N, ...]``, or with a recurrent core sequences
        ``[L, (T / L) * N, ...]`` that keep the state recorded before their first step and the episode starts."""
        keys = ("obs", "raw", "log_prob")
        if self.recurrent:
            keys += ("start", "actor_state", "critic_state") + (("prev_action",) if self.prev_action_dim else ())
        samples = {k: batch[k] for k in keys}
        samples.update(advantages=advantages, returns=returns, values=values)
        if self.recurrent:
            length = self.cfg.sequence_length()
            return {k: tree_map(lambda x: chunk(x, length), v) for k, v in samples.items()}
        return {k: tree_map(lambda x: x.flatten(0, 1), v) for k, v in samples.items()}  # obs per key for a Dict

    def _minibatches(self, samples: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """One epoch of shuffled minibatches of ``minibatch_size`` steps: single steps, or with a recurrent core
        whole sequences (``minibatch_size // rnn_seq_len`` of them, at least one), each ``[L, B, ...]``."""
        size = self.cfg.minibatch_size
        if self.recurrent:
            length, sequences = samples["log_prob"].shape[:2]
            order = torch.randperm(sequences, device=self.device)
            per_batch = max(1, size // length)
            for start in range(0, sequences, per_batch):
                columns = order[start : start + per_batch]
                yield {k: select(v, (slice(None), columns)) for k, v in samples.items()}  # [L, B, ...]
            return
        order = torch.randperm(samples["log_prob"].shape[0], device=self.device)
        shuffled = {k: select(v, order) for k, v in samples.items()}  # one gather per epoch
        for start in range(0, len(order), size):
            rows = slice(start, start + size)
            yield {k: select(v, rows) for k, v in shuffled.items()}  # views

    def _replayed(self, mb: dict[str, Any]) -> tuple[dict[str, Any], Tensor | None, Tensor | None]:
        """A minibatch as :func:`ppo_loss` takes it: single steps as they are (the loss encodes them); sequences
        replayed through the cores with the current weights, everything flattened to ``[L * B]`` and the heads'
        features (actor's, critic's) given."""
        if not self.recurrent:
            return mb, None, None
        actor_features = self.actor_features(mb).flatten(0, 1)
        critic_features = self.critic_features(mb)[0].flatten(0, 1)
        flat = {k: mb[k].flatten(0, 1) for k in ("raw", "log_prob", "advantages", "returns", "values")}
        return flat, actor_features, critic_features

    @torch.no_grad()
    def _advantages(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """The critic's values, GAE(lambda) advantages and lambda-returns of a ``[T, N]`` rollout."""
        if self.recurrent or self.normalizes_obs:
            features, next_features = self.critic_features(batch, with_next=True)
            values = self.critic(features)
            next_values = self.critic(next_features)
        else:
            values, next_values = self._values_and_next(batch)
        cfg = self.cfg
        advantages = gae(
            batch["reward"], values, next_values, batch["terminated"], batch["truncated"], cfg.gamma, cfg.gae_lambda
        )
        return values, advantages, advantages + values

    def _values_and_next(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """V(s_t) and V(s'_t) ``[T, N]`` with the critic encoding each observation once: s'_t is s_{t+1} wherever
        the episode went on (the same tensor values, as neither a core's memory nor a running normaliser's stats
        tell them apart), so only the last step's next observations and the final observations of episodes that
        ended are encoded again, not the whole rollout a second time (a sixth of the forward passes of an image
        update with 4 epochs). Those few rows go through the networks as a smaller batch, whose matrix products may
        sum in another order: the values equal the full pass's to float rounding, so a seed's run differs from
        before this shortcut in the low bits (MinAtar Breakout, 4096 steps: the same critic loss and entropy to 8
        digits)."""
        values = self.critic(self.critic_encode(batch["obs"]))  # [T, N]
        fresh = batch["terminated"].bool() | batch["truncated"].bool()  # [T, N]: s'_t is not s_{t+1}
        fresh[-1] = True  # the last step's successor is not in the rollout
        rows = fresh.nonzero(as_tuple=True)
        next_values = torch.empty_like(values)
        next_values[:-1] = values[1:]
        next_values[rows] = self.critic(self.critic_encode(select(batch["next_obs"], rows)))
        return values, next_values


def ppo_loss(
    policy: Policy,
    critic: ValueCritic,
    mb: dict[str, Tensor],
    cfg: Any,
    actor_features: Tensor | None = None,
    critic_features: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor], Distribution]:
    """PPO's loss on one minibatch (flat ``[B]`` tensors: obs, raw, log_prob, advantages, returns, values), its
    terms (policy_loss, value_loss, entropy, approx_kl, clip_fraction) and the policy's distribution.

    ``actor_features`` and ``critic_features`` ``[B, features]``: what the heads read, when computed before (a
    recurrent core's replay of the minibatch's sequences; ``mb`` needs no obs then); None: the policy's encoder
    features of ``mb["obs"]``, computed once, for both.

    A pure function of the networks and the batch: the ordinary update calls it, and a population
    (:mod:`duetrl.population`) calls it under ``torch.func.vmap`` with each member's weights and settings (``cfg``:
    anything with PPOConfig's loss fields; ``clip_coef``, ``ent_coef``, ``vf_coef`` may be 0-d tensors there;
    ``clip_vf`` is a branch, so a number)."""
    if actor_features is None:
        actor_features = policy.encode(mb["obs"])  # once: the critic reads the policy's features
    if critic_features is None:
        critic_features = actor_features
    log_prob, entropy, dist = policy.evaluate_actions(mb.get("obs"), mb["raw"], actor_features)
    log_ratio = log_prob - mb["log_prob"]
    ratio = log_ratio.exp()
    adv = normalize(mb["advantages"]) if cfg.normalize_advantage else mb["advantages"]

    # Clipped surrogate: the pessimistic of the unclipped and clipped objectives.
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    value = critic(critic_features)
    value_loss = (value - mb["returns"]).pow(2)
    if cfg.clip_vf > 0:
        clipped = mb["values"] + (value - mb["values"]).clamp(-cfg.clip_vf, cfg.clip_vf)
        value_loss = torch.max(value_loss, (clipped - mb["returns"]).pow(2))
    value_loss = 0.5 * value_loss.mean()
    entropy = entropy.mean()
    loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
    terms = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }
    return loss, terms, dist


def _explained_variance(predicted: Tensor, target: Tensor) -> float:
    var = target.var()
    return 0.0 if var == 0 else float(1 - (target - predicted).var() / var)
