"""Batched, on-device view augmentation: one uint8 batch in, ``num_views`` augmented float batches out.

Every sample of every view gets its own random crop, flip, jitter factors, jitter order, grayscale, blur and
solarize decisions, but each operation runs once on the whole batch tensor (or on the sub-batch it applies
to), never image by image in Python. Images are converted from uint8 to float once, then each view is:

    random resized crop + horizontal flip → colour jitter (p, random order of its four adjustments per sample)
    → grayscale (p) → Gaussian blur (p of this view) → solarize (p of this view) → per-channel normalisation

the order of SimCLR (Chen et al. 2020, App. A) and BYOL (Grill et al. 2020, App. B), whose formulas match
torchvision's ``RandomResizedCrop``, ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur`` and
``RandomSolarize``. Grayscale datasets (1 channel) get brightness and contrast only: saturation, hue and
grayscale do nothing on them and are not run.

Configuration. ``augment.pipeline`` names a preset (:func:`preset`, one per paper); every other field is
``None`` by default, meaning "the preset's value", and a value set in a YAML file or on the command line
overrides just that field (``augment.pipeline=byol augment.blur_prob=[0,0]`` is BYOL without blur).
:func:`validate_augment_config` does the merge and the validation; :attr:`ViewAugmenter.config` keeps the result.

Views. ``num_views`` augmented views are returned, then ``small_crops`` smaller ones: SwAV's multi-crop
(Caron et al. 2020, Sec. 3.2), low-resolution crops of a small part of the image (``small_crop_scale``,
``small_crop_size`` px) with the same colour operations; only methods that declare they use them accept them.
Methods that also need the un-augmented image (SIC's raw
view, its code's ``modules/transform_sic.py``) ask for it with :meth:`ViewAugmenter.eval_view`, the deterministic resize and
normalisation used for evaluation.

Randomness. All random parameters are drawn on the CPU from torch's global generator, which the trainer seeds
(``torch.manual_seed`` / Lightning's ``seed_everything``), and then moved to the images' device; the same seed
gives the same views, and the same parameters on CPU and CUDA (pixels may differ by float rounding).
Drawing on the CPU also keeps the device free of synchronisations: which samples an operation applies to is
known on the host without reading anything back from the GPU, and every parameter goes to the device with
``non_blocking=True`` (a blocking host-to-device copy waits for all of the GPU's queued work).

Speed (512 images, one thread of the 2-core CPU with the other core busy, float input; see
benchmarks/augment_speed.py for whole pipelines). kornia's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
took 20 ms (1×28²) and 52 ms (3×32²) where one ``affine_grid`` + ``grid_sample`` over the batch, with
per-sample boxes and the flip folded into the affine, takes 10 and 26 ms; kornia's ``RandomSolarize`` and
``RandomGrayscale`` modules took 5-20 ms and 4.5 ms where the functional op on the selected rows only
(:func:`_apply_to_rows`) takes 0.7-3 ms and 1.5 ms, and kornia's ``adjust_hue`` 55 ms against 28 ms for
:func:`_hue`. Brightness, contrast, saturation, blur and the grayscale conversion are kornia's functional
versions (``kornia.enhance`` / ``kornia.filters`` / ``kornia.color``): batched torch rewrites of contrast and
saturation were no faster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from deepclust.data.datasets import MAX_IMAGE_SIZE
from deepclust.errors import ConfigError
from deepclust.validation import check_choice

# Blur as SimCLR/BYOL specify it: σ ~ U(0.1, 2.0), kernel side 10% of the image side (CC: 23 px at 224 px).
BLUR_SIGMA: tuple[float, float] = (0.1, 2.0)
BLUR_KERNEL_FRACTION = 0.1
# BYOL solarizes pixels at or above 0.5 of the [0, 1] range.
SOLARIZE_THRESHOLD = 0.5
# SwAV's multi-crop: 96 px small crops next to 224 px large ones (src/multicropdataset.py, README commands).
SMALL_CROP_FRACTION = 96 / 224
# torchvision's RandomResizedCrop: 10 tries at a box inside the image before falling back to the whole image.
CROP_ATTEMPTS = 10


@dataclass
class AugmentConfig:
    """The ``augment`` section: how training views are made.

    ``pipeline`` picks a preset (see :func:`preset`); every other field left at ``None`` takes the preset's
    value. Probabilities are in [0, 1]; the two per-view lists need one entry per view.

    Attributes:
        pipeline: ``simclr`` | ``byol`` | ``swav`` | ``cc`` | ``concurl`` | ``weak`` | ``none``.
        image_size: side of the square views; ``None`` = the dataset's native size.
        crop_scale: ``[min, max]`` area fraction of the random resized crop, ``0 < min ≤ max ≤ 1``; ``[1, 1]``
            means no crop (the whole image, resized).
        crop_ratio: ``[min, max]`` aspect ratio (w/h) of the crop.
        flip_prob: probability of a horizontal flip.
        jitter_strength: ``s`` of SimCLR/CC's ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``.
        jitter: explicit ``[brightness, contrast, saturation, hue]`` strengths for jitters not of that form
            (BYOL's ``[0.4, 0.4, 0.2, 0.1]``); wins over ``jitter_strength`` when both are set.
        jitter_prob: probability that a sample is colour-jittered.
        grayscale_prob: probability of converting a sample to grayscale (RGB only).
        blur_prob: per view, the probability of a Gaussian blur.
        solarize_prob: per view, the probability of solarization.
        num_views: number of augmented views returned per image.
        small_crops: number of extra small views after them (SwAV's multi-crop: 6; 0 = none).
        small_crop_size: side of the small views; ``None`` = ``96/224`` of the large side (SwAV's 96 px at
            224 px), rounded.
        small_crop_scale: ``[min, max]`` area fraction of the small crops (SwAV: ``[0.05, 0.14]``). They take
            the blur and solarize probabilities of the last large view.
        normalize: subtract the per-channel mean and divide by the std the method passes in.
    """

    pipeline: str = "simclr"
    image_size: int | None = None
    crop_scale: list[float] | None = None
    crop_ratio: list[float] | None = None
    flip_prob: float | None = None
    jitter_strength: float | None = None
    jitter: list[float] | None = None
    jitter_prob: float | None = None
    grayscale_prob: float | None = None
    blur_prob: list[float] | None = None
    solarize_prob: list[float] | None = None
    num_views: int | None = None
    small_crops: int | None = None
    small_crop_size: int | None = None
    small_crop_scale: list[float] | None = None
    normalize: bool | None = None


_COMMON: dict[str, Any] = {
    "crop_scale": [0.08, 1.0],
    "crop_ratio": [3 / 4, 4 / 3],
    "flip_prob": 0.5,
    "jitter_prob": 0.8,
    "grayscale_prob": 0.2,
    "blur_prob": [0.0, 0.0],
    "solarize_prob": [0.0, 0.0],
    "num_views": 2,
    "small_crops": 0,
    "small_crop_scale": [0.05, 0.14],
    "normalize": True,
}
_NO_COLOUR: dict[str, Any] = {"jitter_strength": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0}
_PRESETS: dict[str, dict[str, Any]] = {
    # SimCLR (Chen et al., ICML 2020), its CIFAR-10 setting (App. B.9): colour strength 0.5 and no blur, the
    # fit for the small images clustering works on; on ImageNet SimCLR uses s = 1 and blur with p = 0.5.
    "simclr": {**_COMMON, "jitter_strength": 0.5},
    # BYOL (Grill et al., NeurIPS 2020), Table 6: asymmetric blur (1.0 / 0.1) and solarization (0.0 / 0.2).
    "byol": {**_COMMON, "jitter": [0.4, 0.4, 0.2, 0.1], "blur_prob": [1.0, 0.1], "solarize_prob": [0.0, 0.2]},
    # SwAV (Caron et al., NeurIPS 2020), code src/multicropdataset.py and the README's multi-crop command
    # (2×224 + 6×96, scales 0.14-1 and 0.05-0.14): SimCLR's colour distortion at s = 1, blur with p = 0.5.
    "swav": {
        **_COMMON,
        "crop_scale": [0.14, 1.0],
        "jitter_strength": 1.0,
        "blur_prob": [0.5, 0.5],
        "small_crops": 6,
    },
    # CC (Li et al., AAAI 2021), modules/transform.py: s = 0.5 (CIFAR, Tiny-ImageNet; 1.0 for STL-10 and the
    # ImageNet subsets, and the ImageNet subsets also blur with p = 0.5) and no Normalize (``train.py``).
    "cc": {**_COMMON, "jitter_strength": 0.5, "normalize": False},
    # ConCURL's released runs (ConCURL_NCE dataset_utils.py, --use-slightly-diff-views):
    # crop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.4) always applied, grayscale 0.2, flip, no blur. The
    # code grayscales before jittering and its second view jitters with 0.38; here both views use 0.4 in
    # SimCLR's order (the two orders differ through the hue shift of colour images and where values clamp).
    "concurl": {**_COMMON, "crop_scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.4], "jitter_prob": 1.0},
    # Project-defined, not from a paper: a mild crop (at least 3/4 of the image) and a flip, no colour change.
    "weak": {**_COMMON, **_NO_COLOUR, "crop_scale": [0.75, 1.0]},
    # No augmentation: every view is the evaluation view (resize and normalise).
    "none": {**_COMMON, **_NO_COLOUR, "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_prob": 0.0},
}
PIPELINES: tuple[str, ...] = tuple(_PRESETS)


def jitter_from_strength(strength: float) -> list[float]:
    """SimCLR's colour jitter at strength ``s``: ``[0.8s, 0.8s, 0.8s, 0.2s]`` (Chen et al. 2020, App. A)."""
    return [0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength]


def preset(name: str) -> AugmentConfig:
    """The named pipeline's settings, every field filled in (``jitter_strength`` is ``None`` for pipelines
    whose jitter is not of SimCLR's ``s`` form; ``jitter`` is always the explicit four strengths)."""
    check_choice("augment.pipeline", name, PIPELINES)
    values = {key: list(value) if isinstance(value, list) else value for key, value in _PRESETS[name].items()}
    values.setdefault("jitter_strength", None)
    values.setdefault("small_crop_size", None)
    if "jitter" not in values:
        values["jitter"] = jitter_from_strength(values["jitter_strength"])
    return AugmentConfig(pipeline=name, **values)


def validate_augment_config(cfg: Any) -> AugmentConfig:
    """``cfg`` (an :class:`AugmentConfig` or the OmegaConf ``augment`` section) with its ``None`` fields
    filled from the pipeline's preset, checked, and returned complete; :class:`ViewAugmenter` builds from the
    result. An unknown pipeline, a probability outside [0, 1], a per-view list whose length is not
    ``num_views``, a crop scale not ``0 < min <= max <= 1`` or another bad value raises
    :class:`~deepclust.errors.ConfigError`."""
    base = preset(str(cfg.pipeline))
    given = {f.name: _plain(getattr(cfg, f.name)) for f in fields(AugmentConfig)}
    out = replace(base, **{name: value for name, value in given.items() if value is not None})
    if given["jitter"] is None and given["jitter_strength"] is not None:
        out.jitter = jitter_from_strength(float(given["jitter_strength"]))
    elif given["jitter"] is not None:
        out.jitter_strength = None  # the explicit strengths win; the preset's s was not used
    if out.num_views < 1:
        raise ConfigError(f"augment.num_views must be at least 1, got {out.num_views}")
    for name in ("blur_prob", "solarize_prob"):
        values = getattr(out, name)
        if given[name] is None and len(values) != out.num_views and len(set(values)) == 1:
            # A preset's per-view list with one value throughout stretches to any number of views.
            setattr(out, name, values[:1] * out.num_views)
        elif len(values) != out.num_views:
            raise ConfigError(
                f"augment.{name} needs one probability per view ({out.num_views} views), got {values}; "
                f"set augment.{name}=[...] with {out.num_views} entries"
            )
    _check_values(out)
    return out


def _plain(value: Any) -> Any:
    """OmegaConf's ListConfig as a list of floats; everything else unchanged."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return [float(v) for v in value]


def _check_values(cfg: AugmentConfig) -> None:
    """Range checks of a complete configuration (no ``None`` fields left)."""
    probabilities = {
        "flip_prob": [cfg.flip_prob],
        "jitter_prob": [cfg.jitter_prob],
        "grayscale_prob": [cfg.grayscale_prob],
        "blur_prob": cfg.blur_prob,
        "solarize_prob": cfg.solarize_prob,
    }
    for name, values in probabilities.items():
        if any(not 0.0 <= p <= 1.0 for p in values):
            raise ConfigError(f"augment.{name} must be probabilities in [0, 1], got {getattr(cfg, name)}")
    lo, hi = _pair(cfg.crop_scale, "crop_scale")
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"augment.crop_scale must be [min, max] with 0 < min <= max <= 1, got {cfg.crop_scale}"
        )
    lo, hi = _pair(cfg.crop_ratio, "crop_ratio")
    if not 0.0 < lo <= hi:
        raise ConfigError(f"augment.crop_ratio must be [min, max] with 0 < min <= max, got {cfg.crop_ratio}")
    if cfg.jitter_strength is not None and cfg.jitter_strength < 0:
        raise ConfigError(f"augment.jitter_strength must be >= 0, got {cfg.jitter_strength}")
    if len(cfg.jitter) != 4 or min(cfg.jitter) < 0 or cfg.jitter[3] > 0.5:
        raise ConfigError(
            "augment.jitter must be [brightness, contrast, saturation, hue], all >= 0 and hue <= 0.5; "
            f"got {cfg.jitter}"
        )
    for name in ("image_size", "small_crop_size"):
        if getattr(cfg, name) is not None and not 1 <= getattr(cfg, name) <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"augment.{name} must be a number of pixels from 1 to {MAX_IMAGE_SIZE}, got {getattr(cfg, name)}"
            )
    if cfg.small_crops < 0:
        raise ConfigError(f"augment.small_crops must be 0 (none) or more, got {cfg.small_crops}")
    lo, hi = _pair(cfg.small_crop_scale, "small_crop_scale")
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"augment.small_crop_scale must be [min, max] with 0 < min <= max <= 1, got {cfg.small_crop_scale}"
        )


def _pair(values: list[float], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"augment.{name} must be a [min, max] pair, got {values}")
    return values[0], values[1]


def _apply_to_rows(x: Tensor, selected: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``x`` with ``op(x[rows], rows)`` written into the ``selected`` rows (a CPU bool mask); ``op`` gets the
    CPU row indices to pick its per-sample parameters. Overwrites ``x`` unless every row is selected."""
    if not bool(selected.any()):
        return x
    rows = selected.nonzero().squeeze(1)
    if len(rows) == len(x):
        return op(x, rows)
    index = rows.to(x.device, non_blocking=True)
    return x.index_copy_(0, index, op(x.index_select(0, index), rows))


def _resize(x: Tensor, size: int) -> Tensor:
    """Resize a float batch to size×size (antialiased bilinear); the input itself when already that size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def sample_crop_boxes(
    n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> Tensor:
    """``n`` random resized-crop boxes ``(x0, y0, w, h)`` in pixels, drawn as torchvision's ``RandomResizedCrop``
    draws them, vectorised: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), the first of 10 draws
    that fits inside the image at a uniform position, else the whole image cropped to the ratio range, centred.

    Unlike torchvision's, the boxes keep their sub-pixel sides and positions (the crop is resampled anyway), and
    a draw fits when its exact sides do, where torchvision rounds them first. With torchvision's whole-pixel
    positions CC learned less on Fashion-MNIST (benchmarks/notes/2026-12-03-crop-sampling.md)."""
    area = height * width
    target = area * torch.empty(n, CROP_ATTEMPTS).uniform_(scale[0], scale[1])
    aspect = torch.empty(n, CROP_ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    w_try = (target * aspect).sqrt()
    h_try = (target / aspect).sqrt()
    fits = (w_try <= width) & (h_try <= height)
    first = fits.int().argmax(dim=1, keepdim=True)
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fallback_w, fallback_h = width, width / ratio[0]
    elif image_ratio > ratio[1]:
        fallback_w, fallback_h = height * ratio[1], height
    else:
        fallback_w, fallback_h = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w_try.gather(1, first).squeeze(1), torch.tensor(float(fallback_w)))
    h = torch.where(found, h_try.gather(1, first).squeeze(1), torch.tensor(float(fallback_h)))
    position = torch.rand(n, 2)
    # a box that no draw fits is centred, as torchvision centres it
    position[~found] = 0.5
    x0 = position[:, 0] * (width - w)
    y0 = position[:, 1] * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


class RandomResizedCropFlip(nn.Module):
    """Random resized crop to ``size``×``size`` and horizontal flip, per sample, in one resampling pass.

    The crop box and the flip of each sample become one 2×3 affine; ``affine_grid`` + ``grid_sample``
    (bilinear, border padding) then resample the whole batch at once, about 2× faster on CPU than kornia's
    ``RandomResizedCrop`` followed by ``RandomHorizontalFlip``. The outermost output pixels interpolate with the
    pixels just outside the box (torchvision's crop repeats the box's own edge); the interior is the same. The
    resampling is not antialiased, which matters only where a crop is larger than the output (an output smaller
    than the native size). ``scale == (1, 1)`` is "no crop": the whole image is resized (antialiased, to a
    square) and flipped.
    """

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float], flip_prob: float) -> None:
        super().__init__()
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = flip_prob

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W -> a new N×C×size×size tensor (the input is left untouched)."""
        n, channels, height, width = x.shape
        flips = torch.rand(n) < self.flip_prob
        if self.scale == (1.0, 1.0):
            out = _resize(x, self.size)
            out = out.clone() if out is x else out
            return _apply_to_rows(out, flips, lambda sub, _: sub.flip(-1))
        x0, y0, w, h = sample_crop_boxes(n, height, width, self.scale, self.ratio).unbind(1)
        # Normalised coordinates (align_corners=False): output u in [-1, 1] samples input x0 + (u + 1)/2 · w.
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flips, -w, w) / width
        theta[:, 0, 2] = (2 * x0 + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * y0 + h) / height - 1
        theta = theta.to(device=x.device, dtype=x.dtype, non_blocking=True)
        grid = F.affine_grid(theta, [n, channels, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_prob={self.flip_prob}"


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_brightness_accumulative(x, factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_contrast_with_mean_subtraction(x, factor)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_saturation_with_gray_subtraction(x, factor)


# Channel offsets of the closed-form HSV -> RGB conversion, for R, G, B.
_HSV_OFFSETS = (5.0, 3.0, 1.0)


def _hue(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` (shift the HSV hue by ``factor`` turns), computed without the full HSV
    round trip: 2× faster on CPU than kornia's ``adjust_hue`` (28 vs 55 ms on 512×3×32×32), same result to
    1e-6. Value V = max and chroma C = max − min do not change; the hue in sextants is torchvision's
    ``(g − b)/C``, ``2 + (b − r)/C`` or ``4 + (r − g)/C`` as R, G or B is the maximum; each channel then is
    ``V − C·clamp(min(k, 4 − k), 0, 1)`` with ``k = (hue + offset) mod 6``."""
    value = x.amax(dim=1, keepdim=True)
    chroma = value - x.amin(dim=1, keepdim=True)
    r, g, b = x.split(1, dim=1)
    hue = torch.where(r == value, g - b, torch.where(g == value, b - r + 2 * chroma, r - g + 4 * chroma))
    hue.div_(torch.where(chroma > 0, chroma, 1.0)).add_((6.0 * factor).view(-1, 1, 1, 1))
    offsets = torch.tensor(_HSV_OFFSETS, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
    k = (hue + offsets).remainder_(6.0)
    return value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


class RandomColorJitter(nn.Module):
    """torchvision's ``ColorJitter`` applied with probability ``p``, batched, with per-sample factors and a
    per-sample random order of the adjustments.

    Factors: brightness, contrast and saturation ~ U(max(0, 1 − s), 1 + s), hue ~ U(−h, h). Adjustments with
    strength 0 are not run; pass saturation = hue = 0 for 1-channel images.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        super().__init__()
        self.p = p
        strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        functions = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}
        self.steps: list[tuple[str, Callable[[Tensor, Tensor], Tensor], tuple[float, float]]] = []
        for name, strength in strengths.items():
            if strength > 0:
                low = -strength if name == "hue" else max(0.0, 1.0 - strength)
                high = strength if name == "hue" else 1.0 + strength
                self.steps.append((name, functions[name], (low, high)))

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W in [0, 1] -> jittered batch (may overwrite ``x``)."""
        n = x.shape[0]
        applied = torch.rand(n) < self.p
        factors = [torch.empty(n).uniform_(*bounds) for _, _, bounds in self.steps]
        order = torch.rand(n, len(self.steps)).argsort(dim=1)
        # Stage by stage, each adjustment runs on the samples that drew it at that position of their order.
        for stage in range(len(self.steps)):
            for k, (_, adjust, _) in enumerate(self.steps):
                chosen = applied & (order[:, stage] == k)
                x = _apply_to_rows(
                    x,
                    chosen,
                    lambda sub, rows, fn=adjust, f=factors[k]: fn(
                        sub, f[rows].to(sub.device, non_blocking=True)
                    ),
                )
        return x

    def extra_repr(self) -> str:
        steps = ", ".join(f"{name}={bounds}" for name, _, bounds in self.steps)
        return f"p={self.p}, {steps}"


class RandomGrayscale(nn.Module):
    """Convert each RGB sample to grayscale (replicated over the 3 channels) with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Float N×3×H×W -> batch with the selected samples gray (may overwrite ``x``)."""
        selected = torch.rand(x.shape[0]) < self.p
        return _apply_to_rows(x, selected, lambda sub, _: rgb_to_grayscale(sub).repeat(1, 3, 1, 1))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomGaussianBlur(nn.Module):
    """Gaussian blur with probability ``p``, σ ~ U(0.1, 2.0) per sample, reflected borders."""

    def __init__(self, kernel_size: int, p: float, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.p = p
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W -> batch with the selected samples blurred (may overwrite ``x``)."""
        n = x.shape[0]
        selected = torch.rand(n) < self.p
        sigma = torch.empty(n, 1).uniform_(*self.sigma).expand(n, 2)
        k = self.kernel_size
        return _apply_to_rows(
            x,
            selected,
            # a CPU sigma: kornia checks it on the host, then moves it without waiting for the device
            lambda sub, rows: gaussian_blur2d(sub, (k, k), sigma[rows]),
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p}"


class RandomSolarize(nn.Module):
    """Invert the pixels at or above ``threshold`` (``x → 1 − x``) of each sample with probability ``p``."""

    def __init__(self, p: float, threshold: float = SOLARIZE_THRESHOLD) -> None:
        super().__init__()
        self.p = p
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W in [0, 1] -> batch with the selected samples solarized (may overwrite ``x``)."""
        selected = torch.rand(x.shape[0]) < self.p
        # kornia's solarize makes a device tensor of the threshold, a copy that waits for the device
        threshold = self.threshold
        return _apply_to_rows(x, selected, lambda sub, _: torch.where(sub < threshold, sub, 1.0 - sub))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, p={self.p}"


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, in place."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(-1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W -> normalised (overwrites ``x``)."""
        return x.sub_(self.mean).div_(self.std)


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel side, 10% of the image side and at least 3 (SimCLR App. A; 23 px at 224 px as in CC)."""
    k = int(BLUR_KERNEL_FRACTION * image_size)
    return max(3, k + 1 if k % 2 == 0 else k)


class ViewAugmenter(nn.Module):
    """Makes the training views of a uint8 batch on the device the batch lives on.

    Args:
        cfg: the ``augment`` section (an :class:`AugmentConfig` or its OmegaConf form); resolved against its
            pipeline's preset (see :func:`validate_augment_config`), the result is :attr:`config`.
        channels: channels of the dataset's images (1 or 3 usually).
        image_size: the dataset's native side; the views are ``cfg.image_size`` px when that is set, else
            this size.
        mean, std: per-channel normalisation statistics (used when the configuration normalises).

    Randomness comes from torch's global CPU generator (see the module docstring), so seeding it with
    ``torch.manual_seed`` makes the views reproducible.
    """

    def __init__(
        self, cfg: Any, channels: int, image_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.config = validate_augment_config(cfg)
        c = self.config
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {mean} and {std}")
        self.channels = channels
        self.image_size = int(c.image_size or image_size)
        self.small_crop_size = int(c.small_crop_size or max(1, round(SMALL_CROP_FRACTION * self.image_size)))
        brightness, contrast, saturation, hue = c.jitter
        if channels != 3:
            saturation = hue = 0.0
        jitter = RandomColorJitter(brightness, contrast, saturation, hue, c.jitter_prob)
        colour: list[nn.Module] = [jitter] if c.jitter_prob > 0 and jitter.steps else []
        if channels == 3 and c.grayscale_prob > 0:
            colour.append(RandomGrayscale(c.grayscale_prob))
        self.normalize: nn.Module = Normalize(mean, std) if c.normalize else nn.Identity()

        def pipeline(size: int, scale: list[float], blur_prob: float, solarize_prob: float) -> nn.Sequential:
            ops: list[nn.Module] = [RandomResizedCropFlip(size, scale, c.crop_ratio, c.flip_prob), *colour]
            if blur_prob > 0:
                ops.append(RandomGaussianBlur(blur_kernel_size(size), blur_prob))
            if solarize_prob > 0:
                ops.append(RandomSolarize(solarize_prob))
            return nn.Sequential(*ops, self.normalize)

        large = [
            pipeline(self.image_size, c.crop_scale, c.blur_prob[view], c.solarize_prob[view])
            for view in range(c.num_views)
        ]
        small = [
            pipeline(self.small_crop_size, c.small_crop_scale, c.blur_prob[-1], c.solarize_prob[-1])
            for _ in range(c.small_crops)
        ]
        self.pipelines = nn.ModuleList(large + small)

    def _to_float(self, images: Tensor) -> Tensor:
        """A new float32 copy in [0, 1] (uint8 is divided by 255; floating input is taken as in [0, 1])."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected an N×{self.channels}×H×W batch, got shape {tuple(images.shape)}")
        x = images.to(torch.float32, copy=True)
        return x.div_(255.0) if images.dtype == torch.uint8 else x

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        """uint8 N×C×H×W on the training device -> ``num_views`` float32 N×C×S×S views (S = image size),
        then ``small_crops`` N×C×s×s views (s = small crop size)."""
        x = self._to_float(images)
        # Augmentation stays in float32 whatever precision the training step runs in.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return [pipeline(x) for pipeline in self.pipelines]

    @torch.no_grad()
    def view(self, images: Tensor, index: int = 0) -> Tensor:
        """Only view ``index`` of a uint8 batch: that view's pipeline on a fresh draw (for ``index`` 0, the draw
        :meth:`forward` makes for its first view from the same random state)."""
        x = self._to_float(images)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.pipelines[index](x)

    @torch.no_grad()
    def eval_view(self, images: Tensor) -> Tensor:
        """The deterministic view for evaluation and read-outs (and SIC's raw view): resize, normalise."""
        x = self._to_float(images)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.normalize(_resize(x, self.image_size))

    def extra_repr(self) -> str:
        small = (
            f", small_crops={self.config.small_crops}×{self.small_crop_size}px"
            if self.config.small_crops
            else ""
        )
        return f"pipeline={self.config.pipeline!r}, channels={self.channels}, image_size={self.image_size}{small}"
