"""Shared helpers for the LiverSegSlicer tests: a real MRML scene (slicer-core), volumes loaded with Slicer's own
storage node, a tiny self-made checkpoint, and Slicer-side checks that do not use LiverSegSlicer's own code.

Importing this module skips the importing test module when ``slicer`` (slicer-core) is not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML libraries without Qt) is not installed: "
                             "pip install slicer-core to run the LiverSegSlicer tests")
import vtk  # noqa: E402  (after the skip: slicer-core brings the VTK build it needs)

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "LiverSeg") not in sys.path:
    sys.path.insert(0, str(REPO / "LiverSeg"))  # LiverSegSlicer lives beside the module file, as in Slicer

SHAPE = (16, 64, 64)  # (k, j, i)
SPACING = (1.6, 1.6, 2.5)
HU_WINDOW = (-160.0, 240.0)
NET_KWARGS = {"in_channels": 5, "out_channels": 3, "features": [4, 8, 16]}
MODEL_ID = "slicer-test-tiny"
LIVER_TAG = ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
             "SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
LESION_TAG = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure~"
              "SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^")


def subprocess_env(home: Path) -> dict[str, str]:
    """Environment additions for CLI children: one torch thread (a small shared machine), a private cache."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LIVERSEG_HOME": str(home)}


def make_checkpoint(path: Path, calibration_ct) -> Path:
    """A random tiny 3-class ``HanResUNet2p5D`` whose head biases give ~30 % foreground on ``calibration_ct``,
    some of it lesion with sharp probabilities (the approach of cli_fixtures.py)."""
    import torch

    from LiverSegLib.networks import HanResUNet2p5D
    from LiverSegLib.pipeline.stage import normalize_hu
    from LiverSegLib.weights import save_checkpoint

    torch.manual_seed(0)
    net = HanResUNet2p5D(**NET_KWARGS).eval()
    ny, nx = (n - n % 4 for n in calibration_ct.array_zyx.shape[1:])  # the net wants multiples of 4
    x = normalize_hu(calibration_ct.array_zyx[:, :ny, :nx].astype(np.float32), HU_WINDOW)
    nz = x.shape[0]
    stacks = torch.from_numpy(x[np.clip(np.arange(nz)[:, None] + np.arange(-2, 3)[None], 0, nz - 1)])
    head = net.head.conv
    with torch.no_grad():
        head.weight.mul_(40.0)
        head.bias.mul_(40.0)
        logits = net(stacks)
        head.bias[2] -= torch.quantile((logits[:, 2] - logits[:, 1]).flatten(), 0.9)
        logits = net(stacks)
        head.bias[0] -= torch.quantile((logits[:, 0] - torch.logsumexp(logits[:, 1:], 1)).flatten(), 0.3)
    config = {"network": {"name": "HanResUNet2p5D", "kwargs": NET_KWARGS}, "classes": [0, 1, 2],
              "preprocessing": {"hu_window": list(HU_WINDOW), "spacing_xyz": [None, None, None],
                                "context_slices": 5}}
    save_checkpoint(path, config, net.state_dict(), metadata={"id": MODEL_ID, "version": "1"})
    return path


def load_volume_node(scene, path: Path, name: str = "CT"):
    """A scalar volume node read from ``path`` by Slicer's own ``vtkMRMLVolumeArchetypeStorageNode``."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def put_under_study(scene, node, patient: str = "Patient 1", study: str = "Study 1") -> tuple[int, int]:
    """Patient -> study -> ``node`` in subject hierarchy, as DICOM loading makes it; (patient, study) item ids."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.CreateStudyItem(patient_item, study)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study_item, node)
    sh.SetItemParent(item, study_item)
    return patient_item, study_item


def export_to_grid(scene, segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment on the volume's grid through Slicer's own export (what ``arrayFromSegmentBinaryLabelmap`` does
    inside Slicer), independent of LiverSegSlicer's code. The temporary labelmap node is removed again."""
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, [segment_id], labelmap, volume_node)
        assert ok, f"export of {segment_id} failed"
        return np.array(slicer.util.arrayFromVolume(labelmap)) > 0
    finally:
        for i in reversed(range(labelmap.GetNumberOfDisplayNodes())):
            scene.RemoveNode(labelmap.GetNthDisplayNode(i))
        scene.RemoveNode(labelmap)


def scene_state(scene) -> tuple:
    """Everything a failed run must leave unchanged: node ids and classes, SH items, segments of every segmentation."""
    nodes = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        segments = ()
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            segments = tuple((seg.GetNthSegmentID(j), seg.GetNthSegment(j).GetName())
                             for j in range(seg.GetNumberOfSegments()))
        nodes.append((node.GetID(), node.GetClassName(), node.GetName(), segments))
    sh = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return scene.GetNumberOfNodes(), tuple(nodes), items.GetNumberOfIds()


def process_group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists (POSIX)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
