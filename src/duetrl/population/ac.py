"""ac and a2c members: :func:`duetrl.algos.ac.ac_loss` vmapped over a ``[member, time, env]`` rollout, an actor and a
critic optimiser per member.

The rollout, the normalisers, the actions and the write-back are PPO's population's (both are on-policy agents on
the same :class:`~duetrl.algos.onpolicy.OnPolicyAgent`); what differs is when the update comes (every
``update_every`` steps) and the update itself: one step of each optimiser on the whole rollout."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from duetrl.algos.ac import ac_loss, ac_targets
from duetrl.algos.base import linear_schedule
from duetrl.population.ppo import PPOPopulation
from duetrl.population.stacked import _Nets, clip_per_member


class ACPopulation(PPOPopulation):
    """``M`` actor-critic agents (``ac``, ``a2c``) as one: a V(s) critic, an update every ``update_every`` steps
    (:meth:`duetrl.algos.ac.ActorCritic.update` for every member at once)."""

    settings_keys = ("actor_lr", "critic_lr", "gamma", "gae_lambda", "ent_coef", "max_grad_norm")
    optimized = {"actor": ("policy",), "critic": ("critic",)}

    def ready(self) -> bool:
        return len(self.rollout) >= self.cfg.update_every

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:
            for name in self.optimized:
                self.lrs[name] = linear_schedule(self.settings[f"{name}_lr"], 0.0, fraction)

    def update(self) -> list[dict[str, float]]:
        """One step of every member's actor and critic on its rollout ``[T, N]``; each member's metrics."""
        cfg = self.cfg
        batch = {k: torch.stack([s[k] for s in self.rollout], dim=1) for k in self.rollout[0]}  # [M, T, N, ...]
        self.rollout.clear()
        terminated, truncated = batch["terminated"], batch["truncated"]
        if not cfg.bootstrap_truncation:
            terminated = terminated | truncated
        with torch.no_grad():
            values = self._vmap(lambda n, o: n.critic(o), batch["obs"])  # the loss recomputes them with gradient
            next_values = self._vmap(lambda n, o: n.critic(o), batch["next_obs"])
        targets = torch.stack(  # per member, its gamma and lambda as Python floats, as a solo run
            [
                ac_targets(c.algo, batch["reward"][m], values[m], next_values[m], terminated[m], truncated[m])
                for m, c in enumerate(self.configs)
            ]
        )
        shared = {"critic": "v", "normalize_advantage": cfg.normalize_advantage}
        continuous = not self.discrete

        def member_loss(nets: _Nets, obs: Tensor, raw: Tensor, target: Tensor, ent_coef: Tensor) -> tuple:
            loss_cfg = SimpleNamespace(**shared, ent_coef=ent_coef)
            actor_loss, critic_loss, entropy, dist = ac_loss(nets.policy, nets.critic(obs), target, obs, raw, loss_cfg)
            return actor_loss, critic_loss, entropy, dist.stddev.mean() if continuous else entropy.detach() * 0

        actor_losses, critic_losses, entropy, std = self._vmap(
            member_loss, batch["obs"], batch["raw"], targets, self.settings["ent_coef"].float()
        )
        # The actor's loss reads the critic's values detached, so the sum's gradient is each network's own loss's.
        actor, critic = self.weights("actor"), self.weights("critic")
        grads = torch.autograd.grad(actor_losses.sum() + critic_losses.sum(), actor + critic)
        grads = [g.contiguous() for g in grads]
        metrics: dict[str, list[float]] = {
            "actor_loss": actor_losses.tolist(),
            "critic_loss": critic_losses.tolist(),
            "entropy": entropy.tolist(),
        }
        for name, part in (("actor", grads[: len(actor)]), ("critic", grads[len(actor) :])):
            if cfg.max_grad_norm > 0:
                metrics[f"{name}_grad_norm"] = clip_per_member(part, self.settings["max_grad_norm"]).tolist()
            self.adams[name].step(part, self.lrs[name])
        if continuous:
            metrics["policy_std"] = std.tolist()
        return [{key: values[m] for key, values in metrics.items()} for m in range(len(self))]
