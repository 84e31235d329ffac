"""The stacked pieces every population shares: modules called per member, running statistics, Adam and gradient
clipping over weights ``[member, ...]``, each member's arithmetic that of its solo run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from duetrl.normalize import pool
from duetrl.optim import has_fused_adam

# ---------------------------------------------------------------------------------------------- stacked pieces


class _Nets(nn.Module):
    """The modules a population stacks, so that ``functional_call`` of one member's weights can call any function
    of them: ``nets(fn, *args)`` is ``fn(nets, *args)``."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, fn: Callable, *args: Any) -> Any:
        return fn(self, *args)


class StackedNorm:
    """Running mean and variance per member (float64, pooled over each member's own batches), as
    :class:`duetrl.normalize.RunningNorm` keeps them for one run: ``mean``, ``var`` ``[M, *shape]``; ``count`` ``[M]``
    (shaped to broadcast)."""

    def __init__(self, norms: list[nn.Module]):
        self.mean = torch.stack([n.mean for n in norms])
        self.var = torch.stack([n.var for n in norms])
        self.count = torch.stack([n.count for n in norms]).reshape(-1, *[1] * (self.mean.dim() - 1))
        self.clip, self.eps = norms[0].clip, norms[0].eps
        self.refresh()

    def refresh(self) -> None:
        self.shift = self.mean.float()
        self.scale = (self.var + self.eps).sqrt().float()

    def update(self, x: Tensor) -> None:
        """Fold ``[M, B, *shape]`` into each member's statistics."""
        x = x.reshape(x.shape[0], -1, *self.mean.shape[1:]).double()
        pool(self.mean, self.var, self.count, x.mean(1), x.var(1, unbiased=False), x.shape[1])
        self.refresh()

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``[M, B, *shape]`` normalised by each member's statistics."""
        shape = (x.shape[0],) + (1,) * (x.dim() - self.mean.dim()) + tuple(self.mean.shape[1:])
        return ((x - self.shift.reshape(shape)) / self.scale.reshape(shape)).clamp(-self.clip, self.clip)

    def keep(self, index: Tensor) -> None:
        self.mean, self.var, self.count = self.mean[index], self.var[index], self.count[index]
        self.refresh()

    def write(self, m: int, norm: nn.Module) -> None:
        """Member ``m``'s statistics into an ordinary RunningNorm."""
        norm.mean.copy_(self.mean[m])
        norm.var.copy_(self.var[m])
        norm.count.copy_(self.count[m].reshape(()))
        norm.refresh()


class StackedAdam:
    """Adam over stacked weights ``[M, ...]``, each member with its own learning rate, moments and step count
    (Adam is elementwise, so one tensor operation serves every member). Same arithmetic as ``torch.optim.Adam``
    (no weight decay, no amsgrad)."""

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], betas: tuple[float, float], eps: float):
        """``states``: each member's optimiser state_dict in ``torch.optim.Adam``'s layout (over the same params)."""
        self.params, self.betas, self.eps = params, betas, eps
        members = len(states)

        def saved(i: int, key: str, like: Tensor) -> Tensor:
            state = [s["state"].get(i, s["state"].get(str(i))) for s in states]
            if key == "step":
                return torch.tensor([float(st["step"]) if st else 0.0 for st in state], dtype=torch.float32)
            return torch.stack([st[key].to(like) if st else torch.zeros_like(like[0]) for st in state])

        self.exp_avgs = [saved(i, "exp_avg", p).detach().clone() for i, p in enumerate(params)]
        self.exp_avg_sqs = [saved(i, "exp_avg_sq", p).detach().clone() for i, p in enumerate(params)]
        self.step_count = saved(0, "step", params[0]) if params else torch.zeros(members)

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: Tensor) -> None:
        """One step of every member with its learning rate ``lr[m]``: PyTorch's fused Adam kernel (the one
        :class:`duetrl.optim.FusedAdam` calls) on the stacked tensors, once per distinct learning rate (on the
        members' views when rates differ), so each member's arithmetic is a solo run's."""
        self.step_count += 1  # every member steps at every update, so one count serves all
        rates = lr.tolist()
        groups: dict[float, list[int]] = {}
        for m, rate in enumerate(rates):
            groups.setdefault(rate, []).append(m)
        for rate, members in groups.items():
            if len(groups) == 1:
                tensors = [self.params, grads, self.exp_avgs, self.exp_avg_sqs]
            else:
                tensors = [
                    [t[m] for m in members for t in ts] for ts in (self.params, grads, self.exp_avgs, self.exp_avg_sqs)
                ]
            steps = [self.step_count[0]] * len(tensors[0])
            fused_adam(*tensors, steps, lr=rate, betas=self.betas, eps=self.eps)

    def keep(self, index: Tensor) -> None:
        self.exp_avgs = [t[index] for t in self.exp_avgs]
        self.exp_avg_sqs = [t[index] for t in self.exp_avg_sqs]
        self.step_count = self.step_count[index]

    def member_state(self, m: int, template: dict[str, Any], lr: float) -> dict[str, Any]:
        """Member ``m``'s state in the layout of ``template`` (its ordinary optimiser's state_dict)."""
        group = dict(template["param_groups"][0], lr=lr)
        step = float(self.step_count[m])
        state = (
            {
                i: {
                    "step": torch.tensor(step),
                    "exp_avg": self.exp_avgs[i][m].clone(),
                    "exp_avg_sq": self.exp_avg_sqs[i][m].clone(),
                }
                for i in range(len(self.params))
            }
            if step > 0
            else {}
        )
        return {"state": state, "param_groups": [group]}


def fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """Adam on lists of tensors whose step counts were already incremented: PyTorch's fused kernel where it runs,
    else ``torch.optim.adam``'s functional form (same update to float rounding)."""
    if params and has_fused_adam(params[0].device.type):
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=lr,
            beta1=betas[0],
            beta2=betas[1],
            weight_decay=0.0,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
        return
    beta1, beta2 = betas
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1, bias2_sqrt = 1 - beta1 ** float(step), (1 - beta2 ** float(step)) ** 0.5
        p.addcdiv_(m, (v.sqrt() / bias2_sqrt).add_(eps), value=-lr / bias1)


def clip_per_member(grads: list[Tensor], max_norm: Tensor) -> Tensor:
    """Each member's gradients ``[M, ...]`` scaled to a total 2-norm of at most ``max_norm[m]``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one run (the same 1e-6 in the denominator); returns the norms
    before clipping ``[M]``, as it returns the run's."""
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    scale = (max_norm.to(norms) / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view((-1,) + (1,) * (g.dim() - 1)))
    return norms
