# SPDX-License-Identifier: Apache-2.0
"""Multi-task balancing: loss weightings and gradient methods, chosen independently.

``build_weighting`` gives the module that turns per-task losses into weighted losses;
``build_gradient_balancer`` the backward pass that turns those into parameter gradients. Both
take the task list from the caller: nothing here assumes which tasks a model has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mtl_perception.balancing.gradient import (
    GRAD_METHODS,
    JACOBIANS,
    BackwardStats,
    GradientBalancer,
    GradientSync,
)
from mtl_perception.balancing.weighting import (
    REGRESSION_TASKS,
    WEIGHTINGS,
    BalancedMultiTaskLoss,
    ConstantWeighting,
    DynamicWeightAverage,
    GradNorm,
    LossWeighting,
    UncertaintyWeighting,
    WeightedLosses,
)
from mtl_perception.core.errors import UserError

__all__ = [
    "GRAD_METHODS",
    "JACOBIANS",
    "REGRESSION_TASKS",
    "WEIGHTINGS",
    "BackwardStats",
    "GradientBalancer",
    "LossWeighting",
    "WeightedLosses",
    "build_gradient_balancer",
    "build_weighting",
]


def build_weighting(
    name: str, tasks: Sequence[str], options: Mapping[str, Any] | None = None
) -> LossWeighting:
    """Loss weighting ``name`` for ``tasks``; ``options`` is the balancing config section.

    Raises:
        UserError: unknown name or an invalid option value.
    """
    options = options or {}
    if name not in WEIGHTINGS:
        raise UserError(f"balancing.weighting: {name!r} is not one of {', '.join(WEIGHTINGS)}")
    try:
        if name == "constant":
            return ConstantWeighting(tasks, weights=options.get("task_weights"))
        if name == "uncertainty":
            return UncertaintyWeighting(
                tasks,
                init_log_var=float(options.get("init_log_var", 0.0)),
                regression_tasks=options.get("regression_tasks", REGRESSION_TASKS),
            )
        if name == "dwa":
            return DynamicWeightAverage(
                tasks, temperature=float(options.get("dwa_temperature", 2.0))
            )
        if name == "bmtl":
            return BalancedMultiTaskLoss(
                tasks, temperature=float(options.get("bmtl_temperature", 1.0))
            )
        if name == "gradnorm":
            return GradNorm(tasks, alpha=float(options.get("gradnorm_alpha", 1.5)))
        return WEIGHTINGS[name](tasks)
    except ValueError as err:
        raise UserError(f"balancing: {err}") from None


def build_gradient_balancer(
    method: str,
    weighting: LossWeighting,
    shared_params: Sequence[Tensor],
    head_params: Mapping[str, Sequence[Tensor]],
    options: Mapping[str, Any] | None = None,
    cosine_every: int = 0,
    sync: GradientSync | None = None,
    last_shared_params: Sequence[Tensor] = (),
) -> GradientBalancer:
    """Backward pass for ``method`` over the model's shared and per-task (head) parameters.

    Each task's weighting parameters join that task's head parameters, so they are trained by
    the same backward and synchronised the same way across ranks. ``options`` is the balancing
    config section (``jacobian``: ``exact`` or ``rep``, and the aggregators' settings);
    ``last_shared_params`` is the last shared layer, where GradNorm measures gradient norms.

    Raises:
        UserError: unknown method or Jacobian mode, or a missing optional dependency.
    """
    options = dict(options or {})
    task_params = {
        task: [*head_params[task], *weighting.task_parameters(task)] for task in weighting.tasks
    }
    return GradientBalancer(
        method,
        weighting,
        shared_params,
        task_params,
        options=options,
        cosine_every=cosine_every,
        sync=sync,
        jacobian=str(options.get("jacobian", "exact")),
        last_shared_params=last_shared_params,
    )
