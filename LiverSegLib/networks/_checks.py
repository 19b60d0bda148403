"""Input checks shared by the networks: a wrong shape is a clear ValueError, not a cryptic size mismatch inside."""

from __future__ import annotations

import torch

__all__ = ["check_input", "check_arguments"]

_AXES = {2: "height and width", 3: "depth, height and width"}
_DIMS = {2: "H, W", 3: "D, H, W"}


def check_input(x: torch.Tensor, in_channels: int, size_multiple: int, spatial_dims: int) -> None:
    """Raise ValueError unless ``x`` is ``(N, in_channels, *spatial)`` with every side a multiple of ``size_multiple``.
    """
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"expected input of shape (N, {in_channels}, {_DIMS[spatial_dims]}), got {tuple(x.shape)}")
    if any(s % size_multiple for s in x.shape[2:]):
        raise ValueError(f"{_AXES[spatial_dims]} must be multiples of {size_multiple}, got {tuple(x.shape[2:])}")


def check_arguments(in_channels: int, out_channels: int, features) -> tuple[int, ...]:
    """Validate the arguments every segmentation network shares; returns ``features`` as a tuple of ints.

    Raises:
        ValueError: fewer than one input channel, fewer than two classes, or fewer than two positive widths.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if out_channels < 2:
        raise ValueError(f"out_channels must be >= 2 (background plus at least one class), got {out_channels}")
    features = tuple(int(f) for f in features)
    if len(features) < 2 or any(f < 1 for f in features):
        raise ValueError(f"features needs at least two positive widths, got {features}")
    return features
