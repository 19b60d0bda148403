"""Closed surfaces of a segmentation's segments as STL/OBJ files, for surgical planning and 3D printing.

Two sources of meshes:

- ``source="labelmap"`` (default): each segment's binary labelmap meshed by LiverSegLib's
  :func:`~LiverSegLib.outputs.surfaces.labelmap_surface` (discrete flying edges on a padded crop, mild windowed-sinc
  smoothing), i.e. exactly the meshes ``liverseg segment --surfaces`` writes. Always closed and manifold, enclosed
  volume within a few percent of the voxel count, also for small or ragged lesions.
- ``source="closedSurface"``: the segmentation's closed-surface representation, what Slicer's 3D view shows (the
  node's own when it has one, else made in a temporary copy with the node's conversion parameters, so exporting
  never changes the node). Slicer's default smoothing (factor 0.5) shrinks small, ragged segments by 10 % or more
  and can pinch thin bridges into coincident vertices (non-manifold once written as STL), hence not the default.

Either way the node's parent transforms are applied and the files are LPS by default, like Slicer's own "Export to
files" (RAS on request). The coordinate system is part of every file name (``Liver_LPS.stl``) because CAD and
printing tools cannot tell. Each file is written to a temporary name and renamed, so a reader never sees half a mesh
(LiverSegLib's :func:`~LiverSegLib.outputs.surfaces.write_surface`, as the CLI).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from LiverSegLib.errors import InputError
from LiverSegLib.outputs.surfaces import labelmap_surface, outward_normals, write_surface
from LiverSegLib.types import Volume

from .segmentation_writer import BINARY_LABELMAP, ensureConverterRules

__all__ = ["exportSurfaces", "SURFACE_FORMATS"]

SURFACE_FORMATS = ("STL", "OBJ")
CLOSED_SURFACE = "Closed surface"


def _fileStem(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "segment"
    unique, n = stem, 2
    while unique.lower() in taken:
        unique, n = f"{stem}_{n}", n + 1
    taken.add(unique.lower())
    return unique


def _orientedMesh(polyData: vtk.vtkPolyData, lps: bool) -> vtk.vtkPolyData:
    """``polyData`` (RAS) in LPS when asked, with consistent outward normals (a mirror flips the winding)."""
    if not lps:
        return outward_normals(polyData)
    transform = vtk.vtkTransform()
    transform.Scale(-1.0, -1.0, 1.0)
    toLps = vtk.vtkTransformPolyDataFilter()
    toLps.SetTransform(transform)
    toLps.SetInputData(polyData)
    toLps.Update()
    return outward_normals(toLps.GetOutput())


def exportSurfaces(segmentationNode, folder, fileFormat: str = "STL", coordinateSystem: str = "LPS",
                   segmentIds: list[str] | None = None, source: str = "labelmap") -> list[Path]:
    """Write one closed surface per non-empty segment and return the paths.

    Args:
        segmentationNode: the segmentation (e.g. from ``LiverSegLogic.process``).
        folder: output folder (created if needed); existing files of the same name are replaced.
        fileFormat: "STL" (binary) or "OBJ".
        coordinateSystem: "LPS" (default, as Slicer's own export and DICOM/ITK tools) or "RAS"; in the file names.
        segmentIds: which segments (default: all).
        source: "labelmap" (default, LiverSeg's mesher, as the CLI) or "closedSurface" (Slicer's representation);
            see the module doc. A segmentation without a binary labelmap always uses its closed surfaces.

    Returns:
        Paths like ``folder/Liver_LPS.stl``, ``folder/Liver_lesion_LPS.stl`` in segment order. The liver surface of
        a LiverSeg result encloses its lesions too (the "Liver" segment is the whole organ).
    """
    fileFormat, coordinateSystem = str(fileFormat).upper(), str(coordinateSystem).upper()
    if fileFormat not in SURFACE_FORMATS:
        raise InputError(f"unsupported surface format {fileFormat!r}: use STL or OBJ")
    if coordinateSystem not in ("LPS", "RAS"):
        raise InputError(f"unsupported coordinate system {coordinateSystem!r}: use LPS or RAS")
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError("exportSurfaces needs a segmentation node")
    if source not in ("labelmap", "closedSurface"):
        raise InputError(f"unsupported surface source {source!r}: use 'labelmap' or 'closedSurface'")
    segmentation = segmentationNode.GetSegmentation()
    ids = list(segmentIds) if segmentIds is not None else list(segmentation.GetSegmentIDs())
    missing = [i for i in ids if segmentation.GetSegment(i) is None]
    if missing:
        raise InputError(f"segment(s) {', '.join(missing)} not found in '{segmentationNode.GetName()}'")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if source == "labelmap" and segmentation.ContainsRepresentation(BINARY_LABELMAP):
        surfaces = [(segmentId, _labelmapSurface(segmentationNode, segmentId)) for segmentId in ids]
    else:
        surfaces = _closedSurfaces(segmentationNode, ids)
    paths: list[Path] = []
    taken: set[str] = set()
    for segmentId, polyData in surfaces:
        if polyData is None or polyData.GetNumberOfCells() == 0:
            continue  # an empty segment has no surface
        stem = _fileStem(segmentation.GetSegment(segmentId).GetName(), taken)
        path = out / f"{stem}_{coordinateSystem}.{fileFormat.lower()}"
        paths.append(write_surface(_orientedMesh(polyData, coordinateSystem == "LPS"), path, fileFormat))
    return paths


def _labelmapSurface(segmentationNode, segmentId: str) -> vtk.vtkPolyData | None:
    """The segment's binary labelmap meshed by LiverSegLib, in world RAS (parent transforms applied)."""
    image = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image)  # a 0/1 copy of this segment only
    extent = image.GetExtent()
    if image.GetPointData().GetScalars() is None or any(extent[2 * a + 1] < extent[2 * a] for a in range(3)):
        return None
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    first = ijkToRas @ np.array([extent[0], extent[2], extent[4], 1.0])  # the extent need not start at 0
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    mask = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    # the mesher works in "the volume's physical frame": here that frame is RAS, so the mesh comes out in RAS
    grid = Volume(np.asarray(mask > 0, np.uint8), tuple(spacing), tuple(first[:3]), ijkToRas[:3, :3] / spacing)
    polyData = labelmap_surface(grid, [1])
    if polyData.GetNumberOfCells() == 0:
        return None
    slicer.vtkSlicerSegmentationsModuleLogic.ApplyParentTransformToPolyData(segmentationNode, polyData)
    return polyData


def _closedSurfaces(segmentationNode, ids: list[str]) -> list[tuple[str, vtk.vtkPolyData | None]]:
    """(segment id, closed surface in world RAS) per segment, parent transforms applied.

    The node's own closed-surface representation is used when it has one (what the 3D view shows). Otherwise the
    surfaces are made in a temporary copy of the segmentation with the node's conversion parameters (smoothing
    ...), so the node itself is never changed by an export.
    """
    segmentation = segmentationNode.GetSegmentation()
    surfaces = []
    if segmentation.ContainsRepresentation(CLOSED_SURFACE):
        for segmentId in ids:
            polyData = vtk.vtkPolyData()
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(
                segmentationNode, segmentId, polyData, True)
            surfaces.append((segmentId, polyData))
        return surfaces
    ensureConverterRules()  # before the temporary segmentation is made: it copies the rules known at that time
    temporary = slicer.vtkSegmentation()
    temporary.SetSourceRepresentationName(segmentation.GetSourceRepresentationName())
    temporary.CopyConversionParameters(segmentation)
    for segmentId in ids:
        if not temporary.CopySegmentFromSegmentation(segmentation, segmentId):
            raise InputError(f"cannot read segment '{segmentId}' of '{segmentationNode.GetName()}'")
    if not temporary.CreateRepresentation(CLOSED_SURFACE):
        raise InputError(f"cannot make closed surfaces of '{segmentationNode.GetName()}'")
    for segmentId in ids:
        source = temporary.GetSegment(segmentId).GetRepresentation(CLOSED_SURFACE)
        if source is None:
            surfaces.append((segmentId, None))
            continue
        polyData = vtk.vtkPolyData()
        polyData.DeepCopy(source)
        slicer.vtkSlicerSegmentationsModuleLogic.ApplyParentTransformToPolyData(segmentationNode, polyData)
        surfaces.append((segmentId, polyData))
    return surfaces
