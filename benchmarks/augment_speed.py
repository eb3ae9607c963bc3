"""Throughput of deepclust's ViewAugmenter for every preset, next to a kornia-only baseline.

The baseline chains kornia.augmentation modules configured like the preset (RandomResizedCrop,
RandomHorizontalFlip, ColorJitter, RandomGrayscale, RandomGaussianBlur, RandomSolarize, Normalize), the
pipeline the batched crop, hue and masked operations of ``augment.py`` replace. Images/s counts input images:
each one yields ``num_views`` views.

    python benchmarks/augment_speed.py                    # CPU, 512-image batches
    python benchmarks/augment_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from deepclust.data.augment import PIPELINES, AugmentConfig, ViewAugmenter, blur_kernel_size

SHAPES: tuple[tuple[int, int], ...] = ((1, 28), (3, 32))


def kornia_views(augmenter: ViewAugmenter) -> Callable[[Tensor], list[Tensor]]:
    """The same resolved configuration as a chain of kornia.augmentation modules per view."""
    c, channels, size = augmenter.config, augmenter.channels, augmenter.image_size
    brightness, contrast, saturation, hue = c.jitter
    if channels != 3:
        saturation = hue = 0.0
    views = []
    for view in range(c.num_views):
        ops: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=tuple(c.crop_scale), ratio=tuple(c.crop_ratio)),
            K.RandomHorizontalFlip(p=c.flip_prob),
        ]
        if c.jitter_prob > 0 and max(brightness, contrast, saturation, hue) > 0:
            ops.append(K.ColorJitter(brightness, contrast, saturation, hue, p=c.jitter_prob))
        if channels == 3 and c.grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=c.grayscale_prob))
        if c.blur_prob[view] > 0:
            k = blur_kernel_size(size)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=c.blur_prob[view]))
        if c.solarize_prob[view] > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=c.solarize_prob[view]))
        if c.normalize:
            ops.append(K.Normalize(torch.full((channels,), 0.5), torch.full((channels,), 0.25)))
        views.append(nn.Sequential(*ops))

    def run(images: Tensor) -> list[Tensor]:
        x = images.float().div_(255.0)
        return [view(x) for view in views]

    return run


def seconds(fn: Callable[[Tensor], list[Tensor]], images: Tensor, repeats: int) -> float:
    """Median wall time of one call, after two warm-up calls."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    for _ in range(2):
        fn(images)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print one table row per (preset, image shape)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--presets", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} (median of {args.repeats})")
    columns = f"{'deepclust ms':>12} {'images/s':>9} {'kornia ms':>10} {'images/s':>9} {'speed-up':>8}"
    print(f"{'preset':<8} {'shape':<8} {columns}")
    for preset_name in args.presets:
        for channels, side in SHAPES:
            augmenter = ViewAugmenter(
                AugmentConfig(pipeline=preset_name), channels, side, [0.5] * channels, [0.25] * channels
            ).to(device)
            shape = (args.batch, channels, side, side)
            images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
            ours = seconds(augmenter, images, args.repeats)
            theirs = seconds(kornia_views(augmenter), images, args.repeats)
            print(
                f"{preset_name:<8} {f'{channels}×{side}²':<8} {ours * 1e3:>12.1f} {args.batch / ours:>9.0f} "
                f"{theirs * 1e3:>10.1f} {args.batch / theirs:>9.0f} {theirs / ours:>7.1f}×"
            )


if __name__ == "__main__":
    main()
