"""Backbones: images (already augmented and normalised) -> one pooled feature vector per image.

* ``small_cnn``: a compact all-convolutional VGG-style net for CPU training on small images (Fashion-MNIST,
  scikit-learn digits). Every layer is 3×3 conv → BatchNorm → ReLU; spatial reduction is done by stride-2
  convolutions rather than max-pooling, then a global average pool.
* ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ResNets (``weights=None``, nothing is downloaded)
  with ``fc`` removed. ``stem="imagenet"`` keeps the 7×7 stride-2 conv and the max-pool (CC and SIC train
  this at 224 px: CC's ``modules/resnet.py``, which SIC's code reuses); ``stem="cifar"`` uses a 3×3 stride-1
  conv and no max-pool, as ConCURL's CIFAR ResNet-18 (``JayanthRR/ConCURL_NCE``, ``model_utils/``) and as CC's
  maintainer recommends for 32 px input (Yunfan-Li/Contrastive-Clustering issue #47).
* ``sobel=True`` puts a fixed :class:`Sobel` filter in front (grayscale → horizontal and vertical gradients),
  the input filter DeepCluster introduced and ConCURL optionally uses.

``width`` is the channel count of the first stage. ResNets double it at every stage as torchvision does
(64 → 128 → 256 → 512 at the default 64); other widths rebuild the four stages with the same block layout,
so ``width=32`` gives a ResNet with a quarter of the compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from deepclust.errors import ConfigError
from deepclust.validation import check_choice

BACKBONES: tuple[str, ...] = ("small_cnn", "resnet18", "resnet34", "resnet50")
STEMS: tuple[str, ...] = ("cifar", "imagenet")
# ITU-R BT.601 luma, the weights torchvision and kornia use for RGB -> grayscale.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
# small_cnn down-samples until its feature map is at most this many pixels on a side.
SMALL_CNN_MIN_SIDE = 4
# small_cnn always has at least this many conv layers.
SMALL_CNN_MIN_LAYERS = 3


@dataclass
class ModelConfig:
    """The ``model`` section: which backbone maps a view to its representation.

    Attributes:
        backbone: ``small_cnn`` | ``resnet18`` | ``resnet34`` | ``resnet50``.
        stem: ResNet input stem, ``cifar`` (3×3 conv stride 1, no max-pool) or ``imagenet`` (7×7 stride 2 and
            max-pool); ``small_cnn`` has no stem choice (its first layer's stride follows the image size).
        width: channels of the first stage (ResNets: 64 is torchvision's standard; small_cnn: first layer).
        sobel: replace the image by its two Sobel gradients of the grayscale image before the first conv.
        layers: ``small_cnn`` only: its conv layers as ``[out_channels, stride]`` pairs (stride 1 or 2),
            replacing the ones ``width`` and the image size give; ``None`` keeps those.
    """

    backbone: str = "small_cnn"
    stem: str = "cifar"
    width: int = 64
    sobel: bool = False
    layers: list[list[int]] | None = None


class Sobel(nn.Module):
    """Fixed input filter: grayscale (1-channel images pass through), then the two 3×3 Sobel filters.

    Output channel 0 is the horizontal gradient (positive where intensity increases to the right), channel 1
    the vertical one (positive where it increases downwards); borders are replicated so that a flat image has
    zero gradient everywhere. Nothing here is trainable: the weights are buffers (not saved in checkpoints,
    they are constants).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels == 3:
            gray = torch.tensor(LUMA_WEIGHTS)
        elif in_channels == 1:
            gray = torch.ones(1)
        else:
            raise ConfigError(f"model.sobel needs 1- or 3-channel images, got {in_channels} channels")
        smooth = torch.tensor([1.0, 2.0, 1.0])
        diff = torch.tensor([-1.0, 0.0, 1.0])
        kernels = torch.stack([torch.outer(smooth, diff), torch.outer(diff, smooth)]).unsqueeze(1)
        self.register_buffer("gray_weight", gray.view(1, in_channels, 1, 1), persistent=False)
        self.register_buffer("kernels", kernels, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """N×C×H×W -> N×2×H×W gradients."""
        gray = F.conv2d(x, self.gray_weight.to(x.dtype))
        return F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), self.kernels.to(x.dtype))


class Backbone(nn.Module):
    """An optional fixed input filter followed by a conv net that ends in a pooled vector.

    Attributes:
        feature_dim: size of the vector :meth:`forward` returns.
    """

    def __init__(self, body: nn.Module, feature_dim: int, input_filter: nn.Module | None = None) -> None:
        super().__init__()
        self.input_filter = input_filter if input_filter is not None else nn.Identity()
        self.body = body
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        """Float N×C×H×W (normalised) -> N×feature_dim."""
        return self.body(self.input_filter(x))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def small_cnn_strides(image_size: int) -> list[int]:
    """Stride of each small_cnn layer: stride 2 until the map is at most 4 px; inputs that get there in
    fewer than three layers go on halving down to 2 px, then get stride-1 layers in front (28 px:
    ``[2, 2, 2]``; 8 px: ``[1, 2, 2]``; 96 px: five stride-2 layers). Stride-1 layers at full resolution
    are the expensive ones: ``[1, 1, 2]`` at 8 px took 3× longer than ``[1, 2, 2]``."""
    side, strides = image_size, list[int]()
    while side > SMALL_CNN_MIN_SIDE or (side > 2 and len(strides) < SMALL_CNN_MIN_LAYERS):
        side = math.ceil(side / 2)
        strides.append(2)
    return [1] * max(0, SMALL_CNN_MIN_LAYERS - len(strides)) + strides


def small_cnn_layers(width: int, image_size: int) -> list[tuple[int, int]]:
    """The default ``(out_channels, stride)`` of every small_cnn layer: channels double at every second layer
    (``w, 2w, 2w, 4w, 4w, 8w, …``, capped at ``8w``), so the feature size is ``2w`` on 8-32 px images."""
    strides = small_cnn_strides(image_size)
    return [(width * min(2 ** ((index + 1) // 2), 8), stride) for index, stride in enumerate(strides)]


class SmallCNN(nn.Sequential):
    """Compact all-convolutional net: (3×3 conv → BN → ReLU) layers, global average pool, flatten.

    ``layers`` gives each layer's ``(out_channels, stride)``; :func:`small_cnn_layers` is the default.
    Down-sampling is by stride-2 convolutions: forward+backward of 512 Fashion-MNIST images took 4.4× longer
    with the stride-1 conv + max-pool pairs of a classic VGG block at the same widths (0.57 vs 0.13 s).
    Measured on one thread of the project's 2-core CPU with the other core busy, channels-last: about 0.14 s
    at w=32 and 0.5 s at w=64.
    """

    def __init__(self, in_channels: int, layers: list[tuple[int, int]]) -> None:
        modules: list[nn.Module] = []
        channels = in_channels
        for out_channels, stride in layers:
            modules += _conv_bn_relu(channels, out_channels, stride)
            channels = out_channels
        super().__init__(*modules, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_channels = channels
        _init_like_torchvision(self)


def _init_like_torchvision(module: nn.Module) -> None:
    """He-normal (fan-out) conv weights, BN at identity: torchvision's ResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet(name: str, in_channels: int, stem: str, width: int) -> tuple[torchvision.models.ResNet, int]:
    """A torchvision ResNet with the requested input channels, stem and width, ``fc`` removed."""
    net: torchvision.models.ResNet = getattr(torchvision.models, name)(weights=None)
    block = type(net.layer1[0])
    if width != 64:
        # torchvision hard-codes 64 as the base width; rebuild the stages with the same block counts.
        depths = [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
        net.inplanes = width
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(block, width, depths[0])
        net.layer2 = net._make_layer(block, 2 * width, depths[1], stride=2)
        net.layer3 = net._make_layer(block, 4 * width, depths[2], stride=2)
        net.layer4 = net._make_layer(block, 8 * width, depths[3], stride=2)
        _init_like_torchvision(net)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        _init_like_torchvision(net.conv1)
    elif in_channels != 3 or width != 64:
        net.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        _init_like_torchvision(net.conv1)
    net.fc = nn.Identity()
    return net, 8 * width * block.expansion


def build_backbone(cfg: ModelConfig, in_channels: int, image_size: int) -> Backbone:
    """The backbone ``cfg`` describes, for ``in_channels``-channel views of ``image_size`` px.

    ``cfg`` may be a :class:`ModelConfig` or the ``model`` section of a run's OmegaConf configuration. Unknown
    names and non-positive sizes raise :class:`~deepclust.errors.ConfigError`.
    """
    check_choice("model.backbone", cfg.backbone, BACKBONES)
    check_choice("model.stem", cfg.stem, STEMS)
    if cfg.width < 1:
        raise ConfigError(f"model.width must be a positive number of channels, got {cfg.width}")
    if in_channels < 1 or image_size < 1:
        raise ConfigError(f"images need at least 1 channel and 1 pixel, got {in_channels}×{image_size} px")
    input_filter = Sobel(in_channels) if cfg.sobel else None
    body_channels = 2 if cfg.sobel else in_channels
    if cfg.backbone == "small_cnn":
        layers = (
            _explicit_layers(cfg.layers)
            if cfg.layers is not None
            else small_cnn_layers(cfg.width, image_size)
        )
        body = SmallCNN(body_channels, layers)
        return Backbone(body, body.out_channels, input_filter)
    if cfg.layers is not None:
        raise ConfigError(f"model.layers only applies to small_cnn, not {cfg.backbone}")
    net, feature_dim = _resnet(cfg.backbone, body_channels, cfg.stem, cfg.width)
    return Backbone(net, feature_dim, input_filter)


def _explicit_layers(layers: list[list[int]]) -> list[tuple[int, int]]:
    """``model.layers`` checked: a non-empty list of ``[out_channels ≥ 1, stride ∈ {1, 2}]`` pairs."""
    given = [tuple(layer) for layer in layers]
    if not given or any(len(pair) != 2 or pair[0] < 1 or pair[1] not in (1, 2) for pair in given):
        raise ConfigError(
            f"model.layers must be [out_channels, stride] pairs with stride 1 or 2; got {list(layers)}"
        )
    return [(int(channels), int(stride)) for channels, stride in given]
