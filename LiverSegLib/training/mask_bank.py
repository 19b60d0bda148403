"""The liver-mask bank: real manual liver shapes as the discriminator's "real" samples in DI2IN-AN.

Yang et al. 2017 (DI2IN-AN) train a discriminator to tell the generator's liver maps from real ones, so that the
generator's output is pushed toward plausible liver shapes. The real samples need not come from the training CTs:
any manual liver mask is a real liver shape. With few labelled CTs, the bank of mask-only data (92 LiTS masks, 17
3D-IRCADb mask sets) gives the discriminator many more shapes than the training set's own labels.

A bank is a list of masks on the stage's grid (canonical order); :class:`MaskBankSampler` draws crops of the
training crop size around the liver, jittered like the training sampler's foreground crops.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from LiverSegLib.config import StageConfig
from LiverSegLib.errors import InputError
from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.pipeline.grids import resample_to_shape, stage_shape
from LiverSegLib.types import Volume

__all__ = ["bank_mask", "load_mask_bank", "MaskBankSampler"]


def bank_mask(volume: Volume, stage: StageConfig) -> np.ndarray:
    """A liver mask (liver and lesion values > 0 count; organ maps: values 1 and 2) on the stage's grid, uint8."""
    canon, _ = to_canonical(volume)
    arr = np.asarray(canon.array_zyx)
    liver = ((arr == 1) | (arr == 2)).astype(np.float32)
    shape = stage_shape(arr.shape, canon.spacing_xyz, stage.spacing_xyz)
    return (resample_to_shape(liver, shape) >= 0.5).astype(np.uint8)


def load_mask_bank(paths: Iterable[Path], stage: StageConfig, exclude: Iterable[str] = ()) -> list[np.ndarray]:
    """Read every liver mask under ``paths`` onto the stage's grid.

    Args:
        paths: files or folders: LiTS-style masks (``segmentation-N.nii[.gz]``, 0/1 or 0/1/2) and 3D-IRCADb
            ``MASKS_DICOM.zip`` files (searched recursively in folders).
        stage: the stage whose grid applies (DI2IN: 3 mm isotropic).
        exclude: case names to leave out (``lits-N`` or ``ircad1.N``), e.g. a held-out evaluation case.

    Raises:
        InputError: a path that does not exist, or no mask found.
    """
    from LiverSegLib.training import mask_sources as ms

    skip = set(exclude)
    masks = []
    for root in (Path(p) for p in paths):
        if not root.exists():
            raise InputError(f"mask bank {root} does not exist")
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for f in files:
            if f.name == "MASKS_DICOM.zip":
                name = "ircad1." + f.parent.name.rsplit(".", 1)[-1]
                if name not in skip:
                    masks.append(bank_mask(ms.read_ircad_masks(f), stage))
            elif f.name.startswith("segmentation-") and f.name.endswith((".nii", ".nii.gz")):
                name = "lits-" + f.name.split("-", 1)[1].split(".")[0]
                if name not in skip:
                    masks.append(bank_mask(ms.read_lits_mask(f), stage))
    masks = [m for m in masks if m.any()]
    if not masks:
        raise InputError(f"no liver masks found in {', '.join(str(p) for p in paths)} (expected segmentation-N.nii.gz "
                         "or MASKS_DICOM.zip files)")
    return masks


class MaskBankSampler:
    """Random ``(B, 1, Z, Y, X)`` float crops of bank masks, centred near the liver.

    Args:
        masks: bank masks on the stage grid.
        crop: ``(Z, Y, X)`` crop size in voxels (the training sampler's).
        seed: random seed.
        jitter: the centre moves by up to this fraction of the crop (the training sampler uses 1/4).
    """

    def __init__(self, masks: list[np.ndarray], crop: tuple[int, int, int], seed: int = 0,
                 jitter: float = 0.25) -> None:
        if not masks:
            raise ValueError("the mask bank is empty")
        self.masks, self.crop = masks, tuple(int(c) for c in crop)
        self.rng = np.random.default_rng([seed, 77])
        self.jitter = jitter
        self._fg = [np.argwhere(m > 0) for m in masks]

    def sample(self, batch: int) -> torch.Tensor:
        out = np.zeros((batch, 1, *self.crop), np.float32)
        size = np.asarray(self.crop)
        for b in range(batch):
            i = int(self.rng.integers(len(self.masks)))
            m, fg = self.masks[i], self._fg[i]
            centre = fg[self.rng.integers(len(fg))]
            j = (size * self.jitter).astype(int)
            start = centre - size // 2 + self.rng.integers(-j, j + 1)
            src = tuple(slice(max(0, s), min(n, s + k)) for s, k, n in zip(start, size, m.shape, strict=True))
            dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
            if all(sl.stop > sl.start for sl in src):
                out[(b, 0, *dst)] = m[src]
        return torch.from_numpy(out)
