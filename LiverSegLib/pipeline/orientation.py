"""Bring any stored orientation to the axial LPS array order the 2.5D networks expect, and back.

The 2.5D networks work on axial slices seen the same way in training and inference: array axes
``[k, j, i]`` running superior, posterior and to the patient's left (LPS). A volume stored RAS, LAS,
coronal or with flipped slices is brought to that order by a pure permutation and flips of its array
(a numpy view: exact, no interpolation, no copy); results are mapped back the same way, so the labelmap
lands exactly on the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LiverSegLib.types import Volume

__all__ = ["Orientation", "to_canonical", "obliquity_deg"]


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
