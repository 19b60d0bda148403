"""The lower thorax for label-driven synthetic CT: lungs, heart and mediastinum above the liver dome.

Real abdominal CT usually starts in the lower chest: the heart sits on the diaphragm beside and above the liver
dome, sharing its upper axial slices, with the lung bases around both. A model that never saw this took a real heart
for liver (HCC-TACE-Seg HCC_006). Sixteen of the seventeen 3D-IRCADb mask sets end 2-22 mm above the liver dome,
and the one that reaches higher (patient 19) has no lung mask, so :func:`add_thorax` extends a map upward and fills
the chest:

* **padding** -- slices above the map's top, down to ``reach_mm`` above the liver dome, copying the top slice's
  body outline, bone (spine, ribs) and aorta;
* **heart** -- an adult-sized deformed ellipsoid anterior and left of the spine whose base lies 10-35 mm below the
  dome's top slice (so the two share axial slices, as in real scans); it takes free body voxels only and keeps
  3-6 mm of diaphragm muscle between itself and the liver;
* **lungs** -- every free body voxel above a smooth diaphragm surface (draped over the liver, spleen and stomach
  tops), inside the chest wall and outside the mediastinum;
* **mediastinum** -- the remaining free voxels above the diaphragm and inside the wall become fat (the body-layer
  step would otherwise fill them with bowel loops).

Maps are in the predictor's canonical order (``[z, y, x]`` running superior, posterior, patient's left) with values
from :data:`~LiverSegLib.training.organs.ORGANS`. LiverSeg's own code; sizes are adult ranges.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from LiverSegLib.pipeline.postprocess import ball
from LiverSegLib.training.organs import ORGANS
from LiverSegLib.training.synth_anatomy import _blob, spine_centre

__all__ = ["add_thorax", "diaphragm_height"]

_B = ORGANS
# structures whose tops the diaphragm is draped over
_UNDER_DIAPHRAGM = tuple(_B[n] for n in ("liver", "lesion", "spleen", "stomach", "gallbladder", "kidney"))
# what a padded chest slice keeps of the map's top slice (the rest of the body becomes free tissue)
_CONTINUES_UP = tuple(_B[n] for n in ("bone", "aorta", "heart", "lung"))


def _pad_up(organ_map: np.ndarray, n: int) -> np.ndarray:
    """``n`` more slices on top, continuing the top slice's body outline and its bone, aorta, heart and lungs."""
    top = organ_map[-1]
    slab = np.where(top > 0, _B["body"], 0).astype(organ_map.dtype)
    keep = np.isin(top, _CONTINUES_UP)
    slab[keep] = top[keep]
    return np.concatenate([organ_map, np.repeat(slab[None], n, axis=0)])


def diaphragm_height(organ_map: np.ndarray, sp: np.ndarray, default_z: float, spread_mm: float = 40.0,
                     smooth_mm: float = 12.0) -> np.ndarray:
    """A smooth ``(y, x)`` map of the diaphragm's height (slice index) over the abdominal organs.

    The top of the liver, spleen, stomach, gallbladder and kidneys per column, spread sideways by ``spread_mm``
    (the dome overhangs the organs' edges), ``default_z`` where no organ lies below, smoothed; never below an
    organ's top.
    """
    under = np.isin(organ_map, _UNDER_DIAPHRAGM)
    has = under.any(axis=0)
    top = np.where(has, organ_map.shape[0] - 1 - np.argmax(under[::-1], axis=0), -1).astype(float)
    size = np.maximum(1, np.round(spread_mm / sp[1:]).astype(int))
    spread = ndimage.maximum_filter(top, size=tuple(size))
    h = np.where(spread >= 0, spread, default_z)
    h = ndimage.gaussian_filter(h, sigma=tuple(smooth_mm / sp[1:]))
    return np.maximum(h, top)


def add_thorax(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float], rng: np.random.Generator,
               reach_mm: tuple[float, float] = (50.0, 110.0)) -> np.ndarray:
    """Extend ``organ_map`` upward to ``reach_mm`` above the liver dome and fill the lower chest.

    Args:
        organ_map: canonical-order map (``[z, y, x]``: superior, posterior, patient's left).
        spacing_xyz: its voxel size (mm).
        rng: random generator (same state, same output).
        reach_mm: range of the chest's height above the dome's top slice (a map already reaching further is not
            padded).

    Returns:
        A new map, taller by the padding; structures already labelled are kept (only ``body`` voxels change).
    """
    sp = np.asarray(spacing_xyz[::-1], float)
    liver = np.isin(organ_map, (_B["liver"], _B["lesion"]))
    if not liver.any():
        return organ_map.copy()
    z_hi = int(np.flatnonzero(liver.any(axis=(1, 2)))[-1])
    want_top = z_hi + int(np.ceil(rng.uniform(*reach_mm) / sp[0]))
    out = organ_map.copy()
    if want_top > out.shape[0] - 1:
        out = _pad_up(out, want_top - (out.shape[0] - 1))
    free = out == _B["body"]
    body_yx = (out > 0).any(axis=0)
    xs = np.flatnonzero(body_yx.any(axis=0))
    sy, sx = spine_centre(out)
    width = (xs.max() - xs.min() + 1) * sp[2]
    if not (out == _B["heart"]).any():
        # an adult heart (about 12-15 cm across) resting on the diaphragm over the left lobe: its lower part shares
        # the dome's slices, separated from the liver only by the diaphragm muscle (no fat plane), as in real scans
        radii = np.array([rng.uniform(40, 55), rng.uniform(42, 58), rng.uniform(55, 72)])
        base = z_hi - rng.uniform(10.0, 35.0) / sp[0]
        c = np.array([base + 0.8 * radii[0] / sp[0], sy - rng.uniform(70, 100) / sp[1],
                      sx + (0.06 * width + rng.uniform(-5, 20)) / sp[2]])
        diaphragm = ndimage.binary_dilation(np.isin(out, (_B["liver"], _B["lesion"])), ball(sp, rng.uniform(3.0, 6.0)))
        out[_blob(out.shape, sp, c, radii, rng, 0.15) & free & ~diaphragm] = _B["heart"]
        free = out == _B["body"]
    # the left hemidiaphragm, where no organ is labelled, sits a little below the right dome
    h = diaphragm_height(out, sp, default_z=z_hi - rng.uniform(10.0, 30.0) / sp[0])
    h = h + rng.uniform(3.0, 8.0) / sp[0]  # the diaphragm muscle itself
    above = np.arange(out.shape[0])[:, None, None] > h[None]
    z0 = int(max(0, np.floor(h.min())))
    wall_mm = rng.uniform(12.0, 30.0)
    inside = np.zeros(out.shape, bool)
    for z in range(z0, out.shape[0]):  # inside the chest wall, per slice
        b = out[z] > 0
        if b.any():
            inside[z] = ndimage.distance_transform_edt(b, sampling=sp[1:]) > wall_mm
    x_mm = (np.arange(out.shape[2]) - sx) * sp[2]
    mediastinum = np.abs(x_mm) < rng.uniform(25.0, 45.0)
    chest = free & above & inside
    out[chest & ~mediastinum[None, None, :]] = _B["lung"]
    out[chest & mediastinum[None, None, :]] = _B["fat"]
    return out
