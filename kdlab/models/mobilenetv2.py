"""MobileNetV2 in the CIFAR form used by KD benchmarks (RepDistiller's `mobile_half`):
width multiplier 0.5, expansion 6, stride-2 stem, the second bottleneck sequence at stride 1,
a 1x1 conv to 1280 channels before pooling (the `neck`), linear classifier. The seven
bottleneck sequences `blocks.0..6` are the body stages; the hint points are the ends of the
four resolution groups (`blocks.1, blocks.2, blocks.4, blocks.6`)."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.base import ZooModel, conv_bn, image_channels
from kdlab.registry import MODELS

REF = "Sandler et al. 2018, arXiv:1801.04381"


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


# (expansion t, output channels c, repeats n, first stride s); stage 2 at stride 1 for CIFAR.
SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(ZooModel):
    def __init__(self, num_classes: int, in_channels: int, width: float = 0.5, expand: int = 6):
        super().__init__()
        if width <= 0:
            raise KdlabError(f"mobilenetv2: width must be > 0, got {width}")
        cin = int(32 * width)
        self.stem = conv_bn(in_channels, cin, 3, stride=2)
        blocks, channels = [], [cin]
        for t, c, n, s in SETTING:
            cout = int(c * width)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t if t == 1 else expand))
                cin = cout
            blocks.append(nn.Sequential(*layers))
            channels.append(cout)
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.build_head(
            stage_names=["stem"] + [f"blocks.{i}" for i in range(len(SETTING))],
            stage_channels=channels,
            feat_dim=last,
            num_classes=num_classes,
            hint_points=["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
            neck=conv_bn(cin, last, 1),
        )


@MODELS.register(
    "mobilenetv2",
    "MobileNetV2 x0.5 for CIFAR ('mobile_half' of KD benchmarks; 0.81M params, 100 classes)",
    REF,
)
def mobilenetv2(
    num_classes: int, input_shape: tuple[int, ...], width: float = 0.5, expand: int = 6
) -> nn.Module:
    return MobileNetV2(num_classes, image_channels(input_shape, "mobilenetv2"), width, expand)
