# SPDX-License-Identifier: Apache-2.0
"""Gradient methods: how the per-task gradients of one multi-task step become one update.

A multi-task step has two parts: each task's own parameters (its head, and any weighting
parameter of that task) get that task's gradient; the shared parameters get the per-task
gradients -- a Jacobian with one row per task -- combined by an aggregator (PCGrad, UPGrad,
Nash-MTL, ...) from torchjd. ``grad_method: none`` is plain ``backward()`` of the weighted sum.

Which Jacobian is aggregated (``jacobian``):

- ``exact``: w.r.t. the shared parameters (torchjd's ``mtl_backward``). Faithful to the papers;
  costs one batched backward through the backbone per task.
- ``rep``: w.r.t. the shared features the heads consume (LibMTL's ``rep_grad``): every head is
  differentiated once, the feature-level rows are aggregated, and one ordinary backward carries
  the aggregate through the backbone. About the cost of plain backward; an approximation, since
  conflicts are measured in feature space rather than parameter space.

Robustness, the same for every method:

- AMP: the losses arrive multiplied by the GradScaler's scale ``S``. The Jacobian is divided by
  ``S`` before aggregation -- aggregators are not all scale-invariant (Nash-MTL's weights and
  max-norm clip depend on the scale) -- and the aggregate is multiplied by ``S`` again, so every
  ``.grad`` holds ``S x gradient`` as plain AMP backward would and ``scaler.unscale_`` applies.
- Non-finite gradients (fp16 overflow in the first AMP steps, a diverging task): the aggregator
  is never called on an inf/NaN Jacobian (CAGrad and Nash-MTL raise on one); the step reports
  ``finite=False`` with the culprit tasks and the caller skips it.
- Frozen backbone layers: a tap computed only by frozen layers carries no gradient to any shared
  parameter and is left out; with nothing shared left to train, every method is plain backward.
- A task missing from a step (no loss, a constant loss, or an all-zero gradient row because every
  sample of the batch was masked for it) has no row: methods aggregate the tasks present. A
  zero row would otherwise pull MGDA's min-norm combination to zero and make Nash-MTL singular.

Distributed training, exact mode: each rank holds the Jacobian of ITS batch. The aggregators are
nonlinear, so aggregating per rank and averaging is not the aggregation of the global batch. The
Jacobian rows are all-reduced (averaged) first -- the mean of per-rank Jacobians is the Jacobian
of the mean loss over the global batch -- and aggregated on every rank; randomised or iterative
aggregators need not agree bit for bit, so rank 0's aggregate is broadcast. Rep mode cannot do
this (the features of different ranks are different tensors): each rank aggregates its own
feature Jacobian and the parameter gradients are averaged, as DDP would.

Resume: PCGrad's and GradDrop's randomness comes from torch's global RNG, which checkpoints
restore. Nash-MTL keeps solver state between steps (last weights, step counter) that torchjd
does not expose for saving; a resumed run re-solves it from scratch on its first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor
from torchjd import aggregation
from torchjd.autojac import mtl_backward

from mtl_perception.core.errors import UserError

if TYPE_CHECKING:
    from mtl_perception.balancing.weighting import LossWeighting

JACOBIANS: tuple[str, ...] = ("exact", "rep")


class GradientSync(Protocol):
    """Collective operations the backward step needs (no-ops in a single process)."""

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average ``tensors`` in place across ranks."""

    def all_reduce_grads_(self, params: Sequence[Tensor]) -> None:
        """Average the ``.grad`` of ``params`` across ranks (a missing one counts as zeros)."""

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values."""


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


def build_aggregator(
    name: str, options: Mapping[str, Any], num_tasks: int
) -> aggregation.Aggregator | None:
    """The torchjd aggregator for ``name`` (``None`` for ``none``).

    Raises:
        UserError: ``name`` is unknown, or the aggregator's optional dependency is missing.
    """
    if name == "none":
        return None
    if name not in AGGREGATORS:
        raise UserError(f"balancing.grad_method: {name!r} is not one of {', '.join(GRAD_METHODS)}")
    try:
        return AGGREGATORS[name](options, num_tasks)
    except ImportError as err:  # cagrad/nash_mtl need cvxpy, an optional torchjd extra
        raise UserError(
            f"balancing.grad_method: {name} needs an optional dependency ({err})"
        ) from None


def cosine_from_gramian(gramian: Tensor, tasks: Sequence[str]) -> dict[str, float]:
    """Pairwise cosine similarity of task gradients from their Gram matrix ``G = J J^T``."""
    norms = gramian.diagonal().clamp_min(1e-24).sqrt()
    cosine = (gramian / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    return {
        f"{tasks[i]}~{tasks[j]}": float(cosine[i, j])
        for i in range(len(tasks))
        for j in range(i + 1, len(tasks))
    }


@dataclass
class BackwardStats:
    """What one backward step reports.

    ``finite`` False means some gradient is inf/NaN: the caller must not apply this step
    (``nonfinite_tasks`` names the tasks whose gradient was not finite, when known).
    ``tasks`` are the tasks that contributed a gradient.
    """

    tasks: tuple[str, ...] = ()
    cosine: dict[str, float] = field(default_factory=dict)
    aggregator_weights: dict[str, float] = field(default_factory=dict)
    finite: bool = True
    nonfinite_tasks: tuple[str, ...] = ()


class GradientBalancer:
    """Runs the backward pass of a multi-task step with the configured gradient method.

    ``shared_params`` are the backbone parameters every task uses; ``task_params`` maps each task
    to the parameters only its loss uses: its head and any weighting parameters of that task
    (the uncertainty log-variance), so those are trained and synchronised as well.
    ``last_shared_params`` (the last shared layer) are where a weighting that asks for gradient
    norms (GradNorm) has them measured.
    """

    def __init__(
        self,
        method: str,
        weighting: LossWeighting,
        shared_params: Sequence[Tensor],
        task_params: Mapping[str, Sequence[Tensor]],
        options: Mapping[str, Any] | None = None,
        cosine_every: int = 0,
        sync: GradientSync | None = None,
        jacobian: str = "exact",
        last_shared_params: Sequence[Tensor] = (),
    ) -> None:
        if jacobian not in JACOBIANS:
            raise UserError(
                f"balancing.jacobian: {jacobian!r} is not one of {', '.join(JACOBIANS)}"
            )
        self.method = method
        self.weighting = weighting
        self.tasks = tuple(weighting.tasks)
        self.options = dict(options or {})
        self.jacobian = jacobian
        build_aggregator(method, self.options, len(self.tasks))  # fail fast on a bad name
        self._aggregators: dict[tuple[str, ...], aggregation.Aggregator] = {}
        # Frozen parameters get no gradient: leaving them out keeps torchjd off them.
        self.shared_params = [p for p in shared_params if p.requires_grad]
        self.task_params = {
            task: [p for p in task_params[task] if p.requires_grad] for task in self.tasks
        }
        shared_ids = {id(p) for p in self.shared_params}
        self.last_shared_params = [p for p in last_shared_params if id(p) in shared_ids]
        self.cosine_every = cosine_every
        self.sync = sync or NoSync()

    def _aggregator(self, tasks: tuple[str, ...]) -> aggregation.Aggregator:
        # One per task subset: Nash-MTL's state (last weights) is per task, and its size is fixed.
        if tasks not in self._aggregators:
            aggregator = build_aggregator(self.method, self.options, len(tasks))
            if aggregator is None:  # a bug: only a real grad_method aggregates (see backward)
                raise RuntimeError(f"grad_method {self.method!r} has no aggregator")
            self._aggregators[tasks] = aggregator
        return self._aggregators[tasks]

    def _non_shared_params(self) -> list[Tensor]:
        return [p for task in self.tasks for p in self.task_params[task]]

    def _weighting_params(self) -> list[Tensor]:
        return list(self.weighting.parameters()) if self.weighting.needs_gradient_norms else []

    def backward(
        self,
        weighted: Mapping[str, Tensor],
        features: Sequence[Tensor],
        step: int,
        loss_scale: float = 1.0,
    ) -> BackwardStats:
        """Fill ``.grad`` of all parameters (synchronised across ranks) for this step.

        Args:
            weighted: Per-task weighted losses (what the aggregator sees); any subset of the
                tasks: a task that is absent, or whose loss does not require grad, sits out.
            features: The shared representations the heads consume (backbone taps).
            step: Global step (for ``cosine_every``).
            loss_scale: The AMP GradScaler's current scale (1 without AMP): the losses are
                multiplied by it and every ``.grad`` ends up scaled by it.

        Returns:
            What to log, and whether the gradients are finite (if not, skip the step).

        Raises:
            KeyError: ``weighted`` names a task this balancer does not know.
        """
        unknown = sorted(set(weighted) - set(self.tasks))
        if unknown:
            raise KeyError(f"losses for unknown task(s) {unknown}; tasks are {list(self.tasks)}")
        tasks = tuple(t for t in self.tasks if t in weighted and weighted[t].requires_grad)
        losses = [weighted[t] * loss_scale if loss_scale != 1.0 else weighted[t] for t in tasks]
        # A tap computed only by frozen layers leads to no shared parameter.
        live_features = [f for f in features if f.requires_grad]
        plain = self.method == "none" and not self.weighting.needs_gradient_norms
        if not self.shared_params or not live_features or plain:
            stats = self._plain_backward(tasks, losses, step)
        elif self.jacobian == "exact" and self.method != "none":
            stats = self._exact_backward(tasks, losses, live_features, loss_scale)
        else:  # rep mode, or plain backward that also needs per-task gradient norms
            stats = self._rep_backward(tasks, losses, live_features, loss_scale)
        return stats

    # -- the three backward passes ---------------------------------------------------------

    def _plain_backward(
        self, tasks: tuple[str, ...], losses: list[Tensor], step: int
    ) -> BackwardStats:
        stats = BackwardStats(tasks=tasks)
        cosine_step = self.cosine_every > 0 and step % self.cosine_every == 0
        if cosine_step and len(losses) > 1 and self.shared_params:
            # Per-task gradients cost a backward each, so only every ``cosine_every`` steps.
            rows = []
            for loss in losses:
                grads = torch.autograd.grad(
                    loss, self.shared_params, retain_graph=True, allow_unused=True
                )
                rows.append(
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).flatten().float()
                            for g, p in zip(grads, self.shared_params, strict=True)
                        ]
                    )
                )
            matrix = torch.stack(rows)
            gramian = matrix @ matrix.T
            diagonal = gramian.diagonal().tolist()
            active = [
                i for i, value in enumerate(diagonal) if value > 0.0 and math.isfinite(value)
            ]
            if len(active) > 1:  # tasks without a gradient (masked out) have no direction
                stats.cosine = cosine_from_gramian(
                    gramian[active][:, active], [tasks[i] for i in active]
                )
        if losses:
            torch.stack(losses).sum().backward()
        self.sync.all_reduce_grads_(self.shared_params + self._non_shared_params())
        self._check_finite(stats)
        return stats

    def _exact_backward(
        self, tasks: tuple[str, ...], losses: list[Tensor], features: list[Tensor], scale: float
    ) -> BackwardStats:
        stats = BackwardStats(tasks=tasks)
        # Rows for every task, zeros for the absent ones, so all ranks reduce the same shape.
        sizes = [p.numel() for p in self.shared_params]
        device = self.shared_params[0].device
        matrix = torch.zeros(len(self.tasks), sum(sizes), dtype=torch.float32, device=device)
        if tasks:
            # torchjd batches the per-task backward passes through the backbone with vmap; on CPU
            # one pass after another is faster (default model, 128 px, batch 4: 3.2 s vs 5.0 s
            # per step), on CUDA the batched one.
            mtl_backward(
                losses,
                features=features,
                tasks_params=[self.task_params[t] for t in tasks],
                shared_params=self.shared_params,
                parallel_chunk_size=1 if device.type == "cpu" else None,
            )
            rows = torch.tensor([self.tasks.index(t) for t in tasks], device=device)
            offset = 0
            for param, size in zip(self.shared_params, sizes, strict=True):
                jac = getattr(param, "jac", None)
                if jac is not None:  # torchjd leaves it out for a parameter no loss reaches
                    del param.jac  # type: ignore[attr-defined]  # torchjd's runtime attribute
                    matrix[:, offset : offset + size].index_copy_(
                        0, rows, jac.reshape(len(tasks), -1).float()
                    )
                offset += size
        self.sync.all_reduce_mean_([matrix])
        self.sync.all_reduce_grads_(self._non_shared_params())
        vector = self._aggregate(matrix, scale, stats, self._exact_norms(matrix, sizes, scale))
        self.sync.broadcast_([vector])
        for param, grad in zip(self.shared_params, vector.split(sizes), strict=True):
            self._accumulate(param, grad.view_as(param))
        self._check_finite(stats)
        return stats

    def _rep_backward(
        self, tasks: tuple[str, ...], losses: list[Tensor], features: list[Tensor], scale: float
    ) -> BackwardStats:
        stats = BackwardStats(tasks=tasks)
        sizes = [f.numel() for f in features]
        device = features[0].device
        matrix = torch.zeros(len(self.tasks), sum(sizes), dtype=torch.float32, device=device)
        last = self.last_shared_params if self.weighting.needs_gradient_norms else []
        last_norms = torch.zeros(len(self.tasks), dtype=torch.float32, device=device)
        for task, loss in zip(tasks, losses, strict=True):
            params = self.task_params[task]
            # One backward through this task's head only: autograd stops at the features.
            grads = torch.autograd.grad(
                loss, [*features, *params, *last], retain_graph=True, allow_unused=True
            )
            row = self.tasks.index(task)
            offset = 0
            for grad, size in zip(grads[: len(features)], sizes, strict=True):
                if grad is not None:
                    matrix[row, offset : offset + size] = grad.reshape(-1).float()
                offset += size
            for param, grad in zip(
                params, grads[len(features) : len(features) + len(params)], strict=True
            ):
                if grad is not None:
                    self._accumulate(param, grad)
            last_grads = [g.float() for g in grads[len(features) + len(params) :] if g is not None]
            if last_grads:
                last_norms[row] = (
                    torch.linalg.vector_norm(torch.cat([g.flatten() for g in last_grads])) / scale
                )
        norms = last_norms if last else None
        aggregate = self.method != "none"
        vector = self._aggregate(matrix, scale, stats, norms, aggregate=aggregate)
        if stats.finite and tasks:
            feature_grads = [
                chunk.view_as(f).to(f.dtype)
                for chunk, f in zip(vector.split(sizes), features, strict=True)
            ]
            torch.autograd.backward(features, grad_tensors=feature_grads)
        elif not stats.finite:
            # Mark the shared gradient so that every rank sees the non-finite step after syncing.
            for param in self.shared_params:
                param.grad = torch.full_like(param, float("nan"))
        self.sync.all_reduce_grads_(self.shared_params + self._non_shared_params())
        self._check_finite(stats)
        return stats

    # -- helpers ---------------------------------------------------------------------------

    def _exact_norms(self, matrix: Tensor, sizes: list[int], scale: float) -> Tensor | None:
        """Unscaled row norms over the last shared layer's columns (for GradNorm)."""
        if not self.weighting.needs_gradient_norms or not self.last_shared_params:
            return None
        last = {id(p) for p in self.last_shared_params}
        squares = torch.zeros(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        offset = 0
        for param, size in zip(self.shared_params, sizes, strict=True):
            if id(param) in last:
                squares += matrix[:, offset : offset + size].pow(2).sum(dim=1)
            offset += size
        return squares.sqrt() / scale

    def _aggregate(
        self,
        matrix: Tensor,
        scale: float,
        stats: BackwardStats,
        norms: Tensor | None,
        aggregate: bool = True,
    ) -> Tensor:
        """Combine the (synchronised, loss-scaled) task rows of ``matrix`` into one vector.

        ``norms`` are unscaled per-row gradient norms for the weighting (``None``: the rows' own).
        Rows are unscaled first and the result scaled back by ``scale``; a non-finite row makes
        the result NaN and ``stats.finite`` False without calling the aggregator.
        """
        if scale != 1.0:
            matrix.mul_(1.0 / scale)
        gramian = matrix @ matrix.T
        diagonal = gramian.diagonal()
        finite = torch.isfinite(diagonal)
        all_finite = bool(finite.all())
        # A task without a gradient this step (absent, or masked out on every sample) sits out.
        active = (
            [i for i, value in enumerate(diagonal.tolist()) if value > 0.0] if all_finite else []
        )
        active_tasks = tuple(self.tasks[i] for i in active)
        if (
            self.weighting.needs_gradient_norms
        ):  # same collectives on every rank, whatever the data
            row_norms = diagonal.clamp_min(0).sqrt() if norms is None else norms
            self.sync.all_reduce_mean_([row_norms])
            if active:
                self.weighting.gradient_norm_feedback(
                    {t: row_norms[i] for t, i in zip(active_tasks, active, strict=True)},
                    grad_scale=scale,
                )
            self.sync.all_reduce_grads_(self._weighting_params())
        if not all_finite:
            stats.finite = False
            stats.nonfinite_tasks = tuple(
                t for t, ok in zip(self.tasks, finite.tolist(), strict=True) if not ok
            )
            return torch.full_like(matrix[0], float("nan"))
        stats.tasks = active_tasks
        sub_gramian = gramian[active][:, active]
        if len(active) > 1:
            stats.cosine = cosine_from_gramian(sub_gramian, active_tasks)
        if not active:
            return torch.zeros_like(matrix[0])
        rows = matrix if len(active) == matrix.shape[0] else matrix[active]
        weights: Tensor | None
        if not aggregate or len(active) == 1:
            weights = None
            vector = rows.sum(dim=0)
        else:
            aggregator = self._aggregator(active_tasks)
            if isinstance(aggregator, aggregation.GramianWeightedAggregator):
                weights = aggregator.gramian_weighting(sub_gramian)  # no second Gramian
            elif isinstance(aggregator, aggregation.WeightedAggregator):
                weights = aggregator.weighting(rows)
            else:
                weights = None
            vector = weights.to(rows.dtype) @ rows if weights is not None else aggregator(rows)
        if weights is not None:
            stats.aggregator_weights = dict(zip(active_tasks, weights.tolist(), strict=True))
        return vector * scale if scale != 1.0 else vector

    @staticmethod
    def _accumulate(param: Tensor, grad: Tensor) -> None:
        grad = grad.to(param.dtype)
        if param.grad is None:
            param.grad = grad
        else:
            param.grad += grad

    def _check_finite(self, stats: BackwardStats) -> None:
        """After synchronisation (so every rank agrees): are all gradients finite?"""
        groups = {task: self.task_params[task] for task in self.tasks}
        groups[""] = self.shared_params + self._weighting_params()
        checks = {
            name: [p.grad.isfinite().all() for p in params if p.grad is not None]
            for name, params in groups.items()
        }
        flags = {name: bool(torch.stack(c).all()) if c else True for name, c in checks.items()}
        bad = [name for name, ok in flags.items() if not ok]
        if bad:
            stats.finite = False
            named = set(stats.nonfinite_tasks) | {name for name in bad if name}
            stats.nonfinite_tasks = tuple(t for t in self.tasks if t in named)
