"""2.5D training samples: cases on a stage's grid and random slice-stack crops from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

from LiverSegLib.pipeline.orientation import to_canonical
from LiverSegLib.pipeline.resample import resample_to_shape, stage_shape
from LiverSegLib.pipeline.stage import normalize_hu
from LiverSegLib.types import Volume

__all__ = ["PreparedCase", "prepare_case", "SliceSampler"]


@dataclass
class PreparedCase:
    """A training case on a stage's grid, canonical (axial LPS) order.

    ``image`` is float32 normalised to [-1, 1] by the stage's HU window; ``label`` holds class indices.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    weight: float = 1.0


def prepare_case(name: str, ct: Volume, label: Volume, hu_window: tuple[float, float],
                 spacing_xyz: tuple[float | None, float | None, float | None], merge_lesion: bool,
                 weight: float = 1.0) -> PreparedCase:
    """Bring a case to the stage's grid as the predictor does (same orientation, resampling and HU scaling).

    Labels are resampled by nearest neighbour; with ``merge_lesion`` lesion (2) becomes liver (1), as Han's coarse
    model is trained.
    """
    ct_c, _ = to_canonical(ct)
    lab_c, _ = to_canonical(label)
    shape = stage_shape(ct_c.array_zyx.shape, ct_c.spacing_xyz, spacing_xyz)
    image = resample_to_shape(ct_c.array_zyx, shape, hu_window=hu_window)
    normalize_hu(image, hu_window)
    lab = np.ascontiguousarray(lab_c.array_zyx, dtype=np.uint8)
    if shape != lab.shape:
        t = torch.from_numpy(lab)[None, None].float()
        lab = F.interpolate(t, size=shape, mode="nearest-exact")[0, 0].to(torch.uint8).numpy()
    if merge_lesion:
        lab = np.minimum(lab, 1)
    return PreparedCase(name, np.ascontiguousarray(image), np.ascontiguousarray(lab), weight)


class SliceSampler:
    """Random 2.5D crops (Han: random sub-region crops and random left-right flips).

    Args:
        cases: prepared cases.
        crop: crop height and width (the network is fully convolutional: inference uses whole slices).
        context_slices: slices per stack (5).
        liver_slices_only: draw centre slices only where the label has liver (Han's fine model); otherwise all.
        foreground_crop_prob: probability to centre the crop on a labelled voxel instead of anywhere.
        scale_range: random in-plane zoom (1, 1 disables it) for data whose native spacing varies.
        intensity_jitter: ``(shift, scale)``: add a random offset in ``[-shift, shift]`` (normalised units; 0.2 is
            40 HU for a 400 HU window) and multiply by ``1 +- scale``, so the model does not tie the liver to one
            contrast phase. ``(0, 0)`` disables it (Han's recipe has none; LiTS brings that variety itself).
        seed: random seed, for reproducible sampling.
    """

    def __init__(self, cases: list[PreparedCase], crop: int, context_slices: int = 5, liver_slices_only: bool = False,
                 foreground_crop_prob: float = 0.7, scale_range: tuple[float, float] = (1.0, 1.0),
                 intensity_jitter: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> None:
        self.cases = cases
        self.crop = crop
        self.half = context_slices // 2
        self.fg_prob = foreground_crop_prob
        self.scale_range = scale_range
        self.intensity_jitter = intensity_jitter
        self.rng = np.random.default_rng(seed)
        self.slices = []
        for case in cases:
            has = np.nonzero(case.label.reshape(case.label.shape[0], -1).any(axis=1))[0]
            self.slices.append(has if liver_slices_only and len(has) else np.arange(case.label.shape[0]))
        w = np.array([c.weight for c in cases], float)
        self.case_p = w / w.sum()

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``(B, C, crop, crop)`` float32 stacks and ``(B, crop, crop)`` int64 labels."""
        xs, ys = [], []
        for _ in range(batch):
            ci = self.rng.choice(len(self.cases), p=self.case_p)
            x, y = self._one(self.cases[ci], self.slices[ci])
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()

    def _one(self, case: PreparedCase, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nz, ny, nx = case.image.shape
        z = int(self.rng.choice(slices))
        idx = np.clip(np.arange(z - self.half, z + self.half + 1), 0, nz - 1)
        stack = case.image[idx]
        lab = case.label[z]
        scale = float(self.rng.uniform(*self.scale_range))
        size = max(8, int(round(self.crop / scale)))  # region of the slice that becomes the crop after zoom
        fg = np.argwhere(lab > 0) if self.rng.random() < self.fg_prob else None
        if fg is not None and len(fg):
            cy, cx = fg[self.rng.integers(len(fg))]
            y0 = int(cy) - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1))
            x0 = int(cx) - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1))
        else:
            y0 = int(self.rng.integers(min(0, ny - size), max(0, ny - size) + 1))
            x0 = int(self.rng.integers(min(0, nx - size), max(0, nx - size) + 1))
        stack = _crop(stack, y0, x0, size, -1.0)
        lab = _crop(lab[None], y0, x0, size, 0)[0]
        if size != self.crop:
            t = torch.from_numpy(stack)[None]
            stack = F.interpolate(t, size=(self.crop, self.crop), mode="bilinear", align_corners=False)[0].numpy()
            lt = torch.from_numpy(lab)[None, None].float()
            lab = F.interpolate(lt, size=(self.crop, self.crop), mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
        if self.rng.random() < 0.5:  # left-right flip
            stack, lab = stack[..., ::-1], lab[..., ::-1]
        shift, gain = self.intensity_jitter
        if shift or gain:
            gain_factor = np.float32(1.0 + self.rng.uniform(-gain, gain))
            stack = stack * gain_factor + np.float32(self.rng.uniform(-shift, shift))
        return np.ascontiguousarray(stack, dtype=np.float32), np.ascontiguousarray(lab)


def _crop(a: np.ndarray, y0: int, x0: int, size: int, fill: float) -> np.ndarray:
    """``a[:, y0:y0+size, x0:x0+size]`` with out-of-range parts filled (crops may extend beyond small slices)."""
    out = np.full((a.shape[0], size, size), fill, dtype=a.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(a.shape[1], y0 + size), min(a.shape[2], x0 + size)
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = a[:, ys:ye, xs:xe]
    return out
