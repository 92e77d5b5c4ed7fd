"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016) for CIFAR: 3x3 stem of 16 channels,
three stages of pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-(Dropout)-conv3x3) with
widths 16k/32k/64k and n = (d-4)/6 blocks each, final BN-ReLU (the `neck`), global average
pooling, linear. Hint points are the raw (pre-activation) stage outputs."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.base import ZooModel, image_channels
from kdlab.registry import MODELS

REF = "Zagoruyko & Komodakis 2016, arXiv:1605.07146"


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        # Projection from the activated input where the shape changes (as in the WRN code).
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(ZooModel):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise KdlabError(f"WRN depth must be 6n+4, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise KdlabError(f"WRN dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False))
        cin = widths[0]
        for i, (w, s) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [WideBlock(cin if j == 0 else w, w, s if j == 0 else 1, dropout) for j in range(n)]
            setattr(self, f"block{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.build_head(
            stage_names=["stem", "block1", "block2", "block3"],
            stage_channels=widths,
            feat_dim=cin,
            num_classes=num_classes,
            neck=nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True)),
        )


@MODELS.register("wrn_16_1", "Wide ResNet WRN-16-1 for CIFAR (0.18M params, 100 classes)", REF)
def wrn_16_1(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    return WideResNet(16, 1, num_classes, image_channels(input_shape, "wrn_16_1"), dropout)


@MODELS.register("wrn_16_2", "Wide ResNet WRN-16-2 for CIFAR (0.70M params, 100 classes)", REF)
def wrn_16_2(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    return WideResNet(16, 2, num_classes, image_channels(input_shape, "wrn_16_2"), dropout)


@MODELS.register("wrn_40_1", "Wide ResNet WRN-40-1 for CIFAR (0.57M params, 100 classes)", REF)
def wrn_40_1(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    return WideResNet(40, 1, num_classes, image_channels(input_shape, "wrn_40_1"), dropout)


@MODELS.register("wrn_40_2", "Wide ResNet WRN-40-2 for CIFAR (2.26M params, 100 classes)", REF)
def wrn_40_2(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    return WideResNet(40, 2, num_classes, image_channels(input_shape, "wrn_40_2"), dropout)
