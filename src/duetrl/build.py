"""Building an agent for a config, and rebuilding a run's config and agent from a checkpoint.

Written once here, used by training (``loop.Trainer``), ``duetrl.resume`` and ``duetrl.load``. A checkpoint
becomes a run again in two steps, because training opens its environments in between (they follow from the
config, and the agent must fit their spaces): :func:`saved_config`, then :func:`restore_agent`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from duetrl import checkpoint as ckpt
from duetrl.algos import get_algo
from duetrl.algos.base import Agent
from duetrl.config import RESUMABLE, Config, resolve
from duetrl.cores import acting
from duetrl.encoders import batch_of_one, batch_size, check_space, is_batch, to_tensor
from duetrl.envs import import_modules
from duetrl.envs.make import EnvSource, env_factory
from duetrl.errors import UserError, setting
from duetrl.policy import action_kind


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA where there is none is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting('device', name)} but CUDA is not available here; use {setting('device', 'cpu')}")
    return device


def run_dir_default(env_id: str, algo: str, seed: int) -> Path:
    """``runs/<env>-<algo>-s<seed>-<time>-<pid>``: a new directory for every run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in env_id.strip("<>")).strip("_")
    return Path("runs") / f"{safe}-{algo}-s{seed}-{stamp}-{os.getpid()}"


def build_agent(cfg: Config, obs_space: gym.Space, act_space: gym.Space, device: torch.device) -> Agent:
    """The configured algorithm's agent for ``cfg.run.num_envs`` envs, after checking it fits the action space."""
    spec = get_algo(cfg.run.algo)
    check_space(obs_space)
    discrete = action_kind(act_space) != "gaussian"
    if discrete and not spec.discrete:
        raise UserError(
            f"{setting('algo', spec.name)} needs continuous actions; {cfg.run.env_id} has discrete actions "
            "(try ppo, a2c or ac)"
        )
    if not discrete and not spec.continuous:
        raise UserError(f"{setting('algo', spec.name)} needs discrete actions; {cfg.run.env_id} has continuous actions")
    return spec.agent_class(discrete)(cfg.algo, obs_space, act_space, cfg.run.num_envs, device)


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A checkpoint file's saved state, with its path for messages."""

    path: Path
    state: dict[str, Any]


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint written by ``duetrl train`` (it holds the run's config and agent), or a UserError."""
    state = ckpt.load(path)
    if "config" not in state or "agent" not in state:
        raise UserError(f"checkpoint {path} lacks the config or the agent: it was not written by duetrl train")
    return Checkpoint(Path(path), state)


def resolved_config(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """A :class:`Config` from its ``to_dict()`` (with ``overrides`` on top): every key is taken as saved and no
    preset is applied (the ``preset`` key only records which one the values came from). Checkpoints and sweeps keep
    configs this way, so a later change of duetrl's defaults or of a preset file does not move a run that started."""
    values = dict(values)
    preset = values.pop("preset", None)
    cfg, _ = resolve(config_file=values, overrides=overrides, lookup=get_algo)
    cfg.run.preset = preset
    return cfg


def saved_config(checkpoint: Checkpoint, changes: dict[str, Any] | None = None) -> Config:
    """The run's config as saved, with ``changes`` to the settings a resumed run may change (``RESUMABLE``: its
    length, evaluation, logging and checkpoint cadence); a change to any other is a UserError naming them all.
    Every key was saved resolved, so no preset is applied on top; ``run.preset`` still names the run's own."""
    saved = checkpoint.state["config"]
    cfg = resolved_config(saved)
    preset = cfg.run.preset
    if not changes:
        return cfg
    refused, rest, saved_and_asked = [], {}, []
    for key, value in changes.items():
        if key == "preset":  # the recorded id, or its name, is no change
            if value is not None and value not in (preset, (preset or "").rsplit("/", 1)[-1]):
                refused.append(key)
        elif key == "algo":
            if str(value).lower() != cfg.run.algo:
                refused.append(key)
        elif key == "env_id":
            if value != cfg.run.env_id:
                refused.append(key)
        else:
            rest[key] = value
    if refused:  # another algorithm or env: the other keys are named as given, not resolved against the old one
        refused += [key for key in rest if key not in RESUMABLE]
    else:
        changed = resolved_config(saved, rest)
        before, after = cfg.to_dict(), changed.to_dict()
        refused = [key for key in after if key != "preset" and after[key] != before[key] and key not in RESUMABLE]
        saved_and_asked = [f"{key} {before[key]!r} -> {after[key]!r}" for key in refused]  # e.g. rnn 'lstm' -> 'gru'
    if refused:
        asked = f" ({', '.join(saved_and_asked)})" if saved_and_asked else ""
        raise UserError(
            f"a resumed run cannot change {', '.join(refused)}: it would be another run{asked} (on resume only "
            f"{', '.join(sorted(RESUMABLE))} can change); start a new run from its settings instead "
            f"({checkpoint.path.parent.parent / 'config.yaml'} as the config file)"
        )
    return changed


def space_signature(obs_space: gym.Space, act_space: gym.Space) -> dict[str, str]:
    """What a checkpoint records of the spaces it was trained on."""
    return {"observation": str(obs_space), "action": str(act_space)}


def probe_spaces(cfg: Config, env_source: Any = None) -> tuple[gym.Space, gym.Space]:
    """The observation and action space of one Gymnasium env as ``cfg`` configures it (of ``env_source`` when the
    env was given as a Python object)."""
    import_modules(cfg.run.imports)
    source = cfg.run.env_id if env_source is None else env_source
    env = env_factory(source, wrappers=cfg.run.wrappers, frame_stack=cfg.run.frame_stack, **cfg.run.env_kwargs)()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def restore_agent(
    checkpoint: Checkpoint,
    cfg: Config,
    obs_space: gym.Space,
    act_space: gym.Space,
    device: torch.device,
    weights_only: bool = False,
) -> Agent:
    """The agent saved in ``checkpoint``, built for ``cfg`` on envs with these spaces (which must be the ones it
    was trained on). ``weights_only`` leaves optimisers and counters fresh: enough to act, not to resume."""
    saved = checkpoint.state.get("spaces", {})
    now = space_signature(obs_space, act_space)
    if saved and saved != now:
        raise UserError(
            f"checkpoint {checkpoint.path} was trained on other spaces ({saved['observation']} -> "
            f"{saved['action']}) than this environment ({now['observation']} -> {now['action']})"
        )
    agent = build_agent(cfg, obs_space, act_space, device)
    try:
        agent.load_state_dict(checkpoint.state["agent"], weights_only=weights_only)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {checkpoint.path} does not fit this agent (other shapes or algorithm): {first}"
        ) from None
    return agent


# ---------------------------------------------------------------------------------------------- acting


class LoadedAgent:
    """A trained policy: ``act(obs)`` for a single observation or a batch. ``duetrl.load`` gives one from a run
    directory, and ``duetrl.train`` one of the agent it trained (``TrainResult.agent``).

    A recurrent policy (trained with ``rnn=lstm`` or ``gru``) acts with a state it carries from step to step::

        state = agent.initial_state()           # one env; initial_state(B) for a batch of B
        action, state = agent.act(obs, state)   # the next state comes back with the action
        if terminated or truncated:
            state = agent.initial_state()       # a new episode starts from a fresh state
                                                # (a batch: state = agent.reset_state(state, done))

    A memoryless policy takes the same calls (its state is empty), so code written for both works with either."""

    def __init__(self, config: Config, agent: Any, device: torch.device, checkpoint: Path, env: EnvSource = None):
        self.config, self.agent, self.device, self.checkpoint = config, agent, device, checkpoint
        self.env = config.run.env_id if env is None else env  # what evaluate() makes its envs from
        self.agent.train_mode(False)

    @property
    def env_id(self) -> str:
        return self.config.run.env_id

    @property
    def recurrent(self) -> bool:
        """Whether the policy has memory (``rnn`` other than none): then ``act`` needs a state."""
        return bool(getattr(self.agent, "recurrent", False))

    def initial_state(self, batch: int | None = None) -> np.ndarray:
        """The state at the start of an episode: zeros ``[S]`` for one env, ``[batch, S]`` for a batch (``S`` is 0
        for a memoryless policy)."""
        if not hasattr(self.agent, "initial_state"):
            return np.zeros((0,) if batch is None else (batch, 0), dtype=np.float32)
        state = self.agent.initial_state(1 if batch is None else batch).cpu().numpy()
        return state[0] if batch is None else state

    @staticmethod
    def reset_state(state: np.ndarray, done: Any) -> np.ndarray:
        """``state [B, S]`` with the rows of envs whose episode ended (``done [B]``) back at the initial state."""
        return np.where(np.asarray(done, dtype=bool)[:, None], 0.0, state).astype(np.float32)

    def act(self, obs: Any, state: Any = None, deterministic: bool | None = None) -> Any:
        """Env action(s) for an observation ``[obs_dim]`` or a batch ``[B, obs_dim]``, as numpy; for a Dict or
        Tuple space, a dict or tuple of them (one observation or a batch), an image as the env gives it. Given a
        ``state`` (from :meth:`initial_state`, then from the previous call), returns ``(action, next_state)``; a
        recurrent policy needs one. ``act(obs, True)`` (deterministic given in second place, as before states)
        still works."""
        if isinstance(state, bool):
            state, deterministic = None, state
        if deterministic is None:
            deterministic = self.config.run.eval_deterministic
        space = self.agent.obs_space
        if not isinstance(space, gym.spaces.Box):
            try:
                single = not is_batch(space, obs)
                batch = to_tensor(space, batch_of_one(space, obs) if single else obs, self.device)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise UserError(
                    f"an observation {type(obs).__name__} does not fit {self.env_id}, whose observations "
                    f"are {space}: {e}"
                ) from None
            return self._act_batch(batch, single, state, deterministic)
        array = np.asarray(obs)
        shape = tuple(space.shape)
        if array.shape[array.ndim - len(shape) :] != shape or array.ndim > len(shape) + 1:
            raise UserError(
                f"an observation of shape {array.shape} does not fit {self.env_id}, whose observations have shape "
                f"{shape}: pass one of shape {shape}, or a batch of shape (B, {', '.join(map(str, shape))})"
            )
        single = array.ndim == len(shape)
        batch = to_tensor(space, array[None] if single else array, self.device)  # uint8 images stay uint8
        return self._act_batch(batch, single, state, deterministic)

    def _act_batch(self, batch: Any, single: bool, state: Any, deterministic: bool) -> Any:
        """act's answer for a batch of observations already on the device (``single``: it is one, batched)."""
        if state is None:
            if self.recurrent:
                raise UserError(
                    f"this policy is recurrent (rnn={self.config.algo.rnn}): act with its state, "
                    "action, state = agent.act(obs, state), starting from state = agent.initial_state()"
                )
            with torch.no_grad():
                action = self.agent.act(batch, deterministic=deterministic).cpu().numpy()
            return action[0] if single else action
        rows = batch_size(batch)  # a Dict or Tuple observation: the batch of its leaves
        states = torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)
        states = states[None] if single else states
        if tuple(states.shape) != (rows, self.initial_state(1).shape[-1]):
            raise UserError(
                f"a state of shape {tuple(np.shape(state))} does not fit this policy: use agent.initial_state() "
                "(or initial_state(B) for a batch of B observations) and the states act returns"
            )
        if self.recurrent:
            action, states = self.agent.act_step(batch, states, deterministic)
        else:
            with torch.no_grad():
                action = self.agent.act(batch, deterministic=deterministic)
        action, states = action.cpu().numpy(), states.cpu().numpy()
        return (action[0], states[0]) if single else (action, states)

    def act_fn(self, deterministic: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """The act function of :func:`duetrl.evaluate.evaluate_policy` for this policy (with memory if it has)."""
        return acting(self.agent, deterministic)
