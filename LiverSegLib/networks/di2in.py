"""DI2IN: the deep image-to-image network of DI2IN-AN for 3D liver segmentation.

D. Yang, D. Xu, S. K. Zhou, et al., "Automatic Liver Segmentation Using an Adversarial Image-to-Image
Network", MICCAI 2017, https://arxiv.org/abs/1707.08037

The generator is a symmetric 3D convolutional encoder-decoder. The encoder uses convolutions only: there is
no pooling, the resolution is halved by stride-2 convolutions. The decoder enlarges the activation maps by
bilinear (in 3D: trilinear) upscaling by 2 in x, y and z and concatenates them with the encoder features of
the same resolution ("bridges"). Every convolution kernel is 3x3x3 and every convolutional layer has batch
normalisation and a leaky ReLU. Deep supervision: branches leave the decoder at several levels, each is
brought to the input size (upscaling factors 16, 4 and 1 in the paper's blocks 10, 11 and 12) and gets its
own loss against the same ground truth; the final output is a convolution of all branch outputs with a leaky
ReLU. The paper works on whole volumes resampled to 3 mm isotropic voxels.

The paper's Fig. 3 (the per-block strides and filter numbers) was lost from the seed text, so the widths are
configurable: ``features`` gives the channels of each resolution level, five levels by default so that the
coarsest features are at 1/16 of the input size, as the largest upscaling factor of the paper implies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from LiverSegLib.networks._checks import check_arguments, check_input

__all__ = ["DI2IN"]


class DI2IN(nn.Module):
    """3D deep image-to-image network with bridges and multi-level deep supervision (Yang et al. 2017).

    Encoder level ``L`` works at ``1 / 2**L`` of the input size: a 3x3x3 convolution (stride 1 at level 0,
    stride 2 below, which downsamples) and a second 3x3x3 convolution. The decoder block of the coarsest
    level is one convolution of the bottom features; every finer decoder block upscales the block below by 2
    (trilinear), concatenates the encoder features of its level and applies two convolutions. All of these
    convolutions are followed by batch normalisation and a leaky ReLU.

    For every level in ``branch_levels`` a branch maps the decoder block of that level to ``out_channels``
    with a 1x1x1 convolution and upscales it trilinearly by ``2**level`` to the input size. The branch outputs
    are concatenated and fused by a 3x3x3 convolution with a leaky ReLU and a 1x1x1 convolution to
    ``out_channels`` (without activation, so the final output is unconstrained logits too).

    All outputs are logits over ``out_channels`` classes, meant for a softmax and cross-entropy; with two
    classes this is equivalent to the paper's single sigmoid map with binary cross-entropy (the difference of
    the two logits plays the role of the sigmoid's argument).

    Output contract:
        * training mode (``net.train()``): ``forward`` returns a ``tuple`` ``(final, branch_0, branch_1, ...)``
          of ``1 + len(branch_levels)`` tensors, each ``(N, out_channels, D, H, W)`` (the input size), the
          final output first and then the branches in ``branch_levels`` order; the paper's loss is
          ``sum_i w_i * l_i + w_final * l_final`` over these outputs.
        * evaluation mode (``net.eval()``): ``forward`` returns the final output alone, one tensor
          ``(N, out_channels, D, H, W)``; the branches are not returned.

    Args:
        in_channels: number of input channels (1 for a CT volume).
        out_channels: number of classes (2 for background/liver, as in the paper).
        features: channels at each resolution level, fine to coarse; its length is the number of levels.
        branch_levels: decoder levels that get a deep-supervision branch (0 is full resolution); the default
            ``(4, 2, 0)`` gives the paper's upscaling factors 16, 4 and 1.
        negative_slope: slope of the leaky ReLU for negative inputs.

    Raises:
        ValueError: when an argument cannot give a working network.

    Example::

        net = DI2IN(in_channels=1, out_channels=2, features=(8, 16, 32, 64, 128))
        final, *branches = net(torch.zeros(1, 1, 64, 64, 64))  # training mode: 4 tensors (1, 2, 64, 64, 64)
        logits = net.eval()(torch.zeros(1, 1, 64, 64, 64))  # eval mode: one tensor (1, 2, 64, 64, 64)
    """

    spatial_dims = 3

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        branch_levels: Sequence[int] = (4, 2, 0),
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        features = check_arguments(in_channels, out_channels, features)
        branch_levels = tuple(int(level) for level in branch_levels)
        if not branch_levels:
            raise ValueError("branch_levels needs at least one level")
        if len(set(branch_levels)) != len(branch_levels):
            raise ValueError(f"branch_levels must be unique, got {branch_levels}")
        if any(not 0 <= level < len(features) for level in branch_levels):
            raise ValueError(f"branch_levels must lie in [0, {len(features) - 1}], got {branch_levels}")
        if negative_slope < 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.branch_levels = branch_levels
        act = ("LEAKYRELU", {"negative_slope": negative_slope})
        common = {"spatial_dims": 3, "kernel_size": 3, "act": act, "norm": "BATCH"}

        self.encoders = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(features):
            self.encoders.append(
                nn.Sequential(
                    Convolution(in_channels=prev, out_channels=width, strides=1 if level == 0 else 2, **common),
                    Convolution(in_channels=width, out_channels=width, **common),
                )
            )
            prev = width

        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        # decoders[level] is the decoder block of that level; the coarsest one has no bridge.
        decoders = [Convolution(in_channels=features[-1], out_channels=features[-1], **common)]
        for level in reversed(range(len(features) - 1)):
            width = features[level]
            decoders.append(
                nn.Sequential(
                    Convolution(in_channels=features[level + 1] + width, out_channels=width, **common),
                    Convolution(in_channels=width, out_channels=width, **common),
                )
            )
        self.decoders = nn.ModuleList(reversed(decoders))

        self.branches = nn.ModuleList()
        for level in branch_levels:
            head = Convolution(3, features[level], out_channels, kernel_size=1, conv_only=True)
            if level == 0:
                self.branches.append(head)
            else:
                self.branches.append(
                    nn.Sequential(head, nn.Upsample(scale_factor=2**level, mode="trilinear", align_corners=False))
                )
        fused = len(branch_levels) * out_channels
        self.fuse = nn.Sequential(
            Convolution(3, fused, fused, kernel_size=3, act=act, norm=None),
            Convolution(3, fused, out_channels, kernel_size=1, conv_only=True),
        )

    @property
    def size_multiple(self) -> int:
        """Input depth, height and width must be multiples of this number."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Map ``(N, in_channels, D, H, W)`` volumes to logits of the same spatial size.

        Returns ``(final, *branches)`` in training mode and ``final`` alone in evaluation mode.
        """
        check_input(x, self.in_channels, self.size_multiple, 3)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        top = len(self.features) - 1
        decoded: list[torch.Tensor] = [x] * len(self.features)
        x = self.decoders[top](x)
        decoded[top] = x
        for level in reversed(range(top)):
            x = self.decoders[level](torch.cat([self.upsample(x), skips[level]], dim=1))
            decoded[level] = x
        branches = [branch(decoded[level]) for branch, level in zip(self.branches, self.branch_levels, strict=True)]
        final = self.fuse(torch.cat(branches, dim=1))
        if self.training:
            return (final, *branches)
        return final
