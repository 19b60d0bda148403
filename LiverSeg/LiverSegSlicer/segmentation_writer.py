"""A :class:`LiverSegLib.SegmentationResult` as segments of a ``vtkMRMLSegmentationNode``.

Segments (one binary labelmap layer each, cropped to the segment's bounding box, on the input volume's grid):

- "Liver": labels 1 and 2, i.e. the whole organ INCLUDING its lesions, as LiTS counts the liver and as the
  library's ``liver_volume_ml`` and surfaces do: planners need the organ volume and one closed organ shell.
- "Liver lesion": label 2. It overlaps the liver segment, which is why every segment has its own layer.
  When the run found no lesion there is no "Liver lesion" segment (an empty one would pretend a finding):
  the node attribute ``LiverSeg.LesionCount`` is "0" instead.

Names, colours and SNOMED CT terminology come from the result's :class:`~LiverSegLib.types.LabelInfo` table; the
terminology string is made by Slicer's own ``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, LabelInfo, SegmentationResult

from .volumes import ijkToRasArray

__all__ = ["terminologyTag", "buildSegmentation", "resultAttributes", "placeInSubjectHierarchy",
           "ensureConverterRules", "TERMINOLOGY_CONTEXT", "ANATOMIC_CONTEXT", "ATTRIBUTE_PREFIX"]

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ATTRIBUTE_PREFIX = "LiverSeg."
BINARY_LABELMAP = "Binary labelmap"


def ensureConverterRules() -> None:
    """Register the labelmap <-> closed-surface converters where nobody did (slicer-core; Slicer does it itself)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule.__name__ not in present:
            factory.RegisterConverterRule(rule())


def _code(terminology: dict, key: str) -> tuple[str, str, str]:
    """(code value, scheme designator, meaning) of one coded entry, or empty strings."""
    entry = terminology.get(key) or {}
    return str(entry.get("code", "")), str(entry.get("scheme", "")), str(entry.get("meaning", ""))


def terminologyTag(label: LabelInfo) -> str | None:
    """The segment's ``TerminologyEntry`` tag for ``label`` (``None`` when the label carries no terminology)."""
    t = label.terminology or {}
    if not t.get("category") or not t.get("type"):
        return None
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        TERMINOLOGY_CONTEXT, *_code(t, "category"), *_code(t, "type"), *_code(t, "type_modifier"),
        ANATOMIC_CONTEXT, *_code(t, "region"), *_code(t, "region_modifier"))


def segmentId(label: LabelInfo) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label.name).strip("_") or f"label_{label.value}"


def _maskImage(mask_zyx: np.ndarray, ijkToRas: vtk.vtkMatrix4x4):
    """Binary ``vtkOrientedImageData`` of ``mask`` cropped to its bounding box, on the volume's grid (None if empty)."""
    nonzero = [np.flatnonzero(mask_zyx.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(idx.size == 0 for idx in nonzero):
        return None
    (k0, k1), (j0, j1), (i0, i1) = ((int(idx[0]), int(idx[-1])) for idx in nonzero)
    crop = np.ascontiguousarray(mask_zyx[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1], dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k0, k1)  # voxel indices of the full grid: the matrix stays the volume's
    image.SetImageToWorldMatrix(ijkToRas)
    scalars = numpy_support.numpy_to_vtk(crop.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)  # C-ordered [k, j, i]: i runs fastest, VTK's point order
    return image


def _segmentMasks(result: SegmentationResult) -> list[tuple[LabelInfo, np.ndarray]]:
    labels = result.labelmap.array_zyx
    masks = []
    for label in sorted(result.labels, key=lambda lb: lb.value):
        # the liver is the whole organ, lesions included
        masks.append((label, labels >= LIVER_LABEL if label.value == LIVER_LABEL else labels == label.value))
    return masks


def buildSegmentation(result: SegmentationResult, volumeNode) -> tuple[slicer.vtkSegmentation, list[str]]:
    """A detached ``vtkSegmentation`` holding the result's segments on ``volumeNode``'s grid, and their ids.

    Nothing in any scene is touched. Empty labels give no segment.
    """
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(ijkToRasArray(volumeNode)):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, value)
    segmentation = slicer.vtkSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    ids = []
    for label, mask in _segmentMasks(result):
        image = _maskImage(mask, matrix)
        if image is None:
            continue
        segment = slicer.vtkSegment()
        segment.SetName(label.name)
        segment.SetColor(*label.color_rgb)
        segment.SetLabelValue(1)
        segment.AddRepresentation(BINARY_LABELMAP, image)
        tag = terminologyTag(label)
        if tag:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        segment.SetTag(ATTRIBUTE_PREFIX + "LabelValue", str(label.value))
        segmentation.AddSegment(segment, segmentId(label))
        ids.append(segmentId(label))
    return segmentation, ids


def resultAttributes(result: SegmentationResult, volumeNode) -> dict[str, str]:
    """Node attributes that record what the run found (read back by ``computeStatistics`` and the widget)."""
    labels = result.labelmap.array_zyx
    lesion_model = bool(result.details.get("lesion_model", any(lb.value == LESION_LABEL for lb in result.labels)))
    return {
        ATTRIBUTE_PREFIX + "Model": f"{result.model_id} {result.model_version}",
        ATTRIBUTE_PREFIX + "InputVolumeID": volumeNode.GetID() or "",
        ATTRIBUTE_PREFIX + "LiverContent": "liver parenchyma and lesions (labels 1+2)",
        ATTRIBUTE_PREFIX + "LesionModel": "true" if lesion_model else "false",
        ATTRIBUTE_PREFIX + "LesionCount": str(len(result.lesions)),
        ATTRIBUTE_PREFIX + "LiverVolumeMl": f"{result.liver_volume_ml:.3f}",
        ATTRIBUTE_PREFIX + "LesionVolumeMl": f"{result.lesion_volume_ml:.3f}",
        ATTRIBUTE_PREFIX + "TumourBurdenPercent": f"{result.tumour_burden_percent:.3f}",
        ATTRIBUTE_PREFIX + "LiverVoxels": str(int(np.count_nonzero(labels >= LIVER_LABEL))),
        ATTRIBUTE_PREFIX + "LesionVoxels": str(int(np.count_nonzero(labels == LESION_LABEL))),
        ATTRIBUTE_PREFIX + "Lesions": json.dumps([lesion.as_row() for lesion in result.lesions]),
        ATTRIBUTE_PREFIX + "Warnings": json.dumps(list(result.warnings)),
    }


def placeInSubjectHierarchy(scene, node, besideNode) -> int:
    """Put ``node`` under the same subject-hierarchy parent as ``besideNode`` (e.g. the CT's study); its item id."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    if sh is None:
        return 0
    besideItem = sh.GetItemByDataNode(besideNode)
    parent = sh.GetItemParent(besideItem) if besideItem else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if not item:  # Slicer's plugins create the item when the node is added; slicer-core has none
        item = sh.CreateItem(parent, node)
    elif sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)
    return item
