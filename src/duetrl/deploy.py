"""``duetrl export`` and deployment: a trained run as one self-contained deterministic policy file, and that file
run again.

The file (ONNX, or torch.export's ``.pt2``) maps the raw environment observation to the action in environment
units, with everything in between traced into it from the agent's :meth:`~duetrl.algos.base.Agent.deployable`
module: the observation normaliser, the policy's mode (argmax, or the Gaussian mean), the clipping or tanh squash
and the scaling onto the action bounds. A policy exported without its normaliser acts wrongly without any error
(Isaac Lab #2635), so nothing is left for the user to re-apply. The batch dimension is dynamic.

Beside it, ``<file>.json`` (the *sidecar*) records the spaces, the env id and kwargs, the input and output names,
the held-out evaluation seeds and the run's whole configuration: enough to run the policy with onnxruntime,
gymnasium and numpy only (``docs/examples/onnx_policy.py``).

Before the file is kept, :func:`export` runs it (onnxruntime for ONNX, ``torch.export.load`` for pt2) on
observations drawn from the env by the policy itself and compares it with the torch policy: a difference beyond
``PARITY_TOLERANCE`` is an error and no file is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from duetrl.build import LoadedAgent
from duetrl.errors import UserError, setting

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}  # file suffix -> format
SIDECAR_FORMAT = "duetrl-policy-1"
PARITY_TOLERANCE = 1e-5  # largest |exported - torch| action difference accepted, in env units
PARITY_ENVS, PARITY_STEPS = 8, 64  # observations for the parity check: 8 envs x 64 steps of the policy itself
PARITY_SEED = 2_000_000  # their seeds: neither training's nor evaluation's (EVAL_SEED_BASE = 1_000_000)


# ---------------------------------------------------------------------------------------------- optional extras


def require(format: str) -> None:
    """A UserError naming the extra to install when ``format``'s exporter or runtime is missing."""
    if format == "onnx":
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
        if missing:
            raise UserError(
                f"the onnx format needs {', '.join(missing)}, not installed here: pip install 'duetrl[export]'"
            )
    elif format != "pt2":
        raise UserError(f"unknown export format {format!r}: use onnx or pt2")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- exporting


@dataclass
class ExportResult:
    """What :func:`export` wrote and how closely the file matched the torch policy."""

    path: Path  # the policy file
    sidecar: Path  # its JSON description
    format: str  # "onnx" or "pt2"
    max_error: float  # largest |exported - torch| action difference over the parity observations
    observations: int  # how many observations the parity check compared on

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sidecar": str(self.sidecar),
            "format": self.format,
            "max_error": self.max_error,
            "parity_observations": self.observations,
        }


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON description of a policy file lives: ``policy.onnx`` -> ``policy.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def output_of(run: str | Path, output: str | Path | None, format: str | None) -> tuple[Path, str]:
    """Where :func:`export` writes and in which format, checked before any work: ``format`` defaults to
    ``output``'s suffix, else onnx; ``output`` to ``RUN/policy.onnx`` (or ``.pt2``)."""
    if format is None:
        format = FORMATS.get(Path(output).suffix.lower(), "onnx") if output is not None else "onnx"
    require(format)
    suffix = "." + format
    if output is None:
        run_path = Path(run)
        base = run_path.parent.parent if run_path.is_file() else run_path
        output = base / f"policy{suffix}"
    output = Path(output)
    if output.suffix.lower() != suffix:
        raise UserError(f"{output.name}: a {format} policy file must end in {suffix}")
    return output, format


def export(loaded: LoadedAgent, output: Path, format: str) -> ExportResult:
    """Write the deterministic policy of a loaded agent to ``output`` (``format`` "onnx" or "pt2"), with its
    sidecar, after checking the file against the torch policy (see the module's docstring). The public entry is
    :func:`duetrl.export`, which loads the run and picks ``output`` (:func:`output_of`)."""
    if loaded.recurrent:
        raise UserError(
            f"export of recurrent policies is not supported yet (this run has rnn={loaded.config.algo.rnn}); "
            "evaluate it with duetrl eval RUN, or act with duetrl.load(RUN).act(obs, state)"
        )
    space = loaded.agent.obs_space
    if not isinstance(space, gym.spaces.Box):  # one input tensor per file for now; a Dict would need one per key
        raise UserError(
            f"exporting a policy whose observations are {type(space).__name__} is not supported yet: duetrl export "
            "takes Box observations (vectors or images); use duetrl.load(run).act for this run"
        )
    try:
        module = loaded.agent.deployable().eval()
    except NotImplementedError as e:
        raise UserError(f"{loaded.config.run.algo} policies cannot be exported yet: {e}") from None
    observations = parity_observations(module, loaded.env, loaded.config.run.env_kwargs)
    example = module.example_inputs(observations[:2])

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")  # torch.export.save wants its suffix
    try:
        opset = write_onnx(module, example, tmp) if format == "onnx" else write_pt2(module, example, tmp)
        max_error = parity(tmp, format, module, observations)
        if not max_error <= PARITY_TOLERANCE:
            raise UserError(
                f"the exported policy differs from the torch policy by {max_error:.3g} (more than "
                f"{PARITY_TOLERANCE:g}) on observations of {loaded.env_id}: nothing written; export with "
                f"{setting('format', 'pt2' if format == 'onnx' else 'onnx')} instead, or report this"
            )
        sidecar = describe(loaded, module, observations[:1], format, opset, max_error)
        side = sidecar_path(output)
        side.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(output, side, format, max_error, len(observations))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """The exporters' progress prints, warnings and log lines kept out of the user's terminal (they are shown
    in the error, if exporting fails)."""
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _dynamic_shapes(module: torch.nn.Module) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch")
    return {name: {0: batch} for name in module.input_names}


def _traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """The module as torch.export's graph, with a dynamic batch dimension on every input."""
    try:
        with _quiet_exporter():
            return torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(module))
    except Exception as e:
        raise UserError(f"torch.export cannot trace this policy: {_first_line(e)}") from None


def write_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> int:
    """The module as an ONNX file by the torch.export-based exporter (``dynamo=True``); returns its opset."""
    import onnx

    program = _traced(module, example)
    try:
        with _quiet_exporter():
            onnx_program = torch.onnx.export(
                program,
                example,
                dynamo=True,
                input_names=list(module.input_names),
                output_names=list(module.output_names),
                external_data=False,
            )
            onnx_program.save(str(path))
    except Exception as e:
        raise UserError(f"the ONNX exporter failed on this policy: {_first_line(e)}") from None
    model = onnx.load(str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_pt2(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """The module as torch.export's ``.pt2`` archive (for torch and AOTInductor deployments)."""
    torch.export.save(_traced(module, example), str(path))
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- parity


def parity_observations(module: torch.nn.Module, env: Any, env_kwargs: dict[str, Any]) -> torch.Tensor:
    """Observations ``[PARITY_ENVS * PARITY_STEPS, *obs_shape]`` of the env, visited by the policy itself."""
    from duetrl.envs.make import env_factory

    factory = env_factory(env, **env_kwargs)
    vec = gym.vector.SyncVectorEnv([factory] * PARITY_ENVS, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        discrete = isinstance(vec.single_action_space, gym.spaces.Discrete)
        obs, _ = vec.reset(seed=[PARITY_SEED + i for i in range(PARITY_ENVS)])
        seen = []
        for _ in range(PARITY_STEPS):
            batch = torch.as_tensor(obs, dtype=torch.float32)
            seen.append(batch)
            with torch.no_grad():
                action = module(*module.example_inputs(batch))
            action = (action[0] if isinstance(action, tuple) else action).numpy()
            obs, *_ = vec.step(action.astype(np.int64) if discrete else action)
    finally:
        vec.close()
    return torch.cat(seen)


def parity(path: Path, format: str, module: torch.nn.Module, observations: torch.Tensor) -> float:
    """The largest |file - torch| difference of the first output over ``observations``, run as one batch and
    one observation at a time for the first few (the batch dimension is dynamic); a discrete action that differs
    counts as an infinite difference."""
    runtime = open_runtime(path, format, list(module.input_names), list(module.output_names))
    with torch.no_grad():
        expected = _first(module(*module.example_inputs(observations))).numpy()
    got = runtime(*[t.numpy() for t in module.example_inputs(observations)])[0]
    singles = [runtime(*[t.numpy() for t in module.example_inputs(observations[i : i + 1])])[0] for i in range(4)]
    got_single = np.concatenate(singles)
    errors = [_difference(got, expected), _difference(got_single, expected[:4])]
    return max(errors)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _difference(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return math.inf
    if np.issubdtype(expected.dtype, np.integer):
        return 0.0 if np.array_equal(got, expected) else math.inf
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0))


def open_runtime(path: Path, format: str, input_names: list[str], output_names: list[str]) -> Any:
    """A function of numpy inputs returning the file's numpy outputs: onnxruntime's session for ONNX, the
    loaded ExportedProgram for pt2."""
    if format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one observation, a small MLP: threads only add waiting
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"onnxruntime cannot load {path}: {_first_line(e)}") from None
        return lambda *inputs: session.run(output_names, dict(zip(input_names, inputs, strict=True)))
    try:
        with _quiet_exporter():
            program = torch.export.load(str(path)).module()
    except Exception as e:
        raise UserError(f"cannot load {path} as a torch.export program: {_first_line(e)}") from None

    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = program(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


# ---------------------------------------------------------------------------------------------- the sidecar


def space_json(space: gym.Space) -> dict[str, Any]:
    """A space as JSON: Box with shape, dtype and bounds (null where unbounded), Discrete with n and start."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        bound = lambda a: [None if not math.isfinite(v) else v for v in np.asarray(a, np.float64).ravel().tolist()]  # noqa: E731
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": bound(space.low),
            "high": bound(space.high),
        }
    return {"type": type(space).__name__, "repr": str(space)}


def describe(
    loaded: LoadedAgent, module: Any, obs: torch.Tensor, format: str, opset: int | None, max_error: float
) -> dict[str, Any]:
    """The sidecar JSON of an exported policy; its inputs and outputs are the module's, with the shapes and dtypes
    of one example (``batch`` for the dynamic first dimension)."""
    from duetrl.evaluate import EVAL_SEED_BASE

    agent, run = loaded.agent, loaded.config.run
    inputs = module.example_inputs(obs)
    with torch.no_grad():
        outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    tensors = (
        lambda names, values: [  # noqa: E731
            {"name": n, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).removeprefix("torch.")}
            for n, v in zip(names, values, strict=True)
        ]
    )
    return {
        "format": SIDECAR_FORMAT,
        "file_format": format,
        "opset": opset,
        "env_id": run.env_id,
        "env_kwargs": run.env_kwargs,
        "imports": list(run.imports),
        "algo": run.algo,
        "observation_space": space_json(agent.obs_space),
        "action_space": space_json(agent.act_space),
        "inputs": tensors(module.input_names, inputs),
        "outputs": tensors(module.output_names, outputs),
        "evaluation": {"seed": EVAL_SEED_BASE, "max_steps": run.eval_max_steps},
        "parity": {"max_error": max_error, "tolerance": PARITY_TOLERANCE, "observations": PARITY_ENVS * PARITY_STEPS},
        "checkpoint": str(loaded.checkpoint),
        "torch": torch.__version__,
        "config": loaded.config.to_dict(),
    }


# ---------------------------------------------------------------------------------------------- using the file


class ExportedPolicy:
    """An exported policy file with its sidecar: ``act(obs)`` for one observation or a batch, as numpy."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.format = FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise UserError(f"{self.path.name}: an exported policy ends in .onnx or .pt2")
        if not self.path.is_file():
            raise UserError(f"policy file not found: {self.path}")
        side = sidecar_path(self.path)
        try:
            self.info = json.loads(side.read_text())
        except FileNotFoundError:
            raise UserError(f"{side} is missing: it describes {self.path.name}; export it again") from None
        except ValueError as e:
            raise UserError(f"{side} is not valid JSON ({_first_line(e)}); export the policy again") from None
        if self.info.get("format") != SIDECAR_FORMAT:
            raise UserError(f"{side} is not a duetrl policy description (format {self.info.get('format')!r})")
        require(self.format)
        self.obs_shape = tuple(self.info["observation_space"]["shape"])
        self.discrete = self.info["action_space"]["type"] == "Discrete"
        names = [i["name"] for i in self.info["inputs"]], [o["name"] for o in self.info["outputs"]]
        self._run = open_runtime(self.path, self.format, *names)

    @property
    def env_id(self) -> str:
        return self.info["env_id"]

    @staticmethod
    def env_of(path: str | Path) -> str:
        """The env id a policy file was exported from, as its sidecar records it."""
        return json.loads(sidecar_path(path).read_text())["env_id"]

    def act(self, obs: Any) -> np.ndarray:
        """Env action(s) for an observation of the policy's shape, or a batch of them (a UserError for any other
        shape, rather than the runtime's own message)."""
        array = np.asarray(obs, dtype=np.float32)
        shape = self.obs_shape
        if array.shape[array.ndim - len(shape) :] != shape or array.ndim > len(shape) + 1:
            raise UserError(
                f"an observation of shape {array.shape} does not fit {self.path.name}, which takes observations of "
                f"shape {shape} (or a batch of them, (B, {', '.join(map(str, shape))})), as {self.env_id} gives"
            )
        single = array.ndim == len(shape)
        action = self._run(array[None] if single else array)[0]
        return action[0] if single else action


def check_env_fits(policy: ExportedPolicy, env: Any, env_kwargs: dict[str, Any]) -> None:
    """A UserError, before any episode, when the env's observations or actions are not the policy's."""
    from duetrl.envs.make import env_factory

    made = env_factory(env, **env_kwargs)()
    try:
        obs_space, act_space = made.observation_space, made.action_space
    finally:
        made.close()
    name = env if isinstance(env, str) else type(made).__name__
    if tuple(obs_space.shape or ()) != policy.obs_shape:
        raise UserError(
            f"{policy.path.name} takes observations of shape {policy.obs_shape} ({policy.env_id}), and {name} gives "
            f"observations of shape {tuple(obs_space.shape or ())}: evaluate it on an env like the one it was "
            "trained on"
        )
    if space_json(act_space)["type"] != policy.info["action_space"]["type"]:
        kind = policy.info["action_space"]["type"]
        raise UserError(f"{policy.path.name} acts in {kind} actions, and {name} takes {act_space}")


def evaluate_exported(
    path: str | Path,
    episodes: int = 10,
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    env: Any = None,
    render: str | None = None,
    video: str | Path | None = None,
) -> Any:
    """:func:`duetrl.evaluate` of an exported file: the same held-out episodes and result, acting through the file
    (so always deterministically) on ``env`` (default: the env it was exported from)."""
    from duetrl.envs.make import import_modules
    from duetrl.evaluate import evaluate_policy, render_episodes

    policy = ExportedPolicy(path)
    import_modules(policy.info.get("imports", []))
    source = policy.env_id if env is None else env
    kwargs = policy.info.get("env_kwargs", {}) if env_kwargs is None else env_kwargs
    seed = policy.info["evaluation"]["seed"] if seed is None else seed
    max_steps = policy.info["evaluation"]["max_steps"]
    check_env_fits(policy, source, kwargs)
    act = lambda obs: torch.as_tensor(policy.act(obs.numpy()))  # noqa: E731
    if render is not None or video is not None:
        result = render_episodes(act, source, kwargs, episodes, seed, render or "human", video, max_steps=max_steps)
    else:
        result = evaluate_policy(act, source, kwargs, episodes, seed, max_steps=max_steps)
    result.deterministic = True
    return result
