"""The population's loop: members' envs, one update for all, each member's logs, evaluations and checkpoints."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from duetrl import checkpoint as ckpt
from duetrl.build import Checkpoint, build_agent, resolve_device, restore_agent, space_signature
from duetrl.config import Config
from duetrl.envs.base import BatchEnv
from duetrl.envs.make import env_factory
from duetrl.errors import UserError, say
from duetrl.evaluate import VALIDATION_SEED_BASE, EvalResult, eval_vector_env, step_cap
from duetrl.logs import Logger, Progress, make_logger
from duetrl.loop import (
    MetricWindow,
    Schedule,
    make_env,
    prepare_run_dir,
    saved_backend,
    seed_everything,
    stop_on_signals,
    torch_threads,
)
from duetrl.population.ac import ACPopulation
from duetrl.population.offpolicy import OffPolicyPopulation, SACPopulation, TD3Population
from duetrl.population.planning import POPULATION_FILE, check_memory, member_dir, plan
from duetrl.population.ppo import PPOPopulation
from duetrl.population.summary import summarize_members

POPULATIONS = {
    "ac": ACPopulation,
    "a2c": ACPopulation,
    "ppo": PPOPopulation,
    "sac": SACPopulation,
    "td3": TD3Population,
    "ddpg": TD3Population,
}


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


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    """A population stacks flat observation vectors and Discrete or flat Box actions; images, Dict observations and
    multi-part actions (issue 19) train as separate runs for now."""
    flat_obs = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1 and obs_space.dtype != np.uint8
    flat_act = isinstance(act_space, gym.spaces.Discrete) or (
        isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1
    )
    if not (flat_obs and flat_act):
        raise UserError(
            f"a population trains flat Box observations with Discrete or flat Box actions, not {obs_space} and "
            f"{act_space}; train the seeds as separate runs (duetrl sweep ENV --seeds 0 1 2 ...)"
        )


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
        torch.set_num_threads(torch_threads(run, members=len(configs)))
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
                    check_spaces(*spaces)
                    if run.algo == "sac" and isinstance(spaces[1], gym.spaces.Discrete):
                        raise UserError(
                            "a population trains sac on Box actions only; discrete SAC trains the seeds as separate "
                            "runs (duetrl sweep ENV --algo sac --seeds 0 1 2 ...)"
                        )
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
                {"run_dir": self._relative(m.run_dir), "seed": m.cfg.run.seed, "label": self._label(m)}
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

    def _relative(self, path: Path) -> str:
        """A member's directory relative to the population's (``../trials/...`` when a vectorized sweep puts the
        members in its own trial directories), as population.json records it for ``resume_population``."""
        return os.path.relpath(path, self.root)

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
                say("warning", f"member {self._relative(member.run_dir)} stopped: {member.stopped[8:]}")
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
    """Each member of ``population`` on ``run.eval_episodes`` validation episodes of Gymnasium's env, seeded as a
    solo run's evaluation during training (``VALIDATION_SEED_BASE`` on), all members' episodes in one vector env;
    None if stopped."""
    members, episodes = len(population), run.eval_episodes
    factory = env_factory(run.env_id, wrappers=run.wrappers, frame_stack=run.frame_stack, **run.env_kwargs)
    vec = eval_vector_env(factory, members * episodes, run.env_id, run.env_kwargs, run.wrappers, run.frame_stack)
    try:
        cap = step_cap(vec, run.eval_max_steps)
        seeds = [VALIDATION_SEED_BASE + i for i in range(episodes)] * members
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
