"""The best achievable return on duetrl's held-out Pendulum-v1 episodes, by dynamic programming.

Finite-horizon value iteration (200 steps) on a grid over (angle, angular velocity) with Gymnasium's exact
dynamics and bilinear interpolation, then a greedy one-step lookahead on the true continuous state in
Gymnasium's own env, scored on the same held-out episodes as ``duetrl eval`` (seeds 1,000,000 + k).
Interpolation makes the controller slightly worse than optimal, so the figure is a lower bound on the optimum.

Usage: .venv/bin/python scripts/pendulum_optimum.py [--g 10] [--episodes 100] [--grid 301] [--actions 41] [--run RUN]

With ``--run``, the trained agent of a duetrl run plays the same episodes and the worst gaps are listed: on
Pendulum they are the starts near the bottom, where the agent pumps once more than it needs.
"""

import argparse
import math

import gymnasium as gym
import torch

from duetrl.evaluate import EVAL_SEED_BASE

DT, MAX_SPEED, MAX_TORQUE, HORIZON = 0.05, 8.0, 2.0, 200


def step(theta, omega, u, g):
    omega = (omega + (3 * g / 2 * torch.sin(theta) + 3.0 * u) * DT).clamp(-MAX_SPEED, MAX_SPEED)
    return theta + omega * DT, omega


def cost(theta, omega, u):
    angle = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    return angle**2 + 0.1 * omega**2 + 0.001 * u**2


def interpolate(value, theta, omega, n):
    """Bilinear interpolation of ``value[n, n]`` (angle periodic on [-pi, pi), speed on [-8, 8])."""
    x = torch.remainder(theta + math.pi, 2 * math.pi) / (2 * math.pi) * n
    y = (omega + MAX_SPEED) / (2 * MAX_SPEED) * (n - 1)
    x0, y0 = x.floor().long(), y.floor().long().clamp(0, n - 2)
    fx, fy = x - x0, (y - y0).clamp(0, 1)
    x0, x1 = x0 % n, (x0 + 1) % n
    return (
        value[x0, y0] * (1 - fx) * (1 - fy)
        + value[x1, y0] * fx * (1 - fy)
        + value[x0, y0 + 1] * (1 - fx) * fy
        + value[x1, y0 + 1] * fx * fy
    )


def value_tables(g: float, n: int, num_actions: int) -> list[torch.Tensor]:
    """Finite-horizon value iteration: ``values[k][i, j]`` is the best return with k steps to go."""
    theta = (torch.arange(n, dtype=torch.float64) / n * 2 * math.pi - math.pi).view(n, 1, 1)
    omega = torch.linspace(-MAX_SPEED, MAX_SPEED, n, dtype=torch.float64).view(1, n, 1)
    actions = torch.linspace(-MAX_TORQUE, MAX_TORQUE, num_actions, dtype=torch.float64)
    values = [torch.zeros(n, n, dtype=torch.float64)]
    for _ in range(HORIZON):
        next_theta, next_omega = step(theta, omega, actions, g)
        q = -cost(theta, omega, actions) + interpolate(values[-1], next_theta, next_omega, n)
        values.append(q.max(-1).values)
    return values


def dp_episode(env: gym.Env, values: list[torch.Tensor], g: float, seed: int) -> float:
    """The return of the greedy one-step lookahead on ``values`` from the episode seeded ``seed``."""
    fine = torch.linspace(-MAX_TORQUE, MAX_TORQUE, 401, dtype=torch.float64)
    env.reset(seed=seed)
    total = 0.0
    for t in range(HORIZON):
        th, om = (torch.tensor(v, dtype=torch.float64) for v in env.unwrapped.state)
        next_theta, next_omega = step(th, om, fine, g)
        q = -cost(th, om, fine) + interpolate(values[HORIZON - t - 1], next_theta, next_omega, values[0].shape[0])
        _, reward, *_ = env.step([float(fine[q.argmax()])])
        total += float(reward)
    return total


def agent_episode(env: gym.Env, agent, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    total = 0.0
    for _ in range(HORIZON):
        obs, reward, *_ = env.step(agent.act(obs, deterministic=True))
        total += float(reward)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g", type=float, default=10.0)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--grid", type=int, default=301)
    parser.add_argument("--actions", type=int, default=41)
    parser.add_argument("--run", help="a duetrl run directory: also show where its agent loses to the controller")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: more threads only wait for each other on a busy machine
    values = value_tables(args.g, args.grid, args.actions)
    env = gym.make("Pendulum-v1", g=args.g)
    seeds = [EVAL_SEED_BASE + k for k in range(args.episodes)]
    returns = [dp_episode(env, values, args.g, seed) for seed in seeds]
    mean = sum(returns) / len(returns)
    print(f"Pendulum-v1 g={args.g}: DP controller {mean:.1f} mean return over {args.episodes} held-out episodes")
    if args.run:
        from duetrl import api

        agent = api.load(args.run)
        rows = []
        for seed, best in zip(seeds, returns, strict=True):
            got = agent_episode(env, agent, seed)
            rows.append((got - best, got, best, seed))
        agent_mean = sum(row[1] for row in rows) / len(rows)
        print(f"{args.run}: {agent_mean:.1f} ({(agent_mean - mean) / abs(mean):+.1%} against the controller)")
        print("worst episodes (theta 0 is upright):")
        for gap, got, best, seed in sorted(rows)[:10]:
            env.reset(seed=seed)
            theta0, omega0 = env.unwrapped.state
            start = f"theta {theta0:+.2f}, omega {omega0:+.2f}"
            print(f"  seed {seed}: agent {got:7.1f}, controller {best:7.1f} (gap {gap:6.1f}); start {start}")


if __name__ == "__main__":
    main()
