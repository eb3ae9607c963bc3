"""Two real processes (gloo, CPU): gathered losses, their gradients and Sinkhorn equal one process on the global batch.

What is compared. Rank r holds rows ``[r·N, (r+1)·N)`` of the global batch x and computes its loss L_r with
``gather=True``; autograd then leaves ``g_r = ∂(Σ_r' L_r')/∂x_r`` in ``x_r.grad``, because the gather's backward
sums every rank's gradient of rank r's rows. DDP averages the parameter gradients over the W ranks, i.e. trains
on ``mean_r L_r``. So the two identities that make distributed training equal to single-process training on the
global batch, with L the single-process loss, are::

    mean_r L_r = L        and        x_r.grad / W = ∂L/∂x, rows of rank r

For NT-Xent L_r is the mean over rank r's own 2N anchors (gathered negatives), so only the mean over ranks equals
L; the cluster contrast and the entropy terms are global, so every L_r equals L. A gather whose backward kept only
the local gradient would miss the other ranks' contributions (about 1/W too small) and fail here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepclust.distributed import all_gather_with_grad, rank
from deepclust.losses import (
    cc_entropy_term,
    cluster_contrastive_loss,
    nt_xent,
    prototype_scattering_loss,
    sinkhorn,
)

WORLD = 2
D, K = 5, 3
# a full batch, then a smaller last batch: nothing may depend on a fixed batch size
SIZES = (4, 3)
TIMEOUT_S = 120

Loss = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def soft(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x[:, :K], dim=1)


def scattering(a: torch.Tensor, b: torch.Tensor, gather: bool) -> torch.Tensor:
    """ProPos's use: each rank's features and pseudo-labels gathered (in the same rank order), both view
    orders. The labels are a function of the global row, so one process on the global batch has the same."""
    local_rows = torch.arange(len(a)) + rank() * len(a)
    labels = (local_rows * 7 // 3) % K
    if gather:
        a, b, labels = all_gather_with_grad(a), all_gather_with_grad(b), all_gather_with_grad(labels)
    return 0.5 * (prototype_scattering_loss(a, b, labels, K) + prototype_scattering_loss(b, a, labels, K))


LOSSES: dict[str, Loss] = {
    "nt_xent": lambda a, b, gather: nt_xent(a, b, 0.5, gather=gather),
    "cluster": lambda a, b, gather: cluster_contrastive_loss(soft(a), soft(b), 1.0, gather=gather),
    "entropy_code": lambda a, b, gather: cc_entropy_term(soft(a), soft(b), "code", gather=gather),
    "entropy_paper": lambda a, b, gather: cc_entropy_term(soft(a), soft(b), "paper", gather=gather),
    "scattering": scattering,
}
GLOBAL = {
    "cluster",
    "entropy_code",
    "entropy_paper",
    "scattering",
}  # every rank computes the same (global-batch) loss


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def global_batch(n: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(n)
    return {
        "z_a": torch.randn(WORLD * n, D, generator=generator, dtype=torch.float64),
        "z_b": torch.randn(WORLD * n, D, generator=generator, dtype=torch.float64),
        "scores": torch.randn(WORLD * n, 6, generator=generator).tanh(),
        # |s|/ε up to 1e3: exercises the global log-sum-exp of the stabilised first round
        "huge": 50 * torch.randn(WORLD * n, 6, generator=generator),
    }


def losses_and_grads(z_a: torch.Tensor, z_b: torch.Tensor, gather: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, loss_fn in LOSSES.items():
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = loss_fn(a, b, gather)
        loss.backward()
        out[f"{name}/loss"] = loss.detach()
        out[f"{name}/grad"] = torch.cat([a.grad, b.grad], dim=1)
    return out


def worker(rank: int, port: int, out: str) -> None:
    # a forked child must not enter the OpenMP pool it inherited (and the tensors here are tiny anyway)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for n in SIZES:
            batch = global_batch(n)
            rows = slice(rank * n, (rank + 1) * n)
            for key, value in losses_and_grads(batch["z_a"][rows], batch["z_b"][rows], gather=True).items():
                results[f"{n}/{key}"] = value
            for key in ("scores", "huge"):
                results[f"{n}/codes_{key}"] = sinkhorn(batch[key][rows], distributed=True)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_workers(out: Path) -> None:
    """Run ``worker`` on WORLD processes; fail instead of hanging if they do not finish in time."""
    # fork skips re-importing torch in every child (about 1 s instead of 10 on a loaded 2-core machine)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        worker, args=(free_port(), str(out)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the {WORLD} gloo workers did not finish within {TIMEOUT_S} s")


# run_workers gives up after TIMEOUT_S and ends the workers; the marker (pytest-timeout) catches a hang anywhere else
@pytest.mark.timeout(TIMEOUT_S + 180)
def test_gathered_losses_and_sinkhorn_match_single_process(tmp_path: Path) -> None:
    run_workers(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for n in SIZES:
        batch = global_batch(n)
        reference = losses_and_grads(batch["z_a"], batch["z_b"], gather=False)
        for name in LOSSES:
            per_rank = torch.stack([result[f"{n}/{name}/loss"] for result in ranks])
            torch.testing.assert_close(per_rank.mean(), reference[f"{name}/loss"])
            if name in GLOBAL:
                torch.testing.assert_close(per_rank, reference[f"{name}/loss"].expand(WORLD))
            for r, result in enumerate(ranks):
                rows = slice(r * n, (r + 1) * n)
                torch.testing.assert_close(
                    result[f"{n}/{name}/grad"] / WORLD, reference[f"{name}/grad"][rows]
                )
        for key in ("scores", "huge"):
            codes = sinkhorn(batch[key])
            assert torch.isfinite(codes).all()
            for r, result in enumerate(ranks):
                torch.testing.assert_close(result[f"{n}/codes_{key}"], codes[r * n : (r + 1) * n])
