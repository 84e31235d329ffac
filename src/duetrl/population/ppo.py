"""PPO members: :func:`duetrl.algos.ppo.ppo_loss` vmapped over a ``[member, time, env]`` rollout."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from duetrl.algos.base import linear_schedule
from duetrl.algos.ppo import PPO, _explained_variance, ppo_loss
from duetrl.config import Config
from duetrl.encoders import tree_map
from duetrl.population.stacked import StackedAdam, StackedNorm, _Nets, clip_per_member
from duetrl.returns import gae

# ---------------------------------------------------------------------------------------------- ppo members

# Activations of one layer of one minibatch pass, summed over the members vmapped together: about the caches of the
# 2-core CPU this was measured on (see :meth:`PPOPopulation.member_groups`).
ACTIVATION_BYTES = 8 * 2**20


class PPOPopulation:
    """``M`` PPO agents as one: stacked weights, a ``[member, time, env]`` rollout, one vmapped update.

    Built from ordinary :class:`~duetrl.algos.ppo.PPO` agents (new or restored from checkpoints) and written back
    into them (:meth:`write_back`) for checkpoints and evaluation, so a member's saved state is an ordinary run's."""

    settings_keys: tuple[str, ...] = ("lr", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef", "max_grad_norm")
    optimized: dict[str, tuple[str, ...]] = {"ppo": ("policy", "critic")}  # optimiser -> the networks it steps

    def __init__(self, agents: list[PPO], configs: list[Config], generators: list[torch.Generator]):
        self.agents, self.configs, self.generators = agents, configs, generators
        self.cfg = configs[0].algo  # the shared settings
        self.device = agents[0].device
        self.policy = agents[0].policy  # for the action bounds and log-prob, shared by every member
        self.discrete = self.policy.discrete
        nets = [_Nets(policy=a.policy, critic=a.critic) for a in agents]
        params, self.buffers = stack_module_state(nets)
        self.names = list(params)
        self.params = [params[name] for name in self.names]
        self.template = copy.deepcopy(nets[0]).to("meta")
        self.adams = {}
        for name in self.optimized:
            group = agents[0].optimizers[name].param_groups[0]
            states = [a.optimizers[name].state_dict() for a in agents]
            self.adams[name] = StackedAdam(self.weights(name), states, betas=group["betas"], eps=group["eps"])
        self.obs_norm = StackedNorm([a.obs_norm for a in agents])
        self.reward_norm = StackedNorm([a.reward_scaler.stats for a in agents])
        self.discounted = torch.stack([a.reward_scaler.returns for a in agents])  # [M, N] float64
        self.settings = {
            key: torch.tensor([float(getattr(c.algo, key)) for c in configs], dtype=torch.float64)
            for key in self.settings_keys
        }
        self.lrs = {  # each optimiser's current rate per member, float64 as a solo run's Python float
            name: torch.tensor([a.optimizers[name].param_groups[0]["lr"] for a in agents], dtype=torch.float64)
            for name in self.optimized
        }
        self.rollout: list[dict[str, Tensor]] = []

    def __len__(self) -> int:
        return len(self.agents)

    def weights(self, optimizer: str) -> list[Tensor]:
        """The stacked weights an optimiser steps, in its ``parameters()`` order."""
        prefixes = tuple(network + "." for network in self.optimized[optimizer])
        return [p for n, p in zip(self.names, self.params, strict=True) if n.startswith(prefixes)]

    # ------------------------------------------------------------------------------------------ vmapped calls
    def _vmap(
        self, fn: Callable, *tensors: Any, members: slice | None = None, params: list[Tensor] | None = None
    ) -> Any:
        """``fn(nets, *tensors)`` for every member, its own weights and its own slice of each tensor; with ``members``,
        for those members only (``params``: their weights, ``self.params`` sliced, unless given)."""

        def one(weights_: list[Tensor], buffers: dict[str, Tensor], *args: Any) -> Any:
            weights = dict(zip(self.names, weights_, strict=True))
            return functional_call(self.template, (weights, buffers), (fn, *args), tie_weights=False)

        if members is None:
            return vmap(one)(self.params, self.buffers, *tensors)
        params = [p[members] for p in self.params] if params is None else params
        buffers = {k: v[members] for k, v in self.buffers.items()}
        return vmap(one)(params, buffers, *tree_map(lambda t: t[members], tensors))

    def member_groups(self) -> list[slice]:
        """The members in groups whose minibatch activations (``[group, minibatch, width]`` per layer) fit in
        about :data:`ACTIVATION_BYTES`: past that, the elementwise passes run from memory instead of the caches and
        a member costs twice as much (measured: 0.09 CPU-s per member and update at 16-32 members of the Pendulum
        preset, 0.17 at 64-256). Each member's arithmetic is the same in any grouping."""
        per_member = self.cfg.minibatch_size * max(self.cfg.hidden, default=1) * 4
        size = max(1, ACTIVATION_BYTES // per_member)
        return [slice(lo, lo + size) for lo in range(0, len(self), size)]

    # ------------------------------------------------------------------------------------------ acting
    def _normalize(self, obs: Tensor, update: bool = False) -> Tensor:
        if not self.cfg.normalize_obs:
            return obs
        if update:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    @torch.no_grad()
    def explore(self, obs: Tensor, env_steps: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Env actions ``[M, N, ...]`` for observations ``[M, N, obs_dim]``, sampled with each member's own
        generator exactly as :meth:`duetrl.policy.Policy.sample` samples, and what the rollout keeps."""
        obs = self._normalize(obs.to(self.device), update=True)
        if self.discrete:
            log_probs = torch.log_softmax(self._vmap(lambda n, o: n.policy.actor(o), obs), -1)
            raw = torch.stack(
                [
                    torch.multinomial(lp.reshape(-1, lp.shape[-1]).exp(), 1, generator=g).view(lp.shape[:-1])
                    for lp, g in zip(log_probs, self.generators, strict=True)
                ]
            )
            action, log_prob = raw, log_probs.gather(-1, raw.unsqueeze(-1)).squeeze(-1)
        else:
            mean, log_std = self._vmap(lambda n, o: n.policy.actor(o), obs)
            noise = torch.stack(
                [
                    torch.randn(m.shape, generator=g, dtype=m.dtype, device=m.device)
                    for m, g in zip(mean, self.generators, strict=True)
                ]
            )
            raw = mean + log_std.exp() * noise
            action, log_prob = self.policy.to_env(raw), self.policy._log_prob(mean, log_std, raw, noise)
        return action, {"obs": obs, "raw": raw, "action": action, "log_prob": log_prob}

    def observe(
        self, record: dict[str, Tensor], reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        """One step's outcome, ``[M, N]`` each (``next_obs`` ``[M, N, obs_dim]``)."""
        reward, terminated, truncated = reward.to(self.device), terminated.to(self.device), truncated.to(self.device)
        if self.cfg.normalize_reward:  # RewardScaler, per member
            self.discounted.mul_(self.settings["gamma"][:, None]).add_(reward)
            self.reward_norm.update(self.discounted)
            self.discounted.masked_fill_(terminated | truncated, 0.0)
            reward = (reward / self.reward_norm.scale[:, None]).clamp(-10.0, 10.0)
        self.rollout.append(
            dict(
                record,
                reward=reward,
                terminated=terminated,
                truncated=truncated,
                next_obs=self._normalize(next_obs.to(self.device)),
            )
        )

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Every member's env actions for its observations ``[M, B, obs_dim]`` (evaluation)."""
        obs = self._normalize(obs.to(self.device))
        if self.discrete:
            logits = self._vmap(lambda n, o: n.policy.actor(o), obs)
            if deterministic:
                return logits.argmax(-1)
            probs = torch.softmax(logits, -1)
            return torch.stack(
                [
                    torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=g).view(p.shape[:-1])
                    for p, g in zip(probs, self.generators, strict=True)
                ]
            )
        mean, log_std = self._vmap(lambda n, o: n.policy.actor(o), obs)
        if deterministic:
            return self.policy.to_env(mean)
        noise = torch.stack([torch.randn(m.shape, generator=g) for m, g in zip(mean, self.generators, strict=True)])
        return self.policy.to_env(mean + log_std.exp() * noise)

    # ------------------------------------------------------------------------------------------ learning
    def ready(self) -> bool:
        return len(self.rollout) >= self.cfg.num_steps

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:
            self.lrs["ppo"] = linear_schedule(self.settings["lr"], 0.0, fraction)

    def update(self) -> list[dict[str, float]]:
        """PPO's update (:meth:`duetrl.algos.ppo.PPO.update`) for every member at once; each member's metrics."""
        cfg, members = self.cfg, len(self)
        batch = {k: torch.stack([s[k] for s in self.rollout], dim=1) for k in self.rollout[0]}  # [M, T, N, ...]
        self.rollout.clear()
        values, advantages, returns = self._advantages(batch)
        flat = {
            "obs": batch["obs"].flatten(1, 2),
            "raw": batch["raw"].flatten(1, 2),
            "log_prob": batch["log_prob"].flatten(1, 2),
            "advantages": advantages.flatten(1),
            "returns": returns.flatten(1),
            "values": values.flatten(1),
        }
        size = flat["returns"].shape[1]
        shared = {"normalize_advantage": cfg.normalize_advantage, "clip_vf": cfg.clip_vf}
        hyper = {k: self.settings[k].float() for k in ("clip_coef", "ent_coef", "vf_coef")}
        continuous = not self.discrete

        def member_loss(nets: _Nets, mb: dict[str, Tensor], hp: dict[str, Tensor]) -> tuple[Tensor, dict, Tensor]:
            loss, terms, dist = ppo_loss(nets.policy, nets.critic, mb, SimpleNamespace(**shared, **hp))
            return loss, terms, dist.stddev.mean() if continuous else loss.detach() * 0

        stats: list[dict[str, Tensor]] = []
        stds: list[Tensor] = []
        rows = torch.arange(members, device=self.device)[:, None]
        for _ in range(cfg.epochs):
            order = torch.stack([torch.randperm(size, generator=g, device=self.device) for g in self.generators])
            shuffled = {k: v[rows, order] for k, v in flat.items()}
            for start in range(0, size, cfg.minibatch_size):
                mb = {k: v[:, start : start + cfg.minibatch_size] for k, v in shuffled.items()}
                parts = []
                for group in self.member_groups():  # one pass per group of members, each within the caches
                    params = [p[group] for p in self.params]
                    losses, terms_, std_ = self._vmap(member_loss, mb, hyper, members=group, params=params)
                    parts.append((torch.autograd.grad(losses.sum(), params), terms_, std_))
                # contiguous: the fused kernel reads memory in order, and batched matmuls leave transposed gradients
                grads = [
                    (torch.cat(gs) if len(gs) > 1 else gs[0]).contiguous()
                    for gs in zip(*(p[0] for p in parts), strict=True)
                ]
                terms = {k: torch.cat([part[1][k] for part in parts]) for k in parts[0][1]}
                std = torch.cat([part[2] for part in parts])
                if cfg.max_grad_norm > 0:
                    clip_per_member(grads, self.settings["max_grad_norm"])
                self.adams["ppo"].step(grads, self.lrs["ppo"])
                stats.append({k: v.detach() for k, v in terms.items()})
                stds.append(std.detach())
        means = {k: torch.stack([s[k] for s in stats]).mean(0).tolist() for k in stats[0]}
        std_mean = stds[-1].tolist()  # of the last minibatch, as the solo update reports it
        out = []
        for m in range(members):
            metrics = {k: means[k][m] for k in means}
            metrics["actor_loss"], metrics["critic_loss"] = metrics.pop("policy_loss"), metrics.pop("value_loss")
            metrics["explained_variance"] = _explained_variance(flat["values"][m], flat["returns"][m])
            metrics["lr"] = float(self.lrs["ppo"][m])
            if continuous:
                metrics["policy_std"] = std_mean[m]
            out.append(metrics)
        return out

    @torch.no_grad()
    def _advantages(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Each member's values, GAE advantages and returns ``[M, T, N]``: the critic vmapped, then
        :func:`duetrl.returns.gae` per member with its own gamma and lambda (as Python floats, as a solo run)."""
        values = self._vmap(lambda n, o: n.critic(o), batch["obs"])
        next_values = self._vmap(lambda n, o: n.critic(o), batch["next_obs"])
        advantages = torch.stack(
            [
                gae(
                    batch["reward"][m],
                    values[m],
                    next_values[m],
                    batch["terminated"][m],
                    batch["truncated"][m],
                    c.algo.gamma,
                    c.algo.gae_lambda,
                )
                for m, c in enumerate(self.configs)
            ]
        )
        return values, advantages, advantages + values

    # ------------------------------------------------------------------------------------------ members
    def keep(self, index: list[int]) -> None:
        """Go on with these members only (a finished or failed member stops costing compute)."""
        idx = torch.tensor(index, dtype=torch.long)
        with torch.no_grad():
            self.params = [p[idx].detach().requires_grad_(True) for p in self.params]
        self.buffers = {k: v[idx] for k, v in self.buffers.items()}
        for name, adam_ in self.adams.items():
            adam_.params = self.weights(name)
            adam_.keep(idx)
        self.obs_norm.keep(idx)
        self.reward_norm.keep(idx)
        self.discounted = self.discounted[idx]
        self.settings = {k: v[idx] for k, v in self.settings.items()}
        self.lrs = {k: v[idx] for k, v in self.lrs.items()}
        self.agents = [self.agents[i] for i in index]
        self.configs = [self.configs[i] for i in index]
        self.generators = [self.generators[i] for i in index]
        self.rollout = [{k: v[idx] for k, v in step.items()} for step in self.rollout]

    @torch.no_grad()
    def write_back(self, m: int) -> PPO:
        """Member ``m``'s weights, statistics and optimiser state copied into its ordinary agent, returned."""
        agent = self.agents[m]
        nets = _Nets(policy=agent.policy, critic=agent.critic)
        state = {name: p[m] for name, p in zip(self.names, self.params, strict=True)}
        state.update({name: b[m] for name, b in self.buffers.items()})
        nets.load_state_dict(state)
        self.obs_norm.write(m, agent.obs_norm)
        self.reward_norm.write(m, agent.reward_scaler.stats)
        agent.reward_scaler.returns.copy_(self.discounted[m])
        for name, adam_ in self.adams.items():
            optimizer = agent.optimizers[name]
            optimizer.load_state_dict(adam_.member_state(m, optimizer.state_dict(), float(self.lrs[name][m])))
        return agent
