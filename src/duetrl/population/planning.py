"""Which runs can train as one population, where its members write, and whether it fits in memory."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from duetrl.config import Config
from duetrl.errors import UserError

# Settings that may differ between the members of a population: numeric, and no change of shape or branch.
PER_MEMBER = {
    "ac": ("seed", "actor_lr", "critic_lr", "gamma", "gae_lambda", "ent_coef", "max_grad_norm"),
    "a2c": ("seed", "actor_lr", "critic_lr", "gamma", "gae_lambda", "ent_coef", "max_grad_norm"),
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
    if algo not in PER_MEMBER:
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
    actor_critic = [
        (getattr(shared, "critic", "v") != "v", "critic=q (an action-value critic) is not yet trained per member"),
        (getattr(shared, "update_every", 1) == 0, "update_every=0 (an update per episode) is not yet per member"),
        (getattr(shared, "optimizer", "adam") != "adam", f"optimizer={getattr(shared, 'optimizer', '')} is not yet "
         "stacked per member (adam is)"),
        (getattr(shared, "rnn", "none") != "none", f"rnn={getattr(shared, 'rnn', 'none')} is not yet trained per "
         "member"),
    ]  # fmt: skip
    refusals = {
        "ac": actor_critic,
        "a2c": actor_critic,
        "ppo": [
            (
                getattr(shared, "rnn", "none") != "none",
                f"rnn={getattr(shared, 'rnn', 'none')} (memory: a recurrent core replayed over sequences) is not yet "
                "trained per member",
            ),
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
    samples = (getattr(algo, "num_steps", None) or algo.update_every) * run.num_envs  # ppo's rollout, or ac's
    rollout = samples * (2 * obs_dim + 2 * act_dim + 8) * 6
    activations = min(getattr(algo, "minibatch_size", samples), samples) * sum(algo.hidden) * 2 * 4
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
