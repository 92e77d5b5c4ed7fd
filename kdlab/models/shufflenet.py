"""ShuffleNet V1 and V2 in the CIFAR form used by KD benchmarks (RepDistiller): a stride-1
stem of 24 channels and three stages, each starting with a stride-2 unit.

- V1 (Zhang et al. 2018): groups 3, stage widths 240/480/960, 4/8/4 units; stride-2 units
  concatenate an avg-pooled shortcut, others add it.
- V2 (Ma et al. 2018): width 1x, stage widths 116/232/464, each stage a down-sampling unit
  plus 3/7/3 basic units (channel split, concat, shuffle); a 1x1 conv to 1024 channels before
  pooling (the `neck`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.base import ZooModel, conv_bn, image_channels
from kdlab.registry import MODELS


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """1x1 group conv - shuffle - 3x3 depthwise - 1x1 group conv; add (stride 1) or concat
    with a 3x3 avg-pooled input (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = cout // 4
        self.stride = stride
        self.groups = first_groups
        self.conv1 = conv_bn(cin, mid, 1, groups=first_groups)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid, relu=False)
        self.conv3 = conv_bn(mid, cout, 1, groups=groups, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(self.conv1(x), self.groups)
        out = self.conv3(self.conv2(out))
        if self.shortcut is not None:
            return self.relu(torch.cat([out, self.shortcut(x)], 1))
        return self.relu(out + x)


class ShuffleNetV1(ZooModel):
    def __init__(self, num_classes: int, in_channels: int, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        super().__init__()
        cin = 24
        self.stem = conv_bn(in_channels, cin, 1)
        for i, (w, n) in enumerate(zip(widths, units)):
            layers = []
            for j in range(n):
                # The stride-2 unit concatenates its input, so its branch outputs w - cin.
                out = w - cin if j == 0 else w
                first_groups = 1 if cin == 24 else groups  # no group conv on the 24-channel stem output
                layers.append(ShuffleV1Unit(cin, out, 2 if j == 0 else 1, groups, first_groups))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.build_head(
            stage_names=["stem", "layer1", "layer2", "layer3"],
            stage_channels=[24, *widths],
            feat_dim=cin,
            num_classes=num_classes,
        )


class ShuffleV2Basic(nn.Module):
    """Split channels in half; one half goes through 1x1-dw3x3-1x1; concat; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.branch = nn.Sequential(conv_bn(c, c, 1), conv_bn(c, c, 3, groups=c, relu=False), conv_bn(c, c, 1))

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Both branches see the whole input at stride 2; outputs concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, mid, 1))
        self.right = nn.Sequential(
            conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, 2, groups=mid, relu=False), conv_bn(mid, cout - mid, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(ZooModel):
    def __init__(self, num_classes: int, in_channels: int, widths=(116, 232, 464), units=(3, 7, 3), last: int = 1024):
        super().__init__()
        cin = 24
        self.stem = conv_bn(in_channels, cin, 3)
        for i, (w, n) in enumerate(zip(widths, units)):
            layers = [ShuffleV2Down(cin, w)] + [ShuffleV2Basic(w) for _ in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = w
        self.build_head(
            stage_names=["stem", "layer1", "layer2", "layer3"],
            stage_channels=[24, *widths],
            feat_dim=last,
            num_classes=num_classes,
            neck=conv_bn(cin, last, 1),
        )


@MODELS.register(
    "shufflenetv1",
    "ShuffleNet V1 (g=3) for CIFAR as in KD benchmarks (0.95M params, 100 classes)",
    "Zhang et al. 2018, arXiv:1707.01083",
)
def shufflenetv1(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ShuffleNetV1(num_classes, image_channels(input_shape, "shufflenetv1"))


@MODELS.register(
    "shufflenetv2",
    "ShuffleNet V2 1x for CIFAR as in KD benchmarks (1.36M params, 100 classes)",
    "Ma et al. 2018, arXiv:1807.11164",
)
def shufflenetv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ShuffleNetV2(num_classes, image_channels(input_shape, "shufflenetv2"))
