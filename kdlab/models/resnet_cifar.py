"""CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stem and three stages of BasicBlocks,
depth 6n+2, widths as in RepDistiller (stem 16, stages 16/32/64; the `x4` variants: stem
32, stages 64/128/256). Projection (1x1 conv + BN) shortcuts where the shape changes."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.base import ZooModel, conv_bn, image_channels
from kdlab.registry import MODELS

REF = "He et al. 2016, arXiv:1512.03385"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus identity or projection shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = conv_bn(cin, planes, kernel=1, stride=stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def make_stage(block, cin: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = []
    for i in range(blocks):
        layers.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


class CifarResNet(ZooModel):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise KdlabError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = conv_bn(in_channels, widths[0], 3)
        cin = widths[0]
        for i, (w, s) in enumerate(zip(widths[1:], (1, 2, 2))):
            stage, cin = make_stage(BasicBlock, cin, w, n, s)
            setattr(self, f"layer{i + 1}", stage)
        self.build_head(
            stage_names=["stem", "layer1", "layer2", "layer3"],
            stage_channels=list(widths),
            feat_dim=cin,
            num_classes=num_classes,
        )


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@MODELS.register("resnet8", "CIFAR ResNet-8, widths 16/32/64 (0.08M params, 100 classes)", REF)
def resnet8(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(8, _BASE, num_classes, image_channels(input_shape, "resnet8"))


@MODELS.register("resnet14", "CIFAR ResNet-14, widths 16/32/64 (0.18M params, 100 classes)", REF)
def resnet14(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(14, _BASE, num_classes, image_channels(input_shape, "resnet14"))


@MODELS.register("resnet20", "CIFAR ResNet-20, widths 16/32/64 (0.28M params, 100 classes)", REF)
def resnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(20, _BASE, num_classes, image_channels(input_shape, "resnet20"))


@MODELS.register("resnet32", "CIFAR ResNet-32, widths 16/32/64 (0.47M params, 100 classes)", REF)
def resnet32(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(32, _BASE, num_classes, image_channels(input_shape, "resnet32"))


@MODELS.register("resnet44", "CIFAR ResNet-44, widths 16/32/64 (0.67M params, 100 classes)", REF)
def resnet44(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(44, _BASE, num_classes, image_channels(input_shape, "resnet44"))


@MODELS.register("resnet56", "CIFAR ResNet-56, widths 16/32/64 (0.86M params, 100 classes)", REF)
def resnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(56, _BASE, num_classes, image_channels(input_shape, "resnet56"))


@MODELS.register("resnet110", "CIFAR ResNet-110, widths 16/32/64 (1.74M params, 100 classes)", REF)
def resnet110(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(110, _BASE, num_classes, image_channels(input_shape, "resnet110"))


@MODELS.register(
    "resnet8x4", "CIFAR ResNet-8 with 4x widths 64/128/256 (1.23M params, 100 classes)", REF
)
def resnet8x4(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(8, _X4, num_classes, image_channels(input_shape, "resnet8x4"))


@MODELS.register(
    "resnet32x4", "CIFAR ResNet-32 with 4x widths 64/128/256 (7.43M params, 100 classes)", REF
)
def resnet32x4(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return CifarResNet(32, _X4, num_classes, image_channels(input_shape, "resnet32x4"))
