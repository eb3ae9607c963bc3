"""Networks: backbones (image -> feature vector) and the heads methods put on top of them.

>>> from deepclust.models import ModelConfig, build_backbone
>>> net = build_backbone(ModelConfig(backbone="resnet18", stem="cifar"), in_channels=3, image_size=32)
>>> net.feature_dim
512
"""

from deepclust.models.backbones import (
    BACKBONES,
    STEMS,
    Backbone,
    ModelConfig,
    SmallCNN,
    Sobel,
    build_backbone,
    small_cnn_strides,
)
from deepclust.models.heads import ClusterHead, MultiHead, Prototypes, mlp

__all__ = [
    "BACKBONES",
    "STEMS",
    "Backbone",
    "ClusterHead",
    "ModelConfig",
    "MultiHead",
    "Prototypes",
    "SmallCNN",
    "Sobel",
    "build_backbone",
    "mlp",
    "small_cnn_strides",
]
