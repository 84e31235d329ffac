"""Populations: many seeds and numeric hyperparameters of one algorithm trained in ONE process (issue 21).

A member is what a solo run would be: its own weights, optimiser state, normalisation statistics, env batch and
RNG stream (a ``torch.Generator`` that continues the stream its solo run would draw from). Here the members'
weights and optimiser state are stacked along a leading member axis, ``[member, ...]``, and every forward pass
and loss runs once for all of them through ``torch.func.vmap`` over ``functional_call`` of the ordinary modules,
so the algorithm's math is written once (PPO's is :func:`duetrl.algos.ppo.ppo_loss`, the actor-critic's
:func:`duetrl.algos.ac.ac_loss`, SAC's and TD3's the pure functions of sac.py and td3.py, with the noise passed in;
tests hold them to the solo runs). Members never mix: their
parameters are disjoint, so the gradient of the summed per-member losses is each member's own gradient; gradient
clipping, Adam, advantages and their normalisation, and the running statistics are per member.

Each member writes an ordinary run directory (config.yaml, metrics.csv, TensorBoard events, checkpoints in the
ordinary layout), so ``duetrl eval``, ``plot`` and ``--resume`` of one member work on it unchanged; the
population's own directory holds ``population.json`` (what was asked, for ``--resume`` of the whole population)
and ``summary.json`` (across members: mean, median and IQM with 95% CIs, fraction reaching the target, time to it).

This is a driver beside the ordinary loop (``loop.Trainer``), not the same code path (the loop's one-agent protocol
would need a member axis in every algorithm, which three branches were changing at once): a population of one is
an ordinary run up to the float rounding of batched matmuls (tests/test_population.py). It trains ``ac``, ``a2c``,
``ppo``, ``sac``, ``td3`` and ``ddpg`` on the CPU; each member's envs are an ordinary env batch (torch-native or
Gymnasium), stepped one member after another (a Python loop of M env steps per round: small next to the update,
measured).
"""

from duetrl.population.ac import ACPopulation
from duetrl.population.driver import POPULATIONS, Member, PopulationResult, PopulationTrainer, evaluate_members
from duetrl.population.offpolicy import OffPolicyPopulation, SACPopulation, TD3Population
from duetrl.population.planning import (
    PER_MEMBER,
    POPULATION_FILE,
    available_memory,
    check_memory,
    grid_configs,
    member_dir,
    member_label,
    memory_estimate,
    plan,
)
from duetrl.population.ppo import PPOPopulation
from duetrl.population.stacked import StackedAdam, StackedNorm, clip_per_member, fused_adam
from duetrl.population.summary import format_members_summary, summarize_members, time_to_target

__all__ = [
    "ACPopulation",
    "PER_MEMBER",
    "POPULATIONS",
    "POPULATION_FILE",
    "Member",
    "OffPolicyPopulation",
    "PPOPopulation",
    "PopulationResult",
    "PopulationTrainer",
    "SACPopulation",
    "StackedAdam",
    "StackedNorm",
    "TD3Population",
    "available_memory",
    "check_memory",
    "clip_per_member",
    "evaluate_members",
    "format_members_summary",
    "fused_adam",
    "grid_configs",
    "member_dir",
    "member_label",
    "memory_estimate",
    "plan",
    "summarize_members",
    "time_to_target",
]
