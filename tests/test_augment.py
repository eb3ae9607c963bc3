"""Tests of the batched view augmentation: shapes, per-sample randomness, each operation, seeding, config."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from omegaconf import OmegaConf

from deepclust.data import augment
from deepclust.data.augment import (
    PIPELINES,
    AugmentConfig,
    RandomResizedCropFlip,
    ViewAugmenter,
    preset,
    sample_crop_boxes,
    validate_augment_config,
)
from deepclust.errors import ConfigError

# the CUDA case is reported as skipped where there is no GPU (CI), rather than left out unseen
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
]


def _images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def _augmenter(channels: int = 3, size: int = 32, **fields: Any) -> ViewAugmenter:
    return ViewAugmenter(AugmentConfig(**fields), channels, size, [0.5] * channels, [0.25] * channels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_views_shape_dtype_device(pipeline: str, channels: int, size: int, device: str) -> None:
    aug = _augmenter(channels, size, pipeline=pipeline).to(device)
    images = _images(6, channels, size).to(device)
    views = aug(images)
    large, small = aug.config.num_views, aug.config.small_crops
    assert large == 2 and len(views) == large + small
    for index, view in enumerate(views):
        side = size if index < large else aug.small_crop_size
        assert view.shape == (6, channels, side, side)
        assert view.dtype == torch.float32 and view.device.type == device
        assert torch.isfinite(view).all()
    assert images.dtype == torch.uint8  # the input batch is not modified or converted in place


def test_image_size_and_three_views() -> None:
    aug = _augmenter(3, 32, image_size=24, num_views=3)
    views = aug(_images(4))
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 3
    assert aug.eval_view(_images(4)).shape == (4, 3, 24, 24)
    assert aug.config.blur_prob == [0.0, 0.0, 0.0]  # a uniform preset list stretches to 3 views


def test_swav_multi_crop_small_views() -> None:
    aug = _augmenter(3, 224, pipeline="swav")
    # SwAV's 2×224 + 6×96 (Caron et al. 2020), small crops of 5-14% of the image
    assert aug.config.small_crops == 6 and aug.small_crop_size == 96
    views = aug(_images(2, 3, 224))
    assert [v.shape[-1] for v in views] == [224, 224] + [96] * 6
    small_crop = aug.pipelines[2][0]
    assert small_crop.size == 96 and small_crop.scale == (0.05, 0.14)
    assert _augmenter(3, 32, pipeline="swav").small_crop_size == 14  # 96/224 of 32 px, rounded
    # one exact box: a small crop of the whole-image scale [1, 1] is the image, resized and flipped or not
    aug = _augmenter(
        1, 8, pipeline="none", normalize=False, small_crops=1, small_crop_size=4, small_crop_scale=[1.0, 1.0]
    )
    images = _images(3, 1, 8)
    small = aug(images)[2]
    assert small.shape == (3, 1, 4, 4)
    torch.testing.assert_close(small, TF.resize(images.float() / 255, [4, 4], antialias=True))


def test_each_sample_gets_its_own_parameters() -> None:
    torch.manual_seed(0)
    images = _images(1).expand(16, -1, -1, -1).contiguous()
    for view in _augmenter(pipeline="simclr")(images):
        flat = view.flatten(1)
        distances = torch.cdist(flat, flat)
        off_diagonal = distances[~torch.eye(16, dtype=torch.bool)]
        assert off_diagonal.min() > 1e-3


def test_views_differ_from_each_other() -> None:
    torch.manual_seed(0)
    first, second = _augmenter(pipeline="byol")(_images(8))
    assert ((first - second).flatten(1).abs().amax(dim=1) > 1e-3).all()


def test_eval_view_is_deterministic_resize_and_normalise() -> None:
    aug = _augmenter(3, 32, pipeline="simclr")
    images = _images(5)
    torch.manual_seed(0)
    first = aug.eval_view(images)
    torch.manual_seed(1)
    torch.testing.assert_close(aug.eval_view(images), first)
    torch.testing.assert_close(first, (images.float() / 255 - 0.5) / 0.25)
    raw = _augmenter(3, 32, pipeline="cc").eval_view(images)  # CC has no normalisation
    torch.testing.assert_close(raw, images.float() / 255)


def test_none_pipeline_views_equal_the_eval_view() -> None:
    aug = _augmenter(1, 28, pipeline="none")
    images = _images(4, 1, 28)
    for view in aug(images):
        torch.testing.assert_close(view, aug.eval_view(images))


def test_grayscale_images_never_run_colour_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any) -> torch.Tensor:
        raise AssertionError("a colour-only operation ran on 1-channel images")

    for name in ("_hue", "_saturation", "rgb_to_grayscale"):
        monkeypatch.setattr(augment, name, forbidden)
    aug = _augmenter(1, 28, pipeline="concurl", grayscale_prob=1.0)
    jitter = aug.pipelines[0][1]
    assert [name for name, _, _ in jitter.steps] == ["brightness", "contrast"]
    assert not any(isinstance(op, augment.RandomGrayscale) for op in aug.modules())
    views = aug(_images(32, 1, 28))
    assert all(v.shape == (32, 1, 28, 28) for v in views)


def _high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).square().mean() + (x[..., 1:] - x[..., :-1]).square().mean()


def test_blur_probability_one_removes_high_frequencies() -> None:
    torch.manual_seed(0)
    aug = _augmenter(3, 32, pipeline="none", blur_prob=[1.0, 0.0], normalize=False)
    blurred, sharp = aug(_images(16))
    torch.testing.assert_close(sharp, _images(16).float() / 255)
    assert _high_frequency_energy(blurred) < 0.6 * _high_frequency_energy(sharp)


def test_solarize_inverts_bright_pixels() -> None:
    aug = _augmenter(3, 32, pipeline="none", solarize_prob=[1.0, 0.0], normalize=False)
    images = _images(4)
    solarized, plain = aug(images)
    x = images.float() / 255
    torch.testing.assert_close(solarized, torch.where(x >= 0.5, 1 - x, x))
    torch.testing.assert_close(plain, x)


def test_hue_shift_matches_torchvision() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 6, 6)
    x[:2] = x[:2, :1]  # gray pixels
    x[2, 1] = x[2, 0]  # ties between the maximum channels
    factors = torch.rand(8) - 0.5
    expected = torch.stack([TF.adjust_hue(x[i], float(factors[i])) for i in range(8)])
    torch.testing.assert_close(augment._hue(x, factors), expected, atol=1e-5, rtol=0)


def test_crop_resamples_the_drawn_box_and_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes = torch.tensor([[4.0, 8.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    monkeypatch.setattr(augment, "sample_crop_boxes", lambda *args: boxes)
    x = torch.rand(2, 3, 32, 32)
    cropped = RandomResizedCropFlip(16, (0.08, 1.0), (0.75, 4 / 3), flip_prob=0.0)(x)
    torch.testing.assert_close(cropped[0], x[0, :, 8:24, 4:20])
    flipped = RandomResizedCropFlip(32, (0.08, 1.0), (0.75, 4 / 3), flip_prob=1.0)(x)
    torch.testing.assert_close(flipped[1], x[1].flip(-1))
    # an off-centre box is mirrored about its own centre, not the image's
    flipped_crop = RandomResizedCropFlip(16, (0.08, 1.0), (0.75, 4 / 3), flip_prob=1.0)(x)
    torch.testing.assert_close(flipped_crop[0], x[0, :, 8:24, 4:20].flip(-1))


def test_crop_boxes_respect_scale_ratio_and_image() -> None:
    torch.manual_seed(0)
    x0, y0, w, h = sample_crop_boxes(4000, 28, 28, (0.08, 1.0), (3 / 4, 4 / 3)).unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 28 + 1e-4).all() and (y0 + h <= 28 + 1e-4).all()
    area = w * h / 28**2
    assert area.min() >= 0.08 - 1e-5 and area.max() <= 1.0 + 1e-5
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert area.std() > 0.2  # spread over the scale range, not stuck at the fallback
    small = w < 20
    relative_x = x0[small] / (28 - w[small])
    assert relative_x.std() > 0.25  # uniform positions (std of U(0, 1) is 0.29)


@pytest.mark.parametrize(
    ("scale", "tolerance"), [((0.08, 1.0), 0.015), ((0.7, 1.0), 0.015), ((0.9, 1.0), 0.005)]
)
def test_crop_boxes_against_torchvision(scale: tuple[float, float], tolerance: float) -> None:
    """The mean crop area of ``RandomResizedCrop.get_params``, but for its rounding of the sides (the docstring
    gives the difference); a box that no draw fits is centred, as there."""
    torch.manual_seed(0)
    ratio = (3 / 4, 4 / 3)
    ours = sample_crop_boxes(20000, 28, 28, scale, ratio)
    image = torch.zeros(1, 28, 28)
    theirs = torch.tensor(
        [T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(20000)],
        dtype=torch.float32,
    )
    area = [
        (ours[:, 2] * ours[:, 3]).mean().item() / 28**2,
        (theirs[:, 2] * theirs[:, 3]).mean().item() / 28**2,
    ]
    assert area[0] == pytest.approx(area[1], abs=tolerance)
    # a 32×96 image is wider than any ratio allows: the largest 4:3 box, centred
    x0, y0, w, h = sample_crop_boxes(50, 32, 96, (0.9, 1.0), ratio).unbind(1)
    assert torch.allclose(w, torch.tensor(128 / 3)) and (h == 32).all()
    assert torch.allclose(x0, (96 - w) / 2) and (y0 == 0).all()


def _fraction(mask: torch.Tensor) -> float:
    return mask.float().mean().item()


def test_probabilities_are_respected() -> None:
    torch.manual_seed(0)
    n = 2000
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(n, 3, 32, 32).contiguous()
    ramp[:, 1] = 255 - ramp[:, 1]  # not gray
    x = ramp.float() / 255
    base = {"pipeline": "none", "normalize": False}

    flipped = _augmenter(**base, flip_prob=0.3)(ramp)[0]
    assert abs(_fraction((flipped - x.flip(-1)).flatten(1).abs().amax(1) < 1e-6) - 0.3) < 0.05

    gray = _augmenter(**base, grayscale_prob=0.2)(ramp)[0]
    assert abs(_fraction((gray[:, 0] - gray[:, 1]).flatten(1).abs().amax(1) < 1e-6) - 0.2) < 0.05

    jittered = _augmenter(**base, jitter=[0.5, 0.0, 0.0, 0.0], jitter_prob=0.6)(ramp)[0]
    assert abs(_fraction((jittered - x).flatten(1).abs().amax(1) > 1e-4) - 0.6) < 0.05

    blur = _augmenter(**base, blur_prob=[0.5, 0.1])
    for module in blur.modules():
        if isinstance(module, augment.RandomGaussianBlur):
            module.sigma = (1.0, 2.0)  # σ near 0.1 leaves the image as it was: every blur must show
    changed = [_fraction((v - x).flatten(1).abs().amax(1) > 1e-4) for v in blur(ramp)]
    assert abs(changed[0] - 0.5) < 0.05 and abs(changed[1] - 0.1) < 0.05

    solarized = _augmenter(**base, solarize_prob=[0.0, 0.2])(ramp)
    changed = [_fraction((v - x).flatten(1).abs().amax(1) > 1e-4) for v in solarized]
    assert changed[0] == 0.0 and abs(changed[1] - 0.2) < 0.05


def test_jitter_factors_follow_the_strength() -> None:
    torch.manual_seed(0)
    images = torch.full((500, 1, 8, 8), 100, dtype=torch.uint8)
    aug = _augmenter(1, 8, pipeline="none", normalize=False, jitter=[0.4, 0, 0, 0], jitter_prob=1.0)
    view = aug(images)[0]
    factor = view[:, 0, 0, 0] / (100 / 255)
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor.min() < 0.65 and factor.max() > 1.35


def test_same_seed_same_views() -> None:
    aug = _augmenter(pipeline="byol")
    images = _images(8)
    torch.manual_seed(3)
    first = aug(images)
    torch.manual_seed(3)
    again = aug(images)
    torch.manual_seed(4)
    other = aug(images)
    for a, b, c in zip(first, again, other, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, c)


def test_single_view_is_that_view_of_the_full_call() -> None:
    aug = _augmenter(pipeline="byol")  # view 1 has different blur and solarize probabilities than view 0
    images = _images(8)
    torch.manual_seed(5)
    first = aug(images)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(aug.view(images), first, rtol=0, atol=0)
    torch.manual_seed(5)
    assert aug.view(images, 1).shape == first.shape and not torch.allclose(aug.view(images, 1), first)


def test_views_stay_float32_under_autocast_and_accept_float_input() -> None:
    aug = _augmenter(pipeline="simclr")
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        views = aug(_images(4))
    assert all(v.dtype == torch.float32 for v in views)
    floats = _images(4).float() / 255
    assert aug(floats)[0].shape == (4, 3, 32, 32)
    torch.testing.assert_close(floats, _images(4).float() / 255)  # not modified in place
    with pytest.raises(ValueError, match="N×3×H×W"):
        aug(_images(4, channels=1))


def test_presets_follow_the_papers() -> None:
    byol = preset("byol")
    assert byol.blur_prob == [1.0, 0.1] and byol.solarize_prob == [0.0, 0.2]
    assert byol.jitter == [0.4, 0.4, 0.2, 0.1] and byol.jitter_prob == 0.8
    assert preset("simclr").jitter == pytest.approx([0.4, 0.4, 0.4, 0.1])
    assert preset("cc").normalize is False
    assert preset("concurl").crop_scale == [0.2, 1.0] and preset("concurl").jitter_prob == 1.0
    assert preset("swav").crop_scale == [0.14, 1.0] and preset("swav").blur_prob == [0.5, 0.5]


def test_fields_override_the_pipeline_preset() -> None:
    assert validate_augment_config(AugmentConfig()) == preset("simclr")  # None fields take the preset
    section = OmegaConf.structured(AugmentConfig)
    section.pipeline = "byol"
    assert validate_augment_config(section).blur_prob == [1.0, 0.1]
    section.blur_prob = [0.0, 0.0]
    section.jitter_strength = 1.0
    resolved = validate_augment_config(section)
    assert resolved.blur_prob == [0.0, 0.0] and resolved.solarize_prob == [0.0, 0.2]
    assert resolved.jitter == pytest.approx([0.8, 0.8, 0.8, 0.2])
    section.jitter = [0.1, 0.2, 0.3, 0.4]
    resolved = validate_augment_config(section)
    assert resolved.jitter == [0.1, 0.2, 0.3, 0.4] and resolved.jitter_strength is None  # s was not used


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"pipeline": "autoaugment"}, "simclr, byol"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"solarize_prob": [0.0, -0.1]}, "solarize_prob"),
        ({"blur_prob": [0.5]}, "one probability per view"),
        ({"pipeline": "byol", "num_views": 3}, "blur_prob"),
        ({"num_views": 0}, "num_views"),
        ({"crop_scale": [0.5, 0.2]}, "crop_scale"),
        ({"crop_scale": [0.0, 1.0]}, "crop_scale"),
        ({"crop_scale": [0.5, 1.5]}, "crop_scale"),
        ({"crop_scale": [0.5]}, "crop_scale"),
        ({"crop_ratio": [2.0, 1.0]}, "crop_ratio"),
        ({"jitter": [0.4, 0.4, 0.4, 0.7]}, "hue"),
        ({"jitter_strength": -1.0}, "jitter_strength"),
        ({"image_size": 0}, "image_size"),
        ({"small_crops": -1}, "small_crops"),
        ({"small_crop_size": 0}, "small_crop_size"),
        ({"small_crop_scale": [0.2, 0.1]}, "small_crop_scale"),
    ],
)
def test_bad_config_is_a_config_error(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _augmenter(**fields)
