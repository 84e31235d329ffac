"""Per-step cost of the two env backends, as the training loop sees it: ``BatchEnv.step`` on torch actions.

    python benchmarks/backend_step_cost.py [--steps 2000] [--repeats 5]

For each env with a torch-native twin and each batch size, the median over ``repeats`` of the time of ``steps``
batch steps (one thread, as training runs), in microseconds per batch step. ``--backend auto`` picks the faster
backend by batch size from these figures (``duetrl.envs.make.NATIVE_MIN_ENVS``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from duetrl.envs import make

ENVS = ["Pendulum-v1", "CartPole-v1", "Acrobot-v1", "MountainCarContinuous-v0"]
SIZES = [1, 2, 4, 8, 16, 32]


def step_cost(env_id: str, backend: str, num_envs: int, steps: int) -> float:
    """Seconds per batch step."""
    env = make(env_id, num_envs, backend=backend)
    env.reset(seed=0)
    space = env.single_action_space
    if hasattr(space, "n"):
        actions = [torch.randint(0, int(space.n), (num_envs,)) for _ in range(64)]
    else:
        actions = [torch.rand(num_envs, *space.shape) * 2 - 1 for _ in range(64)]
    for i in range(50):  # warm-up
        env.step(actions[i % 64])
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 64])
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'env':<26} {'envs':>4} {'gymnasium us':>13} {'torch us':>9} {'faster':>10}")
    for env_id in ENVS:
        for n in SIZES:
            costs = {}
            for backend in ("gymnasium", "torch"):
                costs[backend] = statistics.median(
                    step_cost(env_id, backend, n, args.steps) for _ in range(args.repeats)
                )
            faster = min(costs, key=costs.get)
            print(f"{env_id:<26} {n:>4} {costs['gymnasium'] * 1e6:>13.1f} {costs['torch'] * 1e6:>9.1f} {faster:>10}")


if __name__ == "__main__":
    main()
