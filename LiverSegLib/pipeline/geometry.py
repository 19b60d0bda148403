"""The geometry of a volume's walk through the pipeline: from its stored orientation to the axial LPS array
order the 2.5D networks expect, and back.

* **exact reorientation** -- :func:`to_canonical`: the networks work on axial slices seen the same way in training
  and inference: array axes ``[k, j, i]`` running superior, posterior and to the patient's left (LPS). A volume
  stored RAS, LAS, coronal or with flipped slices is brought to that order by a pure permutation and flips of its
  array (a numpy view: exact, no interpolation, no copy); results are mapped back the same way, so the labelmap
  lands exactly on the input grid.
* **oblique volumes** -- an image whose axes are rotated away from the patient axes cannot be made axial that way:
  its "slices" are tilted planes through the body, which the networks were never trained on. Such a volume is
  resampled first:

  - **when** -- :func:`needs_resampling`: some image axis lies more than :data:`MAX_OBLIQUITY_DEG` (10 degrees)
    from the patient axis closest to it (:func:`obliquity_deg`). Below that the exact view is kept: a few degrees
    of tilt change a 2.5D stack far less than the interpolation of a resampling does, and most scanners write
    such small (gantry-tilt or positioning) angles.
  - **grid** -- :func:`to_axial_grid`: identity direction (axial LPS), covering the bounding box of the stored
    volume's full physical extent (the 8 outer corners of its corner voxels), so no voxel of the input is cut off.
    The spacing along each patient axis is the stored spacing of the image axis closest to it (the same pairing as
    ``to_canonical``), so an axial-ish 0.7 x 0.7 x 5 mm scan stays 0.7 x 0.7 x 5 mm with its slice spacing kept
    and the voxel count grows only by the bounding box.
  - **values** -- linear interpolation of the CT; points outside the stored volume read as air (-1024 HU), or as
    the image's own minimum when it holds nothing that low (an image not in HU, unsigned storage).
  - **back** -- :func:`labelmap_to_original` maps a labelmap on the axial grid onto the stored grid by
    nearest-neighbour resampling in physical space (every stored voxel centre takes the label of the axial voxel
    that contains it).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813

from LiverSegLib.types import LESION_LABEL, SegmentationResult, Volume

__all__ = ["Orientation", "to_canonical", "obliquity_deg", "MAX_OBLIQUITY_DEG", "AIR_HU", "needs_resampling",
           "to_axial_grid", "labelmap_to_original"]


@dataclass(frozen=True)
class Orientation:
    """How the canonical array was made from the stored one.

    ``axes[c]`` is the stored array axis that became canonical array axis ``c``; ``flips[c]`` tells whether
    it was reversed.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array_zyx: np.ndarray) -> np.ndarray:
        """Stored -> canonical array order (a view)."""
        out = np.transpose(array_zyx, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def invert(self, array_zyx: np.ndarray) -> np.ndarray:
        """Canonical -> stored array order (a view)."""
        out = array_zyx[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(out, np.argsort(self.axes))


def obliquity_deg(direction: np.ndarray) -> float:
    """Largest angle (degrees) between an image axis and the patient axis closest to it."""
    d = np.abs(np.asarray(direction, dtype=np.float64))
    cosines = np.clip(d.max(axis=0) / np.linalg.norm(d, axis=0), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines.min())))


def to_canonical(volume: Volume) -> tuple[Volume, Orientation]:
    """Return the volume as an axial LPS-ordered view and the :class:`Orientation` that undoes it.

    The returned volume describes the same voxels in the same patient space (its origin, spacing and
    direction are rewritten to match the permuted/flipped array), so ``index_to_physical`` gives the
    same LPS point for the same voxel.
    """
    d = volume.direction
    # Image axis (i=0, j=1, k=2) that is closest to each patient axis (x=L, y=P, z=S); resolve ties greedily.
    order = np.argsort(-np.abs(d), axis=None)
    patient_of_image: dict[int, int] = {}
    used_patient: set[int] = set()
    for flat in order:
        patient, image = divmod(int(flat), 3)
        if image in patient_of_image or patient in used_patient:
            continue
        patient_of_image[image] = patient
        used_patient.add(patient)
    image_of_patient = {p: i for i, p in patient_of_image.items()}
    # Canonical array axis c (0=z, 1=y, 2=x) takes the image axis aligned with patient axis 2-c; stored array
    # axis of image axis n is 2-n.
    axes = tuple(2 - image_of_patient[2 - c] for c in range(3))
    flips = tuple(bool(d[2 - c, image_of_patient[2 - c]] < 0) for c in range(3))
    orient = Orientation(axes, flips)  # type: ignore[arg-type]

    shape_xyz = volume.shape_xyz
    new_dir = np.zeros((3, 3))
    new_spacing = [0.0, 0.0, 0.0]
    first_voxel_ijk = np.zeros(3)
    for patient in range(3):
        image = image_of_patient[patient]
        sign = -1.0 if d[patient, image] < 0 else 1.0
        new_dir[:, patient] = d[:, image] * sign
        new_spacing[patient] = volume.spacing_xyz[image]
        if sign < 0:
            first_voxel_ijk[image] = shape_xyz[image] - 1
    new_origin = volume.index_to_physical(first_voxel_ijk)
    canonical = Volume(orient.apply(volume.array_zyx), tuple(new_spacing), tuple(new_origin), new_dir,
                       dict(volume.metadata))
    return canonical, orient


MAX_OBLIQUITY_DEG = 10.0
AIR_HU = -1024.0


def needs_resampling(volume: Volume, max_obliquity_deg: float = MAX_OBLIQUITY_DEG) -> bool:
    """True when an image axis of ``volume`` is more than ``max_obliquity_deg`` away from every patient axis."""
    return obliquity_deg(volume.direction) > max_obliquity_deg


def _image(array_zyx: np.ndarray, volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx), isVector=False)
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return image


def _resample(image: sitk.Image, grid: Volume, shape_zyx: tuple[int, int, int], interpolator: int,
              default: float, pixel_id: int) -> np.ndarray:
    """``image`` sampled at the voxel centres of ``grid``'s geometry (``shape_zyx`` voxels) as a [k, j, i] array."""
    out = sitk.Resample(image, [int(n) for n in shape_zyx[::-1]], sitk.Transform(), interpolator, grid.origin_xyz,
                        grid.spacing_xyz, tuple(float(v) for v in grid.direction.ravel()), float(default), pixel_id)
    return sitk.GetArrayFromImage(out)


def to_axial_grid(volume: Volume) -> tuple[Volume, Callable[[np.ndarray], np.ndarray]]:
    """Resample ``volume`` onto an axis-aligned LPS grid over its physical extent (see the module docstring).

    Returns:
        ``(axial, to_original)``: the resampled volume (identity direction; same pixel type as the input for
        integer types, float32 for float types; metadata copied and ``resampled_from`` added) and a function that
        maps a ``[k, j, i]`` label array on ``axial``'s grid to a uint8 array on ``volume``'s grid (nearest
        neighbour in physical space, 0 outside).
    """
    spacing = np.asarray(to_canonical(volume)[0].spacing_xyz)  # stored spacing of the closest image axis, per x, y, z
    n = np.asarray(volume.shape_xyz, dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5) for k in (-0.5, n[2] - 0.5)])
    lps = volume.index_to_physical(corners)
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    size = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6)).astype(int)
    origin = lo - (size * spacing - (hi - lo)) / 2.0 + spacing / 2.0  # centred on the extent, voxel centres
    shape_zyx = (int(size[2]), int(size[1]), int(size[0]))
    geometry = Volume(np.zeros((1, 1, 1), np.uint8), tuple(spacing), tuple(origin), np.eye(3))

    array = volume.array_zyx
    pixel = sitk.sitkFloat32 if array.dtype.kind == "f" else None
    source = _image(array, volume)
    outside = max(float(np.nanmin(array)), AIR_HU) if array.size else AIR_HU
    resampled = _resample(source, geometry, shape_zyx, sitk.sitkLinear, outside,
                          pixel if pixel is not None else source.GetPixelID())
    del source
    axial = Volume(resampled, tuple(spacing), tuple(origin), np.eye(3),
                   {**volume.metadata, "resampled_from": {"obliquity_deg": round(obliquity_deg(volume.direction), 3),
                                                         "shape_zyx": list(array.shape)}})
    stored_shape = tuple(int(s) for s in array.shape)

    def to_original(labels_zyx: np.ndarray) -> np.ndarray:
        if labels_zyx.shape != axial.array_zyx.shape:
            raise ValueError(f"labelmap shape {labels_zyx.shape} differs from the axial grid {axial.array_zyx.shape}")
        image = _image(labels_zyx.astype(np.uint8, copy=False), axial)
        return _resample(image, volume, stored_shape, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    return axial, to_original


def labelmap_to_original(result: SegmentationResult, volume: Volume,
                         to_original: Callable[[np.ndarray], np.ndarray]) -> SegmentationResult:
    """Turn a result computed on the axial grid into one on ``volume``'s stored grid (modified in place, returned).

    The labelmap is mapped back by nearest neighbour and the liver and lesion volumes are recounted on it, so they
    agree with the labelmap that is written out. The lesion table stays as measured on the axial grid: its centroids
    are LPS millimetres, valid on any grid, and its per-lesion volumes and diameters were measured at the resampled
    resolution (so their sum can differ slightly from ``lesion_volume_ml``, and a lesion smaller than a stored voxel
    may have no voxel in the mapped labelmap).
    """
    t0 = time.perf_counter()
    obliquity = obliquity_deg(volume.direction)
    axial = result.labelmap
    labels = to_original(axial.array_zyx)
    result.labelmap = volume.with_array(labels)
    result.liver_volume_ml = int(np.count_nonzero(labels)) * volume.voxel_volume_ml
    result.lesion_volume_ml = int(np.count_nonzero(labels == LESION_LABEL)) * volume.voxel_volume_ml
    result.timings_s["resample"] = result.timings_s.get("resample", 0.0) + time.perf_counter() - t0
    result.warnings.append(f"the image axes are {obliquity:.0f} degrees oblique to the patient axes; the volume was "
                           "resampled to an axial grid for segmentation and the labels mapped back to the input grid")
    result.details["resampled_to_axial"] = {
        "obliquity_deg": round(obliquity, 3),
        "axial_shape_zyx": list(axial.array_zyx.shape),
        "axial_spacing_xyz": [round(s, 6) for s in axial.spacing_xyz],
        "axial_origin_xyz": [round(o, 4) for o in axial.origin_xyz],
    }
    return result
