"""VGG with BatchNorm, CIFAR style as used in KD benchmarks (RepDistiller): five blocks of
3x3 conv-BN-ReLU separated by 2x2 max-pools, global average pooling, one linear layer on
512 features. The first block is the stem; `layer1..layer4` (max-pool + block) are the
body stages. Max-pools use ceil mode so inputs smaller than 32 px still work."""

from __future__ import annotations

from torch import nn

from kdlab.models.base import ZooModel, image_channels
from kdlab.registry import MODELS

REF = "Simonyan & Zisserman 2014, arXiv:1409.1556"

# Conv widths per block (block 0 is the stem).
CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _block(cin: int, widths: list[int], pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2, ceil_mode=True)] if pool else []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers)


class VGG(ZooModel):
    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int):
        super().__init__()
        self.stem = _block(in_channels, cfg[0], pool=False)
        cin = cfg[0][-1]
        for i, widths in enumerate(cfg[1:]):
            setattr(self, f"layer{i + 1}", _block(cin, widths, pool=True))
            cin = widths[-1]
        self.build_head(
            stage_names=["stem"] + [f"layer{i + 1}" for i in range(len(cfg) - 1)],
            stage_channels=[w[-1] for w in cfg],
            feat_dim=cin,
            num_classes=num_classes,
        )


@MODELS.register("vgg8", "VGG-8 with BN, CIFAR style (3.97M params, 100 classes)", REF)
def vgg8(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CFG["vgg8"], num_classes, image_channels(input_shape, "vgg8"))


@MODELS.register("vgg11", "VGG-11 with BN, CIFAR style (9.28M params, 100 classes)", REF)
def vgg11(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CFG["vgg11"], num_classes, image_channels(input_shape, "vgg11"))


@MODELS.register("vgg13", "VGG-13 with BN, CIFAR style (9.46M params, 100 classes)", REF)
def vgg13(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CFG["vgg13"], num_classes, image_channels(input_shape, "vgg13"))


@MODELS.register("vgg16", "VGG-16 with BN, CIFAR style (14.77M params, 100 classes)", REF)
def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CFG["vgg16"], num_classes, image_channels(input_shape, "vgg16"))
