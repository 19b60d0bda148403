"""Linear sampling of a stage-grid probability map onto native voxels of a box (exact grid relation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

__all__ = ["sample_to_native"]


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
