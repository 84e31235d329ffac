"""One batched-environment interface over Gymnasium vector envs (and torch-native envs)."""

from duetrl.envs.base import BatchEnv
from duetrl.envs.make import import_modules, make
from duetrl.envs.masked import register_masked_envs

register_masked_envs()  # PendulumNoVel-v1 and the other velocity-masked ids, on import duetrl

__all__ = ["BatchEnv", "make", "import_modules"]
