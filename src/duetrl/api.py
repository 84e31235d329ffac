"""The public Python API: ``train``, ``load``, ``evaluate``. The CLI only parses and calls these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from duetrl import checkpoint as ckpt
from duetrl.algos import get_algo
from duetrl.build import (
    LoadedAgent,
    probe_spaces,
    read_checkpoint,
    resolve_device,
    restore_agent,
    run_dir_default,
    saved_config,
)
from duetrl.callbacks import Callback
from duetrl.config import Config, RunConfig, load_yaml_file
from duetrl.config import resolve as resolve_config
from duetrl.deploy import ExportResult, evaluate_exported, output_of
from duetrl.deploy import export as write_policy
from duetrl.envs.make import EnvSource, env_name
from duetrl.errors import UserError, say
from duetrl.evaluate import EVAL_SEED_BASE, EvalResult, evaluate_policy, render_episodes
from duetrl.loop import Trainer, TrainResult, torch_threads


def resolve(
    env_id: str | None = None,
    algo: str | None = None,
    preset: str | None = None,
    config_file: str | Path | dict | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Config, str | None]:
    """The validated :class:`Config` of a run: defaults < preset < config file < overrides, for a registered
    algorithm; also the id of the preset used (None if none). See :func:`duetrl.config.resolve`."""
    return resolve_config(env_id, algo, preset, config_file, overrides, lookup=get_algo)


def names_an_env(config: str | Path | dict | None, settings: dict[str, Any]) -> bool:
    """Whether a config file (or dict) or the settings name the environment (``env_id``)."""
    file_values = dict(config) if isinstance(config, dict) else load_yaml_file(config) if config else {}
    return settings.get("env_id", file_values.get("env_id")) is not None


def train(
    env_id: EnvSource = None,
    algo: str | None = None,
    *,
    preset: str | None = None,
    config: Config | str | Path | dict | None = None,
    run_dir: str | Path | None = None,
    quiet: bool = False,
    callbacks: list[Callback] | None = None,
    sinks: list[Any] | None = None,
    **settings: Any,
) -> TrainResult:
    """Train an agent and return where its run directory is and how it evaluates.

    ``env_id`` is the environment: a Gymnasium id (``"Pendulum-v1"``), a ``"module:Class"`` string, an env class,
    a function that makes an env (both called with ``env_kwargs``), or a made ``gymnasium.Env`` (copied with
    ``copy.deepcopy`` for each env of the batch). The run's config.yaml records its name (``module:Class`` for a
    class or function); an env that name cannot make again (an instance, a lambda, a class defined in ``__main__``)
    is passed again to :func:`load` and :func:`resume` as ``env=``.

    ``settings`` are any config keys (``steps=20_000, seed=1, gamma=0.98, env_kwargs={"g": 0}``), layered over
    the preset and the config file (``config`` may also be an already resolved :class:`Config`).

    ``callbacks``: :class:`duetrl.Callback` instances, called in the loop (custom metrics, early stopping, saving;
    see :mod:`duetrl.callbacks`); ``sinks``: objects with ``write(row)`` and ``close()``, given each metrics row.
    Example: ``duetrl.train("Pendulum-v1", "ac", preset="chapter")``."""
    env_object = None if env_id is None or isinstance(env_id, str) else env_id
    if env_id is None and not isinstance(config, Config) and not names_an_env(config, settings):
        raise UserError("no environment to train on: name one, as in duetrl.train('Pendulum-v1', 'ppo')")
    if isinstance(config, Config):
        cfg = config
    else:
        cfg, _ = resolve(env_id if env_object is None else env_name(env_object), algo, preset, config, settings)
    run_dir = Path(run_dir) if run_dir else run_dir_default(cfg.run.env_id, cfg.run.algo, cfg.run.seed)
    return Trainer(cfg, run_dir, quiet=quiet, sinks=sinks, env=env_object, callbacks=callbacks).train()


def resume(
    run_dir: str | Path,
    steps: int | None = None,
    quiet: bool = False,
    sinks: list[Any] | None = None,
    env: EnvSource = None,
    callbacks: list[Callback] | None = None,
    **settings: Any,
) -> TrainResult:
    """Continue a stopped run from its last checkpoint up to ``steps`` env steps in all (``env``: the env again,
    when it was given to :func:`train` as a Python object its name cannot make again).

    ``settings`` may change how long the run goes on and how it evaluates, logs and checkpoints
    (:data:`duetrl.config.RESUMABLE`: ``eval_every=5000``, ``target_return=-200``, ...); asking to change any other
    setting is a UserError, raised before anything is written."""
    checkpoint = read_checkpoint(ckpt.latest_checkpoint(Path(run_dir)))
    if steps is not None:
        settings["steps"] = steps
    cfg = saved_config(checkpoint, settings)
    trainer = Trainer(cfg, Path(run_dir), quiet=quiet, sinks=sinks, resume=checkpoint, env=env, callbacks=callbacks)
    return trainer.train()


def load(run_dir: str | Path, checkpoint: str = "latest", device: str = "cpu", env: EnvSource = None) -> LoadedAgent:
    """The agent saved in ``run_dir`` (``checkpoint``: "latest", "best" or a file path); ``run_dir`` may also be
    a checkpoint file itself (``runs/x/checkpoints/best.safetensors``). ``env``: the env, when it was given to
    :func:`train` as a Python object that its recorded name cannot make again (see :func:`train`)."""
    run_dir = Path(run_dir)
    if run_dir.suffix == ".safetensors" or run_dir.is_file():
        if checkpoint != "latest":
            raise UserError(
                f"{run_dir} is a checkpoint file already: give it alone, or its run directory with a checkpoint"
            )
        run_dir, checkpoint = run_dir.parent.parent, str(run_dir)
    if checkpoint == "latest":
        path = ckpt.latest_checkpoint(run_dir)
    elif checkpoint == "best":
        path = ckpt.checkpoint_dir(run_dir) / "best.safetensors"
    else:
        path = Path(checkpoint)
    checkpoint = read_checkpoint(path)
    cfg = saved_config(checkpoint)
    torch_device = resolve_device(device)
    agent = restore_agent(checkpoint, cfg, *probe_spaces(cfg, env), torch_device, weights_only=True)
    return LoadedAgent(cfg, agent, torch_device, path, env)


def evaluate(
    agent: LoadedAgent | str | Path,
    episodes: int = 10,
    deterministic: bool | None = None,
    seed: int = EVAL_SEED_BASE,
    env_kwargs: dict[str, Any] | None = None,
    render: str | None = None,
    video: str | Path | None = None,
    env: EnvSource = None,
) -> EvalResult:
    """Evaluate a loaded agent (or a run directory, or a policy file written by :func:`export`) on held-out
    episodes of Gymnasium's own environment.

    ``render="human"`` opens a window; ``video="out.mp4"`` (or .gif) records the episodes instead. ``env``: the
    env to evaluate on, in any form :func:`train` takes (default: the run's own). An exported policy always acts
    deterministically."""
    if episodes < 1:
        raise UserError(f"episodes={episodes} must be at least 1")
    if isinstance(agent, (str, Path)) and Path(agent).suffix.lower() in (".onnx", ".pt2"):
        if deterministic is False:
            raise UserError(f"{Path(agent).name} is a deterministic policy: it cannot sample actions")
        result = evaluate_exported(agent, episodes, seed, env_kwargs, env, render, video)
        warning = result.cap_warning(str(env or Path(agent).name))
        if warning:
            say("warning", warning)
        return result
    loaded = agent if isinstance(agent, LoadedAgent) else load(agent, env=env)
    source = loaded.env if env is None else env
    run: RunConfig = loaded.config.run
    torch.set_num_threads(torch_threads(run))  # as in training: a busy machine starves multi-threaded small MLPs
    if deterministic is None:
        deterministic = run.eval_deterministic
    kwargs = run.env_kwargs if env_kwargs is None else env_kwargs
    act = loaded.act_fn(deterministic)
    wrapping = {"wrappers": run.wrappers, "frame_stack": run.frame_stack}  # the run's own, as in training
    if render is not None or video is not None:
        result = render_episodes(
            act, source, kwargs, episodes, seed, render or "human", video, max_steps=run.eval_max_steps, **wrapping
        )
    else:
        result = evaluate_policy(act, source, kwargs, episodes, seed, max_steps=run.eval_max_steps, **wrapping)
    result.deterministic = deterministic
    warning = result.cap_warning(run.env_id)
    if warning:
        say("warning", warning)
    return result


def export(
    run: str | Path,
    output: str | Path | None = None,
    format: str | None = None,
    checkpoint: str = "last",
    env: EnvSource = None,
) -> ExportResult:
    """Write the run's policy as one self-contained deterministic file: the raw env observation in, the env action
    out, with the observation normaliser, the action bounds and squash (or argmax) inside, and a JSON sidecar
    (``policy.onnx.json``) of the spaces, env and config; the file is checked against the torch policy first.

    ``run``: a run directory or checkpoint file; ``format``: ``"onnx"`` (needs the ``export`` extra) or ``"pt2"``,
    by default from ``output``'s suffix, else onnx; ``output``: default ``RUN/policy.onnx``; ``checkpoint``:
    ``"last"``, ``"best"`` or a file. See :mod:`duetrl.deploy`."""
    path, format = output_of(run, output, format)
    loaded = load(run, checkpoint="latest" if checkpoint in ("last", "latest") else checkpoint, env=env)
    return write_policy(loaded, path, format)


def train_population(
    env_id: str | None = None,
    algo: str | None = None,
    *,
    seeds: list[int],
    grid: dict[str, list[Any]] | None = None,
    preset: str | None = None,
    config: str | Path | dict | None = None,
    run_dir: str | Path,
    quiet: bool = False,
    sinks: list[Any] | None = None,
    **settings: Any,
) -> Any:
    """Train ``seeds`` times the ``grid`` of hyperparameters (``{"lr": [1e-3, 3e-4]}``) as ONE population in one
    process (see :mod:`duetrl.population`): each member writes an ordinary run directory under ``run_dir``
    (``seed_<s>/``, or ``<setting>/seed_<s>/`` for a grid). Returns a :class:`duetrl.population.PopulationResult`
    whose ``summary`` holds, per setting, the mean, median and IQM of the final returns with 95% CIs, and how many
    members reached ``target_return`` and when."""
    from duetrl.population import PopulationTrainer, grid_configs

    if not seeds:
        raise UserError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if seeds.count(s) > 1)
        raise UserError(f"seed {dup} appears twice in the seeds: give each seed once")
    if "seed" in settings:
        raise UserError("give either seed (one run) or seeds (a population), not both")
    configs = grid_configs(
        settings, list(seeds), dict(grid or {}), lambda overrides: resolve(env_id, algo, preset, config, overrides)[0]
    )
    memory = getattr(configs[0].algo, "rnn", "none")
    if memory != "none" and configs[0].run.algo in ("sac", "td3", "ddpg"):  # (ppo's refusal is in planning.py)
        raise UserError(
            f"rnn={memory} (memory: a recurrent core replayed over sequences) is not yet trained per member in a "
            "population; change it or use duetrl sweep"
        )
    return PopulationTrainer(configs, Path(run_dir), quiet=quiet, sinks=sinks).train()


def resume_population(run_dir: str | Path, quiet: bool = False, sinks: list[Any] | None = None, **settings: Any) -> Any:
    """Continue a stopped population from the last step that every unfinished member checkpointed (a member
    whose newer checkpoint was written before the stop rewinds to it); finished members stay finished.
    ``settings``: the resumable ones, as for :func:`resume`."""
    import json

    from duetrl.population import POPULATION_FILE, PopulationTrainer

    root = Path(run_dir)
    record = json.loads((root / POPULATION_FILE).read_text())
    previous, waiting = [], []
    for member in record["members"]:
        member_dir = root / member["run_dir"]
        done = member_dir / "result.json"
        result = json.loads(done.read_text()) if done.exists() else {}
        if result.get("stopped"):  # reached the target or failed: it stays so (one that ran its steps may go on)
            row = {"run_dir": str(member_dir), "seed": member["seed"], "label": member["label"]}
            row["stopped"] = result["stopped"]
            if result.get("final_eval"):
                row["final"] = result["final_eval"]["mean_return"]
            previous.append(row)
        else:
            waiting.append(member_dir)
    if not waiting:
        raise UserError(f"every member of the population in {root} has finished: nothing to resume")
    steps = [{int(ckpt.STEP_FILE.match(p.name).group(1)): p for p in ckpt.list_checkpoints(d)} for d in waiting]
    if not all(steps):
        missing = next(d for d, s in zip(waiting, steps, strict=False) if not s)
        raise UserError(f"no checkpoint in {ckpt.checkpoint_dir(missing)}: the population stopped before its first")
    common = min(max(s) for s in steps)
    if not all(common in s for s in steps):
        raise UserError(f"the members of {root} share no checkpoint step: resume each member's directory alone")
    for found in steps:  # newer checkpoints than the common step were written before the stop: rewind
        for step, path in found.items():
            if step > common:
                path.unlink()
    checkpoints = [read_checkpoint(s[common]) for s in steps]
    configs = [saved_config(c, settings) for c in checkpoints]
    trainer = PopulationTrainer(configs, root, quiet=quiet, resume=checkpoints, dirs=waiting, sinks=sinks)
    trainer.previous = previous
    return trainer.train()
