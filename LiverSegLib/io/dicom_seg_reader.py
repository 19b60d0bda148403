"""A DICOM Segmentation (SEG) read as a liver/lesion labelmap on the grid of a CT or labelmap it belongs to.

A SEG stores frames only where a segment has voxels, each with its own position, so it has no grid of its own:
its frames are placed onto a given grid, and refused (one line) when they do not lie on it (another orientation,
pixel spacing or size, or a position between slices). Segments are recognised by their coded type: liver
(SNOMED CT 10200004, or SNOMED RT T-62000 as dcmqi writes it) and lesion (neoplasm 108369006 / M-80003), else by a
label naming them; other segments are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LiverSegLib.errors import InputError
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, Volume

__all__ = ["is_dicom_seg", "read_seg_labelmap"]

_LIVER_CODES = {("SCT", "10200004"), ("SRT", "T-62000")}
_LESION_CODES = {("SCT", "108369006"), ("SRT", "M-80003"), ("SCT", "52988006"), ("SRT", "M-01000")}
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation (header only)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM":
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - any unreadable header: not a SEG we can use
        return False
    return str(ds.get("SOPClassUID", "")) == _SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"


def _role(segment) -> int | None:
    code = segment.SegmentedPropertyTypeCodeSequence[0]
    key = (str(code.CodingSchemeDesignator), str(code.CodeValue))
    label = str(segment.get("SegmentLabel", "")).lower()
    if key in _LESION_CODES or any(w in label for w in ("lesion", "tumor", "tumour")):
        return LESION_LABEL
    if key in _LIVER_CODES or label == "liver":
        return LIVER_LABEL
    return None


def read_seg_labelmap(path: str | Path, grid: Volume) -> Volume:
    """The SEG at ``path`` as a uint8 labelmap on ``grid`` (0 background, 1 liver, 2 lesion; lesion wins).

    Raises:
        InputError: unreadable, not a SEG, no liver or lesion segment, or frames that do not lie on ``grid``.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read DICOM SEG {path}: {' '.join(str(exc).split())[:200]}") from None
    if str(ds.get("Modality", "")) != "SEG":
        raise InputError(f"{path} is a DICOM {ds.get('Modality', '?')} file, not a segmentation (SEG)")
    frames = ds.get("PerFrameFunctionalGroupsSequence", [])
    pixels = pixels.reshape(len(frames), int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        pixels = pixels * 2 > int(ds.get("MaximumFractionalValue", 255))
    roles = {int(s.SegmentNumber): _role(s) for s in ds.SegmentSequence}
    if not any(roles.values()):
        names = ", ".join(repr(str(s.get("SegmentLabel", ""))) for s in ds.SegmentSequence)
        raise InputError(f"{path.name} has no liver or liver-lesion segment (segments: {names})")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    out = np.zeros(grid.array_zyx.shape, np.uint8)
    to_index = np.linalg.inv(grid.index_to_physical_matrix())
    spacing_ji = np.asarray(grid.spacing_xyz[1::-1], float)  # DICOM PixelSpacing: row (j), column (i)
    grid_orientation = np.concatenate([grid.direction[:, 0], grid.direction[:, 1]])
    if (int(ds.Rows), int(ds.Columns)) != grid.array_zyx.shape[1:]:
        raise InputError(f"{path.name} frames are {ds.Rows}x{ds.Columns} pixels but the grid's slices are "
                         f"{grid.array_zyx.shape[1]}x{grid.array_zyx.shape[2]}: the SEG does not belong to this CT")
    for number, item in enumerate(frames):
        role = roles.get(int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        if role is None:
            continue
        orientation = _functional(item, shared, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = _functional(item, shared, "PixelMeasuresSequence").PixelSpacing
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        ijk = to_index[:3, :3] @ position + to_index[:3, 3]
        k = int(round(ijk[2]))
        if (not np.allclose(np.asarray(orientation, float), grid_orientation, atol=1e-3)
                or not np.allclose(np.asarray(spacing, float), spacing_ji, rtol=1e-3)
                or not np.allclose(ijk, [0, 0, k], atol=0.05) or not 0 <= k < out.shape[0]):
            raise InputError(f"frame {number + 1} of {path.name} does not lie on a slice of the CT's grid (position "
                             f"{np.round(position, 2).tolist()} mm): the SEG does not belong to this CT")
        mask = pixels[number] > 0
        out[k][mask & (out[k] == 0)] = LIVER_LABEL
        if role == LESION_LABEL:
            out[k][mask] = LESION_LABEL
    return grid.with_array(out, format="dicom-seg", path=str(path))


def _functional(item, shared, name: str):
    if name in item:
        return item[name].value[0]
    if shared is not None and name in shared:
        return shared[name].value[0]
    raise InputError(f"a DICOM SEG frame lacks its {name}: the file is incomplete")
