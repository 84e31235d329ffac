"""Atomic, tensor-only checkpoints.

A checkpoint is one safetensors file: every tensor (weights, optimiser moments, RNG states, normaliser
statistics) stored by name, and the structure around them (counters, config, nesting) as JSON in the file's
metadata. Loading parses tensors and JSON only -- never a pickle -- so a checkpoint cannot run code.
Files are written to a temporary name, flushed to disk, then renamed: a crash at any instant leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from duetrl.errors import UserError

FORMAT = "duetrl-checkpoint-1"
STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


# ---------------------------------------------------------------------------------------------- packing


def pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors (and numpy arrays) in a nested structure by references into ``tensors``, each under
    a fresh numbered name (names derived from keys could collide: ``{"a.b": x, "a": {"b": y}}``)."""
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = str(len(tensors))
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[k, pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__items__" in obj:
            return {_key(k): unpack(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors) for v in obj["__tuple__"])
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


# ---------------------------------------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name with the permissions of any file the user creates (0666 less the umask), not mkstemp's 0600.
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, state: dict[str, Any]) -> None:
    """Save a nested state (tensors, numbers, strings, lists, dicts) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(state, tensors)
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    atomic_write_bytes(Path(path), data)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save`; a UserError if it is missing, truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
        tensors = safetensors.torch.load(data)
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise UserError(f"checkpoint {path} is truncated or corrupt ({_first_line(e)}); use an earlier one") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a duetrl checkpoint (format {metadata.get('format')!r})")
    try:
        return unpack(json.loads(metadata["state"]), tensors)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint {path} is corrupt ({_first_line(e)}); use an earlier one") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every global RNG the training touches."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- run dirs


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest step checkpoint of a run, or a UserError saying none exists."""
    found = list_checkpoints(run_dir)
    if not found:
        if not Path(run_dir).is_dir():
            raise UserError(f"run directory not found: {run_dir}")
        raise UserError(f"no checkpoint in {checkpoint_dir(run_dir)}: was the run trained there?")
    return found[-1]


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
