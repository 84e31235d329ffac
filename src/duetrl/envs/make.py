"""``make(env_id, num_envs, ...)``: the one way duetrl builds environments."""

from __future__ import annotations

import copy
import importlib
import inspect
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import torch

from duetrl.envs.base import BatchEnv
from duetrl.envs.classic import twin_spec
from duetrl.envs.gymnasium_vec import GymnasiumBatchEnv
from duetrl.errors import UserError, on_command_line, say, setting

# What an env can be given as: a registered id or "module:Class" (a name a run can record and make again), an env
# class, a function that makes an env, or a made gymnasium.Env (copied for the batch).
EnvSource = Any


def _user_import(name: str) -> Any:
    """Import a user's module as ``python -m`` would find it: the current directory is searched first."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def import_modules(modules: Iterable[str]) -> None:
    """Import user modules (``--import``) so that the environments they register become known."""
    for name in modules:
        try:
            _user_import(name)
        except ImportError as e:
            raise UserError(f"cannot import module {name!r} ({setting('imports')}): {e}") from None


def env_name(env: EnvSource) -> str:
    """The name a run records for its env (config.yaml's ``env_id``): an id or ``module:Class`` as given; for a
    class or function its ``module:qualified.name`` (made again from it where importable); for an instance
    ``<instance of ...>``, which cannot be made again from its name."""
    if isinstance(env, str):
        return env
    if isinstance(env, gym.Env):
        spec = env.spec.id if env.spec is not None else _qualified(type(env.unwrapped))
        return f"<instance of {spec}>"
    if callable(env):
        return _qualified(env)
    raise UserError(
        "an environment is an id ('Pendulum-v1'), a 'module:Class' string, an env class, a function that makes an "
        f"env, or a gymnasium.Env; got {type(env).__name__}"
    )


def _qualified(obj: Any) -> str:
    qualname = getattr(obj, "__qualname__", None)
    module = getattr(obj, "__module__", None)
    return f"{module}:{qualname}" if qualname and module else f"<{type(obj).__name__}>"


def _not_remade(name: str) -> UserError:
    """The error for a run whose env was a Python object that its recorded name cannot make again."""
    if on_command_line():
        how = (
            "evaluate it from Python, passing the env again (duetrl.load(RUN, env=...)), or train on an env an "
            "importable module defines ('my_envs:MyEnv', --import my_envs)"
        )
    else:
        how = "pass the env again (duetrl.load(run_dir, env=...), duetrl.resume(run_dir, env=...))"
    return UserError(f"environment {name!r} was given as a Python object and cannot be made again from its name: {how}")


# Namespaces whose envs register themselves only when a module is imported or a function called.
NAMESPACES: dict[str, tuple[str, str | None, str]] = {
    "ALE/": ("ale_py", None, "pip install ale-py"),
    "MinAtar/": ("minatar.gym", "register_envs", "pip install MinAtar"),
}


def register_namespace(env_id: EnvSource) -> None:
    """Register Atari's (``ALE/...``, from ale-py) or MinAtar's (``MinAtar/...``) envs before the first is made."""
    if not isinstance(env_id, str):
        return
    for prefix, (module_name, function, install) in NAMESPACES.items():
        if env_id.startswith(prefix) and env_id not in gym.registry:
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise UserError(f"environment {env_id!r} needs a missing package: {e} ({install})") from None
            if function is not None:
                getattr(module, function)()
            elif hasattr(gym, "register_envs"):
                gym.register_envs(module)


def load_wrapper(name: str) -> Callable[[gym.Env], gym.Env]:
    """A Gymnasium wrapper (or any function env -> env) named ``module:Name``, e.g.
    ``gymnasium.wrappers:AtariPreprocessing``, or a UserError in one line."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"a wrapper is given as module:Name (gymnasium.wrappers:GrayscaleObservation), not {name!r}")
    try:
        wrapper = getattr(_user_import(module_name), attr)
    except ImportError as e:
        raise UserError(f"cannot import wrapper {name!r} ({setting('wrappers')}): {_one_line(e)}") from None
    except AttributeError:
        raise UserError(
            f"cannot import wrapper {name!r} ({setting('wrappers')}): {module_name} has no {attr!r}"
        ) from None
    if not callable(wrapper):
        raise UserError(f"wrapper {name!r} ({setting('wrappers')}) is not a class or function that wraps an env")
    return wrapper


def env_factory(
    env_id: EnvSource,
    render_mode: str | None = None,
    *,
    wrappers: Iterable[str] = (),
    frame_stack: int = 1,
    **env_kwargs: Any,
) -> Callable[[], gym.Env]:
    """A zero-argument constructor for one Gymnasium env, checked once so mistakes surface here.

    ``env_id`` is a registered id (``Pendulum-v1``, ``my_pkg:MyEnv-v0``), ``module:Class`` for an env class (or
    ``module:function`` for a function that makes one), or the class, function or env instance itself (an
    instance is copied with ``copy.deepcopy`` for each env made). ``wrappers`` (``module:Name``) wrap each env
    made, in order, and ``frame_stack`` > 1 stacks that many observations last (Gymnasium's
    ``FrameStackObservation``): at training and evaluation alike, since both make their envs here.
    """
    register_namespace(env_id)
    factory = _unwrapped_factory(env_id, render_mode, env_kwargs)
    wraps = [load_wrapper(name) for name in wrappers]
    if frame_stack > 1:
        wraps.append(lambda env: gym.wrappers.FrameStackObservation(env, frame_stack))
    if not wraps:
        return factory

    def wrapped() -> gym.Env:
        env = factory()
        for wrap in wraps:
            env = wrap(env)
        return env

    _check_factory(wrapped, env_name(env_id))
    return wrapped


def _unwrapped_factory(env_id: EnvSource, render_mode: str | None, env_kwargs: dict[str, Any]) -> Callable[[], gym.Env]:
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if not isinstance(env_id, str):
        return _object_factory(env_id, render_mode, env_kwargs)
    if env_id.startswith("<"):
        raise _not_remade(env_id)
    module_name, sep, attr = env_id.partition(":")
    if sep:
        try:
            module = _user_import(module_name)
        except ImportError as e:
            raise UserError(f"cannot import {module_name!r} for env {env_id!r}: {e}") from None
        target = getattr(module, attr, None)
        if target is None and (module_name == "__main__" or "<" in attr):
            raise _not_remade(env_id)  # defined in the script that trained it, or inside a function
        if callable(target) and not isinstance(target, gym.Env):
            if not inspect.isclass(target) or issubclass(target, gym.Env):
                return _object_factory(target, render_mode, env_kwargs, env_id)
    spec = twin_spec(env_id) or env_id  # a native env's twin takes the native env's arguments (m, l, ...)
    check_env_kwargs(env_id, _entry_point(spec), env_kwargs)
    factory = lambda: gym.make(spec, **kwargs)  # noqa: E731
    _check_factory(factory, env_id)
    return factory


def _object_factory(
    env: Any, render_mode: str | None, env_kwargs: dict[str, Any], name: str | None = None
) -> Callable[[], gym.Env]:
    """The constructor for an env given as a class, a function or an instance (see :func:`env_factory`)."""
    name = name or env_name(env)
    if isinstance(env, gym.Env):
        if env_kwargs:
            raise UserError(
                f"env_kwargs cannot apply to an env that is already made ({name}): pass its class, or a function "
                "that makes it, with them"
            )
        if render_mode is not None and env.render_mode != render_mode:
            raise UserError(
                f"this env instance ({name}) was made with render_mode={env.render_mode!r}, and showing or recording "
                f"episodes needs render_mode={render_mode!r}: pass its class, or a function that makes it"
            )
        try:
            copy.deepcopy(env)
        except Exception as e:
            raise UserError(
                f"cannot copy the env instance ({name}) for a batch of envs: copy.deepcopy failed "
                f"({type(e).__name__}: {_one_line(e)}); pass its class, or a function that makes it, instead"
            ) from None
        return lambda: copy.deepcopy(env)
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    check_env_kwargs(name, env, env_kwargs)
    factory = lambda: env(**kwargs)  # noqa: E731
    _check_factory(factory, name)
    return factory


def _entry_point(spec: Any) -> Callable[..., Any] | None:
    """What ``gym.make`` calls for a registered id (or spec), or None if it is not registered (yet)."""
    try:
        entry = spec.entry_point if isinstance(spec, gym.envs.registration.EnvSpec) else gym.spec(spec).entry_point
        return gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    except Exception:  # an unknown id or an entry point that does not import: _check_factory says which
        return None


def check_env_kwargs(
    env_id: str, constructor: Callable[..., Any] | None, env_kwargs: dict[str, Any], skip: Iterable[str] = ()
) -> None:
    """A UserError, before any env is made, for an argument the constructor does not take or a value of the wrong
    type: by its annotation (``g: float``), else by its default (``goal_velocity=0`` takes numbers)."""
    if constructor is None or not env_kwargs:
        return
    try:
        params = dict(inspect.signature(constructor).parameters)
    except (TypeError, ValueError):  # a builtin or an odd callable: constructing it will tell
        return
    try:
        hints = typing.get_type_hints(constructor.__init__ if inspect.isclass(constructor) else constructor)
    except Exception:  # unresolvable annotations: fall back on the defaults
        hints = {}
    for name in ("self", "num_envs", "device", "dtype", "render_mode", *skip):
        params.pop(name, None)
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in env_kwargs.items():
        if key not in named:
            if open_ended:
                continue
            takes = ", ".join(named) or "no arguments"
            raise UserError(
                f"environment {env_id!r} rejected its arguments: it has no argument {key!r} (it takes {takes})"
            )
        expected = _expected_type(hints.get(key), named[key].default)
        if expected is not None and not _is_a(value, expected):
            raise UserError(
                f"environment {env_id!r} rejected its arguments: {key}={value!r} should be {_type_words(expected)}"
            )


def _expected_type(annotation: Any, default: Any) -> Any:
    """The type a value must have: the annotation when it is a plain type (or an optional one), else the default's
    type for a number or a bool; None when nothing can be said."""
    if annotation is not None:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            plain = [a for a in args if a in (bool, int, float, str, type(None))]
            return tuple(plain) if len(plain) == len(args) else None
        return annotation if annotation in (bool, int, float, str) else None
    if isinstance(default, bool):
        return bool
    if isinstance(default, numbers.Real):
        return float  # goal_velocity=0 takes 0.05 as well
    return None


def _is_a(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return any(_is_a(value, e) for e in expected)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_words(expected: Any) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if isinstance(expected, tuple):
        return " or ".join(words[e] for e in expected)
    return words[expected]


_mujoco_warnings: set[str] = set()


def _mujoco_warning(message: str) -> None:
    text = " ".join(message.split())
    if text not in _mujoco_warnings:
        _mujoco_warnings.add(text)
        say("note", f"MuJoCo: {text}")


def mujoco_warnings_once() -> None:
    """MuJoCo's C library prints a model's compiler warnings (HalfCheetah's deprecated 'settotalmass') on stdout
    for every env made: a dozen times for a batch, in the middle of the JSON summary. Once MuJoCo is loaded, each
    distinct warning is said once, on stderr, instead."""
    mujoco = sys.modules.get("mujoco")
    setter = getattr(mujoco, "set_mju_user_warning", None)
    if setter is not None and getattr(mujoco, "get_mju_user_warning", lambda: None)() is not _mujoco_warning:
        setter(_mujoco_warning)


def _check_factory(factory: Callable[[], gym.Env], env_id: str) -> None:
    mujoco_warnings_once()  # loaded by now if the env is MuJoCo's: its entry point or class is imported
    try:
        env = factory()
    except gym.error.Error as e:
        raise UserError(f"unknown or unusable environment {env_id!r}: {_one_line(e)}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"environment {env_id!r} rejected its arguments: {_one_line(e)}") from None
    except ModuleNotFoundError as e:
        extra = " (install it with: pip install 'duetrl[mujoco]')" if "mujoco" in str(e) else ""
        raise UserError(f"environment {env_id!r} needs a missing package: {e}{extra}") from None
    except gym.error.DependencyNotInstalled as e:  # pragma: no cover - subclass of Error in some versions
        raise UserError(f"environment {env_id!r} needs a missing package: {_one_line(e)}") from None
    except Exception as e:  # the env's own constructor failed: one line here, the traceback with --debug
        raise UserError(f"environment {env_id!r} could not be created: {type(e).__name__}: {_one_line(e)}") from e
    if not isinstance(env, gym.Env):
        raise UserError(f"environment {env_id!r} made a {type(env).__name__}, not a gymnasium.Env")
    env.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# What --backend auto picks: a torch-native env steps its whole batch in a few tensor operations, at a fixed cost
# per batch step that Gymnasium's envs, stepped one by one, pay per env. On a CPU the native env is the faster from
# these batch sizes on (on a GPU always: it spares the transfers). Measured with benchmarks/backend_step_cost.py:
# one torch thread, median of 3 x 2,000 batch steps, microseconds per batch step, Gymnasium / torch-native:
#   Pendulum-v1                n=1: 23 / 51    n=4: 47 / 54     n=8: 80 / 54     n=16: 145 / 54
#   CartPole-v1                n=1: 22 / 69    n=8: 58 / 76     n=16: 101 / 81   n=32: 188 / 88
#   Acrobot-v1                 n=1: 40 / 376   n=8: 208 / 403   n=16: 393 / 404  n=32: 776 / 392
#   MountainCarContinuous-v0   n=1: 17 / 46    n=8: 33 / 46     n=16: 51 / 46    n=32: 89 / 46
# (PPO on Acrobot with 1 env took 31 s native against 12 s on Gymnasium: the Acrobot row.)
NATIVE_MIN_ENVS = {"Pendulum-v1": 8, "CartPole-v1": 16, "Acrobot-v1": 17, "MountainCarContinuous-v0": 16}
NATIVE_MIN_ENVS.update(  # the velocity-masked envs (envs/masked.py) cost what their unmasked base does
    {"PendulumNoVel-v1": 8, "CartPoleNoVel-v1": 16, "MountainCarContinuousNoVel-v0": 16}
)


def auto_backend(env_id: EnvSource, num_envs: int, device: torch.device | str = "cpu") -> str:
    """What ``backend="auto"`` picks for this batch: ``torch`` where duetrl has a native env and it is the faster
    (:data:`NATIVE_MIN_ENVS`, or any batch on a GPU), else ``gymnasium``."""
    if not isinstance(env_id, str) or env_id not in NATIVE_MIN_ENVS:
        return "gymnasium"
    if torch.device(device).type != "cpu":
        return "torch"
    return "torch" if num_envs >= NATIVE_MIN_ENVS[env_id] else "gymnasium"


def make(
    env_id: EnvSource,
    num_envs: int = 1,
    backend: str = "auto",
    device: torch.device | str | None = None,
    vector: str = "sync",
    render_mode: str | None = None,
    wrappers: Iterable[str] = (),
    frame_stack: int = 1,
    **env_kwargs: Any,
) -> BatchEnv:
    """``num_envs`` copies of ``env_id`` (any form :func:`env_factory` takes) behind one batched interface.

    ``backend``: ``"gymnasium"`` (Gymnasium vector envs), ``"torch"`` (torch-native batched envs, where one
    exists) or ``"auto"`` (the faster of the two for this batch, :func:`auto_backend`); the env made says which in
    its ``backend`` attribute. ``wrappers`` and ``frame_stack``: see :func:`env_factory` (Gymnasium envs only)."""
    if num_envs < 1:
        raise UserError(f"num_envs={num_envs} must be at least 1")
    device = torch.device(device or "cpu")
    wrappers = list(wrappers)
    if wrappers or frame_stack > 1:
        if backend == "torch":
            raise UserError(
                f"wrappers and frame_stack apply to Gymnasium's envs, not torch-native ones; use "
                f"{setting('backend', 'gymnasium')}"
            )
        backend = "gymnasium"
    if backend == "auto" and auto_backend(env_id, num_envs, device) == "gymnasium":
        backend = "gymnasium"
    if backend in ("auto", "torch"):
        from duetrl.envs.native import NATIVE_ENVS, make_native

        native_fits = render_mode is None and isinstance(env_id, str) and env_id in NATIVE_ENVS
        if native_fits:
            try:
                check_env_kwargs(env_id, NATIVE_ENVS[env_id], env_kwargs)
            except UserError:
                if backend == "torch":
                    raise
                native_fits = False  # auto: Gymnasium's env may take what the native one does not
        native = make_native(env_id, num_envs, device=device, **env_kwargs) if native_fits else None
        if native is not None:
            return native
        if backend == "torch":
            register_namespace(env_id)
            image = isinstance(env_id, str) and env_id in gym.registry and _has_image_obs(env_id, env_kwargs)
            why = "has image observations, which only Gymnasium's envs give" if image else "has no torch-native twin"
            raise UserError(
                f"{env_name(env_id)!r} {why} (torch-native envs: {', '.join(sorted(NATIVE_ENVS))}); "
                f"use {setting('backend', 'gymnasium')}"
            )
    elif backend != "gymnasium":
        raise UserError(f"unknown backend {backend!r}: use auto, torch or gymnasium")
    factory = env_factory(env_id, render_mode=render_mode, wrappers=wrappers, frame_stack=frame_stack, **env_kwargs)
    return GymnasiumBatchEnv(factory, num_envs, vector=vector, device=device)


def _has_image_obs(env_id: str, env_kwargs: dict[str, Any]) -> bool:
    from duetrl.encoders import has_images

    try:
        env = gym.make(env_id, **env_kwargs)
    except Exception:
        return False
    try:
        return has_images(env.observation_space)
    finally:
        env.close()
