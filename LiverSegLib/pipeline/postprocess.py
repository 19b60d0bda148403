"""Post-processing of Han 2017 (sections 3.1 and 4) and the per-lesion table.

All functions work on arrays of the liver box (uint8 masks, float16 probabilities): nothing here allocates a
whole-volume float array.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from LiverSegLib.types import LesionRecord

__all__ = ["ball", "cut_necks", "largest_component", "LesionPruning", "prune_lesions", "lesion_table",
           "max_diameter_mm"]

CONNECTIVITY = 26  # 3D connected components, full neighbourhood (Han: "3D connected component labeling")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of ``mask`` (all False when it is empty)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return cc3d.largest_k(np.ascontiguousarray(mask, dtype=np.uint8), k=1, connectivity=CONNECTIVITY,
                          binary_image=True) > 0


def ball(spacing_zyx: np.ndarray | tuple[float, ...], radius_mm: float) -> np.ndarray:
    """A boolean ball of ``radius_mm`` on a grid of ``spacing_zyx`` (a structuring element; at least 3 voxels wide
    along every axis)."""
    sp = np.asarray(spacing_zyx, float)
    n = np.maximum(1, np.floor(radius_mm / sp)).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in n)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grid, sp, strict=True)) <= 1.0


def cut_necks(mask: np.ndarray, spacing_zyx: tuple[float, ...], radius_mm: float, min_core_ml: float) -> np.ndarray:
    """``mask`` without the parts joined to its main body only through necks thinner than about ``2 * radius_mm``.

    The mask is eroded by a ball of ``radius_mm``; if that leaves more than one core, every voxel of the mask goes
    with its nearest core (Euclidean, in mm), and the voxels of cores other than the largest are dropped when the
    core holds at least ``min_core_ml``. Smaller cores (a lobe tip, a bump) stay. The result is the largest
    connected component of what remains; the input is returned unchanged when nothing is cut.
    """
    if not mask.any():
        return mask
    sp = np.asarray(spacing_zyx, float)
    where = np.argwhere(mask)
    lo, hi = np.maximum(where.min(axis=0) - 1, 0), np.minimum(where.max(axis=0) + 2, mask.shape)
    region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = mask[region]
    cores = cc3d.connected_components(ndimage.binary_erosion(sub, ball(sp, radius_mm)).astype(np.uint8),
                                      connectivity=6)
    sizes_ml = np.bincount(cores.ravel()).astype(float) * float(np.prod(sp)) / 1000.0
    sizes_ml[0] = 0.0
    if len(sizes_ml) < 3:  # one core or none: nothing to cut
        return mask
    main = int(np.argmax(sizes_ml))
    cut_ids = [k for k in np.flatnonzero(sizes_ml >= min_core_ml) if k != main]
    if not cut_ids:
        return mask
    _, nearest_idx = ndimage.distance_transform_edt(cores == 0, sampling=sp, return_indices=True)
    nearest = cores[tuple(nearest_idx)]
    out = mask.copy()
    out[region] = sub & ~np.isin(nearest, cut_ids)
    return largest_component(out)


@dataclass
class LesionPruning:
    """Connected lesion components after pruning.

    Attributes:
        components: uint32 array, 0 outside lesions, ``1..n`` for each kept lesion (largest first).
        max_probability: maximum lesion probability of each kept component (index = id - 1).
        removed: number of components removed because their maximum probability was below the threshold.
        removed_voxels: voxels in those components.
    """

    components: np.ndarray
    max_probability: np.ndarray
    removed: int
    removed_voxels: int


def prune_lesions(lesion_mask: np.ndarray, lesion_probability: np.ndarray, threshold: float) -> LesionPruning:
    """Remove each 3D lesion component whose maximum lesion probability is below ``threshold`` (Han section 4).

    Args:
        lesion_mask: voxels labelled lesion (inside the final liver).
        lesion_probability: the network's lesion probability on the same grid (any float dtype).
        threshold: components whose maximum probability is strictly below it are removed (0.80 in the paper).
    """
    cc, n = cc3d.connected_components(np.ascontiguousarray(lesion_mask, dtype=np.uint8), connectivity=CONNECTIVITY,
                                      return_N=True)
    if n == 0:
        return LesionPruning(np.zeros(lesion_mask.shape, np.uint32), np.zeros(0, np.float32), 0, 0)
    ids = np.arange(1, n + 1)
    # per-component maxima over the lesion voxels only (ndimage.maximum sorts the whole box: 10x slower)
    inside = cc > 0
    labels = cc[inside]
    maxima = np.full(n + 1, -np.inf, np.float32)
    np.maximum.at(maxima, labels, lesion_probability[inside].astype(np.float32))
    maxima = maxima[1:]
    sizes = np.bincount(labels, minlength=n + 1)[1:]
    keep = maxima >= threshold
    # Renumber kept components 1..k, largest first, so lesion ids are stable and meaningful.
    kept_ids = ids[keep][np.argsort(-sizes[keep], kind="stable")]
    lut = np.zeros(n + 1, np.uint32)
    lut[kept_ids] = np.arange(1, len(kept_ids) + 1, dtype=np.uint32)
    return LesionPruning(lut[cc], maxima[kept_ids - 1], int((~keep).sum()), int(sizes[~keep].sum()))


def max_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two points (3D Feret diameter), via the convex hull for large sets."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 64:
        # A flat (single-slice) lesion has a degenerate 3D hull: keep all its boundary points then.
        with contextlib.suppress(QhullError, ValueError):
            points_mm = points_mm[ConvexHull(points_mm).vertices]
    if len(points_mm) > 4000:  # degenerate hull of a large flat lesion: subsample the boundary evenly
        points_mm = points_mm[:: len(points_mm) // 4000 + 1]
    return float(pdist(points_mm).max())


def lesion_table(components: np.ndarray, max_probability: np.ndarray, ct_values: np.ndarray,
                 index_to_physical: np.ndarray, voxel_volume_ml: float, spacing_zyx: tuple[float, float, float],
                 ) -> list[LesionRecord]:
    """One :class:`LesionRecord` per component id ``1..n``.

    Args:
        components: lesion ids on a box grid.
        max_probability: maximum lesion probability per id (index = id - 1).
        ct_values: CT intensities (HU) on the same box grid.
        index_to_physical: 4x4 matrix mapping box ``(i, j, k, 1)`` to LPS mm.
        voxel_volume_ml: volume of one voxel.
        spacing_zyx: voxel size along the array axes, used for voxel extents in the diameter.
    """
    n = len(max_probability)
    records: list[LesionRecord] = []
    if n == 0:
        return records
    slices = ndimage.find_objects(components, max_label=n)
    for lesion_id in range(1, n + 1):
        sl = slices[lesion_id - 1]
        if sl is None:
            continue
        local = components[sl] == lesion_id
        kji = np.argwhere(local) + np.array([s.start for s in sl])
        ijk = kji[:, ::-1].astype(np.float64)
        phys = ijk @ index_to_physical[:3, :3].T + index_to_physical[:3, 3]
        # Diameter from boundary voxels only (interior voxels cannot be extremal).
        boundary = local & ~ndimage.binary_erosion(local)
        bkji = np.argwhere(boundary) + np.array([s.start for s in sl])
        bphys = bkji[:, ::-1].astype(np.float64) @ index_to_physical[:3, :3].T + index_to_physical[:3, 3]
        diameter = max_diameter_mm(bphys) if len(bphys) > 1 else float(min(spacing_zyx))
        records.append(
            LesionRecord(
                lesion_id=lesion_id,
                voxels=int(local.sum()),
                volume_ml=float(local.sum()) * voxel_volume_ml,
                max_diameter_mm=diameter,
                centroid_lps=tuple(float(c) for c in phys.mean(axis=0)),
                mean_hu=float(ct_values[sl][local].astype(np.float64).mean()),
                max_probability=float(max_probability[lesion_id - 1]),
            )
        )
    return records
