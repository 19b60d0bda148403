"""Volume node <-> :class:`LiverSegLib.Volume`, with the node's exact IJK-to-RAS geometry.

Slicer stores a volume's geometry as a 4x4 IJK-to-RAS matrix; LiverSegLib works in LPS (like ITK and DICOM).
RAS -> LPS negates the x and y rows of the matrix. The spacing is the norm of each of the first three columns, the
direction the normalised columns, the origin the last column. ``arrayFromVolume`` indexes voxels ``[k, j, i]``,
which is exactly ``Volume.array_zyx``.

Only the node's own matrix is used (no parent transform): the segmentation made from it is placed under the same
parent transform as the volume, so both stay aligned whatever that transform is.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from LiverSegLib.errors import InputError
from LiverSegLib.types import Volume

__all__ = ["volumeFromNode", "checkScalarVolumeNode", "ijkToRasArray", "rasToLps", "LPS_FROM_RAS"]

# vector (RGB) and tensor volumes derive from the tensor volume class, diffusion-weighted ones from the scalar one
_NOT_GREY = ("vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def rasToLps(points: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RAS points as LPS (or LPS as RAS: the map is its own inverse)."""
    points = np.array(points, dtype=np.float64)
    points[..., :2] *= -1.0
    return points


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a 4x4 numpy array (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _describe(node) -> str:
    return f"'{node.GetName()}' ({node.GetClassName()})" if node is not None else "no node"


def checkScalarVolumeNode(node) -> None:
    """Raise :class:`InputError` unless ``node`` is a grey-scale 3D volume with voxels loaded.

    Refused: ``None``, anything that is not a volume node (models, segmentations, tables ...), vector/RGB, tensor and
    diffusion volumes (in MRML these derive from the scalar volume class, so they are checked by name), labelmap
    volumes (a labelmap is not a CT), and volumes without image data or with a degenerate matrix.
    """
    if node is None:
        raise InputError("no input volume selected: choose the CT volume to segment")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{_describe(node)} is not a volume: choose a CT volume (scalar volume node)")
    if any(node.IsA(name) for name in _NOT_GREY):
        raise InputError(f"{_describe(node)} is a vector/RGB or diffusion volume: LiverSeg needs a grey-scale CT")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{_describe(node)} is a labelmap volume, not a CT image: choose the CT volume")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{_describe(node)} has no voxel data loaded")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{_describe(node)} has {image.GetNumberOfScalarComponents()} components per voxel: "
                         "LiverSeg needs a grey-scale CT")
    dims = image.GetDimensions()
    if min(dims) < 1 or len(dims) != 3:
        raise InputError(f"{_describe(node)} has no voxels (dimensions {dims})")
    linear = ijkToRasArray(node)[:3, :3]
    if not np.all(np.isfinite(linear)) or abs(np.linalg.det(linear)) < 1e-12:
        raise InputError(f"{_describe(node)} has a degenerate IJK-to-RAS matrix (zero spacing?)")


def volumeFromNode(volumeNode, copy: bool = True) -> Volume:
    """The node's voxels and geometry as a LiverSegLib :class:`Volume` (LPS).

    Args:
        volumeNode: a grey-scale ``vtkMRMLScalarVolumeNode``.
        copy: copy the voxels (default). ``False`` shares VTK's memory: only safe while the node is not modified.

    Raises:
        InputError: the node is not a grey-scale volume with voxel data (see :func:`checkScalarVolumeNode`).
    """
    checkScalarVolumeNode(volumeNode)
    matrix = LPS_FROM_RAS @ ijkToRasArray(volumeNode)
    linear = matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    array = slicer.util.arrayFromVolume(volumeNode)
    if copy:
        array = np.array(array, copy=True)
    metadata = {"format": "slicer", "node_name": volumeNode.GetName(), "node_id": volumeNode.GetID()}
    return Volume(array, tuple(spacing), tuple(matrix[:3, 3]), direction, metadata)
