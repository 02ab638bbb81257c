# SPDX-License-Identifier: Apache-2.0
"""Balancing under distributed training: 2 CPU processes (gloo) stay bit-identical."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mtl_perception.balancing import build_gradient_balancer, build_weighting
from mtl_perception.train.distributed import DistributedContext, TorchDistSync

TASKS = ("detection", "segmentation")
CASES = (
    ("uncertainty", "none", "exact"),
    ("uncertainty", "pcgrad", "exact"),
    ("equal", "graddrop", "exact"),
    ("gradnorm", "upgrad", "rep"),
    ("gradnorm", "none", "exact"),
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    sync = TorchDistSync(DistributedContext(rank, world_size))
    results = {}
    for weighting_name, method, jacobian in CASES:
        torch.manual_seed(100 + rank)  # different init per rank: the broadcast must fix it
        model = Toy()
        sync.broadcast_module_(model)
        weighting = build_weighting(weighting_name, TASKS)
        balancer = build_gradient_balancer(
            method,
            weighting,
            list(model.trunk.parameters()),
            {t: list(model.heads[t].parameters()) for t in TASKS},
            options={"jacobian": jacobian},
            sync=sync,
            last_shared_params=list(model.trunk[1].parameters()),
        )
        optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
        data = torch.Generator().manual_seed(rank)  # each rank sees its own batches
        for step in range(5):
            x = torch.randn(8, 4, generator=data)
            sync.broadcast_module_(model, buffers_only=True)
            features = model.trunk(x)
            losses = {
                "detection": (
                    (model.heads["detection"](features).squeeze(1) - x.sum(1)) ** 2
                ).mean(),
                "segmentation": (
                    (model.heads["segmentation"](features).squeeze(1) + x[:, 0]) ** 2
                ).mean(),
            }
            balancer.backward(weighting.weigh(losses).weighted, [features], step)
            optimizer.step()
            optimizer.zero_grad()
        # Parameters must agree; BatchNorm running stats legitimately differ until the next
        # forward's buffer broadcast (as with DDP), and checkpoints come from rank 0.
        results[f"{weighting_name}+{method}+{jacobian}"] = {
            **{k: v.detach().clone() for k, v in model.named_parameters()},
            **{f"w.{k}": v.detach().clone() for k, v in weighting.named_parameters()},
        }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # leave together: gloo aborts a rank whose peer tears down mid-operation
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_hold_identical_parameters_after_training(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(rank0) == {"+".join(case) for case in CASES}
    for case, state in rank0.items():
        for key, value in state.items():
            assert torch.equal(value, rank1[case][key]), f"{case}: {key} differs between ranks"
        log_vars = [v for k, v in state.items() if k.startswith("w.log_vars")]
        assert all(float(v) != 0.0 for v in log_vars), (
            f"{case}: uncertainty parameters were not trained"
        )
        if case.startswith("gradnorm"):
            assert not torch.equal(state["w.loss_weights"], torch.ones(2)), (
                f"{case}: GradNorm weights did not move"
            )
