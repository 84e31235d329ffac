"""``duetrl export`` and deployment: a trained run as one self-contained deterministic policy file, and that file
run again.

The file (ONNX, or torch.export's ``.pt2``) maps the raw environment observation to the action in environment
units, with everything in between traced into it from the agent's :meth:`~duetrl.algos.base.Agent.deployable`
module: the observation normaliser, the encoder, the policy's mode (argmax, or the Gaussian mean), the clipping or
tanh squash and the scaling onto the action bounds. A policy exported without its normaliser acts wrongly without
any error (Isaac Lab #2635), so nothing is left for the user to re-apply. The batch dimension is dynamic.

Inputs (:class:`PolicyGraph`): one per observation *leaf*. A Box, Discrete, MultiDiscrete or MultiBinary space
is the one input ``obs`` (a Box as float32, as the first exports had it; indices int64, bits uint8); a Dict or
Tuple space has one input per leaf, named by its key path (``obs.goal``, ``obs.sensors.lidar``, ``obs.0``; the
prefix keeps a key such as ``view`` apart from the exporter's own value names), in its storage
dtype (uint8 images stay uint8 and are scaled inside, as the encoder does). A recurrent policy (``rnn=lstm`` or
``gru``) also takes the state ``state [batch, S]`` and returns ``next_state`` after the action: zeros start an
episode, and the caller zeroes a row after every termination and truncation (:mod:`duetrl.cores`).

Beside it, ``<file>.json`` (the *sidecar*) records the spaces, the env id and kwargs, the inputs (with the key
path of each observation leaf) and outputs, the state, the held-out evaluation seeds and the run's whole
configuration: enough to run the policy with onnxruntime, gymnasium and numpy only
(``docs/examples/onnx_policy.py``).

Before the file is kept, :func:`export` steps it (onnxruntime for ONNX, ``torch.export.load`` for pt2) and the
torch policy side by side through episodes of the env, each carrying its own state, and compares their actions
and next states: a difference beyond ``PARITY_TOLERANCE`` is an error and no file is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from duetrl.algos.base import Deployable
from duetrl.build import LoadedAgent
from duetrl.encoders import leaf_shape, storage_dtype
from duetrl.errors import UserError, setting

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}  # file suffix -> format
SIDECAR_FORMAT = "duetrl-policy-1"
PARITY_TOLERANCE = 1e-5  # largest |exported - torch| action difference accepted, in env units
PARITY_ENVS, PARITY_STEPS = 8, 64  # the parity check: 8 envs x 64 steps of the torch policy, the file beside it
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
    try:
        policy = loaded.agent.deployable().eval()
    except NotImplementedError as e:
        raise UserError(f"{loaded.config.run.algo} policies cannot be exported yet: {e}") from None
    graph = PolicyGraph(policy, loaded.agent.obs_space).eval()
    check = ParityEnvs(loaded.env, loaded.config.run.env_kwargs, wrapping(loaded.config.to_dict()))
    example = graph.inputs(check.first_observations(2), graph.initial_state(2))

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")  # torch.export.save wants its suffix
    try:
        opset = write_onnx(graph, example, tmp) if format == "onnx" else write_pt2(graph, example, tmp)
        runtime = open_runtime(tmp, format, list(graph.input_names), list(graph.output_names))
        max_error = check.run(graph, runtime)
        if not max_error <= PARITY_TOLERANCE:
            raise UserError(
                f"the exported policy differs from the torch policy by {max_error:.3g} (more than "
                f"{PARITY_TOLERANCE:g}) on episodes of {loaded.env_id}: nothing written; export with "
                f"{setting('format', 'pt2' if format == 'onnx' else 'onnx')} instead, or report this"
            )
        sidecar = describe(loaded, graph, example, format, opset, max_error)
        side = sidecar_path(output)
        side.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(output, side, format, max_error, PARITY_ENVS * PARITY_STEPS)


# ---------------------------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Leaf:
    """One observation leaf as an input of the file."""

    name: str  # the input's name: "obs", or "obs." and the key path ("obs.goal", "obs.sensors.lidar", "obs.0")
    key: tuple[str | int, ...]  # where it sits in an observation: Dict keys and Tuple indices, () for the whole
    shape: tuple[int, ...]  # one observation's, without the batch dimension
    dtype: torch.dtype  # what the file takes: float32 for a whole Box, the storage dtype for a Dict or Tuple leaf


def observation_leaves(space: gym.Space) -> list[Leaf]:
    """The file's observation inputs for ``space``, in the order the encoder reads them (Dict keys in the space's
    order, Tuple parts by index)."""
    if not isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        dtype = torch.float32 if isinstance(space, gym.spaces.Box) else storage_dtype(space)
        return [Leaf("obs", (), leaf_shape(space), dtype)]
    found: list[Leaf] = []

    def walk(sub: gym.Space, key: tuple[str | int, ...]) -> None:
        if isinstance(sub, gym.spaces.Dict):
            for name, part in sub.spaces.items():
                walk(part, (*key, name))
        elif isinstance(sub, gym.spaces.Tuple):
            for index, part in enumerate(sub.spaces):
                walk(part, (*key, index))
        else:
            found.append(Leaf(".".join(map(str, ("obs", *key))), key, leaf_shape(sub), storage_dtype(sub)))

    walk(space, ())
    return found


def leaf_of(obs: Any, key: tuple[str | int, ...] | list[str | int]) -> Any:
    """The part of an observation (one, or a batch) at a key path."""
    for part in key:
        obs = obs[part]
    return obs


class PolicyGraph(nn.Module):
    """What the file computes: named flat inputs (the observation's leaves, then the state of a recurrent policy)
    -> the action (and the next state), around an agent's :class:`~duetrl.algos.base.Deployable`, which sees the
    observation as the agent does (a tensor, or a dict or tuple of them)."""

    def __init__(self, policy: Deployable, obs_space: gym.Space):
        super().__init__()
        self.policy, self.space = policy, obs_space
        self.leaves = observation_leaves(obs_space)
        self.state_dim = int(policy.state_dim)
        self.state_name = "state" if self.state_dim else None
        self.input_names = (*(leaf.name for leaf in self.leaves), *([self.state_name] if self.state_dim else []))
        self.output_names = ("action", "next_state") if self.state_dim else ("action",)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        obs = self._tree(self.space, iter(inputs[: len(self.leaves)]))
        if self.state_dim:
            return self.policy(obs, inputs[len(self.leaves)])
        return self.policy(obs)

    def _tree(self, space: gym.Space, tensors: Iterator[Tensor]) -> Any:
        """The leaves, in order, as the observation tree the agent reads."""
        if isinstance(space, gym.spaces.Dict):
            return {name: self._tree(part, tensors) for name, part in space.spaces.items()}
        if isinstance(space, gym.spaces.Tuple):
            return tuple(self._tree(part, tensors) for part in space.spaces)
        return next(tensors)

    def state_layout(self) -> list[dict[str, Any]]:
        """Where each part of the flat state sits: ``[{"name": "h", "offset": 0, "size": 64}, ...]`` (a GRU's h; an
        LSTM's h then c; then ``prev_action``, the last action taken, when the core reads it)."""
        layout, offset = [], 0
        for name, size in self.policy.state_parts():
            layout.append({"name": name, "offset": offset, "size": size})
            offset += size
        assert offset == self.state_dim, (layout, self.state_dim)
        return layout

    def initial_state(self, batch: int) -> np.ndarray | None:
        """Zeros ``[batch, state_dim]`` for a recurrent policy (an episode's start), None for a memoryless one."""
        return np.zeros((batch, self.state_dim), np.float32) if self.state_dim else None

    def inputs(self, obs: Any, state: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The file's inputs, as numpy, for a batch of observations as a vector env gives them (and the state)."""
        arrays = [
            np.asarray(leaf_of(obs, leaf.key), dtype=torch.empty(0, dtype=leaf.dtype).numpy().dtype)
            for leaf in self.leaves
        ]
        return (*arrays, *([np.asarray(state, np.float32)] if self.state_dim else []))

    @torch.no_grad()
    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The torch policy on numpy inputs, its outputs as numpy: what the file is compared with."""
        out = self(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _dynamic_shapes(graph: PolicyGraph) -> tuple[tuple[dict[int, Any], ...]]:
    """One dynamic batch dimension shared by every input (``forward(*inputs)``: the inputs are one argument)."""
    batch = torch.export.Dim("batch")
    return (tuple({0: batch} for _ in graph.input_names),)


def _traced(graph: PolicyGraph, example: tuple[np.ndarray, ...]) -> torch.export.ExportedProgram:
    """The graph as torch.export's program, with one dynamic batch dimension shared by every input."""
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example)
    try:
        with _quiet_exporter():
            return torch.export.export(graph, tensors, dynamic_shapes=_dynamic_shapes(graph))
    except Exception as e:
        raise UserError(f"torch.export cannot trace this policy: {_first_line(e)}") from None


def write_onnx(graph: PolicyGraph, example: tuple[np.ndarray, ...], path: Path) -> int:
    """The graph as an ONNX file by the torch.export-based exporter (``dynamo=True``); returns its opset."""
    import onnx

    program = _traced(graph, example)
    try:
        with _quiet_exporter():
            onnx_program = torch.onnx.export(
                program,
                tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example),
                dynamo=True,
                input_names=list(graph.input_names),
                output_names=list(graph.output_names),
                external_data=False,
            )
            onnx_program.save(str(path))
    except Exception as e:
        raise UserError(f"the ONNX exporter failed on this policy: {_first_line(e)}") from None
    model = onnx.load(str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_pt2(graph: PolicyGraph, example: tuple[np.ndarray, ...], path: Path) -> None:
    """The graph as torch.export's ``.pt2`` archive (for torch and AOTInductor deployments)."""
    torch.export.save(_traced(graph, example), str(path))
    return None


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- parity


def wrapping(run: dict[str, Any]) -> dict[str, Any]:
    """The run's wrappers and frame stacking (``wrappers``, ``frame_stack``) of a run config as a dict: the file
    takes the observations they give, so every env it acts in is wrapped as in training."""
    return {"wrappers": list(run.get("wrappers", [])), "frame_stack": int(run.get("frame_stack", 1))}


class ParityEnvs:
    """The parity check's episodes: ``PARITY_ENVS`` envs of the run's env (seeds from ``PARITY_SEED``), in which
    the torch policy and the file each act from their own carried state for ``PARITY_STEPS`` steps."""

    def __init__(self, env: Any, env_kwargs: dict[str, Any], wrapped: dict[str, Any]):
        from duetrl.envs.make import env_factory

        self.factory = env_factory(env, **wrapped, **env_kwargs)

    def _vector(self) -> gym.vector.SyncVectorEnv:
        return gym.vector.SyncVectorEnv([self.factory] * PARITY_ENVS, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def first_observations(self, n: int) -> Any:
        """The first observations of ``n`` of the envs (the example the exporter traces with)."""
        vec = self._vector()
        try:
            obs, _ = vec.reset(seed=[PARITY_SEED + i for i in range(PARITY_ENVS)])
        finally:
            vec.close()
        return _rows(obs, slice(0, n))

    def run(self, graph: PolicyGraph, runtime: Callable[..., list[np.ndarray]]) -> float:
        """The largest |file - torch| difference of any output (the action, and a recurrent policy's next state)
        over the steps, the envs acting on the torch policy's actions; the file run on the whole batch every step
        and on one env alone for the first few (the batch dimension is dynamic). Each side carries its own state,
        zeroed where an episode ended, so a file that mishandles its state drifts away and fails here. A discrete
        action that differs counts as an infinite difference."""
        from duetrl.envs.base import env_actions

        vec = self._vector()
        worst = 0.0
        try:
            obs, _ = vec.reset(seed=[PARITY_SEED + i for i in range(PARITY_ENVS)])
            torch_state = file_state = graph.initial_state(PARITY_ENVS)
            for step in range(PARITY_STEPS):
                expected = graph.run(*graph.inputs(obs, torch_state))
                got = runtime(*graph.inputs(obs, file_state))
                worst = max([worst, *(_difference(g, e) for g, e in zip(got, expected, strict=True))])
                if step < 4:
                    alone = runtime(
                        *graph.inputs(_rows(obs, slice(0, 1)), None if file_state is None else file_state[:1])
                    )
                    worst = max([worst, *(_difference(g, e[:1]) for g, e in zip(alone, expected, strict=True))])
                action = env_actions(vec.single_action_space, expected[0], PARITY_ENVS)
                obs, _, terminated, truncated, _ = vec.step(action)
                if graph.state_dim:  # a new episode starts from zeros, on both sides
                    done = (terminated | truncated)[:, None]
                    torch_state = np.where(done, 0.0, expected[1]).astype(np.float32)
                    file_state = np.where(done, 0.0, got[1]).astype(np.float32)
        finally:
            vec.close()
        return worst


def _rows(obs: Any, index: slice) -> Any:
    """Rows of a batch of observations as a vector env gives them (an array, or a dict or tuple of arrays)."""
    if isinstance(obs, dict):
        return {k: _rows(v, index) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_rows(v, index) for v in obs)
    return np.asarray(obs)[index]


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
    """A space as JSON: Box with shape, dtype and bounds (null where unbounded), Discrete with n and start, Dict and
    Tuple with their parts."""
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {str(k): space_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_json(v) for v in space.spaces]}
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
    return {"type": type(space).__name__, "shape": list(space.shape or ()), "repr": str(space)}


STATE_RESET = "zeros start an episode: zero a row after every termination and every truncation of its env"


def describe(
    loaded: LoadedAgent,
    graph: PolicyGraph,
    example: tuple[np.ndarray, ...],
    format: str,
    opset: int | None,
    max_error: float,
) -> dict[str, Any]:
    """The sidecar JSON of an exported policy: its inputs (an observation leaf's with its key path) and outputs
    with the shapes and dtypes of the example (``batch`` for the dynamic first dimension), and its state."""
    from duetrl.evaluate import EVAL_SEED_BASE

    agent, run = loaded.agent, loaded.config.run
    outputs = graph.run(*example)
    tensor = lambda name, value: {"name": name, "shape": ["batch", *value.shape[1:]], "dtype": str(value.dtype)}  # noqa: E731
    inputs = [{**tensor(leaf.name, x), "key": list(leaf.key)} for leaf, x in zip(graph.leaves, example, strict=False)]
    if graph.state_dim:
        inputs.append(tensor(graph.state_name, example[-1]))
    state = None
    if graph.state_dim:
        state = {
            "input": graph.state_name,
            "output": graph.output_names[1],
            "size": graph.state_dim,
            "dtype": "float32",
            "initial": "zeros",
            "reset": STATE_RESET,
            "rnn": getattr(loaded.config.algo, "rnn", None),
            "layout": graph.state_layout(),
        }
    return {
        "format": SIDECAR_FORMAT,
        "file_format": format,
        "opset": opset,
        "env_id": run.env_id,
        "env_kwargs": run.env_kwargs,
        "imports": list(run.imports),
        **wrapping(loaded.config.to_dict()),  # wrappers, then frame stacking, around every env the file acts in
        "algo": run.algo,
        "observation_space": space_json(agent.obs_space),
        "action_space": space_json(agent.act_space),
        "inputs": inputs,
        "outputs": [tensor(name, value) for name, value in zip(graph.output_names, outputs, strict=True)],
        "state": state,
        "evaluation": {"seed": EVAL_SEED_BASE, "max_steps": run.eval_max_steps},
        "parity": {
            "max_error": max_error,
            "tolerance": PARITY_TOLERANCE,
            "observations": PARITY_ENVS * PARITY_STEPS,
            "envs": PARITY_ENVS,
            "steps": PARITY_STEPS,
            "seed": PARITY_SEED,
        },
        "checkpoint": str(loaded.checkpoint),
        "torch": torch.__version__,
        "config": loaded.config.to_dict(),
    }


# ---------------------------------------------------------------------------------------------- using the file


class ExportedPolicy:
    """An exported policy file with its sidecar: ``act(obs)`` for one observation or a batch, as numpy (a dict or
    tuple for a Dict or Tuple space); a recurrent one acts as ``action, state = act(obs, state)`` from
    ``state = initial_state()``, the state zeroed again at every episode's start (as :class:`duetrl.LoadedAgent`)."""

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
        self.discrete = self.info["action_space"]["type"] == "Discrete"
        self.state = self.info.get("state")  # None for a memoryless policy
        self.state_dim = int(self.state["size"]) if self.state else 0
        state_name = self.state["input"] if self.state else None
        self.leaves = [  # the observation inputs: (name, key path, shape, dtype)
            (i["name"], tuple(i.get("key", ())), tuple(i["shape"][1:]), np.dtype(i["dtype"]))
            for i in self.info["inputs"]
            if i["name"] != state_name
        ]
        self.obs_shape = self.leaves[0][2] if len(self.leaves) == 1 and not self.leaves[0][1] else None
        names = [i["name"] for i in self.info["inputs"]], [o["name"] for o in self.info["outputs"]]
        self._run = open_runtime(self.path, self.format, *names)

    @property
    def env_id(self) -> str:
        return self.info["env_id"]

    @property
    def recurrent(self) -> bool:
        return self.state_dim > 0

    @staticmethod
    def env_of(path: str | Path) -> str:
        """The env id a policy file was exported from, as its sidecar records it."""
        return json.loads(sidecar_path(path).read_text())["env_id"]

    def initial_state(self, batch: int | None = None) -> np.ndarray:
        """Zeros: ``[S]`` for one env, ``[batch, S]`` for a batch (``S`` is 0 for a memoryless policy)."""
        return np.zeros((self.state_dim,) if batch is None else (batch, self.state_dim), np.float32)

    def act(self, obs: Any, state: Any = None) -> Any:
        """Env action(s) for one observation or a batch; given a ``state`` (from :meth:`initial_state`, then from
        the previous call), ``(action, next_state)``. A UserError, rather than the runtime's own message, for an
        observation of another shape or key set, or a missing or misshapen state."""
        arrays, single = self._observation_inputs(obs)
        rows = 1 if single else len(arrays[0])
        if state is None:
            if self.recurrent:
                raise UserError(
                    f"{self.path.name} is a recurrent policy (state of size {self.state_dim}): act with its state, "
                    "action, state = policy.act(obs, state), starting from state = policy.initial_state()"
                )
            action = self._run(*arrays)[0]
            return action[0] if single else action
        states = np.asarray(state, dtype=np.float32)
        states = states[None] if single else states
        if states.shape != (rows, self.state_dim):
            raise UserError(
                f"a state of shape {np.shape(state)} does not fit {self.path.name}: use policy.initial_state() (or "
                "initial_state(B) for a batch of B observations) and the states act returns"
            )
        if self.recurrent:
            action, states = self._run(*arrays, states)[:2]
        else:
            action = self._run(*arrays)[0]
        return (action[0], states[0]) if single else (action, states)

    def _observation_inputs(self, obs: Any) -> tuple[list[np.ndarray], bool]:
        """The file's observation inputs as batches, and whether ``obs`` was one observation."""
        expected = self._expected()
        if self.obs_shape is None:
            self._check_keys(obs)
        arrays, single = [], None
        for name, key, shape, dtype in self.leaves:
            try:
                array = np.asarray(leaf_of(obs, key))
            except (KeyError, IndexError, TypeError) as e:
                raise UserError(
                    f"an observation without part {name!r} ({type(e).__name__} {e}) does not fit {self.path.name}: "
                    f"{expected}"
                ) from None
            fits = array.shape[array.ndim - len(shape) :] == shape and array.ndim <= len(shape) + 1
            one = array.ndim == len(shape)
            if not fits or (single is not None and (one != single or (not one and len(array) != len(arrays[0])))):
                what = "an observation" if self.obs_shape is not None else f"observation part {name!r}"
                raise UserError(f"{what} of shape {array.shape} does not fit {self.path.name}: {expected}")
            single = one
            arrays.append((array[None] if one else array).astype(dtype, copy=False))
        return arrays, bool(single)

    def _expected(self) -> str:
        """What the file takes, in words, for error messages."""
        if self.obs_shape is not None:
            shape = self.obs_shape
            return (
                f"it takes observations of shape {shape} (or a batch of them, (B, {', '.join(map(str, shape))})), as "
                f"{self.env_id} gives"
            )
        parts = ", ".join(f"{name} {shape}" for name, _, shape, _ in self.leaves)
        return (
            f"it takes observations with parts {parts} (each with a batch dimension B in front, or none), as "
            f"{self.env_id} gives"
        )

    def _check_keys(self, obs: Any) -> None:
        """A UserError when a Dict observation's keys are not the policy's (a missing or an extra key)."""
        space = self.info["observation_space"]
        if space.get("type") != "Dict":
            return
        if not isinstance(obs, dict):
            raise UserError(
                f"{self.path.name} takes a dict observation with keys {sorted(space['spaces'])}, not a "
                f"{type(obs).__name__}"
            )
        wanted, given = set(space["spaces"]), set(map(str, obs))
        if wanted != given:
            missing, extra = sorted(wanted - given), sorted(given - wanted)
            said = "; ".join(f"{what} {keys}" for what, keys in (("missing", missing), ("unknown", extra)) if keys)
            raise UserError(
                f"an observation with keys {sorted(given)} does not fit {self.path.name}, which takes keys "
                f"{sorted(wanted)} ({said})"
            )


def check_env_fits(policy: ExportedPolicy, env: Any, env_kwargs: dict[str, Any]) -> None:
    """A UserError, before any episode, when the env's observations or actions (wrapped as the run's were) are not
    the policy's."""
    from duetrl.envs.make import env_factory

    made = env_factory(env, **wrapping(policy.info), **env_kwargs)()
    try:
        obs_space, act_space = made.observation_space, made.action_space
    finally:
        made.close()
    name = env if isinstance(env, str) else type(made).__name__
    leaves = [(leaf.name, leaf.shape) for leaf in observation_leaves(obs_space)]
    wanted = [(name_, shape) for name_, _, shape, _ in policy.leaves]
    if leaves != wanted:
        said = lambda parts: (  # noqa: E731
            f"observations of shape {parts[0][1]}"
            if len(parts) == 1 and parts[0][0] == "obs"
            else "observations with parts " + ", ".join(f"{n} {s}" for n, s in parts)
        )
        raise UserError(
            f"{policy.path.name} takes {said(wanted)} ({policy.env_id}), and {name} gives {said(leaves)}: evaluate "
            "it on an env like the one it was trained on"
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
    (so always deterministically) on ``env`` (default: the env it was exported from). A recurrent file's state is
    carried per env and zeroed at every episode's start, as for the run (:class:`duetrl.cores.StatefulAct`)."""
    from duetrl.cores import StatefulAct
    from duetrl.envs.make import import_modules
    from duetrl.evaluate import evaluate_policy, render_episodes

    policy = ExportedPolicy(path)
    import_modules(policy.info.get("imports", []))
    source = policy.env_id if env is None else env
    kwargs = policy.info.get("env_kwargs", {}) if env_kwargs is None else env_kwargs
    seed = policy.info["evaluation"]["seed"] if seed is None else seed
    max_steps = policy.info["evaluation"]["max_steps"]
    check_env_fits(policy, source, kwargs)
    if policy.recurrent:

        def step(obs: Any, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            action, state = policy.act(_numpy(obs), state.numpy())
            return torch.as_tensor(action), torch.as_tensor(state)

        act: Any = StatefulAct(step, lambda n: torch.as_tensor(policy.initial_state(n)))
    else:
        act = lambda obs: torch.as_tensor(policy.act(_numpy(obs)))  # noqa: E731
    wrapped = wrapping(policy.info)  # as the run's own evaluation
    if render is not None or video is not None:
        mode = render or "human"
        result = render_episodes(act, source, kwargs, episodes, seed, mode, video, max_steps=max_steps, **wrapped)
    else:
        result = evaluate_policy(act, source, kwargs, episodes, seed, max_steps=max_steps, **wrapped)
    result.deterministic = True
    return result


def _numpy(obs: Any) -> Any:
    """A batch of observations (a tensor, or a dict or tuple of them) as numpy."""
    if isinstance(obs, dict):
        return {k: _numpy(v) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_numpy(v) for v in obs)
    return obs.cpu().numpy()
