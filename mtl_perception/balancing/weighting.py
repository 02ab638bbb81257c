# SPDX-License-Identifier: Apache-2.0
"""Loss weightings: how the per-task losses are combined into the scalar that is optimised.

Every weighting is an ``nn.Module`` so learned weights (uncertainty) reach the optimiser via
``parameters()`` and everything else it remembers (DWA's epoch history) travels in
``state_dict()`` through ``get_extra_state`` -- a resumed run continues with the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# Tasks whose loss is a regression (Gaussian likelihood) for uncertainty weighting's form.
REGRESSION_TASKS: tuple[str, ...] = ("depth",)


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
    """Base class: subclasses implement ``task_weights`` (and optionally ``epoch_end``).

    A step may carry losses for any non-empty subset of the tasks (a task whose samples were all
    masked out of the batch has no loss); weights are given for the tasks present.
    """

    # True for a weighting that learns from per-task gradient norms (GradNorm): the gradient
    # balancer then measures them and calls ``gradient_norm_feedback`` once per step.
    needs_gradient_norms: bool = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a loss weighting needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks {list(tasks)} contain a duplicate")
        self.tasks: tuple[str, ...] = tuple(tasks)

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Multiplier per task present in ``losses`` for the current raw losses."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Learned parameters that only ``task``'s weighted loss depends on (default: none)."""
        return []

    def regularizer(self, task: str) -> Tensor | float:
        """Extra term added to a task's weighted loss (only uncertainty weighting has one)."""
        return 0.0

    def weigh(self, losses: Mapping[str, Tensor]) -> WeightedLosses:
        """Apply the weighting to the losses of the tasks present this step.

        Raises:
            KeyError: ``losses`` is empty or names a task this weighting does not know.
        """
        unknown = sorted(set(losses) - set(self.tasks))
        if unknown or not losses:
            raise KeyError(
                f"losses for {sorted(losses)} given; expected a subset of {list(self.tasks)}"
            )
        present = {task: losses[task] for task in self.tasks if task in losses}
        weights = self.task_weights(present)
        weighted = {
            task: weights[task] * loss + self.regularizer(task) for task, loss in present.items()
        }
        total = torch.stack(list(weighted.values())).sum()
        return WeightedLosses(
            total, weighted, {task: float(weights[task].detach()) for task in present}
        )

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        """Hook called once per epoch with the epoch-mean raw loss per task (default: no-op).

        The mean is NaN for a task that had no loss in the whole epoch.
        """

    def gradient_norm_feedback(self, norms: Mapping[str, Tensor], grad_scale: float = 1.0) -> None:
        """Learn from this step's gradient norms of the weighted task losses (GradNorm only).

        ``grad_scale`` is the AMP loss scale: gradients written to ``.grad`` are multiplied by it,
        like every other gradient of the step, so that the scaler's unscale restores them.
        """
        raise NotImplementedError(f"{type(self).__name__} does not learn from gradient norms")


class EqualWeighting(LossWeighting):
    """Plain sum of the task losses."""

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weight 1 for every task present."""
        one = next(iter(losses.values())).new_ones(())
        return dict.fromkeys(losses, one)


class ConstantWeighting(LossWeighting):
    """A fixed, user-chosen weight per task (tasks left out weigh 1)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"constant weights for unknown task(s) {unknown}; tasks are {list(self.tasks)}"
            )
        self.weights = {task: float(weights.get(task, 1.0)) for task in self.tasks}

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The configured weight of every task present."""
        ref = next(iter(losses.values()))
        return {task: ref.new_tensor(self.weights[task]) for task in losses}


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns ``s_t = log sigma_t^2`` per task (parameters of this module, trained by the optimiser).
    The paper's two likelihoods give two task terms: a regression task (a Gaussian likelihood,
    e.g. depth) ``1/(2 sigma^2) L + log sigma = exp(-s)/2 * L + s/2``; a classification task
    (a softmax likelihood, e.g. segmentation; we count detection here) ``1/sigma^2 L + log sigma
    = exp(-s) * L + s/2``.
    """

    def __init__(
        self, tasks: Sequence[str], init_log_var: float = 0.0, regression_tasks: Sequence[str] = ()
    ) -> None:
        super().__init__(tasks)
        self.log_vars = nn.ParameterDict(
            {task: nn.Parameter(torch.tensor(float(init_log_var))) for task in self.tasks}
        )
        # Listed tasks the model does not have are ignored: the config default names ``depth``.
        self.regression_tasks = tuple(task for task in self.tasks if task in set(regression_tasks))

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``exp(-s_t)``, halved for a regression task."""
        return {
            task: torch.exp(-self.log_vars[task]) * (0.5 if task in self.regression_tasks else 1.0)
            for task in losses
        }

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``s_t``: trained by the task's own backward."""
        return [self.log_vars[task]]

    def regularizer(self, task: str) -> Tensor:
        """``log sigma_t = s_t / 2``."""
        return 0.5 * self.log_vars[task]


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
        self.history: list[
            dict[str, float]
        ] = []  # epoch-mean losses, oldest first (last two kept)

    def current_weights(self) -> dict[str, float]:
        """The weights used during the current epoch (constant within an epoch)."""
        if len(self.history) < 2:
            return dict.fromkeys(self.tasks, 1.0)
        previous, last = self.history[-2], self.history[-1]
        ratios = torch.tensor(
            [_ratio(last.get(t), previous.get(t)) for t in self.tasks], dtype=torch.float64
        )
        weights = len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0)
        return dict(zip(self.tasks, weights.tolist(), strict=True))

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """This epoch's weights for the tasks present."""
        ref = next(iter(losses.values()))
        weights = self.current_weights()
        return {task: ref.new_tensor(weights[task]) for task in losses}

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        """Remember this epoch's mean losses (the last two epochs are kept)."""
        self.history.append({task: float(mean_losses.get(task, math.nan)) for task in self.tasks})
        self.history = self.history[-2:]

    def get_extra_state(self) -> dict[str, Any]:
        """The loss history, for checkpoints."""
        return {"history": [dict(entry) for entry in self.history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the loss history from a checkpoint."""
        self.history = [dict(entry) for entry in state.get("history", [])]


def _ratio(last: float | None, previous: float | None) -> float:
    """DWA's rate of change; 1 (no preference) when a task had no loss in either epoch."""
    if last is None or previous is None or not math.isfinite(last) or not math.isfinite(previous):
        return 1.0
    return last / max(previous, 1e-12)


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
        """``K softmax(L / T)`` over the K tasks present."""
        present = list(losses)
        raw = torch.stack([losses[task].detach().float() for task in present])
        if not torch.isfinite(raw).all():  # a diverged loss: fall back to equal weights this step
            raw = torch.zeros_like(raw)
        weights = len(present) * torch.softmax(raw / self.temperature, dim=0)
        return {task: weights[i].to(losses[task].dtype) for i, task in enumerate(present)}


class GradNorm(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Learns one weight ``w_t`` per task so that the gradient norms ``G_t = ||grad_W w_t L_t||`` at
    the last shared layer ``W`` approach ``mean(G) * r_t^alpha``, where ``r_t`` is task ``t``'s
    inverse training rate ``L_t / L_t(0)`` relative to the mean over tasks: a task that trains
    slower gets a larger gradient. ``alpha`` sets the strength of that pull (0: equal norms).

    The gradient balancer measures the norms (free in exact mode, where the Jacobian holds them)
    and calls ``gradient_norm_feedback``, which writes ``d L_grad / d w`` into ``w.grad`` for the
    optimiser, with ``L_grad = sum_t |G_t - target_t|`` and the target held constant as in the
    paper. ``G_t`` is linear in ``w_t``, so ``d L_grad / d w_t = sign(G_t - target_t) G_t / w_t``
    needs no second-order backward. The main loss uses ``w`` detached (``w`` learns only from
    ``L_grad``), and ``w`` is renormalised to sum to the number of tasks before every step.
    ``L_t(0)`` is a task's first loss (kept in the checkpoint).
    """

    needs_gradient_norms = True
    initial_losses: Tensor  # buffer

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5) -> None:
        super().__init__(tasks)
        if alpha < 0:
            raise ValueError(f"gradnorm alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.loss_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), math.nan))
        self._last_losses: dict[str, Tensor] = {}

    @torch.no_grad()
    def _renormalise(self) -> None:
        weights = self.loss_weights
        weights.copy_(torch.nan_to_num(weights, nan=1.0).clamp_min(1e-3))
        weights.mul_(len(self.tasks) / weights.sum())

    def task_weights(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The current ``w_t`` (renormalised), detached."""
        self._renormalise()
        self._last_losses = {task: loss.detach().float() for task, loss in losses.items()}
        for task, loss in self._last_losses.items():
            index = self.tasks.index(task)
            if (
                math.isnan(float(self.initial_losses[index]))
                and math.isfinite(float(loss))
                and float(loss) > 0
            ):
                self.initial_losses[index] = loss
        weights = self.loss_weights.detach()
        return {
            task: weights[self.tasks.index(task)].to(loss.dtype) for task, loss in losses.items()
        }

    def gradient_norm_feedback(self, norms: Mapping[str, Tensor], grad_scale: float = 1.0) -> None:
        """Write ``d L_grad / d w`` into ``w.grad`` (see the class docstring)."""
        tasks = [
            t
            for t in self.tasks
            if t in norms
            and t in self._last_losses
            and not math.isnan(float(self.initial_losses[self.tasks.index(t)]))
        ]
        grad = torch.zeros_like(self.loss_weights)
        if tasks:
            index = torch.tensor([self.tasks.index(t) for t in tasks], device=grad.device)
            norm = torch.stack([norms[t].float() for t in tasks]).to(grad.device)
            loss = torch.stack([self._last_losses[t] for t in tasks]).to(grad.device)
            rate = loss / self.initial_losses[index]
            target = norm.mean() * (rate / rate.mean()) ** self.alpha
            weights = self.loss_weights.detach()[index]
            grad[index] = torch.sign(norm - target) * norm / weights * grad_scale
        self.loss_weights.grad = grad


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "constant": ConstantWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "bmtl": BalancedMultiTaskLoss,
    "gradnorm": GradNorm,
}
