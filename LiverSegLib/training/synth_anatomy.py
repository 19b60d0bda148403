"""Anatomy for label-driven synthetic CT: complete a multi-organ label map before it is painted.

Most 3D-IRCADb mask sets label the liver, its vessels and tumours, bone and the skin, but not the spleen, kidneys,
stomach or muscles: exactly the neighbours a liver model confuses with the liver. Before painting, a map is
therefore completed with

* **body layers** -- subcutaneous fat under the skin, an abdominal-wall muscle ring under it, paraspinal muscles
  beside the spine, and the remaining visceral space split into fat and bowel loops by a thresholded smooth random
  field (:func:`add_body_layers`);
* **missing organs** -- a spleen, two kidneys and a stomach, as deformed ellipsoids placed relative to the liver
  and the spine where the map has none (:func:`add_missing_organs`); they only take voxels that are plain body (the
  chest above the liver -- lungs, heart, mediastinum -- is :mod:`~LiverSegLib.training.synth_thorax`'s);
* **liver transplant** -- the host liver replaced by a manual liver shape from the mask bank (LiTS masks), scaled to
  the host liver's extent, with a random affine jitter (:func:`transplant_liver`).

All maps are in the canonical order of the predictor (``[z, y, x]`` running superior, posterior, patient's left),
with values from :data:`~LiverSegLib.training.organs.ORGANS`. This is LiverSeg's own code; the idea of training on
label maps painted with random intensities is SynthSeg's (Billot et al., Medical Image Analysis 2023).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from LiverSegLib.training.organs import ORGANS
from LiverSegLib.training.synth_lesions import _random_rotation, _smooth_field

__all__ = ["add_body_layers", "add_missing_organs", "transplant_liver", "resample_labels", "spine_centre"]

_B = ORGANS


def resample_labels(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float],
                    new_spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map to another voxel size (same extent)."""
    factors = [s / n for s, n in zip(spacing_xyz[::-1], new_spacing_xyz[::-1], strict=True)]
    return ndimage.zoom(organ_map, factors, order=0, mode="nearest", grid_mode=True)


def spine_centre(organ_map: np.ndarray) -> tuple[float, float]:
    """``(y, x)`` of the vertebral column: the bone nearest the body's left-right middle, posterior half."""
    body = organ_map > 0
    ys, xs = np.nonzero(body.any(axis=0))
    if len(xs) == 0:
        return organ_map.shape[1] / 2, organ_map.shape[2] / 2
    mid_x = 0.5 * (xs.min() + xs.max())
    bone = (organ_map == _B["bone"]).any(axis=0)
    by, bx = np.nonzero(bone)
    keep = (np.abs(bx - mid_x) < 0.08 * (xs.max() - xs.min() + 1)) & (by > 0.5 * (ys.min() + ys.max()))
    if keep.sum() < 5:
        return 0.5 * (ys.min() + ys.max()) + 0.25 * (ys.max() - ys.min()), mid_x
    return float(np.median(by[keep])), float(np.median(bx[keep]))


def add_body_layers(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float],
                    rng: np.random.Generator) -> np.ndarray:
    """Split unlabelled body voxels into subcutaneous fat, wall muscle, paraspinal muscle, visceral fat and bowel."""
    out = organ_map.copy()
    sp = np.asarray(spacing_xyz[::-1], float)
    body = organ_map > 0
    free = organ_map == _B["body"]
    if not free.any():
        return out
    # distance to the outside of the body, per slice (a crop's top and bottom slices are not skin)
    depth = np.stack([ndimage.distance_transform_edt(b, sampling=sp[1:]) if b.any() else np.zeros(b.shape)
                      for b in body])
    fat_mm = rng.uniform(5.0, 35.0)
    muscle_mm = rng.uniform(6.0, 18.0)
    # the layers wander a little around the body, as real subcutaneous fat does
    wobble = _smooth_field(rng, organ_map.shape, sp, 60.0, 1)[0] * 0.25
    d = depth / np.clip(1.0 + wobble, 0.5, 1.5)
    out[free & (d <= fat_mm)] = _B["fat"]
    out[free & (d > fat_mm) & (d <= fat_mm + muscle_mm)] = _B["muscle"]
    # paraspinal (erector spinae) and psoas-like muscle beside and behind the spine
    sy, sx = spine_centre(organ_map)
    yy, xx = np.mgrid[: organ_map.shape[1], : organ_map.shape[2]]
    ry, rx = rng.uniform(25, 45) / sp[1], rng.uniform(35, 60) / sp[2]
    para = ((yy - (sy + 0.3 * ry)) / ry) ** 2 + ((xx - sx) / rx) ** 2 <= 1.0
    out[free & para[None]] = _B["muscle"]
    # visceral space: bowel loops where a smooth field is high, fat elsewhere
    visceral = out == _B["body"]
    field = _smooth_field(rng, organ_map.shape, sp, rng.uniform(15.0, 30.0), 1)[0]
    bowel_fraction = rng.uniform(0.25, 0.65)
    thr = np.quantile(field[visceral], 1.0 - bowel_fraction) if visceral.any() else 0.0
    out[visceral & (field > thr)] = _B["bowel"]
    out[visceral & (field <= thr)] = _B["fat"]
    return out


def _blob(shape: tuple[int, ...], sp: np.ndarray, centre_zyx: np.ndarray, radii_mm: np.ndarray,
          rng: np.random.Generator, deform: float = 0.2) -> np.ndarray:
    """A rotated, smoothly deformed ellipsoid as a boolean mask (computed in its bounding box only)."""
    reach = radii_mm.max() * (1.0 + deform) + 2.0
    lo = np.maximum(0, np.floor(centre_zyx - reach / sp)).astype(int)
    hi = np.minimum(shape, np.ceil(centre_zyx + reach / sp) + 1).astype(int)
    mask = np.zeros(shape, bool)
    if np.any(hi <= lo):
        return mask
    sub = tuple(int(h - lo_) for lo_, h in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[(np.arange(lo_, h) - c) * s for lo_, h, c, s in zip(lo, hi, centre_zyx, sp,
                                                                                     strict=True)], indexing="ij"))
    rot = _random_rotation(rng) if deform > 0 else np.eye(3)
    # small tilt only: organs keep their usual orientation
    rot = np.eye(3) * 0.8 + 0.2 * rot
    local = np.tensordot(np.linalg.inv(rot), grid, axes=1)
    r = np.sqrt(sum((local[i] / radii_mm[i]) ** 2 for i in range(3)))
    r = r + deform * _smooth_field(rng, sub, sp, max(8.0, radii_mm.min()), 1)[0]
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = r <= 1.0
    return mask


def add_missing_organs(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float],
                       rng: np.random.Generator) -> np.ndarray:
    """Add a spleen, kidneys and a stomach where the map has none; they only replace plain body voxels.

    Positions follow the usual anatomy of a supine patient relative to the liver and the spine: the spleen
    posterior-left at the height of the upper liver, the kidneys either side of the spine at the lower liver, the
    stomach anterior-left under the diaphragm. Sizes are drawn from adult ranges. (The heart is placed with the
    lungs: :func:`~LiverSegLib.training.synth_thorax.add_thorax`.)
    """
    out = organ_map.copy()
    sp = np.asarray(spacing_xyz[::-1], float)
    liver = (organ_map == _B["liver"]) | (organ_map == _B["lesion"])
    if not liver.any():
        return out
    lz = np.nonzero(liver.any(axis=(1, 2)))[0]
    z_lo, z_hi = lz.min(), lz.max()
    body_yx = (organ_map > 0).any(axis=0)
    ys, xs = np.nonzero(body_yx)
    sy, sx = spine_centre(organ_map)
    width = (xs.max() - xs.min() + 1) * sp[2]
    free = organ_map == _B["body"]
    jitter = lambda mm: rng.uniform(-mm, mm)  # noqa: E731 - a local shorthand
    z_at = lambda frac: z_lo + frac * (z_hi - z_lo)  # noqa: E731
    if not (organ_map == _B["spleen"]).any():
        c = np.array([z_at(rng.uniform(0.55, 0.85)) + jitter(15) / sp[0], sy - rng.uniform(0, 30) / sp[1],
                      sx + (0.30 * width + jitter(15)) / sp[2]])
        m = _blob(organ_map.shape, sp, c, np.array([rng.uniform(40, 65), rng.uniform(25, 45), rng.uniform(18, 30)]),
                  rng)
        out[m & free] = _B["spleen"]
    if not (organ_map == _B["kidney"]).any():
        for side in (-1, 1):  # patient's right (low x) then left; the right kidney sits a little lower
            c = np.array([z_at(rng.uniform(0.0, 0.35)) - (10 if side < 0 else 0) / sp[0],
                          sy - rng.uniform(0, 15) / sp[1], sx + side * rng.uniform(55, 80) / sp[2]])
            m = _blob(organ_map.shape, sp, c, np.array([rng.uniform(45, 60), rng.uniform(22, 30), rng.uniform(22, 30)]),
                      rng, 0.15)
            out[m & free] = _B["kidney"]
    if not (organ_map == _B["stomach"]).any():
        c = np.array([z_at(rng.uniform(0.45, 0.8)), sy - rng.uniform(70, 120) / sp[1],
                      sx + (0.12 * width + jitter(20)) / sp[2]])
        m = _blob(organ_map.shape, sp, c, np.array([rng.uniform(45, 70), rng.uniform(25, 45), rng.uniform(30, 50)]),
                  rng, 0.3)
        out[m & (free | (organ_map == _B["bowel"]))] = _B["stomach"]
    return out


def transplant_liver(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float], donor: np.ndarray,
                     donor_spacing_xyz: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Replace the host liver by the ``donor`` liver shape (0/1 mask in canonical order), fitted to the host.

    The donor is scaled per axis to the host liver's bounding box (times a random 0.9-1.1), centred on the host
    liver's centre, and may only take body, vessel, lesion and liver voxels (never bone, lung, kidney...). Host
    tumours are dropped (the painter adds synthetic ones); host liver voxels the donor does not cover become body.
    """
    sp = np.asarray(spacing_xyz[::-1], float)
    dsp = np.asarray(donor_spacing_xyz[::-1], float)
    host = (organ_map == _B["liver"]) | (organ_map == _B["lesion"])
    if not host.any() or not np.asarray(donor).any():
        return organ_map.copy()
    hz, hy, hx = (np.nonzero(host.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    h_lo = np.array([hz[0].min(), hy[0].min(), hx[0].min()])
    h_ext = np.array([hz[0].max(), hy[0].max(), hx[0].max()]) - h_lo + 1
    d = np.asarray(donor) > 0
    dz, dy, dx = (np.nonzero(d.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1)))
    d = d[dz.min():dz.max() + 1, dy.min():dy.max() + 1, dx.min():dx.max() + 1]
    d_ext_mm = np.array(d.shape) * dsp
    target_mm = h_ext * sp * rng.uniform(0.9, 1.1, 3)
    # keep the donor's own proportions partly: a mean of per-axis and isotropic scaling
    iso = float(np.prod(target_mm / d_ext_mm) ** (1 / 3))
    scale = 0.5 * (target_mm / d_ext_mm) + 0.5 * iso
    zoom = d_ext_mm * scale / sp / np.array(d.shape)
    placed = ndimage.zoom(d.astype(np.float32), zoom, order=1) > 0.5
    start = np.round(h_lo + h_ext / 2 - np.array(placed.shape) / 2 + rng.uniform(-0.05, 0.05, 3) * h_ext).astype(int)
    new = np.zeros(organ_map.shape, bool)
    src = tuple(slice(max(0, -s), min(p, n - s)) for s, p, n in zip(start, placed.shape, organ_map.shape, strict=True))
    dst = tuple(slice(max(0, s), max(0, s) + (sl.stop - sl.start)) for s, sl in zip(start, src, strict=True))
    if all(sl.stop > sl.start for sl in src):
        new[dst] = placed[src]
    out = organ_map.copy()
    out[host] = _B["body"]
    takeable = np.isin(organ_map, [_B["body"], _B["liver"], _B["lesion"], _B["portal_vein"], _B["vena_cava"],
                                   _B["fat"], _B["bowel"], _B["gallbladder"], _B["other"]])
    out[new & takeable] = _B["liver"]
    return out
