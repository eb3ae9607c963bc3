"""Two real processes (gloo, CPU): gathered losses and their gradients equal one process on the global batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepclust.losses import cluster_contrastive_loss, nt_xent, sinkhorn

WORLD = 2
N, D, K = 4, 5, 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(WORLD * N, D, generator=generator)
    z_b = torch.randn(WORLD * N, D, generator=generator)
    scores = torch.randn(WORLD * N, K, generator=generator)
    return z_a, z_b, scores


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        z_a, z_b, scores = global_batch()
        rows = slice(rank * N, (rank + 1) * N)
        results = {}
        for name in ("nt_xent", "cluster"):
            a = z_a[rows].clone().requires_grad_()
            b = z_b[rows].clone().requires_grad_()
            if name == "nt_xent":
                loss = nt_xent(a, b, 0.5, gather=True)
            else:
                loss = cluster_contrastive_loss(
                    torch.softmax(a[:, :K], 1), torch.softmax(b[:, :K], 1), gather=True
                )
            loss.backward()
            # DDP divides the summed parameter gradients by the world size; the gather's backward already summed
            # every rank's loss gradient into these rows, so this rank's contribution is grad / WORLD
            grads = torch.cat([a.grad, b.grad])
            losses = loss.detach().clone()
            dist.all_reduce(losses)
            results[name] = {"loss": losses / WORLD, "grad": grads / WORLD}
        results["codes"] = sinkhorn(scores[rows], epsilon=0.5, iterations=3, distributed=True)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_gathered_losses_match_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    z_a, z_b, scores = global_batch()
    reference = {}
    for name in ("nt_xent", "cluster"):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        if name == "nt_xent":
            loss = nt_xent(a, b, 0.5)
        else:
            loss = cluster_contrastive_loss(torch.softmax(a[:, :K], 1), torch.softmax(b[:, :K], 1))
        loss.backward()
        reference[name] = (loss.detach(), a.grad, b.grad)
    codes = sinkhorn(scores, epsilon=0.5, iterations=3)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        rows = slice(rank * N, (rank + 1) * N)
        for name, (loss, grad_a, grad_b) in reference.items():
            torch.testing.assert_close(result[name]["loss"], loss)
            # what DDP applies through rank r's rows equals the single-process gradient of those rows
            expected = torch.cat([grad_a[rows], grad_b[rows]])
            torch.testing.assert_close(result[name]["grad"], expected)
        torch.testing.assert_close(result["codes"], codes[rows])
