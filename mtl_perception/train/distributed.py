# SPDX-License-Identifier: Apache-2.0
"""Multi-process training helpers for torchrun (env:// initialisation).

We do not wrap the model in ``DistributedDataParallel``: torchjd's gradient methods need the
per-task Jacobian of the shared parameters (computed with ``torch.autograd.grad`` inside
``mtl_backward``), which DDP's reducer neither sees nor can average row-wise, and the model is
called through ``forward_train`` rather than ``forward``. Instead every rank starts from rank 0's
parameters and, after each backward, averages gradients (or Jacobians) with one coalesced
all-reduce -- the same arithmetic DDP performs, for both plain and Jacobian backward, so all
balancing methods share one synchronisation path. BatchNorm buffers are broadcast from rank 0
before each forward (DDP's ``broadcast_buffers=True`` behaviour).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size, the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment; a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend, init_method="env://")
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def device_spec_for_rank(spec: str, context: DistributedContext) -> str:
    """Each local rank gets its own GPU when the config asks for ``auto``/``cuda``."""
    if context.enabled and spec in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{context.local_rank}"
    return spec


def shutdown_distributed(wait_for_peers: bool = True) -> None:
    """Leave the process group (safe to call without one).

    After a normal finish all ranks meet at a barrier first: gloo aborts a process ("terminate
    called without an active exception") whose peer destroys the group while it is still
    communicating. After an error there is no barrier, since the peers may never reach it.
    """
    if dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


class TorchDistSync:
    """``GradientSync`` over ``torch.distributed``: coalesced all-reduce and broadcast."""

    def __init__(self, context: DistributedContext, device: torch.device | None = None) -> None:
        self.context = context
        self.device = device or torch.device("cpu")  # NCCL reduces only CUDA tensors

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average ``tensors`` in place across ranks (one flat buffer: one collective call)."""
        if not self.context.enabled or not tensors:
            return
        flat = _flatten_dense_tensors(list(tensors))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.context.world_size
        for tensor, synced in zip(
            tensors, _unflatten_dense_tensors(flat, list(tensors)), strict=True
        ):
            tensor.copy_(synced)

    def all_reduce_grads_(self, params: Sequence[Tensor]) -> None:
        """Average the ``.grad`` of ``params`` across ranks.

        A parameter unused on one rank (e.g. a detection head on a batch without boxes) has no
        gradient there but may have one elsewhere; it gets zeros so that every rank reduces the
        same list of tensors (as DDP does for unused parameters).
        """
        if not self.context.enabled:
            return
        grads = []
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
        self.all_reduce_mean_(grads)

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if not self.context.enabled or not tensors:
            return
        flat = _flatten_dense_tensors(list(tensors))
        dist.broadcast(flat, src=0)
        for tensor, synced in zip(
            tensors, _unflatten_dense_tensors(flat, list(tensors)), strict=True
        ):
            tensor.copy_(synced)

    def broadcast_module_(self, module: nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters (unless ``buffers_only``) and floating/int buffers to every rank."""
        tensors = [] if buffers_only else [p.data for p in module.parameters()]
        tensors += list(module.buffers())
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for tensor in tensors:  # flattening needs one dtype per buffer
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            self.broadcast_(group)

    def all_reduce_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of per-rank scalars (epoch-mean losses for DWA must be global)."""
        if not self.context.enabled or not values:
            return dict(values)
        flat = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return dict(zip(values, (flat / self.context.world_size).tolist(), strict=True))
