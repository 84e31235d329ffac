"""A one-line description of every setting, for ``duetrl params``: taken from the config dataclasses themselves.

A field's description is the trailing comment of its line in the dataclass (``steps: int = 100_000  # total
environment steps``), read from the source, joined to an entry of :data:`HELP` where the comment alone does not
say what the setting is (``squash: str = "clip"  # clip | tanh``) or the field has none. A ``HELP`` key is a
setting's name, or ``Class.name`` for one class's field. ``tests/test_params.py`` checks that every field of every
config class gets a description and that every ``HELP`` entry is used, so neither can drift from the dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any

HELP: dict[str, str] = {
    # networks and optimisation
    "hidden": "widths of the hidden layers",
    "actor_hidden": "widths of the actor's hidden layers",
    "critic_hidden": "widths of the critic's hidden layers",
    "activation": "activation function of the hidden layers",
    "lr": "learning rate",
    "actor_lr": "learning rate of the actor",
    "critic_lr": "learning rate of the critic",
    "optimizer": "the optimiser",
    "PPOConfig.anneal_lr": "the learning rate falls linearly to 0 over the run",
    "max_grad_norm": "gradient-norm clip of each update",
    "ortho_init": "orthogonal initialisation of the networks",
    "gamma": "discount factor",
    # on-policy
    "critic": "what the critic estimates",
    "advantage": "how advantages are estimated",
    "nstep": "steps of the n-step returns (advantage=nstep)",
    "gae_lambda": "lambda of GAE(lambda) advantages",
    "update_every": "when the agent updates",
    "normalize_advantage": "standardise advantages within each update",
    "ent_coef": "weight of the entropy bonus",
    "bootstrap_truncation": "bootstrap from the critic's value where a time limit cuts an episode",
    "state_dependent_std": "the policy's std is an output of the network (false: a learned vector)",
    "log_std_init": "initial log std of the policy (with state_dependent_std=false)",
    "log_std_min": "lower clamp of the policy's log std",
    "log_std_max": "upper clamp of the policy's log std",
    "squash": "how a Gaussian sample is brought within the action bounds",
    "clip_log_prob": "log-probability of a clipped action as the probability mass beyond the bound",
    "normalize_obs": "standardise observations with running statistics",
    "PPOConfig.normalize_reward": "divide rewards by the running std of the discounted return",
    "epochs": "passes over each rollout",
    "minibatch_size": "samples per gradient step",
    "clip_coef": "clip range of the probability ratio",
    "clip_vf": "clip range of the value update",
    "vf_coef": "weight of the value loss",
    "target_kl": "approximate KL at which an update's epochs stop",
    # off-policy
    "batch_size": "transitions per gradient step",
    "buffer_size": "transitions the replay buffer holds",
    "n_critics": "Q networks whose minimum is the target",
    "critic_layer_norm": "LayerNorm after each hidden layer of the critics",
    "critic_dropout": "dropout rate in the critics",
    "alpha_lr": "learning rate of the entropy temperature",
    "autotune_alpha": "tune the entropy temperature towards target_entropy",
    "target_entropy": "entropy the temperature is tuned towards",
    "target_entropy_final": "target entropy at the end of the run",
    "noise_type": "exploration noise process",
    "ou_theta": "mean-reversion rate of the Ornstein-Uhlenbeck noise",
    "target_noise_clip": "clip of the target policy smoothing noise",
}


def field_comments(cls: type) -> dict[str, str]:
    """The trailing comment of each field's line, read from the source of ``cls`` and its dataclass bases (the
    class's own wins; a field it redefines without a comment keeps its base's)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a zipped install): the HELP entries still describe the fields
            continue
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.end_lineno - 1] + "\n"  # type: ignore[operator]
                for token in tokenize.generate_tokens(io.StringIO(line).readline):
                    if token.type == tokenize.COMMENT:
                        text = token.string.lstrip("#").strip()
                        if text and not text.startswith(("noqa", "type:")):
                            comments[node.target.id] = text
    return comments


def describe(cls: type, field: str, comments: dict[str, str] | None = None) -> str:
    """One line saying what ``field`` of config class ``cls`` is; empty if nothing does."""
    comment = (field_comments(cls) if comments is None else comments).get(field)
    help_text = next(
        (HELP[f"{k.__name__}.{field}"] for k in cls.__mro__ if f"{k.__name__}.{field}" in HELP), HELP.get(field)
    )
    if help_text and comment:
        return f"{help_text} ({comment})"
    return help_text or comment or ""


def rows(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for each field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
        out.append((f.name, kind, default, describe(cls, f.name, comments)))
    return out
