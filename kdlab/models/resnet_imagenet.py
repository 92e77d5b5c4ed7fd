"""ImageNet-style ResNets (He et al. 2016): 7x7 stride-2 stem + 3x3 max-pool, four stages
(widths 64/128/256/512, times 4 for bottlenecks), global average pooling, linear. Adaptive
pooling lets them run on any input of at least ~32 px; `cifar_stem=True` swaps the stem for a
3x3 stride-1 conv without max-pool (the CIFAR ResNet-50 of KD benchmarks, e.g. the
ResNet50 -> MobileNetV2 pair of the CIFAR-100 tables)."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.base import ZooModel, conv_bn, image_channels
from kdlab.models.resnet_cifar import BasicBlock, make_stage
from kdlab.registry import MODELS

REF = "He et al. 2016, arXiv:1512.03385"


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (carries the stride) - 1x1 expand x4, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn(cin, planes, 1)
        self.conv2 = conv_bn(planes, planes, 3, stride)
        self.conv3 = conv_bn(planes, cout, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ImageNetResNet(ZooModel):
    def __init__(self, block, layers: list[int], num_classes: int, in_channels: int, cifar_stem: bool = False):
        super().__init__()
        if cifar_stem:
            self.stem = conv_bn(in_channels, 64, 3)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        cin, channels = 64, [64]
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage, cin = make_stage(block, cin, planes, n, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
            channels.append(cin)
        self.build_head(
            stage_names=["stem", "layer1", "layer2", "layer3", "layer4"],
            stage_channels=channels,
            feat_dim=cin,
            num_classes=num_classes,
        )


@MODELS.register("resnet18", "ImageNet-style ResNet-18 (11.23M params, 100 classes)", REF)
def resnet18(num_classes: int, input_shape: tuple[int, ...], cifar_stem: bool = False) -> nn.Module:
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes, image_channels(input_shape, "resnet18"), cifar_stem)


@MODELS.register("resnet34", "ImageNet-style ResNet-34 (21.34M params, 100 classes)", REF)
def resnet34(num_classes: int, input_shape: tuple[int, ...], cifar_stem: bool = False) -> nn.Module:
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes, image_channels(input_shape, "resnet34"), cifar_stem)


@MODELS.register(
    "resnet50",
    "ImageNet-style ResNet-50, bottlenecks, runs on 32 px too (23.71M params, 100 classes)",
    REF,
)
def resnet50(num_classes: int, input_shape: tuple[int, ...], cifar_stem: bool = False) -> nn.Module:
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes, image_channels(input_shape, "resnet50"), cifar_stem)
