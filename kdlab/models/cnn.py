"""Small plain CNNs for 1-D signals (`cnn1d`) and small images (`cnn2d`).

Both have one conv-BN-ReLU stage per entry of `channels`; every stage after the first
halves the resolution with a max-pool first (ceil mode, so tiny inputs never vanish). The
stem only adapts the input (adds the channel axis of a (L,) signal or (H, W) image), so `layerI` outputs
are the hint points. Head: global average pooling + linear.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.base import ZooModel
from kdlab.registry import MODELS


class _AddChannel(nn.Module):
    """Adds the channel axis of a channel-less batch: (B, L) -> (B, 1, L) for 1-D,
    (B, H, W) -> (B, 1, H, W) for 2-D; inputs with a channel axis pass through."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == self.dims + 1 else x


class PlainCNN(ZooModel):
    def __init__(self, num_classes: int, in_channels: int, channels: list[int], kernel_size: int, dims: int):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.stem = _AddChannel(dims)
        cin = in_channels
        names = ["stem"]
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [pool(2, ceil_mode=True)] if i > 0 else []
            layers += [conv(cin, c, kernel_size, padding="same", bias=False), bn(c), nn.ReLU(inplace=True)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            names.append(f"layer{i + 1}")
            cin = c
        self.build_head(
            stage_names=names,
            stage_channels=[in_channels, *channels],
            feat_dim=cin,
            num_classes=num_classes,
            pool=nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1),
        )


def _check(name: str, channels: list[int], kernel_size: int) -> None:
    if not channels or any(c < 1 for c in channels):
        raise KdlabError(f"{name}: channels must be a non-empty list of positive widths, got {channels}")
    if kernel_size < 1:
        raise KdlabError(f"{name}: kernel_size must be >= 1, got {kernel_size}")


@MODELS.register(
    "cnn1d",
    "Plain 1-D CNN for (C, L) or (L,) signals: conv-BN-ReLU stages with max-pool downsampling, "
    "global average pool, linear (0.06M params for (1, 40) input, 100 classes)",
    "LeCun et al. 1998, doi:10.1109/5.726791",
)
def cnn1d(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: list[int] = [32, 64, 128],
    kernel_size: int = 5,
) -> nn.Module:
    _check("cnn1d", channels, kernel_size)
    if len(input_shape) == 1:
        in_channels = 1
    elif len(input_shape) == 2:
        in_channels = int(input_shape[0])
    else:
        raise KdlabError(f"cnn1d takes signals of shape (C, L) or (L,); got input_shape {tuple(input_shape)}")
    return PlainCNN(num_classes, in_channels, list(channels), kernel_size, dims=1)


@MODELS.register(
    "cnn2d",
    "Small 2-D CNN for (C, H, W) or (H, W) images (8x8 digits, 28x28): conv-BN-ReLU stages with "
    "max-pool downsampling, global average pool, linear (0.11M params for 1x8x8, 100 classes)",
    "LeCun et al. 1998, doi:10.1109/5.726791",
)
def cnn2d(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: list[int] = [32, 64, 128],
    kernel_size: int = 3,
) -> nn.Module:
    _check("cnn2d", channels, kernel_size)
    if len(input_shape) == 2:  # (H, W): a single channel
        input_shape = (1, *input_shape)
    if len(input_shape) != 3:
        raise KdlabError(f"cnn2d takes images of shape (C, H, W); got input_shape {tuple(input_shape)}")
    return PlainCNN(num_classes, int(input_shape[0]), list(channels), kernel_size, dims=2)
