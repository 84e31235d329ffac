"""duetrl.optim.FusedAdam must be torch.optim.Adam: same numbers, same state layout."""

import copy

import pytest
import torch

from duetrl.optim import FusedAdam, adam, has_fused_adam


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(net: torch.nn.Module, opt, steps: int, lr_at: dict[int, float] | None = None) -> None:
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        if lr_at and i in lr_at:
            opt.param_groups[0]["lr"] = lr_at[i]
        loss = net(torch.randn(16, 3, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_matches_torch_adam_including_lr_changes():
    ours, theirs = _net(), _net()
    _train(ours, FusedAdam(ours.parameters(), lr=1e-2, eps=1e-5), 20, {10: 3e-3})
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2, eps=1e-5), 20, {10: 3e-3})
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_parameters_without_gradient_are_left_alone():
    net = _net()
    frozen = copy.deepcopy(net[2].weight.detach())
    net[2].weight.requires_grad_(False)
    opt = FusedAdam([p for p in net.parameters()], lr=1e-2)
    _train(net, opt, 3)
    assert torch.equal(net[2].weight, frozen)
    assert float(opt.steps[0]) == 3 and float(opt.steps[2]) == 0


def test_state_dict_round_trips_through_torch_adam():
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _train(net, opt, 5)
    # torch.optim.Adam accepts our state, continues, and hands it back: a resumed run continues exactly.
    twin = copy.deepcopy(net)
    torch_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    torch_opt.load_state_dict(opt.state_dict())
    back = FusedAdam(twin.parameters(), lr=0.5)
    back.load_state_dict(torch_opt.state_dict())
    assert back.param_groups[0]["lr"] == 1e-2
    _train(net, opt, 5)
    _train(twin, back, 5)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adam_picks_the_fused_path_on_cpu():
    assert isinstance(adam(_net().parameters(), lr=1e-3), FusedAdam)


def _no_cpu_kernel(*args, **kwargs):
    raise NotImplementedError("Could not run 'aten::_fused_adam_' with arguments from the 'CPU' backend")


@pytest.mark.parametrize("missing", ["no-function", "no-cpu-kernel"])
def test_adam_without_the_fused_kernel_falls_back_to_the_same_numbers(monkeypatch, missing):
    fast = _net()
    _train(fast, adam(fast.parameters(), lr=1e-2, eps=1e-5), 20, {10: 3e-3})
    if missing == "no-function":
        monkeypatch.delattr(torch, "_fused_adam_")
    else:  # torch 2.1-2.3: the op exists, for CUDA only
        monkeypatch.setattr(torch, "_fused_adam_", _no_cpu_kernel)
    has_fused_adam.cache_clear()
    try:
        plain = _net()
        opt = adam(plain.parameters(), lr=1e-2, eps=1e-5)
        assert type(opt) is torch.optim.Adam
        _train(plain, opt, 20, {10: 3e-3})
    finally:
        has_fused_adam.cache_clear()  # the real kernel comes back with the monkeypatch's undo
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
