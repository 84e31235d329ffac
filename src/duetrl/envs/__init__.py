"""One batched-environment interface over Gymnasium vector envs (and torch-native envs)."""

from duetrl.envs.base import BatchEnv
from duetrl.envs.make import import_modules, make

__all__ = ["BatchEnv", "make", "import_modules"]
