"""Per-lesion statistics of a liver segmentation as a ``vtkMRMLTableNode`` (for planners).

One row per lesion: id, volume (mL), maximum 3D diameter (mm), mean HU, centroid in RAS mm (Slicer's coordinate
system, in the volume's own frame: before any parent transform) and the run's maximum lesion probability.
Liver volume (whole organ incl. lesions), lesion volume, lesion count and tumour burden (%) are table node
attributes ``LiverSeg.*``.

When the segments are still exactly what ``LiverSegLogic.process`` wrote (same voxel counts as recorded on the
node), the run's own lesion table is used (it knows each lesion's probability). Otherwise, e.g. after manual edits
or for a segmentation made elsewhere, the lesions are recomputed from the segments: 26-connected components of the
lesion segment on the volume's grid, largest first, measured by the same code as the library's table.
"""

from __future__ import annotations

import json

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from LiverSegLib.config import TERMINOLOGY
from LiverSegLib.errors import InputError
from LiverSegLib.types import LesionRecord

from .segmentation_writer import ATTRIBUTE_PREFIX, placeInSubjectHierarchy
from .volumes import rasToLps, volumeFromNode

__all__ = ["computeStatistics", "segmentContents", "segmentArray", "findSegment", "segmentTag",
           "STATISTICS_REFERENCE_ROLE", "COLUMNS"]

STATISTICS_REFERENCE_ROLE = "LiverSegStatistics"
# the segments are found by their SNOMED type codes (from the one terminology table, LiverSegLib.config)
LIVER_CODE, NEOPLASM_CODE = TERMINOLOGY["Liver"]["type"]["code"], TERMINOLOGY["Liver lesion"]["type"]["code"]
COLUMNS = ("Lesion", "Volume (mL)", "Max diameter (mm)", "Mean (HU)", "Centroid R (RAS mm)", "Centroid A (RAS mm)",
           "Centroid S (RAS mm)", "Max probability")


def segmentTag(segment, name: str) -> str:
    """A segment tag's value ("" when absent)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def findSegment(segmentationNode, typeCode: str, name: str) -> str | None:
    """Id of the segment with terminology type ``typeCode`` (SNOMED CT), else of the one named ``name``."""
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in segmentation.GetSegmentIDs():
        tag = segmentTag(segmentation.GetSegment(segmentId), slicer.vtkSegment.GetTerminologyEntryTagName())
        fields = tag.split("~")
        if len(fields) > 2 and fields[2].split("^")[1:2] == [typeCode]:
            return segmentId
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    return segmentId or None


def segmentArray(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """The segment as a uint8 0/1 array ``[k, j, i]`` on ``volumeNode``'s voxel grid (nearest neighbour).

    Both nodes must be under the same parent transform (as ``LiverSegLogic.process`` places them).
    """
    if segmentationNode.GetTransformNodeID() != volumeNode.GetTransformNodeID():
        raise InputError(f"'{segmentationNode.GetName()}' and '{volumeNode.GetName()}' are under different "
                         "transforms: harden the transforms first")
    image = volumeNode.GetImageData()
    shape = tuple(reversed(image.GetDimensions()))
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)  # a 0/1 copy of this segment only
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0] or extent[3] < extent[2] \
            or extent[5] < extent[4]:
        return np.zeros(shape, np.uint8)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(image.GetExtent())
    reference.SetImageToWorldMatrix(matrix)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise InputError(f"cannot resample segment '{segmentId}' to the grid of '{volumeNode.GetName()}'")
    array = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return (array > 0).astype(np.uint8)


def _storedLesions(segmentationNode, liverVoxels: int, lesionVoxels: int) -> list[LesionRecord] | None:
    """The run's lesion table when the segments still have the voxel counts recorded at writing time."""
    get = segmentationNode.GetAttribute
    try:
        if int(get(ATTRIBUTE_PREFIX + "LiverVoxels")) != liverVoxels or \
                int(get(ATTRIBUTE_PREFIX + "LesionVoxels")) != lesionVoxels:
            return None
        rows = json.loads(get(ATTRIBUTE_PREFIX + "Lesions"))
    except (TypeError, ValueError):
        return None
    return [LesionRecord.from_row(r) for r in rows]


def _measuredLesions(lesion: np.ndarray, volumeNode) -> list[LesionRecord]:
    from LiverSegLib.pipeline.postprocess import lesion_table, prune_lesions

    if not lesion.any():
        return []
    volume = volumeFromNode(volumeNode, copy=False)
    pruning = prune_lesions(lesion > 0, lesion.astype(np.float32), 0.0)  # components only, largest first
    records = lesion_table(pruning.components, np.full(len(pruning.max_probability), np.nan, np.float32),
                           volume.array_zyx, volume.index_to_physical_matrix(), volume.voxel_volume_ml,
                           tuple(volume.spacing_xyz[::-1]))
    return records


def _tableNode(scene, segmentationNode):
    table = segmentationNode.GetNodeReference(STATISTICS_REFERENCE_ROLE)
    if table is None or table.GetScene() is not scene:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                        scene.GenerateUniqueName(f"{segmentationNode.GetName()} lesion statistics"))
        segmentationNode.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
        placeInSubjectHierarchy(scene, table, segmentationNode)
    return table


def _fill(tableNode, lesions: list[LesionRecord]) -> None:
    table = vtk.vtkTable()
    ids = vtk.vtkIntArray()
    ids.SetName(COLUMNS[0])
    table.AddColumn(ids)
    for name in COLUMNS[1:]:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        table.AddColumn(column)
    table.SetNumberOfRows(len(lesions))
    for row, lesion in enumerate(lesions):
        r, a, s = rasToLps(np.asarray(lesion.centroid_lps))
        values = (lesion.volume_ml, lesion.max_diameter_mm, lesion.mean_hu, r, a, s, lesion.max_probability)
        table.SetValue(row, 0, vtk.vtkVariant(int(lesion.lesion_id)))
        for col, value in enumerate(values, start=1):
            table.SetValue(row, col, vtk.vtkVariant(float(value)))
    tableNode.SetAndObserveTable(table)
    for name, unit in zip(COLUMNS[1:], ("mL", "mm", "HU", "mm", "mm", "mm", ""), strict=True):
        tableNode.SetColumnUnitLabel(name, unit)


def segmentContents(segmentationNode, inputVolume) -> tuple[np.ndarray, np.ndarray, list[LesionRecord], str]:
    """The liver and lesion segments on ``inputVolume``'s grid (0/1 ``[k, j, i]``), the lesions, and where the lesion
    table came from ("segmentation run": the run's own table, the segments being unchanged; "segments": measured
    from the segments as they are now)."""
    liverId = findSegment(segmentationNode, LIVER_CODE, "Liver")
    if liverId is None:
        raise InputError(f"'{segmentationNode.GetName()}' has no liver segment (named 'Liver' or coded SCT 10200004)")
    lesionId = findSegment(segmentationNode, NEOPLASM_CODE, "Liver lesion")
    liver = segmentArray(segmentationNode, liverId, inputVolume)
    lesion = segmentArray(segmentationNode, lesionId, inputVolume) if lesionId else np.zeros_like(liver)
    liverVoxels, lesionVoxels = int(np.count_nonzero(liver | lesion)), int(np.count_nonzero(lesion))
    lesions = _storedLesions(segmentationNode, liverVoxels, lesionVoxels)
    if lesions is None:
        return liver, lesion, _measuredLesions(lesion, inputVolume), "segments"
    return liver, lesion, lesions, "segmentation run"


def computeStatistics(segmentationNode, inputVolume, scene=None):
    """Fill (or create) the lesion statistics table of ``segmentationNode`` and return it.

    Args:
        segmentationNode: a segmentation with a liver segment (type SNOMED 10200004 or named "Liver") and,
            optionally, a lesion segment (type 108369006 or named "Liver lesion").
        inputVolume: the CT the mean HU and grid come from.
        scene: where the table node lives (default: the segmentation's scene). The table is referenced from the
            segmentation (role ``LiverSegStatistics``) and reused by later calls.

    Returns:
        The ``vtkMRMLTableNode``: one row per lesion (see module doc), attributes ``LiverSeg.LiverVolumeMl``,
        ``LiverSeg.LesionVolumeMl``, ``LiverSeg.LesionCount``, ``LiverSeg.TumourBurdenPercent``,
        ``LiverSeg.LesionSource`` ("segmentation run" or "segments"), ``LiverSeg.CentroidCoordinates`` ("RAS").
    """
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError("computeStatistics needs a segmentation node")
    volume = volumeFromNode(inputVolume, copy=False)  # checks the input
    scene = scene or segmentationNode.GetScene()
    liver, lesion, lesions, source = segmentContents(segmentationNode, inputVolume)
    liverVoxels, lesionVoxels = int(np.count_nonzero(liver | lesion)), int(np.count_nonzero(lesion))
    liverMl, lesionMl = liverVoxels * volume.voxel_volume_ml, lesionVoxels * volume.voxel_volume_ml
    tableNode = _tableNode(scene, segmentationNode)
    _fill(tableNode, lesions)
    attributes = {"LiverVolumeMl": f"{liverMl:.3f}", "LesionVolumeMl": f"{lesionMl:.3f}",
                  "LesionCount": str(len(lesions)),
                  "TumourBurdenPercent": f"{100.0 * lesionMl / liverMl if liverMl > 0 else 0.0:.3f}",
                  "LesionSource": source, "CentroidCoordinates": "RAS", "SegmentationID": segmentationNode.GetID()}
    for name, value in attributes.items():
        tableNode.SetAttribute(ATTRIBUTE_PREFIX + name, value)
    return tableNode

