"""``make(env_id, num_envs, ...)``: the one way duetrl builds environments."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import torch

from duetrl.envs.base import BatchEnv
from duetrl.envs.classic import twin_spec
from duetrl.envs.gymnasium_vec import GymnasiumBatchEnv
from duetrl.errors import UserError


def import_modules(modules: Iterable[str]) -> None:
    """Import user modules (``--import``) so that the environments they register become known."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"cannot import module {name!r} (--import): {e}") from None


def env_factory(env_id: str, render_mode: str | None = None, **env_kwargs: Any) -> Callable[[], gym.Env]:
    """A zero-argument constructor for one Gymnasium env, checked once so mistakes surface here.

    ``env_id`` is a registered id (``Pendulum-v1``, ``my_pkg:MyEnv-v0``) or ``module:Class`` for an env class.
    """
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    module_name, sep, attr = env_id.partition(":")
    if sep:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UserError(f"cannot import {module_name!r} for env {env_id!r}: {e}") from None
        target = getattr(module, attr, None)
        if inspect.isclass(target) and issubclass(target, gym.Env):
            factory = lambda: target(**kwargs)  # noqa: E731
            _check_factory(factory, env_id)
            return factory
    spec = twin_spec(env_id) or env_id  # a native env's twin takes the native env's arguments (m, l, ...)
    factory = lambda: gym.make(spec, **kwargs)  # noqa: E731
    _check_factory(factory, env_id)
    return factory


def _check_factory(factory: Callable[[], gym.Env], env_id: str) -> None:
    try:
        env = factory()
    except gym.error.Error as e:
        raise UserError(f"unknown or unusable environment {env_id!r}: {_one_line(e)}") from None
    except TypeError as e:
        raise UserError(f"environment {env_id!r} rejected its arguments (--env-kwargs): {_one_line(e)}") from None
    except ModuleNotFoundError as e:
        extra = " (install it with: pip install 'duetrl[mujoco]')" if "mujoco" in str(e) else ""
        raise UserError(f"environment {env_id!r} needs a missing package: {e}{extra}") from None
    except gym.error.DependencyNotInstalled as e:  # pragma: no cover - subclass of Error in some versions
        raise UserError(f"environment {env_id!r} needs a missing package: {_one_line(e)}") from None
    env.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def make(
    env_id: str,
    num_envs: int = 1,
    backend: str = "auto",
    device: torch.device | str | None = None,
    vector: str = "sync",
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> BatchEnv:
    """``num_envs`` copies of ``env_id`` behind one batched interface.

    ``backend``: ``"gymnasium"`` (Gymnasium vector envs), ``"torch"`` (torch-native batched envs, where one
    exists) or ``"auto"`` (torch where available, else Gymnasium)."""
    if num_envs < 1:
        raise UserError(f"num_envs={num_envs} must be at least 1")
    device = torch.device(device or "cpu")
    if backend in ("auto", "torch"):
        from duetrl.envs.native import make_native

        native = make_native(env_id, num_envs, device=device, **env_kwargs) if render_mode is None else None
        if native is not None:
            return native
        if backend == "torch":
            from duetrl.envs.native import NATIVE_ENVS

            raise UserError(
                f"no torch-native implementation of {env_id!r} (have: {', '.join(sorted(NATIVE_ENVS))}); "
                "use --backend gymnasium"
            )
    elif backend != "gymnasium":
        raise UserError(f"unknown backend {backend!r}: use auto, torch or gymnasium")
    factory = env_factory(env_id, render_mode=render_mode, **env_kwargs)
    return GymnasiumBatchEnv(factory, num_envs, vector=vector, device=device)
