"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in what the user asked for (config, flags, files); the message says how to fix it."""


class TrainingError(RuntimeError):
    """Training had to stop (NaN loss, environment crash); the last good checkpoint is kept."""
