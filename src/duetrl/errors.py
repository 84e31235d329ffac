"""Errors a user can fix (the CLI prints them as one line and exits with code 2), and the one-line notices
printed beside them."""

import sys


class UserError(Exception):
    """A mistake in what the user asked for (config, flags, files); the message says how to fix it."""


class TrainingError(RuntimeError):
    """Training had to stop (NaN loss, environment crash); the last good checkpoint is kept."""


def say(kind: str, message: str) -> None:
    """One line on stderr: ``duetrl: KIND: MESSAGE`` (``warning`` when a setting wastes the run, ``note`` for
    what the user should know)."""
    print(f"duetrl: {kind}: {message}", file=sys.stderr)
