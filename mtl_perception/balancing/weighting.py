"""Loss weightings: how the per-task losses are combined into the scalar that is optimised.

Every weighting is an ``nn.Module`` so learned weights (uncertainty) reach the optimiser via
``parameters()`` and everything else it remembers (DWA's epoch history) travels in
``state_dict()`` through ``get_extra_state`` -- a resumed run continues with the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class WeightedLosses:
    """The outcome of one weighting call.

    ``weighted`` holds each task's contribution to ``total`` (what a gradient method sees),
    ``weights`` the plain multipliers applied to the raw losses (for logging).
    """

    total: Tensor
    weighted: dict[str, Tensor]
    weights: dict[str, float]


class LossWeighting(nn.Module):
    """Base class: subclasses implement ``task_weights`` (and optionally ``epoch_end``)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a loss weighting needs at least one task")
        self.tasks: tuple[str, ...] = tuple(tasks)

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Multiplier per task for the current raw losses."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Learned parameters that only ``task``'s weighted loss depends on (default: none)."""
        return []

    def regularizer(self, task: str) -> Tensor | float:
        """Extra term added to a task's weighted loss (only uncertainty weighting has one)."""
        return 0.0

    def weigh(self, losses: Mapping[str, Tensor]) -> WeightedLosses:
        """Apply the weighting; ``losses`` must hold exactly this weighting's tasks."""
        if set(losses) != set(self.tasks):
            raise KeyError(f"losses for {sorted(losses)} given, weighting expects {sorted(self.tasks)}")
        weights = self.task_weights(losses)
        weighted = {task: weights[task] * losses[task] + self.regularizer(task) for task in self.tasks}
        total = torch.stack(list(weighted.values())).sum()
        return WeightedLosses(total, weighted, {task: float(weights[task].detach()) for task in self.tasks})

    def forward(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """``(total loss, weight per task)``; see ``weigh`` for the per-task weighted losses."""
        result = self.weigh(losses)
        return result.total, result.weights

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        """Hook called once per epoch with the epoch-mean raw loss per task (default: no-op)."""


class EqualWeighting(LossWeighting):
    """Plain sum of the task losses."""

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        one = next(iter(losses.values())).new_ones(())
        return {task: one for task in self.tasks}


class ConstantWeighting(LossWeighting):
    """A fixed, user-chosen weight per task (tasks left out weigh 1)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"constant weights given for unknown task(s) {unknown}; tasks are {list(self.tasks)}")
        self.weights = {task: float(weights.get(task, 1.0)) for task in self.tasks}

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ref = next(iter(losses.values()))
        return {task: ref.new_tensor(self.weights[task]) for task in self.tasks}


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns ``s_t = log sigma_t^2`` per task; task term ``exp(-s_t) * L_t + s_t`` (the form used for
    classification-style losses). ``s_t`` are parameters of this module and must be given to the
    optimiser.
    """

    def __init__(self, tasks: Sequence[str], init_log_var: float = 0.0) -> None:
        super().__init__(tasks)
        self.log_vars = nn.ParameterDict({task: nn.Parameter(torch.tensor(float(init_log_var))) for task in self.tasks})

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {task: torch.exp(-self.log_vars[task]) for task in self.tasks}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [self.log_vars[task]]

    def regularizer(self, task: str) -> Tensor:
        return self.log_vars[task]


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``w_k = K * softmax_k(r_k / T)`` with ``r_k = L_k(e-1) / L_k(e-2)`` from the EPOCH-MEAN losses
    of the previous two epochs (passed to ``epoch_end``); equal weights until two epochs exist.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []  # epoch-mean losses, oldest first (last two kept)

    def current_weights(self) -> dict[str, float]:
        """The weights used during the current epoch (constant within an epoch)."""
        if len(self.history) < 2:
            return {task: 1.0 for task in self.tasks}
        previous, last = self.history[-2], self.history[-1]
        ratios = torch.tensor([last[t] / max(previous[t], 1e-12) for t in self.tasks], dtype=torch.float64)
        weights = len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0)
        return dict(zip(self.tasks, weights.tolist(), strict=True))

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ref = next(iter(losses.values()))
        return {task: ref.new_tensor(weight) for task, weight in self.current_weights().items()}

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        self.history.append({task: float(mean_losses[task]) for task in self.tasks})
        self.history = self.history[-2:]

    def get_extra_state(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state.get("history", [])]


class BalancedMultiTaskLoss(LossWeighting):
    """Balanced multi-task learning loss transform (Liang & Zhang, 2020).

    The paper optimises ``sum_k exp(L_k / T)``, whose gradient weighs task ``k`` by
    ``exp(L_k / T) / T`` (detached: the weight itself is not trained). We use these weights
    normalised to sum to K (``K * softmax(L / T)``): the same direction, but no ``exp`` overflow
    for large losses and the same learning-rate scale as ``equal``.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 1.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"bmtl temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raw = torch.stack([losses[task].detach().float() for task in self.tasks])
        if not torch.isfinite(raw).all():  # a diverged loss: fall back to equal weights this step
            raw = torch.zeros_like(raw)
        weights = len(self.tasks) * torch.softmax(raw / self.temperature, dim=0)
        return {task: weights[i].to(losses[task].dtype) for i, task in enumerate(self.tasks)}


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "constant": ConstantWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "bmtl": BalancedMultiTaskLoss,
}

