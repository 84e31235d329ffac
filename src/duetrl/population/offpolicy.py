"""SAC, TD3 and DDPG members: a ``[member, row]`` replay buffer and vmapped gradient steps (``OffPolicyAgent`` for M
members)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from duetrl.algos.base import linear_schedule
from duetrl.algos.offpolicy import critic_loss, polyak
from duetrl.algos.sac import SAC, sac_actor_loss, soft_next_value, squashed_sample, temperature_loss
from duetrl.algos.td3 import smoothed_target_action, td3_actor_loss
from duetrl.config import Config
from duetrl.policy import rescale
from duetrl.population.stacked import StackedAdam, _Nets, clip_per_member
from duetrl.returns import td_targets

# ---------------------------------------------------------------------------------------------- off-policy members


class OffPolicyPopulation:
    """``M`` off-policy agents as one: stacked networks and optimiser state, a ``[member, row, ...]`` replay
    buffer sampled with each member's generator, and vmapped gradient steps (``OffPolicyAgent`` for M members).
    Subclasses name their networks and optimisers and write the algorithm's gradient step and actions."""

    networks: tuple[str, ...]  # the agent's modules stacked (actor first), e.g. ("actor", "critic", "critic_target")
    optimized: tuple[str, ...] = ("actor", "critic")  # optimisers over a network's weights, by network name
    settings_keys: tuple[str, ...] = ("actor_lr", "critic_lr", "gamma", "tau", "max_grad_norm")

    def __init__(self, agents: list[Any], configs: list[Config], generators: list[torch.Generator]):
        self.agents, self.configs, self.generators = agents, configs, generators
        first = agents[0]
        self.cfg, self.device = configs[0].algo, first.device
        self.num_envs, self.act_dim, self.low, self.high = first.num_envs, first.act_dim, first.low, first.high
        nets = [_Nets(**{name: getattr(a, name) for name in self.networks}) for a in agents]
        params, self.buffers = stack_module_state(nets)
        self.names = list(params)
        self.params = [params[name] for name in self.names]
        self.template = copy.deepcopy(nets[0]).to("meta")
        self.adams = {
            name: StackedAdam(self.weights(name), [a.optimizers[name].state_dict() for a in agents], (0.9, 0.999), 1e-8)
            for name in self.optimized
        }
        self.settings = {
            key: torch.tensor([float(getattr(c.algo, key)) for c in configs], dtype=torch.float64)
            for key in self.settings_keys
        }
        self.lrs = {
            name: torch.tensor([a.optimizers[name].param_groups[0]["lr"] for a in agents], dtype=torch.float64)
            for name in first.optimizers
        }
        self.learning_starts, self.updates_owed = first.learning_starts, first.updates_owed
        self.gradient_steps = first.gradient_steps
        # The buffer: every member's rows at once, no more rows than the run can fill.
        capacity = min(self.cfg.buffer_size, configs[0].run.steps)
        self.capacity, self.position, self.size = capacity, first.buffer.position % capacity, first.buffer.size
        self.data = {
            key: torch.zeros(len(agents), capacity, *v.shape[1:], dtype=v.dtype, device=self.device)
            for key, v in first.buffer.data.items()
        }
        for m, agent in enumerate(agents):
            for key, value in self.data.items():
                value[m, : self.size] = agent.buffer.data[key][: self.size]
        self.last_env_steps = 0

    def __len__(self) -> int:
        return len(self.agents)

    def weights(self, network: str) -> list[Tensor]:
        """The stacked weights of one network, in its ``parameters()`` order."""
        return [p for n, p in zip(self.names, self.params, strict=True) if n.startswith(network + ".")]

    def _vmap(self, fn: Callable, *tensors: Any) -> Any:
        """``fn(nets, *tensors)`` for every member, its own weights and its own slice of each tensor."""

        def one(params: list[Tensor], buffers: dict[str, Tensor], *args: Any) -> Any:
            weights = dict(zip(self.names, params, strict=True))
            return functional_call(self.template, (weights, buffers), (fn, *args), tie_weights=False)

        return vmap(one)(self.params, self.buffers, *tensors)

    def _noise(self, *shape: int, uniform: bool = False) -> Tensor:
        """``[M, *shape]`` white noise (or uniform in [0, 1)), each member's from its own generator."""
        draw = torch.rand if uniform else torch.randn
        return torch.stack([draw(shape, generator=g, device=self.device) for g in self.generators])

    # ------------------------------------------------------------------------------------------ acting
    def exploration_action(self, obs: Tensor) -> Tensor:
        """Actions in [-1, 1] ``[M, N, act_dim]`` for collecting data."""
        raise NotImplementedError

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions in [-1, 1] of the learned policies."""
        raise NotImplementedError

    @torch.no_grad()
    def explore(self, obs: Tensor, env_steps: int) -> tuple[Tensor, dict[str, Tensor]]:
        """As ``OffPolicyAgent.explore``: uniform random actions until ``learning_starts``, then the policy's."""
        obs = obs.to(self.device)
        self.last_env_steps = env_steps
        if env_steps < self.learning_starts:
            action = self._noise(obs.shape[1], self.act_dim, uniform=True) * 2 - 1
        else:
            action = self.exploration_action(obs)
        return rescale(action, self.low, self.high), {"obs": obs, "action": action}

    def observe(
        self, record: dict[str, Tensor], reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        n = reward.shape[1]
        rows = (self.position + torch.arange(n, device=self.device)) % self.capacity
        step = dict(record, reward=reward, terminated=terminated, next_obs=next_obs)
        for key, value in self.data.items():
            value[:, rows] = step[key].to(self.device, value.dtype).reshape(value.shape[0], n, *value.shape[2:])
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        if self.last_env_steps + self.num_envs >= max(self.learning_starts, self.cfg.batch_size):
            self.updates_owed += self.cfg.utd * self.num_envs

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool) -> Tensor:
        return rescale(self.policy_action(obs.to(self.device), deterministic), self.low, self.high)

    # ------------------------------------------------------------------------------------------ learning
    def ready(self) -> bool:
        return self.updates_owed >= 1 and self.size >= self.cfg.batch_size

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:
            for name in ("actor", "critic"):
                self.lrs[name] = linear_schedule(self.settings[f"{name}_lr"], 0.0, fraction)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One update of every member's networks from its batch ``[M, B, ...]``; metrics ``[M]`` by name."""
        raise NotImplementedError

    def update(self) -> list[dict[str, float]]:
        """``OffPolicyAgent.update`` for every member at once; each member's metrics."""
        cfg, members = self.cfg, len(self)
        steps = int(self.updates_owed)
        self.updates_owed -= steps
        rows = torch.arange(members, device=self.device)[:, None]
        totals: dict[str, list[Tensor]] = {}
        for _ in range(steps):
            index = torch.stack(
                [
                    torch.randint(0, self.size, (cfg.batch_size,), device=self.device, generator=g)
                    for g in self.generators
                ]
            )
            batch = {key: value[rows, index] for key, value in self.data.items()}  # [M, B, ...]
            for key, value in self.gradient_step(batch).items():
                totals.setdefault(key, []).append(value)
            self.gradient_steps += 1
        means = {key: torch.stack(values).mean(0).tolist() for key, values in totals.items()}
        return [{key: means[key][m] for key in means} for m in range(members)]

    def critic_step(self, target: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``OffPolicyAgent.critic_step`` for every member, towards its Bellman targets ``[M, B]``."""
        losses, q_mean = self._vmap(lambda n, b, t: critic_loss(n.critic, b["obs"], b["action"], t), batch, target)
        self._step("critic", losses, self.weights("critic"))
        return {"critic_loss": losses.detach(), "q_mean": q_mean}

    def _step(self, name: str, losses: Tensor, params: list[Tensor], clip: bool = True) -> None:
        """One step of each member's ``name`` optimiser from the sum of the members' losses (disjoint weights:
        each member's own gradient), clipped per member as ``clip_and_step`` clips one run."""
        grads = [g.contiguous() for g in torch.autograd.grad(losses.sum(), params)]
        if clip and self.cfg.max_grad_norm > 0:
            clip_per_member(grads, self.settings["max_grad_norm"])
        self.adams[name].step(grads, self.lrs[name])

    @torch.no_grad()
    def _polyak(self, target: str, source: str) -> None:
        """target <- (1 - tau) target + tau source per member (one foreach op when the members share tau, as
        :func:`duetrl.algos.offpolicy.polyak`)."""
        targets, sources = self.weights(target), self.weights(source)
        taus = self.settings["tau"]
        if bool((taus == taus[0]).all()):
            polyak(targets, sources, float(taus[0]))
        else:
            for t, s in zip(targets, sources, strict=True):
                t.lerp_(s, taus.to(t.dtype).view((-1,) + (1,) * (t.dim() - 1)))

    # ------------------------------------------------------------------------------------------ members
    def keep(self, index: list[int]) -> None:
        idx = torch.tensor(index, dtype=torch.long)
        with torch.no_grad():
            self.params = [p[idx].detach().requires_grad_(p.requires_grad) for p in self.params]
        for name in self.optimized:
            self.adams[name].params = self.weights(name)
        for adam_ in self.adams.values():
            adam_.keep(idx)
        self.buffers = {k: v[idx] for k, v in self.buffers.items()}
        self.data = {k: v[idx] for k, v in self.data.items()}
        self.settings = {k: v[idx] for k, v in self.settings.items()}
        self.lrs = {k: v[idx] for k, v in self.lrs.items()}
        self.agents = [self.agents[i] for i in index]
        self.configs = [self.configs[i] for i in index]
        self.generators = [self.generators[i] for i in index]

    @torch.no_grad()
    def write_back(self, m: int) -> Any:
        """Member ``m``'s networks, optimisers, counters and (with ``save_buffer``) replay buffer copied into its
        ordinary agent, returned."""
        agent = self.agents[m]
        nets = _Nets(**{name: getattr(agent, name) for name in self.networks})
        state = {name: p[m] for name, p in zip(self.names, self.params, strict=True)}
        state.update({name: b[m] for name, b in self.buffers.items()})
        nets.load_state_dict(state)
        for name, adam_ in self.adams.items():
            optimizer = agent.optimizers[name]
            optimizer.load_state_dict(adam_.member_state(m, optimizer.state_dict(), float(self.lrs[name][m])))
        agent.updates_owed, agent.gradient_steps = self.updates_owed, self.gradient_steps
        if self.cfg.save_buffer:
            agent.buffer.position, agent.buffer.size = self.position, self.size
            for key, value in agent.buffer.data.items():
                value[: self.size] = self.data[key][m, : self.size]
        return agent


class SACPopulation(OffPolicyPopulation):
    """SAC members: squashed Gaussian actors, twin critics and their targets, and each member's temperature."""

    networks = ("actor", "critic", "critic_target")
    settings_keys = ("actor_lr", "critic_lr", "alpha_lr", "gamma", "tau", "max_grad_norm")

    def __init__(self, agents: list[SAC], configs: list[Config], generators: list[torch.Generator]):
        super().__init__(agents, configs, generators)
        self.log_alpha = torch.stack([a.log_alpha.detach() for a in agents]).requires_grad_(True)
        alpha_states = [a.optimizers["alpha"].state_dict() for a in agents]
        self.adams["alpha"] = StackedAdam([self.log_alpha], alpha_states, betas=(0.9, 0.999), eps=1e-8)
        self.initial_entropy = torch.tensor([a.initial_target_entropy for a in agents], dtype=torch.float64)
        self.target_entropy = torch.tensor([a.target_entropy for a in agents], dtype=torch.float64)

    def exploration_action(self, obs: Tensor) -> Tensor:
        noise = self._noise(obs.shape[1], self.act_dim)
        return self._vmap(lambda n, o, z: squashed_sample(n.actor, o, noise=z)[0], obs, noise)

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            return self._vmap(lambda n, o: torch.tanh(n.actor(o)[0]), obs)
        return self.exploration_action(obs)

    def set_progress(self, fraction: float) -> None:
        super().set_progress(fraction)
        if self.cfg.target_entropy_final is not None:
            self.target_entropy = linear_schedule(self.initial_entropy, self.cfg.target_entropy_final, fraction)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`duetrl.algos.sac.SAC.gradient_step`, drawing its noise in the same order from each member's
        generator: the critic towards the soft target, then (delayed) the actor and the temperature, then Polyak."""
        cfg = self.cfg
        gamma = self.settings["gamma"].float()
        with torch.no_grad():
            noise = self._noise(cfg.batch_size, self.act_dim)

            def target(n: _Nets, b: dict[str, Tensor], z: Tensor, log_alpha: Tensor, g: Tensor) -> Tensor:
                next_value = soft_next_value(n.actor, n.critic_target, b["next_obs"], log_alpha.exp(), noise=z)
                return td_targets(b["reward"], next_value, b["terminated"], g)

            targets = self._vmap(target, batch, noise, self.log_alpha.detach(), gamma)
        metrics = self.critic_step(targets, batch)
        if self.gradient_steps % cfg.policy_delay == 0:
            alpha = self.log_alpha.exp().detach()
            noise = self._noise(cfg.batch_size, self.act_dim)
            actor_losses, log_prob = self._vmap(
                lambda n, o, z, a: sac_actor_loss(n.actor, n.critic, a, o, z), batch["obs"], noise, alpha
            )
            self._step("actor", actor_losses, self.weights("actor"))
            if cfg.autotune_alpha:
                alpha_losses = vmap(temperature_loss)(self.log_alpha, log_prob, self.target_entropy.float())
                self._step("alpha", alpha_losses, [self.log_alpha], clip=False)
            metrics.update(actor_loss=actor_losses.detach(), entropy=-log_prob.detach().mean(1), alpha=alpha)
        self._polyak("critic_target", "critic")
        return metrics

    def keep(self, index: list[int]) -> None:
        super().keep(index)
        idx = torch.tensor(index, dtype=torch.long)
        self.log_alpha = self.log_alpha[idx].detach().requires_grad_(True)
        self.adams["alpha"].params = [self.log_alpha]
        self.initial_entropy, self.target_entropy = self.initial_entropy[idx], self.target_entropy[idx]

    @torch.no_grad()
    def write_back(self, m: int) -> SAC:
        agent = super().write_back(m)
        agent.log_alpha.copy_(self.log_alpha[m])
        agent.target_entropy = float(self.target_entropy[m])
        return agent


class TD3Population(OffPolicyPopulation):
    """TD3 (and DDPG, TD3 with one critic, no delay, no smoothing) members: deterministic actors, critics and
    both target networks; Gaussian exploration noise from each member's generator."""

    networks = ("actor", "critic", "actor_target", "critic_target")

    def exploration_action(self, obs: Tensor) -> Tensor:
        noise = self._noise(obs.shape[1], self.act_dim) * self.cfg.exploration_noise
        return (self._vmap(lambda n, o: n.actor(o), obs) + noise).clamp(-1.0, 1.0)

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        action = self._vmap(lambda n, o: n.actor(o), obs)
        if deterministic:
            return action
        return (action + self._noise(*action.shape[1:]) * self.cfg.exploration_noise).clamp(-1.0, 1.0)

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`duetrl.algos.td3.TD3.gradient_step`: the critic towards the clipped double-Q target at the
        smoothed target action, then (delayed) the actor and both targets' Polyak averages."""
        cfg = self.cfg
        gamma = self.settings["gamma"].float()
        with torch.no_grad():
            next_action = self._vmap(lambda n, o: n.actor_target(o), batch["next_obs"])
            if cfg.target_noise > 0:
                noise = self._noise(*next_action.shape[1:])
                next_action = smoothed_target_action(next_action, noise, cfg.target_noise, cfg.target_noise_clip)

            def target(n: _Nets, b: dict[str, Tensor], a: Tensor, g: Tensor) -> Tensor:
                next_value = n.critic_target(b["next_obs"], a).min(0).values  # clipped double-Q, as TD3.next_value
                return td_targets(b["reward"], next_value, b["terminated"], g)

            targets = self._vmap(target, batch, next_action, gamma)
        metrics = self.critic_step(targets, batch)
        if self.gradient_steps % cfg.policy_delay == 0:
            losses, actor_losses = self._vmap(
                lambda n, o: td3_actor_loss(n.actor, n.critic, o, cfg.preact_penalty), batch["obs"]
            )
            self._step("actor", losses, self.weights("actor"))
            metrics["actor_loss"] = actor_losses
            self._polyak("actor_target", "actor")
            self._polyak("critic_target", "critic")
        return metrics
