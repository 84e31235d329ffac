"""duetrl: readable, fast actor-critic reinforcement learning.

import duetrl
result = duetrl.train("Pendulum-v1", "ac", preset="chapter", env_kwargs={"g": 0}, run_dir="runs/g0")
agent = duetrl.load("runs/g0")
print(duetrl.evaluate(agent, episodes=100).mean)
"""

from duetrl.api import LoadedAgent, evaluate, load, resume, train
from duetrl.config import Config, RunConfig, list_presets, resolve
from duetrl.errors import TrainingError, UserError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "LoadedAgent",
    "RunConfig",
    "TrainingError",
    "UserError",
    "evaluate",
    "list_presets",
    "load",
    "resolve",
    "resume",
    "train",
]
