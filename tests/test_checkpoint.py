"""Tensor-only checkpoints: pack/unpack, save/load, and refusing damaged files and pickles."""

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

import duetrl
from duetrl import checkpoint as ckpt
from duetrl.errors import UserError


def _adam_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model.state_dict(), opt.state_dict()


def _nested():
    weights, adam = _adam_state()
    return {
        "weights": weights,
        "adam": adam,
        "array": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "floats": np.linspace(0, 1, 4),
        "scalar_tensor": torch.tensor(3.5),
        "tuple": (1, "two", (3.0, None), torch.ones(2)),
        "list": [True, False, None, [1, 2.5, "x"]],
        "numpy_scalars": [np.float64(1.25), np.int64(7), np.bool_(True)],
        "__dunder": {"__tensor__": "not a reference"},
        "mixed_keys": {0: "zero", "a": 1, (1, 2): torch.zeros(1)},
        "empty": {},
        "text": "hello",
    }


def _assert_same(a, b, where="root"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.generic,)):
        assert b == a.item() and type(b) is type(a.item()), where
    else:
        assert a == b and type(a) is type(b), where


def test_pack_unpack_round_trip():
    state = _nested()
    tensors = {}
    skeleton = ckpt.pack(state, tensors)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    _assert_same(state, ckpt.unpack(skeleton, tensors))


def test_pack_keeps_optimizer_int_keys_and_tuples_loadable():
    _, adam = _adam_state()
    tensors = {}
    back = ckpt.unpack(ckpt.pack(adam, tensors), tensors)
    assert set(back["state"]) == {0, 1, 2, 3}
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    torch.optim.Adam(model.parameters()).load_state_dict(back)


def test_pack_refuses_arbitrary_objects():
    with pytest.raises(TypeError):
        ckpt.pack({"x": object()}, {})


def test_pack_keys_containing_dots_do_not_collide():
    state = {"a.b": torch.tensor([1.0]), "a": {"b": torch.tensor([2.0])}}
    tensors = {}
    back = ckpt.unpack(ckpt.pack(state, tensors), tensors)
    assert back["a.b"].item() == 1.0 and back["a"]["b"].item() == 2.0


def test_save_load_round_trip(tmp_path):
    state = _nested()
    path = tmp_path / "sub" / "c.safetensors"
    ckpt.save(path, state)
    _assert_same(state, ckpt.load(path))
    assert [p.name for p in path.parent.iterdir()] == ["c.safetensors"]  # no temporary left behind


def test_rng_state_round_trip(tmp_path):
    path = tmp_path / "rng.safetensors"
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    ckpt.save(path, {"rng": ckpt.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.set_rng_state(ckpt.load(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


# ------------------------------------------------------------------------------------------ damaged files


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.safetensors"
    ckpt.save(path, _nested())
    return path


@pytest.mark.parametrize("keep", [0.5, -1, 4])
def test_truncated_file_is_a_user_error(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(UserError, match="truncated or corrupt"):
        ckpt.load(saved)


def test_random_bytes_are_a_user_error(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError):
        ckpt.load(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ckpt.load(tmp_path / "nope.safetensors")


def test_foreign_safetensors_file_is_a_user_error(tmp_path):
    import safetensors.torch

    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="not a duetrl checkpoint"):
        ckpt.load(path)


def test_load_of_missing_or_empty_run_dir(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        duetrl.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoint"):
        duetrl.load(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ pickles


class _Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def _raw_pickle(path, marker):
    path.write_bytes(pickle.dumps({"config": {}, "agent": _Payload(marker)}))


def _torch_zip(path, marker):
    torch.save({"config": {}, "agent": _Payload(marker), "w": torch.zeros(3)}, path)


def _torch_legacy(path, marker):
    torch.save({"agent": _Payload(marker)}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("write", [_raw_pickle, _torch_zip, _torch_legacy])
def test_pickle_checkpoint_is_refused_without_running_it(tmp_path, write):
    # The payload is live: loading it the unsafe way does run code.
    probe_file, probe_marker = tmp_path / "probe.bin", tmp_path / "probe-ran"
    write(probe_file, probe_marker)
    if write is _raw_pickle:
        pickle.loads(probe_file.read_bytes())
    else:
        torch.load(probe_file, weights_only=False)
    assert probe_marker.exists()

    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    path = run_dir / "checkpoints" / "step_000000000100.safetensors"
    path.parent.mkdir(parents=True)
    write(path, marker)
    with pytest.raises(UserError):
        duetrl.load(run_dir)
    with pytest.raises(UserError):
        duetrl.load(run_dir, checkpoint=str(path))
    assert not marker.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        ckpt.save(tmp_path / "c.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.safetensors").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left
