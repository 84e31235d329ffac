"""Adam for small networks: PyTorch's own fused Adam kernel, called without the ``torch.optim`` wrapper.

On the networks of this library (two layers of 64-256 units) an update is a few hundred microseconds of
kernels, and ``torch.optim.Optimizer.step`` adds about 150 us of Python per call around its one fused kernel
(measured: 186 us per step, 17 us of it in ``aten::_fused_adam_``). Its first use also imports
``torch._dynamo``, about 1 s of every process's start-up. This class makes the same call as
``torch.optim.Adam(fused=True)`` -- same kernel, same numbers, same ``state_dict`` layout -- and nothing else.

``torch._fused_adam_`` is private: :func:`adam` uses it only where :func:`has_fused_adam` finds it working, and
gives ``torch.optim.Adam`` elsewhere (torch 2.1-2.3 on CPU, devices without the kernel): the same update to
float rounding, a little slower.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


@functools.cache
def has_fused_adam(device_type: str) -> bool:
    """Whether ``torch._fused_adam_`` runs on this device type: on CUDA in every torch >= 2.1, on CPU since
    torch 2.4 (pytorch/pytorch#123074). Tried once per device type on a one-element tensor."""
    kernel = getattr(torch, "_fused_adam_", None)
    if kernel is None:
        return False
    tensors = [[torch.zeros(1, device=device_type)] for _ in range(4)]  # param, grad, exp_avg, exp_avg_sq
    step = [torch.ones((), device=device_type)]
    options = dict(lr=0.0, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    try:
        kernel(*tensors, [], step, **options)
    except (RuntimeError, TypeError):  # no kernel for this device (NotImplementedError), or another signature
        return False
    return True


class FusedAdam:
    """Adam (Kingma & Ba 2015) without weight decay, over parameters that share one device and dtype.

    ``param_groups[0]["lr"]`` may be changed between steps (learning-rate annealing), as with torch.optim."""

    def __init__(
        self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        params = list(params)
        if len({(p.device, p.dtype) for p in params}) > 1:
            raise ValueError("FusedAdam needs all parameters on one device with one dtype")
        self.params = params
        self.param_groups = [{"params": params, "lr": lr, "betas": betas, "eps": eps}]
        # One float32 step count per parameter, as torch keeps them, but views of one tensor: the usual step, where
        # every parameter has a gradient, increments them all in one op rather than one op per parameter.
        self._step_counts = torch.zeros(len(params), dtype=torch.float32, device=params[0].device if params else None)
        self.steps = list(self._step_counts.unbind(0))
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

    def zero_grad(self) -> None:
        """Drop the gradients, as torch.optim does by default (``set_to_none=True`` since torch 2.0)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        group = self.param_groups[0]
        steps = [self.steps[i] for i in live]
        if len(live) == len(self.params):
            self._step_counts.add_(1)
        else:
            torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i in live],
            [self.params[i].grad for i in live],
            [self.exp_avgs[i] for i in live],
            [self.exp_avg_sqs[i] for i in live],
            [],
            steps,
            lr=float(group["lr"]),
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=0.0,
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )

    def state_dict(self) -> dict[str, Any]:
        """In ``torch.optim.Adam``'s layout, so either can load the other's state."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group.update(params=list(range(len(self.params))), weight_decay=0.0, amsgrad=False, maximize=False)
        state = {
            i: {
                "step": self.steps[i].clone(),
                "exp_avg": self.exp_avgs[i].clone(),
                "exp_avg_sq": self.exp_avg_sqs[i].clone(),
            }
            for i in range(len(self.params))
            if bool(self.steps[i] > 0)
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        group = state_dict["param_groups"][0]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"optimiser state has {len(group['params'])} parameters, this model {len(self.params)}")
        self.param_groups[0].update(lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"])
        for i, saved in state_dict["state"].items():
            i = int(i)
            self.steps[i].copy_(torch.as_tensor(saved["step"]).reshape(()))
            self.exp_avgs[i].copy_(saved["exp_avg"])
            self.exp_avg_sqs[i].copy_(saved["exp_avg_sq"])


def adam(params: Iterable[Tensor], lr: float, eps: float = 1e-8) -> FusedAdam | torch.optim.Adam:
    """Adam: :class:`FusedAdam` where the fused kernel works (:func:`has_fused_adam`), else ``torch.optim.Adam``."""
    params = list(params)
    if params and has_fused_adam(params[0].device.type):
        return FusedAdam(params, lr=lr, eps=eps)
    return torch.optim.Adam(params, lr=lr, eps=eps)
