"""The grids of a stage and of the native volume: resampling between them without whole-volume float copies.

Grids are related the way ``torch.nn.functional.interpolate(..., align_corners=False)`` relates them: the
extent of the volume is kept, so native continuous index ``n`` and stage index ``s`` satisfy
``n = (s + 0.5) * scale - 0.5`` with ``scale = native_size / stage_size`` per axis. :func:`resample_to_shape`
makes a stage grid from the native one; :func:`sample_to_native` reads a stage-grid probability map back at the
native voxels of a box (linear, exact grid relation).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

__all__ = ["stage_shape", "resample_to_shape", "stage_to_native_index", "sample_to_native"]


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


def sample_to_native(stage_array: np.ndarray, stage_origin_native: tuple[int, int, int], scale: np.ndarray,
                     box, slab: int = 16) -> np.ndarray:
    """Values of ``stage_array`` at the native voxels of ``box``, as float16.

    The stage grid covers the native region starting at ``stage_origin_native`` with ``scale`` native voxels per
    stage voxel along (z, y, x), as made by ``resample_to_shape``: native index ``n`` sits at stage index
    ``(n - origin + 0.5) / scale - 0.5``. Processed in slabs of native slices to bound memory.
    """
    src = torch.from_numpy(np.ascontiguousarray(stage_array, dtype=np.float32))[None, None]
    sizes = np.asarray(stage_array.shape, float)
    axes = []
    for a in range(3):
        n = np.arange(box.start[a], box.stop[a], dtype=np.float64)
        s = (n - stage_origin_native[a] + 0.5) / scale[a] - 0.5
        # align_corners=True: -1 and 1 are the centres of the first and last stage voxels
        g = 2.0 * s / (sizes[a] - 1) - 1.0 if sizes[a] > 1 else np.zeros_like(s)
        axes.append(torch.from_numpy(g.astype(np.float32)))
    out = np.empty(box.shape, np.float16)
    gy, gx = torch.meshgrid(axes[1], axes[2], indexing="ij")
    for start in range(0, box.shape[0], slab):
        gz = axes[0][start:start + slab]
        grid = torch.stack(torch.broadcast_tensors(gx[None], gy[None], gz[:, None, None]), dim=-1)[None]
        vals = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out[start:start + len(gz)] = vals[0, 0].half().numpy()
    return out
