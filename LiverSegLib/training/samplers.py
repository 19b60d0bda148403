"""Random training batches: 2D/2.5D slice stacks (Han, Mixed U-Net) and 3D crops (DI2IN).

Every sample is normalised with the predictor's own :func:`~LiverSegLib.pipeline.stage.normalize_input` (on whole
slices, so histogram equalisation matches inference), cropped, then augmented with MONAI transforms
(:mod:`LiverSegLib.training.augment`: zoom, rotation, flips, intensity jitter).

Distributed training: every rank builds the same weighted order of cases for an "epoch" (a pass of
``len(cases)`` draws, seeded by the epoch number) and takes its own share of it, as
:class:`torch.utils.data.DistributedSampler` does for datasets; crops and augmentations are drawn from a rank-specific
generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from LiverSegLib.config import StageConfig
from LiverSegLib.pipeline.stage import normalize_input
from LiverSegLib.training.augment import Augmenter
from LiverSegLib.training.cases import PreparedCase
from LiverSegLib.training.organs import is_liver

__all__ = ["CaseStream", "SynthLesionCache", "SliceSampler", "VolumeSampler", "build_sampler"]


class CaseStream:
    """Case indices for one rank: a weighted order per epoch, shared by all ranks, split between them."""

    def __init__(self, weights: list[float], seed: int, rank: int = 0, world_size: int = 1) -> None:
        w = np.asarray(weights, float)
        self.p = w / w.sum()
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch = 0
        self._queue: list[int] = []

    def next(self) -> int:
        if not self._queue:
            rng = np.random.default_rng([self.seed, self.epoch])
            n = max(self.world, len(self.p))
            order = rng.choice(len(self.p), size=n - n % self.world, p=self.p)
            self._queue = list(order[self.rank::self.world])
            self.epoch += 1
        return int(self._queue.pop(0))


class SynthLesionCache:
    """Keeps one synthetic-lesion version of each case's liver region, renewed after ``reuse`` draws.

    Synthesising lesions needs a distance transform of the liver, too slow to repeat for every 2D sample: it is
    computed once per case (the label does not change), and a version is drawn ``reuse`` times before a new one
    replaces it. Only the liver's bounding box (plus a margin) is stored per case.
    """

    def __init__(self, cfg: dict[str, Any], rng: np.random.Generator, lesion_label: int = 2) -> None:
        from LiverSegLib.training.synth_lesions import LesionSynthesisConfig

        cfg = dict(cfg)
        self.probability = float(cfg.pop("apply_probability", 0.5))
        self.reuse = int(cfg.pop("reuse", 16))
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        self.config = LesionSynthesisConfig(**fields)
        self.rng = rng
        self.lesion_label = lesion_label  # 1 for a liver-only stage: its lesions are liver
        self._store: dict[int, tuple[tuple[slice, ...], np.ndarray, np.ndarray, int]] = {}
        # each case's liver box and depth map, computed once (the label does not change): the distance transform is
        # most of a synthesis' cost, and finding the liver scans the whole case
        self._region: dict[int, tuple[tuple[slice, ...], np.ndarray | None] | None] = {}

    def get(self, index: int, case: PreparedCase) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
        """``(box, image, label)`` to paste over the case, or ``None`` to use the case as it is."""
        if self.rng.random() >= self.probability:
            return None
        entry = self._store.get(index)
        if entry is None or entry[3] >= self.reuse:
            entry = self._make(index, case)
            if entry is None:
                return None
        box, image, label, uses = entry
        self._store[index] = (box, image, label, uses + 1)
        return box, image, label

    def _make(self, index: int, case: PreparedCase):
        from LiverSegLib.training.synth_lesions import synthesize_lesions

        if index not in self._region:
            self._region[index] = self._liver_region(case)
        if self._region[index] is None:
            return None
        box, depth = self._region[index]
        image, label = synthesize_lesions(np.asarray(case.image[box], np.float32), np.asarray(case.label[box]),
                                          case.spacing_xyz, self.config, self.rng, depth=depth)
        label = label.astype(np.uint8)
        if self.lesion_label != 2:
            label[label == 2] = self.lesion_label
        return box, image.astype(np.float32), label, 0

    @staticmethod
    def _liver_region(case: PreparedCase) -> tuple[tuple[slice, ...], np.ndarray | None] | None:
        """The liver's box + 10 mm in ``case`` and the liver depth map inside it, or ``None`` without liver."""
        from LiverSegLib.training.synth_lesions import liver_depth

        nz = np.nonzero(is_liver(np.asarray(case.label)))
        if len(nz[0]) == 0:
            return None
        pad = [int(np.ceil(10.0 / s)) for s in case.spacing_xyz[::-1]]  # 10 mm around the liver
        box = tuple(slice(max(0, int(a.min()) - p), min(n, int(a.max()) + 1 + p))
                    for a, p, n in zip(nz, pad, case.label.shape, strict=True))
        return box, liver_depth(np.asarray(case.label[box]), case.spacing_xyz)


def _read(case: PreparedCase, synth, zs: np.ndarray, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32 HU) and label at slices ``zs`` (indices) and in-plane region, with synthetic lesions pasted."""
    image = np.array(case.image[zs][:, ys, xs], dtype=np.float32)
    label = np.array(case.label[zs][:, ys, xs], dtype=np.uint8)
    if synth is not None:
        (bz, by, bx), simg, slab = synth
        inside = (zs >= bz.start) & (zs < bz.stop)
        y0, y1 = max(ys.start, by.start), min(ys.stop, by.stop)
        x0, x1 = max(xs.start, bx.start), min(xs.stop, bx.stop)
        if inside.any() and y1 > y0 and x1 > x0:
            src = zs[inside] - bz.start
            dst = (np.nonzero(inside)[0], slice(y0 - ys.start, y1 - ys.start), slice(x0 - xs.start, x1 - xs.start))
            sy, sx = slice(y0 - by.start, y1 - by.start), slice(x0 - bx.start, x1 - bx.start)
            image[dst] = simg[src][:, sy, sx]
            label[dst] = slab[src][:, sy, sx]
    return image, label


class _Sampler:
    """What both samplers share: case choice, synthetic lesions, MONAI augmentation."""

    spatial_dims = 2

    def __init__(self, cases: list[PreparedCase], stage: StageConfig, cfg: dict[str, Any],
                 synth: dict[str, Any] | None, seed: int, rank: int, world_size: int) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.stage, self.cfg = cases, stage, cfg
        self.batch = int(cfg.get("batch", 8))
        self.fg_prob = float(cfg.get("foreground_prob", 0.7))
        self.rng = np.random.default_rng([seed, rank, 1])
        self.augment = Augmenter(cfg, self.spatial_dims, seed * 1000 + rank)
        self.stream = CaseStream([c.weight for c in cases], seed, rank, world_size)
        self.synth = SynthLesionCache(synth, self.rng, 2 if stage.has_lesion else 1) if synth else None

    def _pick(self) -> tuple[int, PreparedCase, Any]:
        i = self.stream.next()
        case = self.cases[i]
        return i, case, (self.synth.get(i, case) if self.synth is not None else None)


    def _centre(self, label: np.ndarray) -> np.ndarray | None:
        """A random labelled voxel (with probability ``foreground_prob``) to centre the crop on."""
        if self.rng.random() >= self.fg_prob:
            return None
        fg = np.argwhere(is_liver(label))
        return fg[self.rng.integers(len(fg))] if len(fg) else None

    def sample(self, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self._one() for _ in range(batch or self.batch)), strict=True)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class SliceSampler(_Sampler):
    """2D/2.5D samples: ``(B, context_slices, crop, crop)`` stacks and the centre slice's ``(B, crop, crop)`` label.

    Sampler config keys: ``batch``, ``crop`` (pixels), ``liver_slices_only`` (Han's fine model), ``foreground_prob``,
    and the augmentation keys of :class:`~LiverSegLib.training.augment.Augmenter`.
    """

    def __init__(self, cases: list[PreparedCase], stage: StageConfig, cfg: dict[str, Any],
                 synth: dict[str, Any] | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cases, stage, cfg, synth, seed, rank, world_size)
        crop = cfg.get("crop", 128)
        self.crop = int(crop[-1] if isinstance(crop, list) else crop)
        self.half = stage.context_slices // 2
        only = bool(cfg.get("liver_slices_only", False))
        self.slices = []
        for case in cases:
            has = np.nonzero(is_liver(np.asarray(case.label)).reshape(case.label.shape[0], -1).any(axis=1))[0]
            self.slices.append(has if only and len(has) else np.arange(case.label.shape[0]))

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        i, case, synth = self._pick()
        nz, ny, nx = case.image.shape
        z = int(self.rng.choice(self.slices[i]))
        idx = np.clip(np.arange(z - self.half, z + self.half + 1), 0, nz - 1)
        stack, labels = _read(case, synth, idx, slice(0, ny), slice(0, nx))
        stack = normalize_input(stack, self.stage)  # whole slices: equalisation as at inference
        lab = labels[self.half]
        size = self.crop
        c = self._centre(lab)
        if c is not None:
            y0 = int(c[0]) - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1))
            x0 = int(c[1]) - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1))
        else:
            y0 = int(self.rng.integers(min(0, ny - size), max(0, ny - size) + 1))
            x0 = int(self.rng.integers(min(0, nx - size), max(0, nx - size) + 1))
        stack = _crop(stack, (0, y0, x0), (stack.shape[0], size, size), -1.0)
        lab = _crop(lab[None], (0, y0, x0), (1, size, size), 0)
        stack, lab = self.augment(stack, lab)
        return np.ascontiguousarray(stack, dtype=np.float32), np.ascontiguousarray(lab[0])


class VolumeSampler(_Sampler):
    """3D samples: ``(B, 1, Z, Y, X)`` crops and ``(B, Z, Y, X)`` labels (DI2IN at 3 mm).

    Sampler config keys: ``batch``, ``crop`` (``[z, y, x]`` voxels; a crop larger than the case is padded with air),
    ``foreground_prob``, and the augmentation keys of :class:`~LiverSegLib.training.augment.Augmenter`.
    """

    spatial_dims = 3

    def __init__(self, cases: list[PreparedCase], stage: StageConfig, cfg: dict[str, Any],
                 synth: dict[str, Any] | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cases, stage, cfg, synth, seed, rank, world_size)
        self.crop = tuple(int(c) for c in cfg.get("crop", (64, 128, 128)))

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        _, case, synth = self._pick()
        shape = np.asarray(case.image.shape)
        size = np.asarray(self.crop)
        c = self._centre(np.asarray(case.label)) if self.fg_prob > 0 else None
        if c is not None:
            start = np.asarray(c) - size // 2 + self.rng.integers(-(size // 4), size // 4 + 1)
        else:
            start = np.array([int(self.rng.integers(min(0, n - s), max(0, n - s) + 1)) for n, s in zip(shape, size,
                                                                                                        strict=True)])
        start = np.clip(start, np.minimum(0, shape - size), np.maximum(0, shape - size))
        z0, z1 = max(0, start[0]), min(shape[0], start[0] + size[0])
        image, label = _read(case, synth, np.arange(z0, z1), slice(0, shape[1]), slice(0, shape[2]))
        image = normalize_input(image, self.stage)
        offset = (start[0] - z0, start[1], start[2])
        image = _crop(image, offset, tuple(size), -1.0)
        label = _crop(label, offset, tuple(size), 0)
        image, label = self.augment(image[None], label[None])
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label[0])


def build_sampler(cases: list[PreparedCase], stage: StageConfig, cfg: dict[str, Any],
                  synth: dict[str, Any] | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> _Sampler:
    """The sampler named by ``cfg["kind"]`` (``slices`` or ``volumes``)."""
    cls = {"slices": SliceSampler, "volumes": VolumeSampler}[cfg["kind"]]
    return cls(cases, stage, cfg, synth, seed, rank, world_size)


def _crop(a: np.ndarray, start: tuple[int, ...], size: tuple[int, ...], fill: float) -> np.ndarray:
    """``a[start:start+size]`` on all three axes, with out-of-range parts filled."""
    out = np.full(size, fill, dtype=a.dtype)
    src = tuple(slice(max(0, s), min(n, s + k)) for s, k, n in zip(start, size, a.shape, strict=True))
    if all(sl.stop > sl.start for sl in src):
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
        out[dst] = a[src]
    return out
