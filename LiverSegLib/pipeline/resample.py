"""Resampling between the native grid and a stage's grid, without whole-volume float copies.

Grids are related the way ``torch.nn.functional.interpolate(..., align_corners=False)`` relates them: the
extent of the volume is kept, so native continuous index ``n`` and stage index ``s`` satisfy
``n = (s + 0.5) * scale - 0.5`` with ``scale = native_size / stage_size`` per axis.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

__all__ = ["stage_shape", "resample_to_shape", "stage_to_native_index"]


def stage_shape(shape_zyx: tuple[int, ...], spacing_xyz: tuple[float, float, float],
                target_xyz: tuple[float | None, float | None, float | None]) -> tuple[int, int, int]:
    """Array shape (z, y, x) of the stage grid; ``None`` in ``target_xyz`` keeps that axis native."""
    out = []
    for axis_zyx, size in enumerate(shape_zyx):
        axis_xyz = 2 - axis_zyx
        target = target_xyz[axis_xyz]
        out.append(size if target is None else max(1, round(size * spacing_xyz[axis_xyz] / target)))
    return tuple(out)  # type: ignore[return-value]


def resample_to_shape(array_zyx: np.ndarray, shape_zyx: tuple[int, int, int], chunk_slices: int = 32,
                      hu_window: tuple[float, float] | None = None) -> np.ndarray:
    """Linear resampling of a volume to ``shape_zyx`` as float32, processed a few slices at a time.

    In-plane resizing uses antialiased bilinear interpolation slice by slice (only ``chunk_slices`` native
    slices are ever held as float), then the slices are interpolated linearly along z on the small grid.
    Intensities are clipped to ``hu_window`` first when given, so the clip happens on the native values.
    """
    nz, ny, nx = array_zyx.shape
    tz, ty, tx = shape_zyx
    inplane = []
    for start in range(0, nz, chunk_slices):
        # np.array copies: the caller's volume is never modified, whatever its dtype
        block = torch.from_numpy(np.array(array_zyx[start:start + chunk_slices], dtype=np.float32))
        torch.nan_to_num_(block, nan=hu_window[0] if hu_window else 0.0)
        if hu_window is not None:
            block.clamp_(*hu_window)
        if (ny, nx) != (ty, tx):
            block = F.interpolate(block[:, None], size=(ty, tx), mode="bilinear", align_corners=False,
                                  antialias=True)[:, 0]
        inplane.append(block.numpy())
    small = np.concatenate(inplane, axis=0) if len(inplane) > 1 else inplane[0]
    if nz == tz:
        return small
    t = torch.from_numpy(small).reshape(nz, ty * tx).T[None]  # (1, y*x, z): 1D linear along z
    mode = "linear" if tz > nz else "area"  # area averaging when coarsening along z avoids skipping slices
    t = F.interpolate(t, size=tz, mode=mode, **({"align_corners": False} if mode == "linear" else {}))
    return t[0].T.reshape(tz, ty, tx).contiguous().numpy()


def stage_to_native_index(stage_index: np.ndarray, native_shape: tuple[int, ...],
                          stage_shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Map stage-grid (z, y, x) indices to continuous native (z, y, x) indices."""
    scale = np.asarray(native_shape, dtype=np.float64) / np.asarray(stage_shape_zyx, dtype=np.float64)
    return (np.asarray(stage_index, dtype=np.float64) + 0.5) * scale - 0.5
