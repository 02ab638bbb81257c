"""Gradient methods on the shared parameters, through torchjd's aggregators.

A multi-task step has two parts: the task heads get their own task's gradient, the shared
backbone gets the per-task gradients (a Jacobian with one row per task) combined by an
aggregator (PCGrad, UPGrad, ...). ``grad_method: none`` is plain ``backward()`` of the weighted
sum. The aggregators come from torchjd; this module only selects and drives them.

Distributed training: each rank holds the Jacobian of ITS batch. The aggregators are nonlinear,
so aggregating per rank and averaging the results is not the aggregation of the global batch.
We therefore all-reduce (average) the Jacobian rows across ranks first -- the mean of per-rank
Jacobians is the Jacobian of the mean loss over the global batch -- and aggregate that on every
rank. Some aggregators are randomised (PCGrad's task order, GradDrop's mask) or run iterative
solvers, so identical inputs need not give bit-identical outputs; the aggregated gradient is
then broadcast from rank 0 so every replica applies the same update.

Resume: PCGrad's and GradDrop's randomness comes from torch's global RNG, which checkpoints
restore. Nash-MTL keeps solver state between steps (last weights, step counter) that torchjd
does not expose for saving; a resumed run re-solves it from scratch on its first step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torchjd import aggregation
from torchjd.autojac import jac_to_grad, mtl_backward

from mtl_perception.core.errors import UserError


class GradientSync(Protocol):
    """Collective operations the backward step needs (no-ops in a single process)."""

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None: ...

    def all_reduce_grads_(self, params: Sequence[Tensor]) -> None: ...

    def broadcast_(self, tensors: Sequence[Tensor]) -> None: ...


class NoSync:
    """Single-process stand-in for ``GradientSync``."""

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None:
        """Nothing to average with."""

    def all_reduce_grads_(self, params: Sequence[Tensor]) -> None:
        """Nothing to average with."""

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Nothing to broadcast to."""


def _build_cagrad(options: Mapping[str, Any], num_tasks: int) -> aggregation.Aggregator:
    return aggregation.CAGrad(c=float(options.get("cagrad_alpha", 0.4)))


def _build_nash_mtl(options: Mapping[str, Any], num_tasks: int) -> aggregation.Aggregator:
    return aggregation.NashMTL(
        n_tasks=num_tasks,
        max_norm=float(options.get("nash_max_norm", 1.0)),
        update_weights_every=int(options.get("nash_update_every", 1)),
        optim_niter=int(options.get("nash_optim_niter", 20)),
    )


# name -> factory(options, num_tasks). ``options`` is the balancing config as a dict.
AGGREGATORS: dict[str, Callable[[Mapping[str, Any], int], aggregation.Aggregator]] = {
    "pcgrad": lambda options, n: aggregation.PCGrad(),
    "cagrad": _build_cagrad,
    "graddrop": lambda options, n: aggregation.GradDrop(),
    "upgrad": lambda options, n: aggregation.UPGrad(),
    "mgda": lambda options, n: aggregation.MGDA(),
    "imtl_g": lambda options, n: aggregation.IMTLG(),
    "aligned_mtl": lambda options, n: aggregation.AlignedMTL(),
    "nash_mtl": _build_nash_mtl,
}
GRAD_METHODS: tuple[str, ...] = ("none", *AGGREGATORS)


def build_aggregator(name: str, options: Mapping[str, Any], num_tasks: int) -> aggregation.Aggregator | None:
    """The torchjd aggregator for ``name`` (``None`` for ``none``); UserError if unusable."""
    if name == "none":
        return None
    if name not in AGGREGATORS:
        raise UserError(f"balancing.grad_method: {name!r} is not one of {', '.join(GRAD_METHODS)}")
    try:
        return AGGREGATORS[name](options, num_tasks)
    except ImportError as err:  # cagrad/nash_mtl need cvxpy, which is an optional torchjd extra
        raise UserError(f"balancing.grad_method: {name} needs an optional dependency ({err})") from None


def cosine_from_gramian(gramian: Tensor, tasks: Sequence[str]) -> dict[str, float]:
    """Pairwise cosine similarity of task gradients from their Gram matrix ``G = J J^T``."""
    norms = gramian.diagonal().clamp_min(1e-24).sqrt()
    cosine = gramian / (norms[:, None] * norms[None, :])
    return {
        f"{tasks[i]}~{tasks[j]}": float(cosine[i, j])
        for i in range(len(tasks))
        for j in range(i + 1, len(tasks))
    }


def _gramian_of_jacobians(params: Sequence[Tensor], rows: int) -> Tensor:
    """Sum over parameters of ``J_p J_p^T``: the Gram matrix of the concatenated Jacobian."""
    gramian = torch.zeros(rows, rows, dtype=torch.float64, device=params[0].device)
    for param in params:
        matrix = param.jac.reshape(rows, -1).double()
        gramian += matrix @ matrix.T
    return gramian


@dataclass
class BackwardStats:
    """What one backward step reports for logging."""

    cosine: dict[str, float] = field(default_factory=dict)
    aggregator_weights: dict[str, float] = field(default_factory=dict)


class GradientBalancer:
    """Runs the backward pass of a multi-task step with the configured gradient method.

    ``shared_params`` are the backbone parameters every task uses; ``task_params`` maps each task
    to the parameters only its loss uses: its head and any weighting parameters of that task
    (the uncertainty log-variance), so those are trained and synchronised as well.
    """

    def __init__(
        self,
        method: str,
        tasks: Sequence[str],
        shared_params: Sequence[Tensor],
        task_params: Mapping[str, Sequence[Tensor]],
        options: Mapping[str, Any] | None = None,
        cosine_every: int = 0,
        sync: GradientSync | None = None,
    ) -> None:
        self.method = method
        self.tasks = tuple(tasks)
        self.aggregator = build_aggregator(method, options or {}, len(self.tasks))
        self.shared_params = [p for p in shared_params if p.requires_grad]
        self.task_params = {task: [p for p in task_params[task] if p.requires_grad] for task in self.tasks}
        self.cosine_every = cosine_every
        self.sync = sync or NoSync()

    @property
    def uses_jacobian(self) -> bool:
        """True when the shared gradient comes from a torchjd aggregator."""
        return self.aggregator is not None

    def _non_shared_params(self) -> list[Tensor]:
        return [p for task in self.tasks for p in self.task_params[task]]

    def backward(
        self,
        weighted: Mapping[str, Tensor],
        features: Sequence[Tensor],
        step: int,
        scale: Callable[[Tensor], Tensor] = lambda loss: loss,
    ) -> BackwardStats:
        """Fill ``.grad`` of all parameters (synchronised across ranks) for this step.

        ``weighted`` are the per-task weighted losses (what the aggregator sees), ``features`` the
        shared representations the heads consume, ``scale`` the AMP loss scaler (identity on CPU).
        """
        losses = [scale(weighted[task]) for task in self.tasks]
        if self.aggregator is None:
            return self._plain_backward(losses, step)
        return self._jacobian_backward(losses, features)

    def _plain_backward(self, losses: list[Tensor], step: int) -> BackwardStats:
        stats = BackwardStats()
        if self.cosine_every > 0 and step % self.cosine_every == 0 and len(losses) > 1:
            # Per-task gradients cost one extra backward each, so only every ``cosine_every`` steps.
            rows = [
                torch.cat([
                    (g if g is not None else torch.zeros_like(p)).flatten()
                    for g, p in zip(
                        torch.autograd.grad(loss, self.shared_params, retain_graph=True, allow_unused=True),
                        self.shared_params,
                        strict=True,
                    )
                ])
                for loss in losses
            ]
            jacobian = torch.stack(rows).double()
            stats.cosine = cosine_from_gramian(jacobian @ jacobian.T, self.tasks)
        torch.stack(losses).sum().backward()
        self.sync.all_reduce_grads_(self.shared_params + self._non_shared_params())
        return stats

    def _jacobian_backward(self, losses: list[Tensor], features: Sequence[Tensor]) -> BackwardStats:
        tasks_params = [self.task_params[task] for task in self.tasks]
        mtl_backward(losses, features=list(features), tasks_params=tasks_params, shared_params=self.shared_params)
        with_jac = [p for p in self.shared_params if hasattr(p, "jac")]
        self.sync.all_reduce_mean_([p.jac for p in with_jac])
        self.sync.all_reduce_grads_(self._non_shared_params())
        stats = BackwardStats(cosine=cosine_from_gramian(_gramian_of_jacobians(with_jac, len(losses)), self.tasks))
        weights = jac_to_grad(with_jac, self.aggregator)
        if weights is not None:
            stats.aggregator_weights = dict(zip(self.tasks, weights.tolist(), strict=True))
        self.sync.broadcast_([p.grad for p in with_jac])
        return stats
