"""Checks on an input volume before any model runs."""

from __future__ import annotations

import numpy as np

from LiverSegLib.errors import InputError
from LiverSegLib.types import Volume

__all__ = ["check_segmentable", "ct_intensity_warning", "MIN_INPLANE_VOXELS", "MIN_INPLANE_MM"]

MIN_INPLANE_VOXELS = 16
MIN_INPLANE_MM = 40.0


def check_segmentable(volume: Volume) -> None:
    """Raise :class:`InputError` when the volume cannot be segmented (too small, not numeric, no finite values)."""
    a = volume.array_zyx
    if a.dtype.kind not in "iuf":
        raise InputError(f"voxel type {a.dtype} is not a grey-scale number; LiverSeg needs a CT volume in HU")
    if a.size == 0:
        raise InputError("the volume is empty (0 voxels)")
    nz, ny, nx = a.shape
    inplane = sorted(volume.shape_xyz)[1:]  # the two largest axes are in-plane whatever the stored orientation
    extent = sorted(n * s for n, s in zip(volume.shape_xyz, volume.spacing_xyz, strict=True))[1:]
    if min(inplane) < MIN_INPLANE_VOXELS or min(extent) < MIN_INPLANE_MM:
        raise InputError(
            f"the volume ({nx}x{ny}x{nz} voxels, {extent[0]:.0f} x {extent[1]:.0f} mm) is too small to segment: "
            f"a liver CT needs at least {MIN_INPLANE_VOXELS}x{MIN_INPLANE_VOXELS} voxels covering "
            f"{MIN_INPLANE_MM:.0f} mm per slice"
        )
    if a.dtype.kind == "f":
        sample = a[:: max(1, nz // 64), ::4, ::4]
        if not np.isfinite(sample).any() and not np.isfinite(a).any():
            raise InputError("the volume has no finite voxel values (all NaN or infinite)")
    first = a.flat[0]
    # Some readers turn NaN into 0, so an all-NaN file arrives as a constant volume: nothing to segment either.
    if np.all(a[:: max(1, nz // 16)] == first) and np.all(a == first):
        raise InputError(f"the volume holds the single value {first} everywhere; there is no image to segment")


def ct_intensity_warning(array_zyx: np.ndarray) -> str | None:
    """A warning when the intensities do not look like CT in Hounsfield units, else ``None``.

    CT of the abdomen has air (about -1000 HU) and fat (about -100 HU) around soft tissue (0 to 100 HU);
    MR, PET or a rescaled image does not.
    """
    nz = array_zyx.shape[0]
    sample = np.asarray(array_zyx[:: max(1, nz // 64), ::2, ::2], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    # Values below -1100 HU are not tissue or air but scanner padding outside the circular field of view (-3024,
    # -2048, -2000 by vendor): leave them out, or every 512 x 512 scan with a round FOV would be flagged.
    physical = sample[sample >= -1100.0]
    if physical.size >= 0.1 * sample.size:
        sample = physical
    p1, p99 = np.percentile(sample, [1, 99])
    if p1 > -300 or p99 < 0 or p1 < -3000 or p99 > 5000:
        return (f"intensities (1st-99th percentile {p1:.0f} to {p99:.0f}) do not look like CT in Hounsfield units; "
                "the segmentation may be meaningless")
    return None
