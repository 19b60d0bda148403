"""The liver box: where the fine stage works, derived from the coarse liver (Han 2017, section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LiverSegLib.config import CascadeConfig
from LiverSegLib.pipeline.postprocess import cut_necks, largest_component

__all__ = ["Box", "coarse_gate", "coarse_liver", "coarse_liver_box", "coarse_voxel_ml", "liver_box"]

_AXIS_NAMES = ("z", "y", "x")


@dataclass(frozen=True)
class Box:
    """Inclusive-exclusive index ranges ``[start, stop)`` on the canonical native grid, (z, y, x) order."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    fallback: str | None = None  # why the whole volume is used, or None
    note: str | None = None  # what was adjusted without a fallback (a box clipped at the field-of-view edge)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @classmethod
    def whole(cls, shape_zyx: tuple[int, ...], reason: str) -> Box:
        return cls((0, 0, 0), tuple(int(s) for s in shape_zyx), reason)  # type: ignore[arg-type]


def coarse_voxel_ml(native_shape_zyx: tuple[int, ...], native_spacing_xyz: tuple[float, ...],
                    coarse_shape_zyx: tuple[int, ...]) -> float:
    """Volume in mL of one voxel of a stage grid that spans the native extent (see ``grids.py``)."""
    native_extent_mm = np.asarray(native_spacing_xyz[::-1], float) * np.asarray(native_shape_zyx, float)
    return float(np.prod(native_extent_mm / np.asarray(coarse_shape_zyx, float))) / 1000.0


def coarse_liver(coarse_fg: np.ndarray, native_shape_zyx: tuple[int, ...], native_spacing_xyz: tuple[float, ...],
                 cascade: CascadeConfig) -> np.ndarray:
    """The coarse liver on the coarse grid: the largest 3D component of the thresholded probability (Han 2017,
    section 3.1), with the parts beyond a thin neck cut off when ``cascade.coarse_neck_mm`` is set."""
    liver = largest_component(coarse_fg >= cascade.coarse_threshold)
    if cascade.coarse_neck_mm is None:
        return liver
    scale = np.asarray(native_shape_zyx, float) / np.asarray(coarse_fg.shape, float)
    spacing_zyx = tuple(np.asarray(native_spacing_xyz[::-1], float) * scale)
    return cut_necks(liver, spacing_zyx, cascade.coarse_neck_mm, cascade.coarse_neck_min_ml)


def coarse_liver_box(coarse_fg: np.ndarray, native_shape_zyx: tuple[int, ...], native_spacing_xyz: tuple[float, ...],
                     cascade: CascadeConfig, liver: np.ndarray | None = None) -> tuple[Box, float]:
    """The predictor's step from coarse probabilities to the fine stage's box, callable on its own.

    Thresholds the coarse foreground probability at ``cascade.coarse_threshold``, keeps the largest 3D component
    (Han 2017, section 3.1; see :func:`coarse_liver`) and boxes it with :func:`liver_box`.

    Args:
        liver: :func:`coarse_liver` of ``coarse_fg`` when the caller has it already (the predictor also needs it for
            :func:`coarse_gate`); computed here otherwise.

    Returns:
        The box and the volume of the coarse liver (largest component) in mL.
    """
    if liver is None:
        liver = coarse_liver(coarse_fg, native_shape_zyx, native_spacing_xyz, cascade)
    volume_ml = float(np.count_nonzero(liver)) * coarse_voxel_ml(native_shape_zyx, native_spacing_xyz, liver.shape)
    return liver_box(liver, native_shape_zyx, native_spacing_xyz, cascade), volume_ml


def liver_box(coarse_liver: np.ndarray, native_shape_zyx: tuple[int, ...], native_spacing_xyz: tuple[float, ...],
              cascade: CascadeConfig) -> Box:
    """Bounding box of the coarse liver on the native grid, plus the margin, clipped to the volume.

    The whole volume is used only when the coarse liver cannot be trusted: empty, smaller than
    ``cascade.min_liver_ml``, or (only when ``cascade.fallback_on_inplane_edge`` is set) touching the in-plane
    field-of-view edge. A liver at the edge of the volume is otherwise normal (a 512 x 512 CT whose lateral or
    anterior edge touches the liver, a scan range that stops at the dome): the box is clipped and ``note`` says so.

    Args:
        coarse_liver: boolean largest-component liver on the coarse grid (same extent as the native volume).
        native_shape_zyx: canonical native array shape.
        native_spacing_xyz: canonical native spacing.
        cascade: margins and fallback rules.
    """
    if not coarse_liver.any():
        return Box.whole(native_shape_zyx, "the coarse stage found no liver")
    volume_ml = float(np.count_nonzero(coarse_liver)) * coarse_voxel_ml(native_shape_zyx, native_spacing_xyz,
                                                                        coarse_liver.shape)
    if volume_ml < cascade.min_liver_ml:
        return Box.whole(native_shape_zyx, f"the coarse liver is tiny ({volume_ml:.1f} mL < {cascade.min_liver_ml} mL)")
    lo_c = np.empty(3, int)
    hi_c = np.empty(3, int)
    for axis in range(3):  # per-axis projections: no index array as large as the mask
        present = np.flatnonzero(coarse_liver.any(axis=tuple(a for a in range(3) if a != axis)))
        lo_c[axis], hi_c[axis] = present[0], present[-1]
    at_edge = [f"{_AXIS_NAMES[a]} {side}" for a in range(3) for side, hit in
               (("min", lo_c[a] == 0), ("max", hi_c[a] == coarse_liver.shape[a] - 1)) if hit]
    inplane_edge = [e for e in at_edge if not e.startswith("z")]
    if cascade.fallback_on_inplane_edge and inplane_edge:
        return Box.whole(native_shape_zyx, "the coarse liver touches the in-plane edge of the field of view")
    scale = np.asarray(native_shape_zyx, float) / np.asarray(coarse_liver.shape, float)
    spacing_zyx = np.asarray(native_spacing_xyz[::-1], float)
    margin = np.ceil(np.asarray(cascade.margin_mm[::-1], float) / spacing_zyx)
    # Coarse voxel s covers native continuous indices [s*scale - 0.5, (s+1)*scale - 0.5]; native voxel n spans
    # [n - 0.5, n + 0.5], so the native voxels that overlap coarse voxels lo..hi are floor(lo*scale) ..
    # ceil((hi+1)*scale) - 1 (the box keeps every native voxel a coarse liver voxel touches).
    start = np.floor(lo_c * scale) - margin
    stop = np.ceil((hi_c + 1) * scale) + margin
    start = np.clip(start, 0, native_shape_zyx).astype(int)
    stop = np.clip(stop, 1, native_shape_zyx).astype(int)
    stop = np.maximum(stop, start + 1)
    note = (f"the coarse liver touches the edge of the volume ({', '.join(at_edge)}): the box is clipped there"
            if at_edge else None)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in stop), None, note)  # type: ignore[arg-type]


def coarse_gate(coarse_fg: np.ndarray, native_shape_zyx: tuple[int, ...], box: Box, cascade: CascadeConfig,
                native_spacing_xyz: tuple[float, ...], liver: np.ndarray | None = None) -> np.ndarray:
    """Native voxels of ``box`` within ``cascade.coarse_gate_mm`` of the coarse liver (see :class:`CascadeConfig`).

    The coarse liver (:func:`coarse_liver`, or ``liver`` when the caller has it) with its holes filled (a hypodense
    tumour the coarse stage left out stays inside the gate), dilated by the gate distance on the coarse grid
    (Euclidean distance in mm), then sampled onto the box's native voxels.
    """
    from scipy import ndimage

    from LiverSegLib.pipeline.grids import sample_to_native

    assert cascade.coarse_gate_mm is not None
    if liver is None:  # the caller's coarse_liver() saves doing it again
        liver = coarse_liver(coarse_fg, native_shape_zyx, native_spacing_xyz, cascade)
    liver = ndimage.binary_fill_holes(liver)
    scale = np.asarray(native_shape_zyx, float) / np.asarray(coarse_fg.shape, float)
    coarse_spacing_zyx = np.asarray(native_spacing_xyz[::-1], float) * scale
    if not liver.any():
        return np.ones(box.shape, bool)  # nothing to gate by: the fine stage decides (the box is the whole volume)
    # The distance transform only where it can be within the gate: the liver's bounding box grown by the gate
    # distance (every voxel outside it is farther than the gate from every liver voxel, so the result is exact).
    reach = np.ceil(cascade.coarse_gate_mm / coarse_spacing_zyx).astype(int) + 1
    where = np.argwhere(liver)
    lo = np.maximum(where.min(axis=0) - reach, 0)
    hi = np.minimum(where.max(axis=0) + reach + 1, liver.shape)
    region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    near = np.zeros(liver.shape, np.float32)
    near[region] = ndimage.distance_transform_edt(~liver[region], sampling=coarse_spacing_zyx) <= cascade.coarse_gate_mm
    return sample_to_native(near, (0, 0, 0), scale, box) >= 0.5
