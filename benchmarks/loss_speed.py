"""Time per training step (forward + backward) of deepclust's losses next to lightly's, on the same tensors.

Pairs compared (lightly is the ``bench`` extra: ``pip install 'deepclust[bench]'``):

* ``nt_xent``            vs ``lightly.loss.NTXentLoss``                 (same definition: values must agree)
* ``byol_loss``          vs ``lightly.loss.NegativeCosineSimilarity``  (ours = 2 + 2·theirs: compared so)
* ``sinkhorn``           vs ``lightly.loss.swav_loss.sinkhorn``         (codes only, no gradient)
* ``sinkhorn + swav_loss`` vs ``lightly.loss.SwaVLoss`` (2 views, ε = 0.05, 3 iterations, τ = 0.1)

Each step is timed ``--repeats`` times after warm-up, alternating ours and lightly so that load on a shared
machine hits both alike; the table shows medians, ours/lightly, and the largest absolute difference of the two
results. JSON goes to ``--out``.

    python benchmarks/loss_speed.py                              # CPU, batch 256, dim 128, K = 10 and 3000
    python benchmarks/loss_speed.py --device cuda --repeats 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.losses import byol_loss, nt_xent, sinkhorn, swav_loss

try:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
except ImportError as error:  # the benchmark is meaningless without its reference
    raise SystemExit(
        "lightly is not installed: pip install 'deepclust[bench]' (or pip install lightly)"
    ) from error

Step = Callable[[], Tensor]


@dataclass
class Row:
    """One line of the table."""

    name: str
    ours_ms: float
    lightly_ms: float
    ratio: float
    max_abs_diff: float


def forward_backward(loss_fn: Callable[..., Tensor], inputs: list[Tensor]) -> Step:
    """A step that computes the loss and its gradient w.r.t. ``inputs`` (no accumulation into ``.grad``)."""

    def step() -> Tensor:
        loss = loss_fn(*inputs)
        torch.autograd.grad(loss, inputs, allow_unused=True)  # BYOL never differentiates its target
        return loss.detach()

    return step


def median_ms(ours: Step, theirs: Step, repeats: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Median milliseconds of each step over ``repeats`` alternating runs, after warm-up."""
    for _ in range(3):
        ours(), theirs()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((ours, times[0]), (theirs, times[1])):
            start = time.perf_counter()
            fn()
            sync()
            out.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times[0]), statistics.median(times[1])


def cases(batch: int, dim: int, prototypes: list[int], device: torch.device) -> list[tuple[str, Step, Step]]:
    """(name, our step, lightly's step), each step returning the value to compare."""
    generator = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, device=device).requires_grad_()

    z_a, z_b = leaf(batch, dim), leaf(batch, dim)
    ntx = NTXentLoss(temperature=0.5)
    negative_cosine = NegativeCosineSimilarity()
    out = [
        (
            "nt_xent",
            forward_backward(lambda a, b: nt_xent(a, b, 0.5), [z_a, z_b]),
            forward_backward(ntx, [z_a, z_b]),
        ),
        (
            "byol_loss",
            forward_backward(byol_loss, [z_a, z_b]),
            # ours is the normalised MSE 2 − 2·cos; report lightly's −cos on the same scale
            forward_backward(lambda p, t: 2 + 2 * negative_cosine(p, t.detach()), [z_a, z_b]),
        ),
    ]
    for k in prototypes:
        # SwAV's scores are cosine similarities to unit prototypes
        prototype = F.normalize(torch.randn(k, dim, generator=generator, device=device), dim=1)
        scores = [(F.normalize(z.detach(), dim=1) @ prototype.T).requires_grad_() for z in (z_a, z_b)]
        swav = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)

        def ours_swav(s1: Tensor, s2: Tensor) -> Tensor:
            codes = [sinkhorn(s1, 0.05, 3), sinkhorn(s2, 0.05, 3)]
            return swav_loss([s1, s2], codes, 0.1)

        def ours_codes(s: Tensor = scores[0]) -> Tensor:
            return sinkhorn(s, 0.05, 3)

        def lightly_codes(s: Tensor = scores[0]) -> Tensor:
            with torch.no_grad():
                return lightly_sinkhorn(s.detach(), iterations=3, epsilon=0.05)

        out.append((f"sinkhorn K={k}", ours_codes, lightly_codes))
        out.append(
            (
                f"sinkhorn+swav_loss K={k}",
                forward_backward(ours_swav, scores),
                forward_backward(lambda s1, s2, swav=swav: swav([s1, s2], []), scores),
            )
        )
    return out


def main() -> None:
    """Print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--prototypes", type=int, nargs="+", default=[10, 3000])
    parser.add_argument("--repeats", type=int, default=100)
    # one thread by default: on a shared CPU, OpenMP threads waiting on each other swamp millisecond kernels
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-loss-speed/results.json"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    rows = []
    for name, ours, theirs in cases(args.batch, args.dim, args.prototypes, device):
        difference = (ours().double() - theirs().double()).abs().max().item()
        ours_ms, lightly_ms = median_ms(ours, theirs, args.repeats, sync)
        rows.append(Row(name, ours_ms, lightly_ms, ours_ms / lightly_ms, difference))

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    print(
        f"device {args.device} ({device_name}), threads {torch.get_num_threads()}, batch {args.batch}, "
        f"dim {args.dim}, median of {args.repeats} steps (forward+backward; sinkhorn rows: codes only)"
    )
    print(f"{'loss':<26}{'ours ms':>10}{'lightly ms':>12}{'ours/lightly':>14}{'max |diff|':>12}")
    for row in rows:
        print(
            f"{row.name:<26}{row.ours_ms:>10.3f}{row.lightly_ms:>12.3f}{row.ratio:>14.2f}{row.max_abs_diff:>12.2e}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "dim": args.dim,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "lightly": version("lightly"),
        "rows": [asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
