"""Tests of the backbones (shapes, stems, widths, Sobel input, precision/memory formats) and the heads."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from deepclust.errors import ConfigError
from deepclust.models import (
    BACKBONES,
    ClusterHead,
    ModelConfig,
    MultiHead,
    Prototypes,
    Sobel,
    build_backbone,
    mlp,
    small_cnn_strides,
)
from deepclust.models.support_set import SupportSet, pixel_key_size, pixel_keys

RESNET_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def _features(cfg: ModelConfig, channels: int, size: int, batch: int = 2) -> tuple[torch.Tensor, int]:
    torch.manual_seed(0)
    net = build_backbone(cfg, channels, size).eval()
    with torch.no_grad():
        out = net(torch.randn(batch, channels, size, size))
    return out, net.feature_dim


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "resnet34"])
def test_backbone_gives_declared_feature_dim(name: str, channels: int, size: int) -> None:
    out, dim = _features(ModelConfig(backbone=name), channels, size)
    assert out.shape == (2, dim)
    assert dim == RESNET_DIMS.get(name, 2 * 64)
    assert torch.isfinite(out).all()


def test_resnet50_on_one_cifar_image() -> None:
    out, dim = _features(ModelConfig(backbone="resnet50"), 3, 32, batch=1)
    assert out.shape == (1, 2048) and dim == 2048


def test_small_cnn_on_8px_digits() -> None:
    out, dim = _features(ModelConfig(width=16), 1, 8, batch=4)
    assert out.shape == (4, dim) and dim == 32


@pytest.mark.parametrize(
    "size,strides",
    [(8, [1, 2, 2]), (28, [2, 2, 2]), (32, [2, 2, 2]), (96, [2, 2, 2, 2, 2]), (4, [1, 1, 2]), (2, [1, 1, 1])],
)
def test_small_cnn_stride_plan(size: int, strides: list[int]) -> None:
    assert small_cnn_strides(size) == strides
    body = build_backbone(ModelConfig(width=8), 1, size).body
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == strides
    assert [c.out_channels for c in convs][:3] == [8, 16, 16]


def test_cifar_and_imagenet_stems() -> None:
    cifar = build_backbone(ModelConfig(backbone="resnet18", stem="cifar"), 1, 28).body
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert cifar.conv1.in_channels == 1
    assert isinstance(cifar.maxpool, nn.Identity)
    imagenet = build_backbone(ModelConfig(backbone="resnet18", stem="imagenet"), 3, 32).body
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert isinstance(imagenet.fc, nn.Identity)


def test_resnet_width_scales_channels_and_features() -> None:
    narrow = build_backbone(ModelConfig(backbone="resnet18", width=32), 3, 32)
    standard = build_backbone(ModelConfig(backbone="resnet18"), 3, 32)
    assert narrow.feature_dim == 256
    assert narrow.body.conv1.out_channels == 32 and narrow.body.layer4[-1].conv2.out_channels == 256
    ratio = sum(p.numel() for p in narrow.parameters()) / sum(p.numel() for p in standard.parameters())
    assert 0.2 < ratio < 0.3
    with torch.no_grad():
        assert narrow.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_sobel_gradients_of_a_step_image() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[..., 4:] = 1.0  # intensity steps up between columns 3 and 4
    grad = Sobel(1)(image)
    assert grad.shape == (1, 2, 8, 8)
    expected_x = torch.zeros(8, 8)
    expected_x[:, 3:5] = 4.0
    torch.testing.assert_close(grad[0, 0], expected_x)
    torch.testing.assert_close(grad[0, 1], torch.zeros(8, 8))
    # The transposed step shows up in the vertical channel; an RGB gray image gives the same gradients.
    rgb = image.transpose(-1, -2).expand(1, 3, 8, 8)
    grad_rgb = Sobel(3)(rgb)
    torch.testing.assert_close(grad_rgb[0, 1], expected_x.t())
    torch.testing.assert_close(grad_rgb[0, 0], torch.zeros(8, 8))


def test_sobel_backbone_feeds_two_channels_and_has_no_trainable_filter() -> None:
    net = build_backbone(ModelConfig(backbone="resnet18", sobel=True), 3, 32)
    assert isinstance(net.input_filter, Sobel)
    assert net.body.conv1.in_channels == 2
    assert list(net.input_filter.parameters()) == []
    assert "input_filter.kernels" not in net.state_dict()
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ConfigError, match="1- or 3-channel"):
        build_backbone(ModelConfig(sobel=True), 2, 28)


def test_small_cnn_trains_in_channels_last_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(width=8), 1, 28).to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and out.shape == (8, 16)
    out.float().square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_omegaconf_section_is_accepted() -> None:
    section = OmegaConf.structured(ModelConfig(backbone="resnet18", width=16))
    assert build_backbone(section, 3, 32).feature_dim == 128


@pytest.mark.parametrize(
    "cfg,match",
    [
        (ModelConfig(backbone="resnet101"), "small_cnn, resnet18, resnet34, resnet50"),
        (ModelConfig(stem="tiny"), "cifar, imagenet"),
        (ModelConfig(width=0), "model.width"),
        (ModelConfig(layers=[[32, 3]]), "stride 1 or 2"),
        (ModelConfig(layers=[[0, 2]]), "out_channels, stride"),
        (ModelConfig(layers=[[32]]), "out_channels, stride"),
        (ModelConfig(layers=[]), "out_channels, stride"),
        (ModelConfig(backbone="resnet18", layers=[[32, 2]]), "only applies to small_cnn"),
    ],
)
def test_bad_model_config_is_a_config_error(cfg: ModelConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_backbone(cfg, 3, 32)


def test_small_cnn_explicit_layers_set_widths_and_strides() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"layers": [[8, 2], [16, 1], [24, 2]]})
    net = build_backbone(cfg, 1, 28)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(8, 2), (16, 1), (24, 2)]
    assert net.feature_dim == 24
    default = build_backbone(ModelConfig(width=8), 1, 28)
    assert [(c.out_channels, c.stride[0]) for c in default.modules() if isinstance(c, nn.Conv2d)] == [
        (8, 2),
        (16, 2),
        (16, 2),
    ]


def test_every_listed_backbone_builds_at_a_scaled_width() -> None:
    expected = {"small_cnn": 16, "resnet18": 64, "resnet34": 64, "resnet50": 256}
    assert set(expected) == set(BACKBONES)
    for name in BACKBONES:
        net = build_backbone(ModelConfig(backbone=name, width=8), 3, 32).eval()
        assert net.feature_dim == expected[name]
        with torch.no_grad():
            assert net(torch.randn(1, 3, 32, 32)).shape == (1, expected[name])


def test_mlp_layer_structure() -> None:
    head = mlp(8, 16, 4)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].bias is not None
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (8, 16, 4)
    cc = mlp(8, 8, 3, batch_norm=False)
    assert [type(m) for m in cc] == [nn.Linear, nn.ReLU, nn.Linear]
    deep = mlp(8, 16, 4, num_layers=3, last_batch_norm=True)
    assert [type(m) for m in deep] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert [type(m) for m in mlp(8, 16, 4, num_layers=1)] == [nn.Linear]
    assert mlp(8, 16, 4)(torch.randn(5, 8)).shape == (5, 4)
    with pytest.raises(ConfigError, match="needs at least 1 layer, got num_layers=0"):
        mlp(8, 16, 4, num_layers=0)


def test_prototypes_score_cosines_and_renormalise() -> None:
    torch.manual_seed(0)
    protos = Prototypes(6, 5)
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))
    z = 100 * torch.randn(7, 6)
    with torch.no_grad():
        protos.weight.mul_(torch.linspace(0.5, 3.0, 5).unsqueeze(1))
    scores = protos(z)
    assert scores.shape == (7, 5)
    assert scores.abs().max() <= 1.0 + 1e-6
    expected = torch.nn.functional.cosine_similarity(z.unsqueeze(1), protos.weight.unsqueeze(0), dim=2)
    torch.testing.assert_close(scores, expected)
    protos.normalize_()
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))
    assert protos.weight.requires_grad


def test_cluster_head_gives_probabilities_and_logits() -> None:
    torch.manual_seed(0)
    head = ClusterHead(12, 4)
    assert [type(m) for m in head.net] == [nn.Linear, nn.ReLU, nn.Linear]
    h = torch.randn(9, 12)
    probs = head(h)
    assert probs.shape == (9, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(9))
    torch.testing.assert_close(probs, head.logits(h).softmax(dim=1))


def test_multi_head_runs_its_cluster_heads_as_one_with_each_heads_probabilities() -> None:
    """One batched pass over stacked weights: each head's own probabilities and gradients, for the heads'
    parameters and for the features; heads with BatchNorm are called one by one, and one head is the plain call."""
    torch.manual_seed(0)
    heads = MultiHead(lambda: ClusterHead(12, 4, hidden_dim=6), 3, momentum=0.9)
    h = torch.randn(9, 12, requires_grad=True)
    stacked, twice = heads(h, h)
    each = torch.stack([head(h) for head in heads])
    assert torch.equal(stacked, twice)  # several inputs share the stacked weights
    assert stacked.shape == (3, 9, 4) and stacked.dtype == torch.float32
    torch.testing.assert_close(stacked, each)
    weights = torch.randn(3, 9, 4)
    inputs = [h, *(p for head in heads for p in head.parameters())]
    grads = torch.autograd.grad((weights * stacked).sum(), inputs)
    expected = torch.autograd.grad((weights * each).sum(), inputs)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    normalised = MultiHead(lambda: ClusterHead(12, 4, batch_norm=True), 2, momentum=0.9).eval()
    (fallback,) = normalised(h)
    torch.testing.assert_close(fallback, torch.stack([head(h) for head in normalised]))
    linear = MultiHead(lambda: nn.Linear(12, 4), 2, momentum=0.9)
    (logits,) = linear(h)
    torch.testing.assert_close(logits, torch.stack([head(h) for head in linear]))
    single = MultiHead(lambda: ClusterHead(12, 4), 1, momentum=0.9)
    (plain,) = single(h)
    assert torch.equal(plain, single[0](h))  # N×K, the head's own call


def test_multi_head_reads_out_the_head_with_the_lowest_running_loss() -> None:
    torch.manual_seed(0)
    heads = MultiHead(lambda: nn.Linear(3, 2), 3, momentum=0.5)
    assert len(heads) == 3 and heads.running_losses.isnan().all()
    assert heads.best == 0  # no step yet: NaN reads as infinite
    best = heads.update(torch.tensor([2.0, 1.0, 3.0], requires_grad=True))  # the first step sets them
    assert best.shape == (1,) and int(best) == heads.best == 1
    assert heads.running_losses.tolist() == [2.0, 1.0, 3.0] and not heads.running_losses.requires_grad
    best = heads.update(torch.tensor([0.0, 3.0, 3.0]))  # momentum 0.5: half-way
    assert heads.running_losses.tolist() == [1.0, 2.0, 3.0] and int(best) == heads.best == 0
    x = torch.randn(5, 3)
    assert torch.equal(heads.readout(x), heads[0](x))
    restored = MultiHead(lambda: nn.Linear(3, 2), 3, momentum=0.5)
    restored.load_state_dict(heads.state_dict())
    assert restored.best == 0 and torch.equal(restored.readout(x), heads[0](x))
    with pytest.raises(ConfigError, match=r"params.num_heads must be at least 1, got 0"):
        MultiHead(lambda: nn.Linear(3, 2), 0, momentum=0.5)
    with pytest.raises(ConfigError, match=r"params.head_loss_momentum must be in \[0, 1\), got 1.0"):
        MultiHead(lambda: nn.Linear(3, 2), 2, momentum=1.0)


# ---------------------------------------------------------------------------------------------- support set


def test_support_set_is_a_ring_that_fills_then_overwrites_the_oldest_rows() -> None:
    support = SupportSet(size=5, dim=2)
    assert not support.full
    support.push(torch.arange(6.0).reshape(3, 2))  # rows 0-2
    assert not support.full
    support.push(torch.arange(6.0, 12.0).reshape(3, 2))  # rows 3, 4, then row 0 again
    assert support.full
    assert support.embeddings[:, 0].tolist() == [10.0, 2.0, 4.0, 6.0, 8.0]
    support.push(torch.arange(100.0, 114.0).reshape(7, 2))  # more than fits: the latest five, from row 1 on
    assert support.embeddings[:, 0].tolist() == [112.0, 104.0, 106.0, 108.0, 110.0]


def test_support_set_finds_the_most_similar_key() -> None:
    embeddings = torch.eye(3)
    by_embedding = SupportSet(size=3, dim=3)
    by_embedding.push(embeddings)
    queries = torch.nn.functional.normalize(torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.0, -0.1]]), dim=1)
    assert torch.equal(by_embedding.nearest(queries), embeddings[[1, 0]])
    # separate keys: the key decides, and the embedding is returned
    by_key = SupportSet(size=3, dim=3, key_dim=2)
    by_key.push(embeddings, keys=torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]))
    assert torch.equal(by_key.nearest(torch.tensor([[0.9, 0.1], [-0.2, -0.9]])), embeddings[[1, 2]])
    with pytest.raises(ValueError, match="key_dim"):
        by_key.push(embeddings)
    with pytest.raises(ValueError, match="key_dim"):
        by_embedding.push(embeddings, keys=embeddings)
    with pytest.raises(ValueError, match="at least one"):
        SupportSet(size=0, dim=3)


def test_support_set_ranks_in_float32_under_autocast() -> None:
    # cosines of 0.99955 and 0.99995: both round to 1.0 in bf16, where argmax would return the first, worse key
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.03], [1.0, 0.01]]), dim=1)
    support = SupportSet(size=2, dim=2, key_dim=2)
    support.push(torch.eye(2), keys=keys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(support.nearest(torch.tensor([[1.0, 0.0]])), torch.eye(2)[[1]])


def test_support_set_state_round_trips_and_continues_where_it_was() -> None:
    support = SupportSet(size=4, dim=2, key_dim=3)
    support.push(torch.randn(3, 2), keys=torch.randn(3, 3))
    restored = SupportSet(size=4, dim=2, key_dim=3)
    restored.load_state_dict(support.state_dict())
    assert torch.equal(restored.embeddings, support.embeddings) and torch.equal(restored.keys, support.keys)
    assert not restored.full
    new = torch.randn(2, 2), torch.randn(2, 3)
    support.push(*new)
    restored.push(*new)
    assert restored.full and torch.equal(restored.embeddings, support.embeddings)


def test_pixel_keys_are_centred_unit_vectors_blind_to_brightness_and_pooled_when_large() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 100, (3, 1, 28, 28), dtype=torch.uint8, generator=generator)
    keys = pixel_keys(images)
    assert keys.shape == (3, 784) and keys.dtype == torch.float32
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(keys.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    # a brighter, higher-contrast copy (2x + 40) has the same key
    torch.testing.assert_close(pixel_keys(images * 2 + 40), keys)
    large = torch.randint(0, 256, (2, 3, 96, 64), dtype=torch.uint8, generator=generator)
    assert pixel_keys(large).shape == (2, 3 * 32 * 32) == (2, pixel_key_size((3, 96, 64)))
    assert pixel_key_size((1, 28, 28)) == 784
    # a smaller side: the key of the 2×2 average-pooled image
    torch.testing.assert_close(
        pixel_keys(images, side=14), pixel_keys(torch.nn.functional.avg_pool2d(images.float(), 2))
    )
    assert pixel_key_size((1, 28, 28), side=14) == 196
    with pytest.raises(ValueError, match="at least one pixel"):
        pixel_keys(images, side=0)
