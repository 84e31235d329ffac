"""duetrl: readable, fast actor-critic reinforcement learning.

import duetrl
result = duetrl.train("Pendulum-v1", "ac", preset="chapter", env_kwargs={"g": 0}, run_dir="runs/g0")
agent = duetrl.load("runs/g0")
print(duetrl.evaluate(agent, episodes=100).mean)
"""

import os

# OpenMP threads that wait for work sleep instead of spinning. torch's default (active) policy spins, so with another
# job on the machine a run's two threads each wait for the other to be scheduled: the Pendulum PPO preset (hidden 96)
# took 63-66 s at two threads beside one single-threaded job, against 3.2-4.5 s with PASSIVE and 3.0-3.4 s at one
# thread (2 cores). libgomp reads this once, when torch loads it, so it only takes effect if duetrl comes first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from duetrl.api import LoadedAgent, evaluate, export, load, resolve, resume, train
from duetrl.callbacks import Callback, StepBatch, StopTraining, TrainingState
from duetrl.config import Config, RunConfig, list_presets
from duetrl.errors import TrainingError, UserError


def sweep(*args, **kwargs):  # noqa: ANN002, ANN003 - re-exported lazily: Ray is an optional extra
    """Multi-seed runs and sweeps on Ray Tune; see :func:`duetrl.sweeps.sweep`."""
    from duetrl.sweeps import sweep as run_sweep

    return run_sweep(*args, **kwargs)


def plot(*args, **kwargs):  # noqa: ANN002, ANN003 - re-exported lazily: matplotlib is an optional extra
    """Learning curves of runs and sweeps; see :func:`duetrl.curves.plot`."""
    from duetrl.curves import plot as draw

    return draw(*args, **kwargs)


__version__ = "0.1.0"

__all__ = [
    "Callback",
    "Config",
    "LoadedAgent",
    "RunConfig",
    "StepBatch",
    "StopTraining",
    "TrainingError",
    "TrainingState",
    "UserError",
    "evaluate",
    "export",
    "list_presets",
    "load",
    "plot",
    "resolve",
    "resume",
    "sweep",
    "train",
]
