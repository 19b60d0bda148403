"""Han's 2.5D residual U-Net for liver and liver-lesion segmentation.

X. Han, "Automatic Liver Lesion Segmentation Using a Deep Convolutional Neural Network Method",
ISBI LiTS challenge 2017, https://arxiv.org/abs/1704.07239

The input is a stack of adjacent axial slices given as channels (5 in the paper) and the output is the
class map of the centre slice. The network combines U-Net long-range concatenation skips with ResNet
short-range residual connections; every convolution is 3x3, followed by batch normalisation and PReLU.
With the default depth of five levels the network has 32 convolutional layers, as in the paper:
per encoder level a 3x3 convolution (stride 2 below the top level, which downsamples) and a residual unit
of two convolutions; per decoder level a stride-2 transposed convolution, a convolution that fuses the
concatenated skip, and a residual unit; then a final 3x3 convolution to the classes.
The paper's figure (with the exact channel counts) was lost from the seed text: the widths are
configurable, the paper's model is approximately ``features=(32, 64, 128, 256, 512)``.

It is fully convolutional: trained on crops, applied to whole slices whose sides are multiples of
``2 ** (len(features) - 1)`` (the predictor pads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from LiverSegLib.networks._checks import check_arguments, check_input

__all__ = ["HanResUNet2p5D"]


class HanResUNet2p5D(nn.Module):
    """2.5D U-Net with residual units (Han 2017).

    Args:
        in_channels: number of adjacent slices stacked as channels (odd; the paper uses 5).
        out_channels: number of classes (2 for liver/background, 3 for background/liver/lesion).
        features: channels at each resolution level, top to bottom; its length is the number of levels.
        dropout: dropout probability inside the residual units (0 disables it; the paper uses none).

    Raises:
        ValueError: when an argument cannot give a working network.

    Example::

        net = HanResUNet2p5D(in_channels=5, out_channels=3, features=(16, 32, 64, 128, 256))
        logits = net(torch.zeros(2, 5, 128, 128))  # -> (2, 3, 128, 128)
    """

    def __init__(
        self,
        in_channels: int = 5,
        out_channels: int = 3,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = check_arguments(in_channels, out_channels, features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        common = {"spatial_dims": 2, "kernel_size": 3, "act": "PRELU", "norm": "BATCH"}

        self.encoders = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(features):
            self.encoders.append(
                nn.Sequential(
                    Convolution(in_channels=prev, out_channels=width, strides=1 if level == 0 else 2, **common),
                    ResidualUnit(in_channels=width, out_channels=width, subunits=2, dropout=dropout or None, **common),
                )
            )
            prev = width

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsamplers.append(
                Convolution(in_channels=prev, out_channels=width, strides=2, is_transposed=True, **common)
            )
            self.decoders.append(
                nn.Sequential(
                    Convolution(in_channels=2 * width, out_channels=width, **common),
                    ResidualUnit(in_channels=width, out_channels=width, subunits=2, dropout=dropout or None, **common),
                )
            )
            prev = width
        self.head = Convolution(2, prev, out_channels, kernel_size=3, conv_only=True)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this number."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` slice stacks to ``(N, out_channels, H, W)`` logits."""
        check_input(x, self.in_channels, self.size_multiple, 2)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
