"""Where a PPO population's time goes: FLOPs per update, achieved GFLOP/s, and each phase's wall and CPU time.

    python benchmarks/population_profile.py --members 1 4 16 [--iterations 3] [--threads 2] [--set key=value ...]

For M = 0 (the ordinary solo agent, as ``duetrl train`` runs it) and each population size M, with the shipped
Pendulum-v1 preset: one warm-up iteration (a rollout of ``num_steps`` env steps and one update), then
``--iterations`` timed ones, split into the phases of the loop: ``explore`` (the policy's forward pass and
sampling), ``env`` (the torch-native envs' step), ``observe`` (normalisers and storage) and ``update`` (GAE, the
epochs of minibatch losses, their gradients and Adam). The FLOPs of one update and one rollout are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls only: what the dense layers cost; the elementwise work is
not counted), and divided by the CPU time of the phase to give the achieved GFLOP/s, to compare with what this
machine's matrix multiplications reach (``--peak``: a [1024, 128] x [128, 128] matmul, the preset's minibatch
through a hidden layer). CPU time is process time (every thread), so a loaded machine shows in wall time, less in CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from duetrl.api import resolve
from duetrl.build import build_agent
from duetrl.loop import make_env, seed_everything
from duetrl.population import POPULATIONS


class Clock:
    """Wall and CPU seconds per phase, summed over the timed iterations."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.on = False

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        if self.on:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu


def build(members: int, sets: dict, algo: str = "ppo") -> tuple[object, list, list, object]:
    """A population of ``members`` agents (0: one solo agent), their envs and configs, as the trainers build them."""
    agents, configs, generators, envs = [], [], [], []
    for seed in range(max(members, 1)):
        cfg, _ = resolve("Pendulum-v1", algo, "default", None, {**sets, "seed": seed})
        seed_everything(seed)
        env = make_env(cfg, torch.device("cpu"))
        agents.append(build_agent(cfg, env.single_observation_space, env.single_action_space, torch.device("cpu")))
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        configs.append(cfg)
        generators.append(generator)
        envs.append(env)
    if members == 0:
        return agents[0], envs, configs, None
    return POPULATIONS[algo](agents, configs, generators), envs, configs, generators


def counted(flops: dict | None, key: str, fn, *args):
    """``fn(*args)``, its matmul FLOPs added to ``flops[key]`` (when counting)."""
    if flops is None:
        return fn(*args)
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    flops[key] = flops.get(key, 0) + counter.get_total_flops()
    return out


def iteration(
    agent, envs, obs, solo: bool, clock: Clock, flops: dict | None = None, steps: int = 0, learn: bool = True
):
    """One rollout of ``num_steps`` and one update (off-policy: ``steps`` env steps, each followed by its gradient
    steps; none with ``learn`` false, and none owed after); returns the last observations."""
    on_policy = hasattr(agent.cfg, "num_steps")
    steps = agent.cfg.num_steps if on_policy else steps
    env_steps = 0 if on_policy else 10**9  # off-policy: the policy's actions, not the warm-up's random ones
    for _ in range(steps):
        with clock.phase("explore"):
            if solo:
                decision = counted(flops, "rollout", agent.explore, obs[0], env_steps)
                actions = [decision.action]
            else:
                actions, record = counted(flops, "rollout", agent.explore, obs, env_steps)
        with clock.phase("env"):
            out = [env.step(a) for env, a in zip(envs, actions, strict=True)]
        with clock.phase("observe"):
            reward, terminated, truncated = (torch.stack([o[i] for o in out]) for i in (1, 2, 3))
            final_obs = torch.stack([o[4]["final_obs"] for o in out])
            if solo:
                agent.observe(decision, reward[0], terminated[0], truncated[0], final_obs[0])
            else:
                agent.observe(record, reward, terminated, truncated, final_obs)
            obs = torch.stack([o[0] for o in out])
        if not on_policy and learn and agent.ready():
            with clock.phase("update"):
                counted(flops, "update", agent.update)
    if not learn:
        agent.updates_owed = 0
    elif on_policy:
        with clock.phase("update"):
            counted(flops, "update", agent.update)
    return obs


def matmul_peak(seconds: float = 1.0) -> float:
    """GFLOP/s of this machine's [1024, 128] x [128, 128] float32 matmul at the current thread count (CPU time)."""
    a, b = torch.randn(1024, 128), torch.randn(128, 128)
    out = torch.empty(1024, 128)
    for _ in range(50):
        torch.mm(a, b, out=out)
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(100):
            torch.mm(a, b, out=out)
        n += 100
    return n * 2 * 1024 * 128 * 128 / (time.process_time() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--members", nargs="+", type=int, default=[0, 1, 4, 16], help="0 = the solo agent")
    parser.add_argument("--steps", type=int, default=100, help="off-policy: env steps per timed iteration")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak", action="store_true", help="also measure the matmul peak")
    parser.add_argument("--set", dest="sets", nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = dict(kv.split("=", 1) for kv in args.sets)
    sets = {k: float(v) if "." in v or "e" in v else int(v) for k, v in sets.items()}
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.peak:
        print(f"matmul [1024,128]x[128,128]: {matmul_peak():.1f} GFLOP/s (CPU time)")
    header = "members  phase    wall_s/it  cpu_s/it  cpu_s/it/member  GFLOP/it  GFLOP/s(cpu)"
    print(header)
    for members in args.members:
        agent, envs, configs, _ = build(members, sets, args.algo)
        solo = members == 0
        seeds = [c.run.seed for c in configs]
        obs = torch.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
        clock, flops = Clock(), {}
        if not hasattr(agent.cfg, "num_steps"):  # off-policy: a buffer of a batch first
            obs = iteration(agent, envs, obs, solo, clock, steps=agent.cfg.batch_size, learn=False)
        obs = iteration(agent, envs, obs, solo, clock, flops, steps=args.steps)  # warm-up, counting FLOPs
        clock.on = True
        for _ in range(args.iterations):
            obs = iteration(agent, envs, obs, solo, clock, steps=args.steps)
        per = max(members, 1)
        name = "solo" if solo else str(members)
        for phase in ("explore", "env", "observe", "update", "total"):
            wall = sum(clock.wall.values()) if phase == "total" else clock.wall[phase]
            cpu = sum(clock.cpu.values()) if phase == "total" else clock.cpu[phase]
            wall, cpu = wall / args.iterations, cpu / args.iterations
            count = {"explore": flops["rollout"], "update": flops["update"]}.get(phase)
            if phase == "total":
                count = flops["rollout"] + flops["update"]
            gflop = f"{count / 1e9:9.3f}  {count / 1e9 / cpu:12.1f}" if count else ""
            print(f"{name:>7}  {phase:<7}  {wall:9.3f}  {cpu:8.3f}  {cpu / per:15.4f}  {gflop}", flush=True)


if __name__ == "__main__":
    main()
