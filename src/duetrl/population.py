"""Populations: many seeds and numeric hyperparameters of one algorithm trained in ONE process (issue 21).

A member is what a solo run would be: its own weights, optimiser state, normalisation statistics, env batch and
RNG stream (a ``torch.Generator`` that continues the stream its solo run would draw from). Here the members'
weights and optimiser state are stacked along a leading member axis, ``[member, ...]``, and every forward pass
and loss runs once for all of them through ``torch.func.vmap`` over ``functional_call`` of the ordinary modules,
so the algorithm's math is written once (PPO's is :func:`duetrl.algos.ppo.ppo_loss`; the off-policy losses here
mirror sac.py and td3.py, with the noise passed in, and tests hold them to the solo runs). Members never mix: their
parameters are disjoint, so the gradient of the summed per-member losses is each member's own gradient; gradient
clipping, Adam, advantages and their normalisation, and the running statistics are per member.

Each member writes an ordinary run directory (config.yaml, metrics.csv, TensorBoard events, checkpoints in the
ordinary layout), so ``duetrl eval``, ``plot`` and ``--resume`` of one member work on it unchanged; the
population's own directory holds ``population.json`` (what was asked, for ``--resume`` of the whole population)
and ``summary.json`` (across members: mean, median and IQM with 95% CIs, fraction reaching the target, time to it).

This is a driver beside the ordinary loop (``loop.Trainer``), not the same code path (the loop's one-agent protocol
would need a member axis in every algorithm, which three branches were changing at once): a population of one is
an ordinary run up to the float rounding of batched matmuls (tests/test_population.py). It trains ``ppo``, ``sac``,
``td3`` and ``ddpg`` on the CPU; each member's envs are an ordinary env batch (torch-native or Gymnasium), stepped
one member after another (a Python loop of M env steps per round: small next to the update, measured).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from duetrl import checkpoint as ckpt
from duetrl.algos.base import linear_schedule
from duetrl.algos.offpolicy import polyak
from duetrl.algos.ppo import PPO, _explained_variance, ppo_loss
from duetrl.algos.sac import SAC, squashed_sample
from duetrl.build import Checkpoint, build_agent, resolve_device, restore_agent, space_signature
from duetrl.config import Config
from duetrl.envs.base import BatchEnv
from duetrl.envs.make import env_factory
from duetrl.errors import UserError, say
from duetrl.evaluate import EVAL_SEED_BASE, EvalResult, step_cap
from duetrl.logs import Logger, Progress, make_logger, read_metrics
from duetrl.loop import (
    MetricWindow,
    Schedule,
    make_env,
    prepare_run_dir,
    saved_backend,
    seed_everything,
    stop_on_signals,
)
from duetrl.normalize import pool
from duetrl.optim import has_fused_adam
from duetrl.policy import rescale
from duetrl.returns import gae, td_targets
from duetrl.stats import bootstrap_ci, summarize, summarize_times

# Settings that may differ between the members of a ppo population: numeric, and no change of shape or branch.
PER_MEMBER = {
    "ppo": ("seed", "lr", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef", "max_grad_norm"),
    "sac": ("seed", "actor_lr", "critic_lr", "alpha_lr", "gamma", "tau", "alpha", "target_entropy", "max_grad_norm"),
    "td3": ("seed", "actor_lr", "critic_lr", "gamma", "tau", "max_grad_norm"),
    "ddpg": ("seed", "actor_lr", "critic_lr", "gamma", "tau", "max_grad_norm"),
}
POPULATION_FILE = "population.json"


# ---------------------------------------------------------------------------------------------- planning


def plan(configs: list[Config]) -> None:
    """Check that ``configs`` can train as one population: one algorithm this driver trains, and members that
    differ only in per-member settings; else a UserError saying to use ``duetrl sweep``."""
    algo = configs[0].run.algo
    if algo not in PER_MEMBER:  # ac and a2c: not yet
        raise UserError(
            f"a population (--seeds or a --set grid) trains {', '.join(PER_MEMBER)} for now, not {algo}; "
            f"use duetrl sweep for {algo}"
        )
    allowed = PER_MEMBER[algo]
    first = configs[0].to_dict()
    for cfg in configs[1:]:
        values = cfg.to_dict()
        differ = [key for key in values if values[key] != first[key] and key not in allowed]
        if differ:
            raise UserError(
                f"{differ[0]} differs between members, and a population varies only settings that keep shapes and "
                f"branches ({', '.join(allowed)}); use duetrl sweep to try several {differ[0]} values"
            )
    grad_clipped = {cfg.algo.max_grad_norm > 0 for cfg in configs}
    if len(grad_clipped) > 1:
        raise UserError("max_grad_norm is 0 (no clipping) for some members and not others; use duetrl sweep")
    shared = configs[0].algo
    refusals = {
        "ppo": [
            (getattr(shared, "recompute_advantages", False), "recompute_advantages is not yet done per member"),
            (getattr(shared, "target_kl", 0) > 0, "target_kl stops a member's epochs early, not yet per member"),
        ],
        "sac": [
            (getattr(shared, "noise_beta", 0) > 0, "coloured exploration noise (noise_beta > 0) is not yet per member"),
            (getattr(shared, "critic_dropout", 0) > 0, "critic_dropout draws random masks, not yet per member"),
            (
                len({getattr(c.algo, "target_entropy", None) is None for c in configs}) > 1,
                "target_entropy is None for some members",
            ),
        ],
        "td3": [
            (getattr(shared, "noise_type", "") != "gaussian", "OU or coloured exploration noise is not yet per member"),
            (getattr(shared, "critic_dropout", 0) > 0, "critic_dropout draws random masks, not yet per member"),
        ],
    }[algo if algo != "ddpg" else "td3"]
    for refused, why in refusals:
        if refused:
            raise UserError(f"{why} in a population; change it or use duetrl sweep")
    seeds_by_label: dict[str, list[int]] = {}
    for cfg in configs:
        seeds_by_label.setdefault(member_label(cfg, configs), []).append(cfg.run.seed)
    for seeds in seeds_by_label.values():
        if len(set(seeds)) != len(seeds):
            raise UserError(f"seed {seeds[0]} appears twice in --seeds: give each seed once")


def member_label(cfg: Config, configs: list[Config]) -> str:
    """The member's settings where members differ (seeds aside), e.g. ``gamma=0.95,lr=0.001``, named as a sweep
    names its trial directories; '' if only seeds differ."""
    first = configs[0].to_dict()
    varied = [k for k in PER_MEMBER[cfg.run.algo][1:] if any(c.to_dict()[k] != first[k] for c in configs)]
    values = cfg.to_dict()
    text = ",".join(f"{k}={values[k]}" for k in sorted(varied))
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in text)


def member_dir(root: Path, cfg: Config, configs: list[Config]) -> Path:
    """``root/seed_<s>`` for a population of seeds; ``root/trials/<settings>/seed_<s>`` for a grid, a sweep
    directory's layout, so that the sweep summary (:func:`duetrl.sweeps.summarize`) and ``duetrl plot root`` read
    it as they read a sweep."""
    label = member_label(cfg, configs)
    return root / "trials" / label / f"seed_{cfg.run.seed}" if label else root / f"seed_{cfg.run.seed}"


def grid_configs(base: dict[str, Any], seeds: list[int], grid: dict[str, list[Any]], resolve: Callable) -> list[Config]:
    """The grid's configurations times the seeds, resolved by ``resolve(overrides)``: one config per member."""
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        for seed in seeds:
            out.append(resolve({**base, **dict(zip(keys, combo, strict=True)), "seed": seed}))
    return out


def available_memory(device: torch.device) -> int:
    """Bytes free for a population on ``device``: CUDA's free memory, else the OS's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def memory_estimate(cfg: Config, members: int, obs_dim: int, act_dim: int) -> int:
    """Bytes a ppo population needs, roughly: per member its weights four times (weights, gradients, Adam's two
    moments) and its rollout about six times over (stacked, flattened, shuffled, minibatch activations)."""
    algo, run = cfg.algo, cfg.run
    if run.algo in (
        "sac",
        "td3",
        "ddpg",
    ):  # the replay buffer dominates: its rows, allocated up front, and the small networks
        rows = min(algo.buffer_size, run.steps * run.num_envs)
        widths = [obs_dim + act_dim, *algo.critic_hidden]
        params = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False)) * algo.n_critics * 2
        return members * 4 * (rows * (2 * obs_dim + act_dim + 2) + 4 * params * 2)
    widths = [obs_dim, *algo.hidden]
    layers = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    params = 2 * layers + widths[-1] * (act_dim + 1) + 2 * act_dim  # actor and critic trunks, their heads
    samples = algo.num_steps * run.num_envs
    rollout = samples * (2 * obs_dim + 2 * act_dim + 8) * 6
    activations = min(algo.minibatch_size, samples) * sum(algo.hidden) * 2 * 4
    return members * 4 * (4 * params + rollout + activations)


def check_memory(cfg: Config, members: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
    """Refuse, before anything is built, a population that would not fit in memory: with the estimate."""
    need, free = memory_estimate(cfg, members, obs_dim, act_dim), available_memory(device)
    if need > 0.8 * free:
        raise UserError(
            f"a population of {members} members needs about {need / 2**30:.1f} GiB ({need / members / 2**20:.1f} "
            f"MiB each), more than the {0.8 * free / 2**30:.1f} GiB that can be spared here (80% of what is free); "
            "train fewer members at once"
        )


# ---------------------------------------------------------------------------------------------- stacked pieces


class _Nets(nn.Module):
    """The modules a population stacks, so that ``functional_call`` of one member's weights can call any function
    of them: ``nets(fn, *args)`` is ``fn(nets, *args)``."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, fn: Callable, *args: Any) -> Any:
        return fn(self, *args)


class StackedNorm:
    """Running mean and variance per member (float64, pooled over each member's own batches), as
    :class:`duetrl.normalize.RunningNorm` keeps them for one run: ``mean``, ``var`` ``[M, *shape]``; ``count`` ``[M]``
    (shaped to broadcast)."""

    def __init__(self, norms: list[nn.Module]):
        self.mean = torch.stack([n.mean for n in norms])
        self.var = torch.stack([n.var for n in norms])
        self.count = torch.stack([n.count for n in norms]).reshape(-1, *[1] * (self.mean.dim() - 1))
        self.clip, self.eps = norms[0].clip, norms[0].eps
        self.refresh()

    def refresh(self) -> None:
        self.shift = self.mean.float()
        self.scale = (self.var + self.eps).sqrt().float()

    def update(self, x: Tensor) -> None:
        """Fold ``[M, B, *shape]`` into each member's statistics."""
        x = x.reshape(x.shape[0], -1, *self.mean.shape[1:]).double()
        pool(self.mean, self.var, self.count, x.mean(1), x.var(1, unbiased=False), x.shape[1])
        self.refresh()

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``[M, B, *shape]`` normalised by each member's statistics."""
        shape = (x.shape[0],) + (1,) * (x.dim() - self.mean.dim()) + tuple(self.mean.shape[1:])
        return ((x - self.shift.reshape(shape)) / self.scale.reshape(shape)).clamp(-self.clip, self.clip)

    def keep(self, index: Tensor) -> None:
        self.mean, self.var, self.count = self.mean[index], self.var[index], self.count[index]
        self.refresh()

    def write(self, m: int, norm: nn.Module) -> None:
        """Member ``m``'s statistics into an ordinary RunningNorm."""
        norm.mean.copy_(self.mean[m])
        norm.var.copy_(self.var[m])
        norm.count.copy_(self.count[m].reshape(()))
        norm.refresh()


class StackedAdam:
    """Adam over stacked weights ``[M, ...]``, each member with its own learning rate, moments and step count
    (Adam is elementwise, so one tensor operation serves every member). Same arithmetic as ``torch.optim.Adam``
    (no weight decay, no amsgrad)."""

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], betas: tuple[float, float], eps: float):
        """``states``: each member's optimiser state_dict in ``torch.optim.Adam``'s layout (over the same params)."""
        self.params, self.betas, self.eps = params, betas, eps
        members = len(states)

        def saved(i: int, key: str, like: Tensor) -> Tensor:
            state = [s["state"].get(i, s["state"].get(str(i))) for s in states]
            if key == "step":
                return torch.tensor([float(st["step"]) if st else 0.0 for st in state], dtype=torch.float32)
            return torch.stack([st[key].to(like) if st else torch.zeros_like(like[0]) for st in state])

        self.exp_avgs = [saved(i, "exp_avg", p).detach().clone() for i, p in enumerate(params)]
        self.exp_avg_sqs = [saved(i, "exp_avg_sq", p).detach().clone() for i, p in enumerate(params)]
        self.step_count = saved(0, "step", params[0]) if params else torch.zeros(members)

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: Tensor) -> None:
        """One step of every member with its learning rate ``lr[m]``: PyTorch's fused Adam kernel (the one
        :class:`duetrl.optim.FusedAdam` calls) on the stacked tensors, once per distinct learning rate (on the
        members' views when rates differ), so each member's arithmetic is a solo run's."""
        self.step_count += 1  # every member steps at every update, so one count serves all
        rates = lr.tolist()
        groups: dict[float, list[int]] = {}
        for m, rate in enumerate(rates):
            groups.setdefault(rate, []).append(m)
        for rate, members in groups.items():
            if len(groups) == 1:
                tensors = [self.params, grads, self.exp_avgs, self.exp_avg_sqs]
            else:
                tensors = [
                    [t[m] for m in members for t in ts] for ts in (self.params, grads, self.exp_avgs, self.exp_avg_sqs)
                ]
            steps = [self.step_count[0]] * len(tensors[0])
            fused_adam(*tensors, steps, lr=rate, betas=self.betas, eps=self.eps)

    def keep(self, index: Tensor) -> None:
        self.exp_avgs = [t[index] for t in self.exp_avgs]
        self.exp_avg_sqs = [t[index] for t in self.exp_avg_sqs]
        self.step_count = self.step_count[index]

    def member_state(self, m: int, template: dict[str, Any], lr: float) -> dict[str, Any]:
        """Member ``m``'s state in the layout of ``template`` (its ordinary optimiser's state_dict)."""
        group = dict(template["param_groups"][0], lr=lr)
        step = float(self.step_count[m])
        state = (
            {
                i: {
                    "step": torch.tensor(step),
                    "exp_avg": self.exp_avgs[i][m].clone(),
                    "exp_avg_sq": self.exp_avg_sqs[i][m].clone(),
                }
                for i in range(len(self.params))
            }
            if step > 0
            else {}
        )
        return {"state": state, "param_groups": [group]}


# ---------------------------------------------------------------------------------------------- ppo members


class PPOPopulation:
    """``M`` PPO agents as one: stacked weights, a ``[member, time, env]`` rollout, one vmapped update.

    Built from ordinary :class:`~duetrl.algos.ppo.PPO` agents (new or restored from checkpoints) and written back
    into them (:meth:`write_back`) for checkpoints and evaluation, so a member's saved state is an ordinary run's."""

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
        self.adam = StackedAdam(
            self.params, [a.optimizers["ppo"].state_dict() for a in agents], betas=(0.9, 0.999), eps=1e-5
        )
        self.obs_norm = StackedNorm([a.obs_norm for a in agents])
        self.reward_norm = StackedNorm([a.reward_scaler.stats for a in agents])
        self.discounted = torch.stack([a.reward_scaler.returns for a in agents])  # [M, N] float64
        self.settings = {
            key: torch.tensor([getattr(c.algo, key) for c in configs], dtype=torch.float64)
            for key in ("lr", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef", "max_grad_norm")
        }
        self.lr = torch.tensor([a.optimizers["ppo"].param_groups[0]["lr"] for a in agents], dtype=torch.float64)
        self.rollout: list[dict[str, Tensor]] = []

    def __len__(self) -> int:
        return len(self.agents)

    # ------------------------------------------------------------------------------------------ vmapped calls
    def _vmap(self, fn: Callable, *tensors: Any) -> Any:
        """``fn(nets, *tensors)`` for every member, its own weights and its own slice of each tensor."""

        def one(params: list[Tensor], buffers: dict[str, Tensor], *args: Any) -> Any:
            weights = dict(zip(self.names, params, strict=True))
            return functional_call(self.template, (weights, buffers), (fn, *args), tie_weights=False)

        return vmap(one)(self.params, self.buffers, *tensors)

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
            self.lr = linear_schedule(self.settings["lr"], 0.0, fraction)  # float64, as a solo run's Python float

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
                losses, terms, std = self._vmap(member_loss, mb, hyper)
                # contiguous: the fused kernel reads memory in order, and batched matmuls leave transposed gradients
                grads = [g.contiguous() for g in torch.autograd.grad(losses.sum(), self.params)]
                if cfg.max_grad_norm > 0:
                    clip_per_member(grads, self.settings["max_grad_norm"])
                self.adam.step(grads, self.lr)
                stats.append({k: v.detach() for k, v in terms.items()})
                stds.append(std.detach())
        means = {k: torch.stack([s[k] for s in stats]).mean(0).tolist() for k in stats[0]}
        std_mean = stds[-1].tolist()  # of the last minibatch, as the solo update reports it
        out = []
        for m in range(members):
            metrics = {k: means[k][m] for k in means}
            metrics["actor_loss"], metrics["critic_loss"] = metrics.pop("policy_loss"), metrics.pop("value_loss")
            metrics["explained_variance"] = _explained_variance(flat["values"][m], flat["returns"][m])
            metrics["lr"] = float(self.lr[m])
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
        self.adam.params = self.params
        self.buffers = {k: v[idx] for k, v in self.buffers.items()}
        self.adam.keep(idx)
        self.obs_norm.keep(idx)
        self.reward_norm.keep(idx)
        self.discounted = self.discounted[idx]
        self.settings = {k: v[idx] for k, v in self.settings.items()}
        self.lr = self.lr[idx]
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
        optimizer = agent.optimizers["ppo"]
        optimizer.load_state_dict(self.adam.member_state(m, optimizer.state_dict(), float(self.lr[m])))
        return agent


def fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """Adam on lists of tensors whose step counts were already incremented: PyTorch's fused kernel where it runs,
    else ``torch.optim.adam``'s functional form (same update to float rounding)."""
    if params and has_fused_adam(params[0].device.type):
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=lr,
            beta1=betas[0],
            beta2=betas[1],
            weight_decay=0.0,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
        return
    beta1, beta2 = betas
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1, bias2_sqrt = 1 - beta1 ** float(step), (1 - beta2 ** float(step)) ** 0.5
        p.addcdiv_(m, (v.sqrt() / bias2_sqrt).add_(eps), value=-lr / bias1)


def clip_per_member(grads: list[Tensor], max_norm: Tensor) -> None:
    """Each member's gradients ``[M, ...]`` scaled to a total 2-norm of at most ``max_norm[m]``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one run (the same 1e-6 in the denominator)."""
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    scale = (max_norm.to(norms) / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view((-1,) + (1,) * (g.dim() - 1)))


# ---------------------------------------------------------------------------------------------- off-policy members


def bellman_target(
    critic_target: nn.Module,
    batch: dict[str, Tensor],
    next_action: Tensor,
    gamma: Tensor,
    entropy_bonus: Tensor | float = 0.0,
) -> Tensor:
    """r + gamma * (1 - terminated) * (min_i Q_targ_i(s', a') + bonus): ``OffPolicyAgent.critic_step``'s target
    with the next value of SAC (bonus -alpha log pi(a'|s')) or TD3 (no bonus) at a given next action."""
    next_value = critic_target(batch["next_obs"], next_action).min(0).values + entropy_bonus
    return td_targets(batch["reward"], next_value, batch["terminated"], gamma)


def critic_loss(critic: nn.Module, batch: dict[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
    """Every Q critic's squared error to the target, as ``OffPolicyAgent.critic_step``: (loss, mean Q)."""
    q = critic(batch["obs"], batch["action"])  # [E, B]
    return 0.5 * (q - target).pow(2).mean(1).sum(), q.detach().mean()


def sac_actor_loss(
    actor: nn.Module, critic: nn.Module, alpha: Tensor, obs: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """The actor's loss alpha log pi(a|s) - min_i Q_i(s, a) of its reparameterised actions, as
    :meth:`duetrl.algos.sac.SAC.actor_step`; also log pi(a|s) ``[B]`` for the temperature."""
    action, log_prob = squashed_sample(actor, obs, noise=noise)
    q_pi = critic(obs, action).min(0).values
    return (alpha * log_prob - q_pi).mean(), log_prob


def td3_actor_loss(actor: nn.Module, critic: nn.Module, obs: Tensor, preact_penalty: float) -> tuple[Tensor, Tensor]:
    """(the loss stepped, the reported actor loss -Q_1(s, mu(s))) as :meth:`duetrl.algos.td3.TD3.gradient_step`."""
    preact = actor.pre_tanh(obs)
    actor_loss = -critic(obs, torch.tanh(preact))[0].mean()
    loss = actor_loss + preact_penalty * preact.pow(2).mean() if preact_penalty > 0 else actor_loss
    return loss, actor_loss.detach()


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
        losses, q_mean = self._vmap(lambda n, b, t: critic_loss(n.critic, b, t), batch, target)
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
                next_action, next_log_prob = squashed_sample(n.actor, b["next_obs"], noise=z)
                return bellman_target(n.critic_target, b, next_action, g, -log_alpha.exp() * next_log_prob)

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
                entropy_gap = log_prob.detach() + self.target_entropy.float()[:, None]
                self._step("alpha", -(self.log_alpha[:, None] * entropy_gap).mean(1), [self.log_alpha], clip=False)
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
                smoothing = (self._noise(*next_action.shape[1:]) * cfg.target_noise).clamp(
                    -cfg.target_noise_clip, cfg.target_noise_clip
                )
                next_action = (next_action + smoothing).clamp(-1.0, 1.0)
            targets = self._vmap(lambda n, b, a, g: bellman_target(n.critic_target, b, a, g), batch, next_action, gamma)
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


POPULATIONS = {"ppo": PPOPopulation, "sac": SACPopulation, "td3": TD3Population, "ddpg": TD3Population}


# ---------------------------------------------------------------------------------------------- the driver


@dataclass
class Member:
    """One member's run: its config, directory, envs, logs and how it ended."""

    cfg: Config
    run_dir: Path
    env: BatchEnv
    generator: torch.Generator
    logger: Logger | None = None
    window: MetricWindow = field(default_factory=MetricWindow)
    episodes: int = 0
    updates: int = 0
    best_eval: float = -math.inf
    elapsed_before: float = 0.0
    stopped: str | None = None  # "target", "failed: ...", "interrupted" or None
    final_eval: EvalResult | None = None
    obs: Tensor | None = None  # the envs' observations when the population was built


@dataclass
class PopulationResult:
    """What a population run leaves: its directory, each member's run directory and final evaluation, and the
    summary across members (see :func:`summarize_members`)."""

    run_dir: Path
    env_steps: int
    wall_time_s: float
    members: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    interrupted: bool = False


class PopulationTrainer:
    """Trains a population: the members' envs stepped one round at a time, one vmapped update for all, each
    member's own logs, evaluations and checkpoints; members that reach the target or fail leave the population."""

    def __init__(
        self,
        configs: list[Config],
        root: Path,
        quiet: bool = False,
        resume: list[Checkpoint | None] | None = None,
        dirs: list[Path] | None = None,
        sinks: list[Any] | None = None,
    ):
        """A new population of ``configs`` (one per member), or with ``resume`` the members those checkpoints
        saved, in ``dirs`` (default: :func:`member_dir`). ``sinks``: objects with ``write(row)``, ``close()``,
        given every member's metrics rows."""
        plan(configs)
        self.configs, self.root, self.quiet = configs, Path(root), quiet
        run = configs[0].run
        torch.set_num_threads(run.torch_threads)
        self.device = resolve_device(run.device)
        if self.device.type != "cpu":  # each member's RNG stream continues its solo run's CPU generator
            raise UserError(
                f"a population trains on the CPU for now, not {self.device} (device=auto picked it); "
                "set device=cpu, or train the seeds as separate runs"
            )
        resume = resume or [None] * len(configs)
        dirs = dirs or [member_dir(self.root, c, configs) for c in configs]
        self.members: list[Member] = []
        agents = []
        self.env_steps = 0
        with ExitStack() as undo:
            for cfg, run_dir, saved in zip(configs, dirs, resume, strict=True):
                seed_everything(cfg.run.seed)
                env = make_env(cfg, self.device, None, None if saved is None else saved_backend(saved, cfg))
                undo.callback(env.close)
                spaces = env.single_observation_space, env.single_action_space
                if not self.members:
                    obs_dim = int(np.prod(spaces[0].shape))
                    act_dim = int(getattr(spaces[1], "n", None) or np.prod(spaces[1].shape))
                    check_memory(cfg, len(configs), obs_dim, act_dim, self.device)
                agent = (
                    build_agent(cfg, *spaces, self.device)
                    if saved is None
                    else restore_agent(saved, cfg, *spaces, self.device)
                )
                generator = torch.Generator(device="cpu")
                generator.set_state(torch.get_rng_state() if saved is None else saved.state["rng"]["torch"])
                member = Member(cfg, Path(run_dir), env, generator)
                obs = None
                if saved is not None:
                    obs = self._restore(member, saved)
                if obs is None:
                    obs = env.reset(seed=cfg.run.seed + self.env_steps)[0]
                member.obs = obs
                self.members.append(member)
                agents.append(agent)
            for member, saved in zip(self.members, resume, strict=True):
                prepare_run_dir(member.run_dir, saved is not None)
            self.root.mkdir(parents=True, exist_ok=True)
            for member, saved in zip(self.members, resume, strict=True):
                member.cfg.save(member.run_dir / "config.yaml")
                resume_at = None if saved is None else self.env_steps
                member.logger = make_logger(
                    member.run_dir, member.cfg.to_dict(), run.wandb, run.wandb_project, resume_at
                )
                member.logger.sinks += list(sinks or [])
            undo.pop_all()
        self.population = POPULATIONS[run.algo](agents, configs, [m.generator for m in self.members])
        self._agents_at_start = list(agents)
        self.previous: list[dict[str, Any]] = []  # results of members that finished in an earlier session
        record = {
            "algo": run.algo,
            "env_id": run.env_id,
            "members": [
                {"run_dir": str(m.run_dir.relative_to(self.root)), "seed": m.cfg.run.seed, "label": self._label(m)}
                for m in self.members
            ],
        }
        if not (self.root / POPULATION_FILE).exists():
            (self.root / POPULATION_FILE).write_text(json.dumps(record, indent=2))
        self.obs = torch.stack([m.obs for m in self.members])
        self.start = time.perf_counter()

    def _restore(self, member: Member, saved: Checkpoint) -> Tensor | None:
        counters = saved.state["counters"]
        self.env_steps = int(counters["env_steps"])
        member.updates, member.episodes = int(counters["updates"]), int(counters["episodes"])
        member.elapsed_before, member.best_eval = float(counters["wall_time_s"]), float(counters["best_eval"])
        if saved.state.get("env") is not None and saved.state.get("obs") is not None:
            member.env.set_state(saved.state["env"])
            return saved.state["obs"].to(member.env.device)
        return None

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> PopulationResult:
        run = self.configs[0].run
        pop = self.population
        members = self.members
        n = run.num_envs
        print(
            f"duetrl: training a population of {len(members)} {run.algo} members on {run.env_id} ({n} envs each, "
            f"{members[0].env.backend} backend) in one process -> {self.root}",
            file=sys.stderr,
        )
        schedule = Schedule(run, self.env_steps)
        progress = Progress(run.steps, initial=self.env_steps, quiet=self.quiet)
        finished: list[Member] = []
        interrupted = False
        with closing(progress), stop_on_signals() as signals:
            try:
                while self.env_steps < run.steps and members:
                    action, record = pop.explore(self.obs, self.env_steps)
                    outcomes = [m.env.step(a) for m, a in zip(members, action, strict=True)]
                    self.obs = torch.stack([o[0] for o in outcomes])
                    reward, terminated, truncated = (torch.stack([o[i] for o in outcomes]) for i in (1, 2, 3))
                    final_obs = torch.stack([o[4]["final_obs"] for o in outcomes])
                    pop.observe(record, reward, terminated, truncated, final_obs)
                    self.env_steps += n
                    for member, (*_, info) in zip(members, outcomes, strict=True):
                        if "episode_return" in info:
                            member.episodes += len(info["episode_return"])
                            member.window.add_episodes(info["episode_return"], info["episode_length"])
                    logged = False
                    if pop.ready():
                        pop.set_progress(self.env_steps / run.steps)
                        metrics = pop.update()
                        logged = schedule.row_due(self.env_steps)
                        for member, row in zip(members, metrics, strict=True):
                            member.updates += 1
                            member.window.add_metrics(row)
                            bad = [key for key, value in row.items() if not math.isfinite(value)]
                            if bad and member.stopped is None:
                                member.stopped = (
                                    f"failed: {bad[0]} became {row[bad[0]]} at env step {self.env_steps}; its last "
                                    "good checkpoint is kept"
                                )
                            elif logged:
                                self._log(member, member.window.flush())
                    progress.advance(n)
                    if schedule.eval_due(self.env_steps):
                        for i, result in enumerate(self._evaluate_all(signals)):
                            if result is None:
                                raise KeyboardInterrupt
                            if run.target_return is not None and result.mean >= run.target_return:
                                members[i].stopped = members[i].stopped or "target"
                                members[i].final_eval = result
                    if logged and schedule.checkpoint_due(self.env_steps):
                        self._save_all()
                    if any(m.stopped for m in members):
                        members = self._leave(members, finished)
                    if signals["stop"]:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
                for member in members:
                    member.stopped = "interrupted"
            for member in members:
                if member.window:
                    self._log(member, member.window.flush())
            if members:
                self._save_all()
            if not interrupted and members:
                for i, result in enumerate(self._evaluate_all(signals)):
                    if result is None:
                        interrupted = True
                        break
                    members[i].final_eval = result
                if not interrupted:
                    self._save_all()  # the same step, now knowing its best evaluation
            for member in members:
                self._finish(member)
            finished += members
        results = self.previous + [self._result(m) for m in sorted(finished, key=lambda m: self.members.index(m))]
        summary = summarize_members(results, run.target_return)
        (self.root / "summary.json").write_text(json.dumps(summary, indent=2))
        return PopulationResult(self.root, self.env_steps, self._wall_time(), results, summary, interrupted)

    # ------------------------------------------------------------------------------------------ pieces
    def _wall_time(self, member: Member | None = None) -> float:
        return (member.elapsed_before if member else 0.0) + time.perf_counter() - self.start

    def _label(self, member: Member) -> str:
        """The member's hyperparameter setting: its directory's parent under the population's, '' for seeds only."""
        parent = member.run_dir.parent
        return "" if parent == self.root else parent.name

    def _log(self, member: Member, fields: dict[str, float]) -> None:
        where = {"env_steps": self.env_steps, "wall_time_s": round(self._wall_time(member), 3)}
        member.logger.write({**where, "updates": member.updates, "episodes": member.episodes, **fields})

    def _leave(self, members: list[Member], finished: list[Member]) -> list[Member]:
        """Members that stopped leave the population: a target reached keeps its final checkpoint; a failure
        keeps the last good one."""
        stay = [i for i, m in enumerate(members) if not m.stopped]
        for i, member in enumerate(members):
            if member.stopped == "target":
                if member.window:
                    self._log(member, member.window.flush())
                self._save(member, i)
            elif member.stopped:
                say("warning", f"member {member.run_dir.relative_to(self.root)} stopped: {member.stopped[8:]}")
            if member.stopped:
                self._finish(member)
                finished.append(member)
        self.population.keep(stay)
        self.obs = self.obs[stay]
        return [members[i] for i in stay]

    def _finish(self, member: Member) -> None:
        member.logger.close()
        member.env.close()
        if member.stopped != "interrupted":
            result = {
                "stopped": member.stopped,
                "final_eval": member.final_eval.to_dict() if member.final_eval else None,
            }
            (member.run_dir / "result.json").write_text(json.dumps(result))

    def _evaluate_all(self, signals: dict[str, bool]) -> list[EvalResult | None]:
        """Every member on the same held-out episodes of Gymnasium's env, all in one vector env; logged, and
        kept as each member's best.safetensors when best."""
        run = self.configs[0].run
        members = self._active()
        returns = evaluate_members(self.population, run, stop=lambda: signals["stop"])
        if returns is None:
            return [None] * len(members)
        results = []
        for i, (member, result) in enumerate(zip(members, returns, strict=True)):
            result.deterministic = run.eval_deterministic
            where = {"env_steps": self.env_steps, "wall_time_s": round(self._wall_time(member), 3)}
            member.logger.write({**where, "eval_return_mean": result.mean, "eval_return_std": result.std})
            if result.mean > member.best_eval:
                member.best_eval = result.mean
                ckpt.save(ckpt.checkpoint_dir(member.run_dir) / "best.safetensors", self._state_dict(member, i))
            results.append(result)
        return results

    def _active(self) -> list[Member]:
        """The members still in the population, in its order."""
        agents = self.population.agents
        by_agent = {id(a): m for a, m in zip(self._agents_at_start, self.members, strict=True)}
        return [by_agent[id(a)] for a in agents]

    def _state_dict(self, member: Member, i: int) -> dict[str, Any]:
        """Member ``i`` of the population as an ordinary run's checkpoint (see ``loop.Trainer.state_dict``)."""
        agent = self.population.write_back(i)
        env = member.env
        return {
            "config": member.cfg.to_dict(),
            "agent": agent.state_dict(),
            "counters": {
                "env_steps": self.env_steps,
                "updates": member.updates,
                "episodes": member.episodes,
                "wall_time_s": self._wall_time(member),
                "best_eval": member.best_eval,
            },
            "spaces": space_signature(env.single_observation_space, env.single_action_space),
            "backend": env.backend,
            "rng": {"torch": member.generator.get_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "env": env.get_state(),
            "obs": self.obs[i],
        }

    def _save(self, member: Member, i: int) -> None:
        path = ckpt.checkpoint_dir(member.run_dir) / f"step_{self.env_steps:012d}.safetensors"
        ckpt.save(path, self._state_dict(member, i))
        ckpt.prune(member.run_dir, member.cfg.run.keep_checkpoints)

    def _save_all(self) -> None:
        """A checkpoint of every member still training; none of one that failed (its last good one stays)."""
        for i, member in enumerate(self._active()):
            if not (member.stopped or "").startswith("failed"):
                self._save(member, i)

    def _result(self, member: Member) -> dict[str, Any]:
        out = {
            "run_dir": str(member.run_dir),
            "seed": member.cfg.run.seed,
            "label": self._label(member),
            "stopped": member.stopped,
        }
        if member.final_eval is not None:
            out["final"] = member.final_eval.mean
        return out


def evaluate_members(
    population: PPOPopulation | OffPolicyPopulation, run: Any, stop: Callable[[], bool] | None = None
) -> list[EvalResult] | None:
    """Each member of ``population`` on ``run.eval_episodes`` held-out episodes of Gymnasium's env, seeded as a
    solo run's evaluation (``EVAL_SEED_BASE`` on), all members' episodes in one vector env; None if stopped."""
    import gymnasium as gym

    members, episodes = len(population), run.eval_episodes
    factory = env_factory(run.env_id, **run.env_kwargs)
    vec = gym.vector.SyncVectorEnv([factory] * (members * episodes), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        cap = step_cap(vec.envs[0], run.eval_max_steps)
        seeds = [EVAL_SEED_BASE + i for i in range(episodes)] * members
        obs, _ = vec.reset(seed=seeds)
        total, length = np.zeros(members * episodes), np.zeros(members * episodes, dtype=np.int64)
        running = np.ones(members * episodes, dtype=bool)
        capped = 0
        while running.any():
            if stop is not None and stop():
                return None
            batch = torch.as_tensor(obs, dtype=torch.float32).reshape(members, episodes, -1)
            action = population.act(batch, run.eval_deterministic).cpu().numpy()
            action = action.reshape(members * episodes, *action.shape[2:])
            obs, reward, terminated, truncated, _ = vec.step(action)
            total += reward * running
            length += running
            running &= ~(terminated | truncated)
            if running.any() and length.max() >= cap:
                capped = running.reshape(members, episodes).sum(1)
                break
    finally:
        vec.close()
    capped = np.broadcast_to(capped, (members,))
    return [
        EvalResult(
            total[m * episodes : (m + 1) * episodes].tolist(),
            length[m * episodes : (m + 1) * episodes].tolist(),
            int(capped[m]),
            cap,
        )
        for m in range(members)
    ]


# ---------------------------------------------------------------------------------------------- summary


def time_to_target(run_dir: Path, target: float) -> tuple[float | None, float | None]:
    """(env steps, seconds) at a run's first evaluation whose mean reached ``target``; Nones if none did."""
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    hit = next((r for r in rows if r.get("eval_return_mean", -math.inf) >= target), None)
    return (hit["env_steps"], hit["wall_time_s"]) if hit else (None, None)


def summarize_members(results: list[dict[str, Any]], target: float | None) -> list[dict[str, Any]]:
    """Across the members of each hyperparameter setting: the final evaluation's mean, median and IQM with 95%
    bootstrap intervals (:mod:`duetrl.stats`), and with a target how many reached it and when (env steps and
    seconds: :func:`duetrl.stats.summarize_times`); failed members are counted apart."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in results):
        group = [r for r in results if r["label"] == label]
        scored = [r for r in group if "final" in r]
        row: dict[str, Any] = {"config": label or "all", "members": len(scored), "failed": len(group) - len(scored)}
        if scored:
            finals = [r["final"] for r in scored]
            stats = summarize(finals, target, [r["seed"] for r in scored])
            row.update(
                mean=round(stats.mean, 2),
                mean_ci=[round(x, 2) for x in bootstrap_ci(finals, np.mean)],
                median=round(stats.median, 2),
                median_ci=[round(x, 2) for x in stats.median_ci],
                iqm=round(stats.iqm, 2),
                iqm_ci=[round(x, 2) for x in stats.iqm_ci],
                worst=round(stats.worst_score, 2),
                worst_seed=stats.worst_seed,
            )
            if target is not None:
                times = [time_to_target(Path(r["run_dir"]), target) for r in scored]
                row["reached_target"] = sum(steps is not None for steps, _ in times)
                row["fraction_reached"] = row["reached_target"] / len(scored)
                row["steps_to_target"] = summarize_times([steps for steps, _ in times]).format()
                row["seconds_to_target"] = summarize_times([seconds for _, seconds in times]).format()
        rows.append(row)
    return rows


def format_members_summary(rows: list[dict[str, Any]]) -> str:
    """One line per hyperparameter setting."""
    lines = []
    for row in rows:
        if not row["members"]:
            lines.append(f"{row['config']}: no member finished ({row['failed']} failed)")
            continue
        text = (
            f"{row['config']}: {row['members']} members, final mean {row['mean']:.1f} [{row['mean_ci'][0]:.1f}, "
            f"{row['mean_ci'][1]:.1f}]; "
            f"median {row['median']:.1f} [{row['median_ci'][0]:.1f}, {row['median_ci'][1]:.1f}]; "
            f"IQM {row['iqm']:.1f} [{row['iqm_ci'][0]:.1f}, {row['iqm_ci'][1]:.1f}] (95% CIs); "
            f"worst {row['worst']:.1f} (seed {row['worst_seed']})"
        )
        if "reached_target" in row:
            text += f"; {row['reached_target']}/{row['members']} reached the target, steps: {row['steps_to_target']}"
        if row["failed"]:
            text += f" ({row['failed']} failed)"
        lines.append(text)
    return "\n".join(lines)
