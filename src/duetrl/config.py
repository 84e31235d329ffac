"""Typed configuration: run settings plus one dataclass of hyperparameters per algorithm.

Layers, later wins: dataclass defaults < preset < ``--config`` file < flags (``--set key=value``).
Keys are flat: a key names a :class:`RunConfig` field or a field of the algorithm's config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from duetrl.errors import UserError, given_as, setting
from duetrl.validate import check

if TYPE_CHECKING:
    from duetrl.algos.base import AlgoSpec

BACKENDS = ("auto", "gymnasium", "torch")

# Settings a resumed run may change: how long it runs, how often it evaluates, logs and checkpoints, and where its
# metrics go. Every other setting shapes what is learned, so changing it on resume would make a different run.
RESUMABLE = frozenset(
    {
        "steps",
        "eval_every",
        "eval_episodes",
        "eval_max_steps",
        "log_every",
        "checkpoint_every",
        "checkpoint_seconds",
        "keep_checkpoints",
        "target_return",
        "wandb",
        "wandb_project",
    }
)


@dataclass
class RunConfig:
    """Settings of a run that do not depend on the algorithm."""

    env_id: str = "Pendulum-v1"  # the environment: a Gymnasium id, or module:Class
    algo: str = "ac"  # the algorithm (see `duetrl params --algo NAME`)
    preset: str | None = None  # named settings under the others (see `duetrl presets`); none = no preset
    steps: int = 100_000  # total environment steps (summed over parallel envs)
    seed: int = 0  # seed of every random generator of the run
    num_envs: int = 1  # envs stepped together as one batch
    env_kwargs: dict = field(default_factory=dict)  # arguments of the env's constructor, e.g. {g: 0}
    backend: str = "auto"  # what steps the envs: torch-native (where duetrl has the env), Gymnasium, or auto
    vector: str = "sync"  # Gymnasium's envs all in this process (sync) or a process each (async)
    device: str = "auto"  # where the networks run: auto = CUDA when present, else CPU
    torch_threads: int = 0  # CPU threads of torch; 0 = auto: 1 for one agent, up to the cores for a population
    eval_every: int = 10_000  # env steps between evaluations; 0 = only at the end
    eval_episodes: int = 10  # validation episodes per evaluation during training (duetrl eval scores others)
    eval_deterministic: bool = True  # evaluate the policy's most likely action (false: sampled actions)
    eval_max_steps: int = 10_000  # step cap of an evaluation episode on an env without its own time limit
    log_every: int = 1000  # env steps between metric rows (at the next update); 0 = after every update
    checkpoint_every: int = 0  # env steps between checkpoints; 0 = time-based only
    checkpoint_seconds: float = 30.0  # seconds between checkpoints at the most
    keep_checkpoints: int = 3  # step checkpoints kept (best.safetensors aside)
    target_return: float | None = None  # stop when an evaluation's mean return reaches this
    wandb: bool = False  # also log to Weights & Biases (offline without an API key)
    wandb_project: str = "duetrl"  # the Weights & Biases project
    imports: list = field(default_factory=list)  # modules imported first (they may register envs)
    wrappers: list = field(default_factory=list)  # Gymnasium wrappers (module:Name) around every env, in order
    frame_stack: int = 1  # observations stacked per step (Gymnasium's FrameStackObservation); 1 = none

    def validate(self) -> None:
        check(self.steps > 0, "steps", self.steps, "must be a positive number of env steps")
        check(self.num_envs >= 1, "num_envs", self.num_envs, "must be at least 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0 (0 = only at the end)")
        check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "must be at least 1")
        check(self.eval_max_steps >= 1, "eval_max_steps", self.eval_max_steps, "must be at least 1")
        check(self.log_every >= 0, "log_every", self.log_every, "must be >= 0")
        check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be >= 0")
        check(self.checkpoint_seconds > 0, "checkpoint_seconds", self.checkpoint_seconds, "must be > 0")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "must be at least 1")
        check(self.torch_threads >= 0, "torch_threads", self.torch_threads, "must be >= 0 (0 = auto)")
        check(self.frame_stack >= 1, "frame_stack", self.frame_stack, "must be at least 1 (1 = no stacking)")
        for name in self.wrappers:
            check(isinstance(name, str) and ":" in name, "wrappers", name, "must be module:Name")
        check(self.backend in BACKENDS, "backend", self.backend, f"must be one of {', '.join(BACKENDS)}")
        check(self.vector in ("sync", "async"), "vector", self.vector, "must be sync or async")
        check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "must be auto, cpu or cuda[:N]",
        )


@dataclass
class Config:
    """A fully resolved configuration: run settings and the algorithm's hyperparameters."""

    run: RunConfig
    algo: Any  # the algorithm's own config dataclass

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self.run), **dataclasses.asdict(self.algo)}

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------- values


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (numbers, booleans, lists), falling back to the raw string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignments(items: list[str], what: str = "--set") -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's declared type, or raise a UserError that says what was expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, value, a)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{key}={value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}={value!r}: expected an integer") from None
        if number != number or number in (float("inf"), float("-inf")) or not number.is_integer():
            raise UserError(f"{key}={value!r}: expected an integer")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r}: expected a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}={value!r}: expected a number") from None
        if number != number:
            raise UserError(f"{key}={value!r}: expected a number, not NaN")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{key}={value!r}: expected a string")
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, str) and "," in value:  # --set hidden=256,256: a list without its brackets
            value = [parse_value(v.strip()) for v in value.strip("[] ").split(",")]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={value!r}: expected a list such as [64, 64]")
        if args:
            return [_coerce(key, v, args[0]) for v in value]
        return list(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}={value!r}: expected a mapping such as {{g: 0}}")
        return dict(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(obj: Any, overrides: dict[str, Any], source: str) -> None:
    """Set fields of a config dataclass from a flat mapping, coercing types."""
    hints = _hints(type(obj))
    for key, value in overrides.items():
        setattr(obj, key, _coerce(key, value, hints[key]))


# ---------------------------------------------------------------------------------------------- presets


def _preset_files() -> dict[str, Any]:
    """Shipped preset files: env id (or 'any') -> parsed YAML. A namespaced id's slash is a double underscore in
    the file's name (``MinAtar__Breakout-v1.yaml`` for ``MinAtar/Breakout-v1``)."""
    out = {}
    for entry in resources.files("duetrl.presets").iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")].replace("__", "/")] = yaml.safe_load(entry.read_text()) or {}
    return out


def list_presets() -> list[dict[str, str]]:
    """Every shipped preset as {env, algo, name, description}."""
    rows = []
    for env_id, algos in sorted(_preset_files().items()):
        for algo, presets in sorted(algos.items()):
            for name, body in presets.items():
                rows.append(
                    {
                        "env": env_id,
                        "algo": algo,
                        "name": name,
                        "description": str((body or {}).get("description", "")),
                    }
                )
    return rows


def find_preset(env_id: str, algo: str, name: str | None) -> tuple[str | None, dict[str, Any]]:
    """The preset's id and settings. ``name=None`` picks the pair's 'default' if one ships, else none;
    ``name="none"`` asks for no preset at all. Env-specific presets win over generic ones (``any.yaml``).

    ``name`` may also be a full id ``SCOPE/ALGO/NAME`` as a run's config.yaml records it (``CartPole-v1/ppo/default``):
    that preset, whatever the env, so a run's own config file can be fed back and tweaked."""
    if name == "none":
        return None, {}
    files = _preset_files()
    if name is not None and name.count("/") >= 2:  # a namespaced env's scope has one more: MinAtar/Breakout-v1
        scope, preset_algo, short = name.rsplit("/", 2)
        body = files.get(scope, {}).get(preset_algo, {}).get(short, -1)
        if body == -1:
            raise UserError(f"unknown preset {name!r} (see `duetrl presets`)")
        if preset_algo != algo:
            raise UserError(f"preset {name!r} is for algo {preset_algo!r}, not {algo!r}; choose a preset of {algo!r}")
        body = dict(body or {})
        body.pop("description", None)
        return name, body
    wanted = name or "default"
    for scope in (env_id, "any"):
        presets = files.get(scope, {}).get(algo, {})
        if wanted in presets:
            body = dict(presets[wanted] or {})
            body.pop("description", None)
            return f"{scope}/{algo}/{wanted}", body
    if name is None:
        return None, {}
    known = sorted({n for scope in (env_id, "any") for n in files.get(scope, {}).get(algo, {})} | {"none"})
    raise UserError(
        f"unknown preset {name!r} for {env_id} with {setting('algo', algo)}; choose from: {', '.join(known)} "
        "(see `duetrl presets`)"
    )


# ---------------------------------------------------------------------------------------------- resolve


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a UserError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise UserError(f"malformed YAML in {path}{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def resolve(
    env_id: str | None = None,
    algo: str | None = None,
    preset: str | None = None,
    config_file: str | Path | dict | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    lookup: Callable[[str], AlgoSpec],
) -> tuple[Config, str | None]:
    """Layer defaults < preset < config file < overrides into a validated :class:`Config`.

    ``lookup`` names the algorithms (``duetrl.algos.get_algo``; :func:`duetrl.api.resolve` passes it): taken as an
    argument so that config sits below the algorithms, which build on it. Returns the config and the id of the
    preset used (None if none)."""
    file_values = (
        dict(config_file) if isinstance(config_file, dict) else load_yaml_file(config_file) if config_file else {}
    )
    overrides = dict(overrides or {})
    for key, value in (("env_id", env_id), ("algo", algo), ("preset", preset)):
        if value is not None:
            overrides[key] = value

    def pick(key: str, default: Any) -> Any:
        return overrides.get(key, file_values.get(key, default))

    run = RunConfig()
    env_id = str(pick("env_id", run.env_id))
    algo_name = str(pick("algo", run.algo)).lower()  # --algo PPO is ppo
    preset_name = pick("preset", None)
    if preset_name is not None and not isinstance(preset_name, str):
        raise UserError(f"preset={preset_name!r} must be a preset name (see `duetrl presets`)")
    spec = lookup(algo_name)
    preset_id, preset_values = find_preset(env_id, algo_name, preset_name)

    algo_cfg = spec.config_cls()
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    algo_fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    for source, values in (
        ("preset " + str(preset_id), preset_values),
        ("config file", file_values),
        (given_as(), overrides),
    ):
        run_part, algo_part = {}, {}
        for key, value in values.items():
            if not isinstance(key, str):
                raise UserError(f"setting name {key!r} (from {source}) is not a name; write key: value with a text key")
            if key in run_fields:
                run_part[key] = value
            elif key in algo_fields:
                algo_part[key] = value
            else:
                raise UserError(_unknown_key_message(key, run_fields | algo_fields, algo_name, source))
        apply_overrides(run, run_part, source)
        apply_overrides(algo_cfg, algo_part, source)
    run.env_id, run.algo, run.preset = env_id, algo_name, preset_id
    run.validate()
    if hasattr(algo_cfg, "resolve_auto"):  # settings whose default depends on the run (e.g. its steps)
        algo_cfg.resolve_auto(run.steps)
    algo_cfg.validate()
    return Config(run=run, algo=algo_cfg), preset_id


# Keys of a capability some algorithms do not have yet: key -> what to say instead of "unknown setting".
# (Every algorithm has memory now: rnn, rnn_hidden, rnn_seq_len are known to all.)
NOT_YET: dict[str, str] = {}


def _unknown_key_message(key: str, known: set[str], algo: str, source: str) -> str:
    if key in NOT_YET:
        return f"{key} (from {source}): {setting('algo', algo)} {NOT_YET[key]}"
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; see `duetrl params --algo {algo}` for the keys"
    return f"unknown setting {key!r} for {setting('algo', algo)} (from {source}){hint}"


def describe_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) for each field of a config dataclass."""
    hints = _hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default))
    return rows


# ---------------------------------------------------------------------------------------------- budget


def budget_warnings(cfg: Config) -> list[str]:
    """Settings that cannot learn, or cannot be evaluated, within ``steps``: said before the run, not after.

    The algorithm's own (an update that never comes) come from its config's ``budget_warnings(run)``."""
    run = cfg.run
    out: list[str] = cfg.algo.budget_warnings(run)
    if run.target_return is not None and not 0 < run.eval_every < run.steps:
        out.append(
            f"target_return={run.target_return} can never stop the run early: it is checked at the periodic "
            f"evaluations, and eval_every={run.eval_every} gives none within steps={run.steps}; set eval_every to "
            "a positive number below steps"
        )
    elif run.eval_every > run.steps:
        out.append(
            f"eval_every={run.eval_every} is more than steps={run.steps}: there is no periodic evaluation, only the "
            "final one; lower eval_every for a learning curve, or set eval_every=0 to ask for the final one only"
        )
    return out


def ignored_settings_warnings(cfg: Config) -> list[str]:
    """Settings changed from the algorithm's defaults that its other settings make it ignore (e.g. ``gae_lambda``
    without ``advantage=gae``): said before the run, which would otherwise go silently without them.

    Which keys each choice ignores comes from the algorithm's config, ``ignored_settings()`` (key -> why); only a
    value that differs from the config class's default counts as set (by a preset, a config file or a flag)."""
    defaults = type(cfg.algo)()
    return [
        f"{key}={getattr(cfg.algo, key)!r} is ignored: {why}"
        for key, why in cfg.algo.ignored_settings().items()
        if getattr(cfg.algo, key) != getattr(defaults, key)
    ]
