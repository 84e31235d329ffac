"""Errors a user can fix (the CLI prints them as one line and exits with code 2), and the one-line notices
printed beside them."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class UserError(Exception):
    """A mistake in what the user asked for (config, flags, files); the message says how to fix it."""


class TrainingError(RuntimeError):
    """Training had to stop (NaN loss, environment crash); the last good checkpoint is kept."""


def say(kind: str, message: str) -> None:
    """One line on stderr: ``duetrl: KIND: MESSAGE`` (``warning`` when a setting wastes the run, ``note`` for
    what the user should know)."""
    print(f"duetrl: {kind}: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- naming settings

# Settings with a flag of their own; the others are ``--set key=value`` on the command line.
FLAGS = {
    "env_id": "ENV_ID",
    "algo": "--algo",
    "preset": "--preset",
    "config": "--config",
    "steps": "--steps",
    "seed": "--seed",
    "num_envs": "--num-envs",
    "env_kwargs": "--env-kwargs",
    "backend": "--backend",
    "device": "--device",
    "run_dir": "--run-dir",
    "imports": "--import",
    "wrappers": "--wrap",
    "target_return": "--target-return",
    "resume": "--resume",
    "video": "--video",
    "render": "--render",
    "x": "--x",
    "band": "--band",
    "format": "--format",
    "checkpoint": "--checkpoint",
}
_NOTHING = object()
_voice = {"cli": False}


@contextmanager
def command_line() -> Iterator[None]:
    """Within it, messages name settings as flags (``--algo ppo``); outside, as Python arguments (``algo='ppo'``).
    The ``duetrl`` command runs inside it."""
    before = _voice["cli"]
    _voice["cli"] = True
    try:
        yield
    finally:
        _voice["cli"] = before


def on_command_line() -> bool:
    """True inside :func:`command_line`."""
    return _voice["cli"]


def setting(key: str, value: Any = _NOTHING) -> str:
    """A setting as the user gave it: ``--algo ppo`` / ``--set gamma=0.9`` on the command line, ``algo='ppo'`` /
    ``gamma=0.9`` from Python."""
    if not _voice["cli"]:
        return key if value is _NOTHING else f"{key}={value!r}"
    flag = FLAGS.get(key)
    if flag is None:
        return f"--set {key}" if value is _NOTHING else f"--set {key}={value}"
    return flag if value is _NOTHING else f"{flag} {value}"


def given_as() -> str:
    """Where settings given directly come from: ``flags`` on the command line, ``keyword arguments`` from Python."""
    return "flags" if _voice["cli"] else "keyword arguments"
