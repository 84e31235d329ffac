"""Memory: a recurrent *core* (none, LSTM or GRU) between the observation features and the actor/critic heads.

A core maps features ``[B, in_dim]`` and a state ``[B, state_dim]`` to features ``[B, out_dim]`` for the heads and
the next state. The state is one flat tensor per env whatever the cell (an LSTM's ``(h, c)`` side by side, a GRU's
``h``; empty for ``none``), so rollouts, replay and checkpoints store it as any other tensor. A state of zeros is
the start of an episode: the agent zeroes an env's state at every episode start, after a termination and after a
truncation alike.

The actor and the critic each have their own core (as Stable-Baselines3's RecurrentPPO by default): they learn
from different losses -- in ``ac`` with different optimisers and learning rates -- and a shared core would let the
critic's value error, usually the larger gradient, reshape the actor's memory. It costs a second cell per step.

The update replays the rollout exactly: a sequence of steps starts from the state the rollout recorded before its
first step and resets where the rollout did (:meth:`Core.sequence`), so with the same weights it computes what the
rollout computed.

One set of weights serves both: each core holds a one-layer ``nn.GRU``/``nn.LSTM`` and steps it with one time step
while acting. A replay (:meth:`Core.replay`) runs that same layer fused over time instead of a Python loop of
cells: the sequences are split at episode starts into segments, each from its own first state (the recorded one,
or zeros at an episode start), padded to one length (or packed, when their lengths differ a lot) and run in one
call, then put back in place; so the resets stay exact, and a sequence with no episode start inside runs as it is.
A core may read its input multiplied by ``input_scale`` (``rnn_input_scale``): the same as input weights initialised
``input_scale`` times larger and moved ``input_scale`` times further by each Adam step (Adam's steps do not grow with
the gradient). It is for memories that must read small changes of their input: PendulumNoVel-v1's velocity is the
change of (cos, sin) between two steps, about 0.05 * angular velocity, and the default init (weights within
1/sqrt(hidden)) took PPO most of 100k steps to grow weights that see it (the preset's notes give the figures).

Checkpoints of the earlier ``nn.GRUCell``/``nn.LSTMCell`` cores (keys ``cell.weight_ih`` ...) load unchanged: the
keys are renamed on load (the parameters, their order and their initial draws are the same).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from duetrl.encoders import Obs, batch_size

RNN_KINDS = ("none", "lstm", "gru")


class Core(nn.Module):
    """The recurrent core of one network (the actor's or the critic's): ``none`` passes features through.

    ``cell`` is a one-layer ``nn.GRU`` or ``nn.LSTM`` (``[time, batch, features]``): one time step of it is the
    cell's step, and a whole sequence of it the fused replay. ``input_scale`` multiplies what the cell reads (see the
    module docstring; 1 leaves it as it is)."""

    def __init__(self, kind: str, in_dim: int, hidden: int, input_scale: float = 1.0):
        super().__init__()
        self.kind = kind
        self.input_scale = float(input_scale)
        self.recurrent = kind != "none"
        self.out_dim = hidden if self.recurrent else in_dim
        self.state_dim = {"none": 0, "gru": hidden, "lstm": 2 * hidden}[kind]
        self.cell: nn.Module | None = {"none": None, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
        if self.cell is not None:
            self.cell = self.cell(in_dim, hidden)  # the cells' parameters in the cells' order and initial draws

    def state_parts(self) -> list[tuple[str, int]]:
        """What the flat state holds, in order: a GRU's ``h``; an LSTM's ``h`` then ``c`` (none without a cell)."""
        hidden = self.out_dim
        return {"none": [], "gru": [("h", hidden)], "lstm": [("h", hidden), ("c", hidden)]}[self.kind]

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The state of ``n`` envs at the start of an episode: zeros ``[n, state_dim]``."""
        return torch.zeros(n, self.state_dim, device=device)

    def step(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of every row: (features for the heads ``[B, out_dim]``, next state ``[B, state_dim]``)."""
        if self.kind == "none":
            return features, state
        outputs, last = self.cell(self._scaled(features).unsqueeze(0), self._layer_state(state))
        return outputs[0], self._flat_state(last)

    def sequence(self, features: Tensor, state: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        """``T`` steps of ``B`` sequences: ``features [T, B, in_dim]`` from ``state [B, state_dim]``, the state
        zeroed before step ``t`` where ``starts[t]`` (a new episode). Returns the features ``[T, B, out_dim]`` and
        the state after each step ``[T, B, state_dim]`` (what the next observation of that step is seen with).

        A GRU's state is its output, so it is replayed fused (:meth:`replay`); an LSTM's cell state is not an
        output of the fused layer, so the LSTM steps one at a time here."""
        if not self.recurrent:
            return features, state.new_zeros(*features.shape[:2], 0)
        if self.kind == "gru":
            outputs = self.replay(features, state, starts)
            return outputs, outputs
        outputs, states = [], []
        for t in range(features.shape[0]):
            out, state = self.step(features[t], reset(state, starts[t]))
            outputs.append(out)
            states.append(state)
        return torch.stack(outputs), torch.stack(states)

    def replay(self, features: Tensor, state: Tensor, starts: Tensor) -> Tensor:
        """The features of :meth:`sequence` alone (``[T, B, out_dim]``), computed by the fused layer over time:
        each sequence split at its episode starts, every segment from its own first state, all segments run in one
        call (padded to the longest, or packed when padding would more than double the work)."""
        if not self.recurrent:
            return features
        features = self._scaled(features)
        state = reset(state, starts[0])
        if not starts[1:].any():  # no episode starts inside: the sequences as they are
            return self.cell(features, self._layer_state(state))[0]
        steps, sequences = starts.shape
        first = starts.clone()
        first[0] = True  # segments begin at each sequence's first step and at every episode start
        counts = first.sum(0)  # [B] segments per sequence
        offsets = counts.cumsum(0) - counts  # [B] each sequence's first segment
        segment = first.long().cumsum(0) - 1 + offsets  # [T, B] the segment of each step
        time = torch.arange(steps, device=starts.device).unsqueeze(1).expand(steps, sequences)
        position = time - torch.where(first, time, 0).cummax(0).values  # [T, B] step within its segment
        num_segments, length = int(counts.sum()), int(position.max()) + 1
        lengths = torch.zeros(num_segments, dtype=torch.long, device=starts.device)
        lengths.index_add_(0, segment.flatten(), torch.ones_like(segment.flatten()))
        slot = (position * num_segments + segment).flatten()  # [T * B] row of each step in [length, segments]
        padded = features.new_zeros(length * num_segments, features.shape[-1])
        padded = padded.index_copy(0, slot, features.flatten(0, 1)).view(length, num_segments, -1)
        first_states = state.new_zeros(num_segments, self.state_dim).index_copy(0, offsets, state)  # zeros: starts
        if length * num_segments <= 2 * steps * sequences:
            # Padded after each segment's end: those steps' outputs are computed and dropped, and they come after
            # every kept step of their segment, so they change neither the kept outputs nor their gradients. An
            # unpacked LSTM runs oneDNN's fused kernel on CPU (a packed one does not): several times faster.
            outputs = self.cell(padded, self._layer_state(first_states))[0]
        else:  # segments of very unequal lengths (many short episodes): only the real steps
            packed = pack_padded_sequence(padded, lengths.cpu(), enforce_sorted=False)
            outputs = self.cell(packed, self._layer_state(first_states))[0]
            outputs = pad_packed_sequence(outputs, total_length=length)[0]
        return outputs.reshape(length * num_segments, -1)[slot].view(steps, sequences, -1)

    def _scaled(self, features: Tensor) -> Tensor:
        """What the cell reads: ``features`` times ``input_scale`` (as they are at 1)."""
        return features if self.input_scale == 1.0 else features * self.input_scale

    def _layer_state(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """A flat state ``[B, state_dim]`` as the layer takes it: ``[1, B, hidden]`` (GRU) or a pair (LSTM)."""
        if self.kind == "gru":
            return state.unsqueeze(0)
        hidden, cell = state.chunk(2, dim=-1)
        return hidden.unsqueeze(0).contiguous(), cell.unsqueeze(0).contiguous()

    def _flat_state(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """The layer's final state as one flat ``[B, state_dim]`` tensor (an LSTM's ``h`` and ``c`` side by side)."""
        return state[0] if self.kind == "gru" else torch.cat([state[0][0], state[1][0]], dim=-1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints of the earlier cores held an nn.GRUCell/nn.LSTMCell: the same parameters under other names.
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if f"{prefix}cell.{name}" in state_dict:
                state_dict[f"{prefix}cell.{name}_l0"] = state_dict.pop(f"{prefix}cell.{name}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def reset(state: Tensor, starts: Tensor) -> Tensor:
    """``state [B, S]`` with the rows of envs starting an episode (``starts [B]``) set to zeros."""
    return torch.where(starts.unsqueeze(-1), torch.zeros((), device=state.device), state)


class CarriedState(nn.Module):
    """The states an agent carries from one step of its envs to the next, one per core (``[num_envs, S]`` each),
    and which envs start an episode at the next step. Buffers, so checkpoints hold them and a resume is exact."""

    def __init__(self, state_dims: dict[str, int], num_envs: int):
        super().__init__()
        self.names = list(state_dims)
        for name, dim in state_dims.items():
            self.register_buffer(name, torch.zeros(num_envs, dim))
        self.register_buffer("starts", torch.ones(num_envs, dtype=torch.bool))  # the first step starts episodes

    def current(self) -> dict[str, Tensor]:
        """Each core's state for the coming step, zeroed where an episode starts."""
        return {name: reset(getattr(self, name), self.starts) for name in self.names}

    def carry(self, next_states: dict[str, Tensor]) -> None:
        """Keep the states after this step; nothing starts until :meth:`episodes_ended` says so."""
        for name, state in next_states.items():
            getattr(self, name).copy_(state)
        self.starts.zero_()

    def episodes_ended(self, done: Tensor) -> None:
        """Envs whose episode ended (terminated or truncated) start a new one at the next step."""
        self.starts.copy_(done.to(self.starts.device, torch.bool))


def chunk(tensor: Tensor, length: int) -> Tensor:
    """A rollout ``[T, N, ...]`` cut into ``T // length`` sequences per env, each ``length`` steps in time order:
    ``[length, (T // length) * N, ...]`` (``T`` a multiple of ``length``)."""
    steps, envs = tensor.shape[:2]
    pieces = tensor.reshape(steps // length, length, envs, *tensor.shape[2:])  # [P, L, N, ...]
    return pieces.transpose(0, 1).reshape(length, (steps // length) * envs, *tensor.shape[2:])


class StatefulAct:
    """An act function with memory for evaluation and video: called on a batch of observations, it carries each
    env's state; ``reset(done)`` zeroes the states of envs that start a new episode (all of them, at the first call
    with a new batch size). ``step(obs, state) -> (action, next_state)`` is the agent's."""

    def __init__(self, step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], initial: Callable[[int], Tensor]):
        self.step, self.initial = step, initial
        self.state: Tensor | None = None

    def reset(self, done: Tensor) -> None:
        done = torch.as_tensor(done, dtype=torch.bool)
        if self.state is None or len(self.state) != len(done):
            self.state = self.initial(len(done))
        else:
            self.state = reset(self.state, done.to(self.state.device))

    def __call__(self, obs: Obs) -> Tensor:
        rows = batch_size(obs)  # a Dict or Tuple observation: the batch of its leaves
        if self.state is None or len(self.state) != rows:
            self.state = self.initial(rows)
        action, self.state = self.step(obs, self.state)
        return action


def acting(agent: Any, deterministic: bool) -> Callable[[Tensor], Tensor]:
    """The act function that evaluation and video call on batches of observations (actions on the CPU): the
    agent's ``act``, or for a recurrent agent a :class:`StatefulAct` over its ``act_step``."""
    if not getattr(agent, "recurrent", False):
        return lambda obs: agent.act(obs, deterministic=deterministic).to("cpu")

    def step(obs: Obs, state: Tensor) -> tuple[Tensor, Tensor]:
        action, state = agent.act_step(obs, state, deterministic)
        return action.to("cpu"), state

    return StatefulAct(step, agent.initial_state)
