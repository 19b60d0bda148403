"""Spatial and intensity augmentation of training samples with MONAI's dictionary transforms.

Built from a sampler config (the same keys for every recipe):

- ``scale_range`` ``[lo, hi]``: random isotropic zoom (``RandZoomd``; scans of different pixel size, the Mixed
  U-Net's "reduce the image according to the specified scale factor");
- ``rotate_deg``: random in-plane rotation within +-this many degrees (``RandRotated``; the Mixed U-Net's rotations);
- ``flip``: left-right flips with probability 0.5 (``RandFlipd``; Han);
- ``intensity_jitter`` ``[shift, gain]``: multiply by ``1 +- gain`` then add ``+- shift`` in normalised units
  (``RandScaleIntensityd``, ``RandShiftIntensityd``), so a model does not tie the liver to one contrast phase.

The image is ``(C, *spatial)`` (a 2.5D stack's slices are channels), the label ``(1, *spatial)``. Zoom and rotation
pad with the edge value (air at the edge of a slice stays air) and resample labels by nearest neighbour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from monai.transforms import (
    Compose,
    RandFlipd,
    Randomizable,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
)

__all__ = ["Augmenter"]


class Augmenter:
    """A seeded MONAI ``Compose`` over ``{"image", "label"}`` numpy samples, with savable random state.

    Args:
        cfg: the sampler config (keys above; absent keys disable that augmentation).
        spatial_dims: 2 for slice stacks, 3 for volumes (rotation and zoom stay in the axial plane).
        seed: random seed (rank-specific under torchrun).
    """

    def __init__(self, cfg: dict[str, Any], spatial_dims: int, seed: int) -> None:
        keys = ["image", "label"]
        transforms = []
        lo, hi = (float(v) for v in cfg.get("scale_range", (1.0, 1.0)))
        if (lo, hi) != (1.0, 1.0):
            # one factor for every axis (scalar min/max): an isotropic zoom, as a different pixel size would give
            transforms.append(RandZoomd(keys, prob=1.0, min_zoom=lo, max_zoom=hi, mode=("bilinear", "nearest"),
                                        padding_mode="edge", keep_size=True))
        rot = math.radians(float(cfg.get("rotate_deg", 0.0)))
        if rot:  # in the axial plane: about the first spatial axis (z) of a (z, y, x) volume
            transforms.append(RandRotated(keys, range_x=rot, prob=1.0, mode=("bilinear", "nearest"),
                                          padding_mode="border", keep_size=True))
        if cfg.get("flip", True):
            transforms.append(RandFlipd(keys, prob=0.5, spatial_axis=spatial_dims - 1))  # x: left-right
        shift, gain = (float(v) for v in cfg.get("intensity_jitter", (0.0, 0.0)))
        if gain:
            transforms.append(RandScaleIntensityd("image", factors=gain, prob=1.0))
        if shift:
            transforms.append(RandShiftIntensityd("image", offsets=shift, prob=1.0))
        self.compose = Compose(transforms)
        self.compose.set_random_state(seed=seed % (2**32))

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample: image ``(C, *spatial)`` float32, label ``(1, *spatial)`` integer."""
        if not self.compose.transforms:
            return image, label
        out = self.compose({"image": image, "label": label})
        img = np.asarray(out["image"], dtype=np.float32)
        lab = np.rint(np.asarray(out["label"])).astype(np.uint8)
        return img, lab

    def get_state(self) -> list:
        """The random state of every transform (nested ones included), JSON-serialisable (for ``--resume``)."""
        return [_state(r) for r in _generators(self.compose)]

    def set_state(self, states: list) -> None:
        for r, s in zip(_generators(self.compose), states, strict=True):
            r.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))


def _generators(root: Randomizable) -> list[np.random.RandomState]:
    """Every random generator inside a transform tree, in a fixed order (a transform may nest others)."""
    out, seen, stack = [], set(), [root]
    while stack:
        obj = stack.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(getattr(obj, "R", None), np.random.RandomState):
            out.append(obj.R)
        children = list(getattr(obj, "transforms", []) or [])
        children += [v for k, v in sorted(vars(obj).items()) if isinstance(v, Randomizable) and k != "transforms"]
        stack.extend(children)
    return out


def _state(r: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, cached = r.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
