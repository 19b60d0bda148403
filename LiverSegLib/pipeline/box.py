"""The liver box: where the fine stage works, derived from the coarse liver (Han 2017, section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LiverSegLib.config import CascadeConfig

__all__ = ["Box", "liver_box"]


@dataclass(frozen=True)
class Box:
    """Inclusive-exclusive index ranges ``[start, stop)`` on the canonical native grid, (z, y, x) order."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    fallback: str | None = None  # why the whole volume is used, or None

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @classmethod
    def whole(cls, shape_zyx: tuple[int, ...], reason: str) -> Box:
        return cls((0, 0, 0), tuple(int(s) for s in shape_zyx), reason)  # type: ignore[arg-type]


def liver_box(coarse_liver: np.ndarray, native_shape_zyx: tuple[int, ...], native_spacing_xyz: tuple[float, ...],
              coarse_voxel_ml: float, cascade: CascadeConfig) -> Box:
    """Bounding box of the coarse liver on the native grid, plus the margin; the whole volume when untrusted.

    Args:
        coarse_liver: boolean largest-component liver on the coarse grid (same extent as the native volume).
        native_shape_zyx: canonical native array shape.
        native_spacing_xyz: canonical native spacing.
        coarse_voxel_ml: volume of one coarse voxel.
        cascade: margins and fallback rules.
    """
    if not coarse_liver.any():
        return Box.whole(native_shape_zyx, "the coarse stage found no liver")
    volume_ml = float(coarse_liver.sum()) * coarse_voxel_ml
    if volume_ml < cascade.min_liver_ml:
        return Box.whole(native_shape_zyx, f"the coarse liver is tiny ({volume_ml:.1f} mL < {cascade.min_liver_ml} mL)")
    coords = np.nonzero(coarse_liver.any(axis=0))  # in-plane extent first (cheap), then z
    y_lo, y_hi, x_lo, x_hi = coords[0].min(), coords[0].max(), coords[1].min(), coords[1].max()
    z_any = np.nonzero(coarse_liver.any(axis=(1, 2)))[0]
    lo_c = np.array([z_any.min(), y_lo, x_lo])
    hi_c = np.array([z_any.max(), y_hi, x_hi])
    cz, cy, cx = coarse_liver.shape
    if cascade.fallback_on_inplane_edge and (y_lo == 0 or x_lo == 0 or y_hi == cy - 1 or x_hi == cx - 1):
        return Box.whole(native_shape_zyx, "the coarse liver touches the in-plane edge of the field of view")
    scale = np.asarray(native_shape_zyx, float) / np.asarray(coarse_liver.shape, float)
    spacing_zyx = np.asarray(native_spacing_xyz[::-1], float)
    margin = np.ceil(np.asarray(cascade.margin_mm[::-1], float) / spacing_zyx)
    # Coarse voxel s covers native continuous indices [s*scale - 0.5, (s+1)*scale - 0.5].
    start = np.floor(lo_c * scale - 0.5 + 0.5) - margin
    stop = np.ceil((hi_c + 1) * scale - 0.5 + 0.5) + margin
    start = np.clip(start, 0, native_shape_zyx).astype(int)
    stop = np.clip(stop, 1, native_shape_zyx).astype(int)
    stop = np.maximum(stop, start + 1)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in stop), None)  # type: ignore[arg-type]


