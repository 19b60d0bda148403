"""Mixed U-Net: a 2D U-Net whose down-sampling uses mixed pooling, for liver and lesion segmentation.

The seed paper's "Mixed U-Net": nine layers (blocks) each of two 3x3 convolutions with ReLU, 2x2 mixed
pooling instead of max pooling in the four blocks of the contracting path, dropout 0.5, four up-sampling
blocks with concatenation skips and a final 1x1 convolution. The paper trains one sigmoid model for the liver
and another for the lesions on 96x96 slices.

Mixed pooling: D. Yu, H. Wang, P. Chen, Z. Wei, "Mixed pooling for convolutional neural networks",
RSKT 2014 (LNCS 8818) -- during training every pooling region is max
pooled or average pooled at random; at test time the expectation of the two is used.

The paper's preprocessing (HU window [-100, 300] then histogram equalisation) is not part of the network: the
model is meant to be used with a stage whose preprocessing has ``normalization="histeq"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from monai.networks.blocks import Convolution
from torch import nn

from LiverSegLib.networks._checks import check_arguments, check_input

__all__ = ["MixedPool2d", "MixedUNet"]

_NORMS = {"BATCH", "INSTANCE"}


class MixedPool2d(nn.Module):
    """2D mixed max/average pooling (Yu et al. 2014) with non-overlapping square windows.

    Training mode: for every pooling region (every output element, per sample and channel) a Bernoulli(p_max)
    draw chooses max pooling (1) or average pooling (0). Evaluation mode: the deterministic expectation
    ``p_max * max_pool(x) + (1 - p_max) * avg_pool(x)``.

    Args:
        kernel_size: side of the square pooling window, also the stride.
        p_max: probability of taking the maximum of a region (0: average pooling, 1: max pooling).

    Raises:
        ValueError: for a kernel size below 1 or a probability outside [0, 1].

    Example::

        pool = MixedPool2d(2, p_max=0.5)
        y = pool(torch.randn(1, 4, 8, 8))  # -> (1, 4, 4, 4)
    """

    def __init__(self, kernel_size: int = 2, p_max: float = 0.5) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if not 0.0 <= p_max <= 1.0:
            raise ValueError(f"p_max must be in [0, 1], got {p_max}")
        self.kernel_size = int(kernel_size)
        self.p_max = float(p_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C, H // k, W // k)``."""
        if x.ndim != 4:
            raise ValueError(f"expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        mx = F.max_pool2d(x, self.kernel_size)
        av = F.avg_pool2d(x, self.kernel_size)
        if self.training:
            mask = torch.rand(mx.shape, device=mx.device) < self.p_max
            return torch.where(mask, mx, av)
        return self.p_max * mx + (1.0 - self.p_max) * av

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, p_max={self.p_max}"


class MixedUNet(nn.Module):
    """2D U-Net with mixed pooling and dropout (Mixed U-Net).

    With five levels (the default) the network has the paper's nine blocks of two 3x3 convolutions with ReLU:
    four contracting blocks, each followed by 2x2 :class:`MixedPool2d`; a bottom block followed by dropout;
    four expanding blocks, each a nearest-neighbour up-sampling by 2 (no parameters, the paper's
    "upsampling"), a concatenation with the contracting features of the same level and two convolutions. A
    final 1x1 convolution gives the logits.

    The outputs are logits over ``out_channels`` classes for a softmax. The paper applies a sigmoid to one map
    per binary model (liver model, lesion model); a 2-class softmax is the same thing, and a 3-class softmax
    (background, liver, lesion) lets one network do both. The paper uses no batch normalisation: ``norm``
    defaults to ``None``. The model is meant for slices in the HU window [-100, 300] after histogram
    equalisation (stage preprocessing ``normalization="histeq"``), which happens outside the network.

    ``forward`` returns ``(N, out_channels, H, W)`` logits in both training and evaluation modes; mixed pooling
    is random and dropout is active only in training mode.

    Args:
        in_channels: number of input channels (1 for one CT slice).
        out_channels: number of classes (2 for a binary model, 3 for background/liver/lesion).
        features: channels at each resolution level, top to bottom; its length is the number of levels.
        dropout: dropout probability after the bottom block (the paper uses 0.5; 0 disables it).
        p_max: probability of max pooling in each mixed-pooling region.
        norm: normalisation after each 3x3 convolution: ``None`` (the paper), ``"batch"`` or ``"instance"``.

    Raises:
        ValueError: when an argument cannot give a working network.

    Example::

        net = MixedUNet(in_channels=1, out_channels=3, features=(16, 32, 64, 128, 256))
        logits = net(torch.zeros(2, 1, 96, 96))  # -> (2, 3, 96, 96)
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.5,
        p_max: float = 0.5,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        features = check_arguments(in_channels, out_channels, features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= p_max <= 1.0:
            raise ValueError(f"p_max must be in [0, 1], got {p_max}")
        if norm is not None and str(norm).upper() not in _NORMS:
            raise ValueError(f"norm must be None, 'batch' or 'instance', got {norm!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        norm_name = None if norm is None else str(norm).upper()

        def double_conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                Convolution(2, cin, cout, kernel_size=3, act="RELU", norm=norm_name),
                Convolution(2, cout, cout, kernel_size=3, act="RELU", norm=norm_name),
            )

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        prev = in_channels
        for width in features[:-1]:
            self.encoders.append(double_conv(prev, width))
            self.pools.append(MixedPool2d(2, p_max))
            prev = width
        self.bottom = nn.Sequential(double_conv(prev, features[-1]), nn.Dropout(dropout))
        prev = features[-1]
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoders = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.decoders.append(double_conv(prev + width, width))
            prev = width
        self.head = Convolution(2, prev, out_channels, kernel_size=1, conv_only=True)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this number."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` slices to ``(N, out_channels, H, W)`` logits."""
        check_input(x, self.in_channels, self.size_multiple, 2)
        skips = []
        for encoder, pool in zip(self.encoders, self.pools, strict=True):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([self.upsample(x), skip], dim=1))
        return self.head(x)
