"""LiverSegLogic against a real MRML scene (slicer-core): segments, codes, geometry, hierarchy, surfaces, statistics,
the scene contract on failure, and the console batch. Runs in-process (the subprocess runner: test_slicer_runners).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import slicer_fixtures  # isort: skip # noqa: F401 (first: skips without slicer-core, puts LiverSeg/ on sys.path)
from LiverSegSlicer import InProcessRunner, LiverSegLogic, RunnerError, computeStatistics, exportSurfaces
from LiverSegSlicer import logic as logic_module
from LiverSegSlicer.batch import processFolder
from mesh_checks import mesh_stats, physical_bounds_lps
from slicer_fixtures import (
    LESION_TAG,
    LIVER_TAG,
    SHAPE,
    SPACING,
    export_to_grid,
    load_volume_node,
    make_checkpoint,
    put_under_study,
    scene_state,
    slicer,
)

import LiverSegLib
from LiverSegLib.config import default_labels
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import CancelledError, InputError
from LiverSegLib.io import read_volume, write_volume
from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
from LiverSegLib.types import SegmentationResult

REAL_CT = ("totalsegmentator", "tests/reference_files/example_ct.nii.gz")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small machine shared with other work
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_case(tmp_path_factory):
    """The real sample CT loaded by Slicer's storage node under patient/study, segmented in-process."""
    from LiverSegLib.data.samples import fetch_source

    path = fetch_source(REAL_CT[0]) / REAL_CT[1]
    reference_ct = read_volume(path)
    ckpt = make_checkpoint(tmp_path_factory.mktemp("real") / "tiny.pt", reference_ct)
    reference = LiverSegLib.segment(reference_ct, model=model_from_checkpoint(ckpt), device="cpu",
                                    lesion_threshold=0.8)
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, path, "example_ct")
    _, study = put_under_study(scene, node)
    logic = LiverSegLogic(scene, InProcessRunner())
    stages = []
    before = scene.GetNumberOfNodes()
    seg = logic.process(node, modelFile=str(ckpt), device="cpu", progress=lambda s, f: stages.append(s))
    return {"scene": scene, "node": node, "study": study, "logic": logic, "seg": seg, "reference": reference,
            "stages": stages, "added": scene.GetNumberOfNodes() - before, "ct": reference_ct}


def _segment(seg, name):
    segmentation = seg.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name!r} in {[s for s in segmentation.GetSegmentIDs()]}"
    return segment_id, segmentation.GetSegment(segment_id)


def test_segments_have_names_terminology_and_colours(real_case):
    seg, reference = real_case["seg"], real_case["reference"]
    assert reference.lesions, "the test model should find lesions on the real CT"
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Liver", "Liver lesion"]
    colours = {lb.name: lb.color_rgb for lb in default_labels()}
    for name, tag in (("Liver", LIVER_TAG), ("Liver lesion", LESION_TAG)):
        _, segment = _segment(seg, name)
        assert segment.GetTerminology() == tag
        np.testing.assert_allclose(segment.GetColor(), colours[name], atol=1e-6)
    assert real_case["added"] == 2  # the segmentation node and its display node, nothing else
    assert {"coarse", "fine", "post", "import"} <= set(real_case["stages"])


def test_reference_geometry_and_subject_hierarchy(real_case):
    scene, node, seg = real_case["scene"], real_case["node"], real_case["seg"]
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert seg.GetNodeReference(role) is node
    geometry = [float(v) for v in seg.GetSegmentation().GetConversionParameter("Reference image geometry")
                .strip(";").split(";")]
    np.testing.assert_allclose(geometry[:16], _ijk_to_ras(node).ravel(), atol=1e-9)
    assert geometry[16:] == list(map(float, node.GetImageData().GetExtent()))
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(seg)
    assert item and sh.GetItemParent(item) == real_case["study"]
    assert sh.GetItemParent(item) == sh.GetItemParent(sh.GetItemByDataNode(node))


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_real_ct_segments_match_the_library_voxel_for_voxel(real_case):
    scene, node, seg, reference = real_case["scene"], real_case["node"], real_case["seg"], real_case["reference"]
    labels = reference.labelmap.array_zyx
    liver_id, _ = _segment(seg, "Liver")
    lesion_id, _ = _segment(seg, "Liver lesion")
    liver = export_to_grid(scene, seg, liver_id, node)
    lesion = export_to_grid(scene, seg, lesion_id, node)
    assert 0 < liver.sum() < liver.size
    np.testing.assert_array_equal(liver, labels >= 1)  # the liver segment is the whole organ, lesions included
    np.testing.assert_array_equal(lesion, labels == 2)


def test_run_facts_are_recorded_on_the_node_and_the_logic(real_case):
    seg, logic, reference = real_case["seg"], real_case["logic"], real_case["reference"]
    assert seg.GetAttribute("LiverSeg.LesionCount") == str(len(reference.lesions))
    assert float(seg.GetAttribute("LiverSeg.LiverVolumeMl")) == pytest.approx(reference.liver_volume_ml, abs=1e-3)
    assert seg.GetAttribute("LiverSeg.Model") == "slicer-test-tiny 1"
    assert len(json.loads(seg.GetAttribute("LiverSeg.Lesions"))) == len(reference.lesions)
    assert logic.lastResult is not None and len(logic.lastResult.lesions) == len(reference.lesions)


def test_statistics_table_rows_are_the_lesions_in_ras(real_case):
    seg, node, logic = real_case["seg"], real_case["node"], real_case["logic"]
    lesions = logic.lastResult.lesions
    table = logic.computeStatistics(seg, node)
    assert table.GetNumberOfRows() == len(lesions)
    assert table.GetAttribute("LiverSeg.LesionSource") == "segmentation run"
    assert table.GetAttribute("LiverSeg.CentroidCoordinates") == "RAS"
    volumes = slicer.util.arrayFromTableColumn(table, "Volume (mL)")
    assert volumes.sum() == pytest.approx(logic.lastResult.lesion_volume_ml, rel=1e-3)
    assert float(table.GetAttribute("LiverSeg.TumourBurdenPercent")) == pytest.approx(
        logic.lastResult.tumour_burden_percent, abs=1e-3)
    first = lesions[0]
    ras = [slicer.util.arrayFromTableColumn(table, f"Centroid {a} (RAS mm)")[0] for a in "RAS"]
    np.testing.assert_allclose(ras, [-first.centroid_lps[0], -first.centroid_lps[1], first.centroid_lps[2]], atol=0.01)
    assert logic.computeStatistics(seg, node) is table  # reused, not a second table node


def test_statistics_recomputed_from_segments_agree_with_the_run(real_case):
    scene, node, logic = real_case["scene"], real_case["node"], real_case["logic"]
    copy = logic.addResult(node, logic.lastResult)  # same segments, then "edited": the record no longer matches
    copy.SetAttribute("LiverSeg.LiverVoxels", "-1")
    table = computeStatistics(copy, node, scene=scene)
    assert table.GetAttribute("LiverSeg.LesionSource") == "segments"
    run = np.array(sorted((r.volume_ml, r.mean_hu, r.max_diameter_mm) for r in logic.lastResult.lesions))
    measured = np.array(sorted(zip(*(slicer.util.arrayFromTableColumn(table, c) for c in (
        "Volume (mL)", "Mean (HU)", "Max diameter (mm)")), strict=True)))
    assert measured.shape == run.shape
    np.testing.assert_allclose(measured, run, atol=0.06)  # the run's table is rounded (0.1 HU, 0.01 mm)
    assert np.isnan(slicer.util.arrayFromTableColumn(table, "Max probability")).all()
    logic.removeNode(copy)


# ---------------------------------------------------------------- oblique, anisotropic input; surfaces


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory):
    a, b = np.radians(14.0), np.radians(8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    root = tmp_path_factory.mktemp("oblique")
    ct, _ = make_phantom(SHAPE, (1.7, 1.45, 3.1), seed=7, direction=rz @ rx, origin_xyz=(-37.5, 12.25, 410.0))
    path = write_volume(ct, root / "ct.nrrd")
    ckpt = make_checkpoint(root / "tiny.pt", make_phantom(SHAPE, SPACING, seed=3)[0])
    file_ct = read_volume(path)
    reference = LiverSegLib.segment(file_ct, model=model_from_checkpoint(ckpt), device="cpu", lesion_threshold=0.5)
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, path)
    logic = LiverSegLogic(scene, InProcessRunner())
    seg = logic.process(node, modelFile=str(ckpt), device="cpu", lesionThreshold=0.5)
    return {"scene": scene, "node": node, "seg": seg, "reference": reference, "file_ct": file_ct, "root": root,
            "logic": logic}


def test_node_to_volume_keeps_the_oblique_anisotropic_geometry(oblique_case):
    from LiverSegSlicer import volumeFromNode

    volume, file_ct = volumeFromNode(oblique_case["node"]), oblique_case["file_ct"]
    np.testing.assert_array_equal(volume.array_zyx, file_ct.array_zyx)
    np.testing.assert_allclose(volume.spacing_xyz, file_ct.spacing_xyz, atol=1e-6)
    np.testing.assert_allclose(volume.origin_xyz, file_ct.origin_xyz, atol=1e-5)
    np.testing.assert_allclose(volume.direction, file_ct.direction, atol=1e-6)


def test_oblique_anisotropic_segments_match_the_library(oblique_case):
    scene, node, seg, reference = (oblique_case[k] for k in ("scene", "node", "seg", "reference"))
    labels = reference.labelmap.array_zyx
    assert np.count_nonzero(labels == 2) > 0 and np.count_nonzero(labels) < labels.size
    for name, expected in (("Liver", labels >= 1), ("Liver lesion", labels == 2)):
        segment_id, _ = _segment(seg, name)
        np.testing.assert_array_equal(export_to_grid(scene, seg, segment_id, node), expected, err_msg=name)


def test_surfaces_are_closed_outward_lps_and_match_the_labelmap_volume(oblique_case):
    seg, reference, root = oblique_case["seg"], oblique_case["reference"], oblique_case["root"]
    paths = exportSurfaces(seg, root / "stl")
    assert [p.name for p in paths] == ["Liver_LPS.stl", "Liver_lesion_LPS.stl"]
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")  # the node is left as it was
    labelmap = reference.labelmap
    stats = mesh_stats(paths[0])
    assert stats["boundary"] == 0 and stats["non_manifold"] == 0
    assert stats["signed_volume"] > 0  # facets face outward after the LPS mirror
    labelmap_mm3 = np.count_nonzero(labelmap.array_zyx) * np.prod(labelmap.spacing_xyz)
    assert stats["volume"] == pytest.approx(labelmap_mm3, rel=0.05)
    np.testing.assert_allclose(stats["bounds"], physical_bounds_lps(labelmap, labelmap.array_zyx > 0),
                               atol=max(labelmap.spacing_xyz) * 1.5)  # LPS, not RAS
    lesion = mesh_stats(paths[1])
    assert lesion["boundary"] == 0 and lesion["non_manifold"] == 0 and lesion["volume"] > 0
    obj = oblique_case["logic"].exportSurfaces(seg, root / "obj", "OBJ", coordinateSystem="RAS")
    assert [p.name for p in obj] == ["Liver_RAS.obj", "Liver_lesion_RAS.obj"]
    ras = mesh_stats(obj[0])
    np.testing.assert_allclose(ras["bounds"][4:], stats["bounds"][4:], atol=1e-3)  # S = S
    np.testing.assert_allclose(ras["bounds"][:2], -stats["bounds"][1::-1], atol=1e-3)  # R = -L
    assert not list((root / "stl").glob(".*tmp"))


# ---------------------------------------------------------------- the scene contract


class FixedRunner:
    """Returns a prepared result (or raises), records its calls."""

    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result, error, 0

    def run(self, volume, options, progress=None):
        self.calls += 1
        if progress is not None:
            progress("coarse", 0.5)
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def phantom_scene(tmp_path):
    ct, truth = make_phantom(SHAPE, SPACING, seed=11, origin_xyz=(5.0, -7.0, 30.0))
    path = write_volume(ct, tmp_path / "ct.nii.gz")
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, path)
    put_under_study(scene, node)
    result = SegmentationResult(truth, default_labels(), [], 100.0, 5.0, "truth", "0")
    return scene, node, result


def test_failing_runner_leaves_the_scene_as_it_was(phantom_scene):
    scene, node, _ = phantom_scene
    logic = LiverSegLogic(scene, FixedRunner(error=RunnerError("the model exploded", 1)))
    before = scene_state(scene)
    with pytest.raises(RunnerError) as info:
        logic.process(node)
    assert info.value.message == "the model exploded" and info.value.exit_code == 1
    assert scene_state(scene) == before and logic.lastResult is None


def test_cancel_in_process_leaves_the_scene_as_it_was(phantom_scene, tmp_path):
    scene, node, _ = phantom_scene
    ckpt = make_checkpoint(tmp_path / "tiny.pt", make_phantom(SHAPE, SPACING, seed=3)[0])
    logic = LiverSegLogic(scene, InProcessRunner())
    before = scene_state(scene)

    def cancel_in_fine(stage, fraction):
        if stage == "fine":
            raise CancelledError("user pressed Cancel")

    with pytest.raises(CancelledError):
        logic.process(node, modelFile=str(ckpt), device="cpu", progress=cancel_in_fine)
    assert scene_state(scene) == before


def test_failure_while_adding_the_node_removes_it_again(phantom_scene, monkeypatch):
    scene, node, result = phantom_scene
    logic = LiverSegLogic(scene, FixedRunner(result))
    before = scene_state(scene)

    def broken(*args):
        raise RuntimeError("subject hierarchy broke")

    monkeypatch.setattr(logic_module, "placeInSubjectHierarchy", broken)
    with pytest.raises(RuntimeError, match="subject hierarchy broke"):
        logic.process(node)
    assert scene_state(scene) == before


def test_closed_surface_source_uses_slicers_representation_and_leaves_the_node_alone(phantom_scene, tmp_path):
    scene, node, result = phantom_scene
    seg = LiverSegLogic(scene, FixedRunner(result)).process(node)
    paths = exportSurfaces(seg, tmp_path / "a", source="closedSurface")
    assert [p.name for p in paths] == ["Liver_LPS.stl", "Liver_lesion_LPS.stl"]
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")  # made in a temporary copy
    labels, voxel_mm3 = result.labelmap.array_zyx, float(np.prod(result.labelmap.spacing_xyz))
    for path, mask in zip(paths, (labels >= 1, labels == 2), strict=True):
        stats = mesh_stats(path)
        assert stats["boundary"] == 0 and stats["non_manifold"] == 0 and stats["signed_volume"] > 0, path.name
        assert stats["volume"] == pytest.approx(mask.sum() * voxel_mm3, rel=0.05), path.name  # smooth phantom shapes
    assert seg.CreateClosedSurfaceRepresentation()  # shown in 3D: then the export is exactly what the view shows
    shown = exportSurfaces(seg, tmp_path / "b", source="closedSurface")
    assert mesh_stats(shown[0])["cells"] == mesh_stats(paths[0])["cells"]
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")


def test_results_that_cannot_be_right_are_refused(phantom_scene):
    scene, node, result = phantom_scene
    before = scene_state(scene)
    shifted = SegmentationResult(_shifted(result.labelmap), result.labels, [], 1.0, 0.0, "x", "0")
    with pytest.raises(InputError, match="grid"):
        LiverSegLogic(scene, FixedRunner(shifted)).process(node)
    empty = SegmentationResult(result.labelmap.with_array(np.zeros(SHAPE, np.uint8)), result.labels, [], 0, 0, "x", "0")
    with pytest.raises(InputError, match="no liver was found"):
        LiverSegLogic(scene, FixedRunner(empty)).process(node)
    assert scene_state(scene) == before


def _shifted(volume):
    from LiverSegLib.types import Volume

    origin = np.asarray(volume.origin_xyz) + 5.0
    return Volume(volume.array_zyx, volume.spacing_xyz, tuple(origin), volume.direction)


def _vector_node(scene):
    node = slicer.vtkMRMLVectorVolumeNode()
    node.SetName("RGB photo")
    scene.AddNode(node)
    return node


def _model_node(scene):
    node = slicer.vtkMRMLModelNode()
    node.SetName("liver model")
    scene.AddNode(node)
    return node


def _labelmap_node(scene):
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName("labels")
    scene.AddNode(node)
    return node


def _empty_volume(scene):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("not loaded")
    scene.AddNode(node)
    return node


NOT_A_CT = {"vector volume": (_vector_node, "vector/RGB"), "model": (_model_node, "is not a volume"),
            "labelmap": (_labelmap_node, "labelmap"), "no voxels": (_empty_volume, "no voxel data"),
            "nothing": (lambda scene: None, "no input volume")}


@pytest.mark.parametrize("case", NOT_A_CT)
def test_input_that_is_not_a_grey_scale_volume_is_refused_clearly(phantom_scene, case):
    scene, _, result = phantom_scene
    make, words = NOT_A_CT[case]
    node = make(scene)
    runner = FixedRunner(result)
    before = scene_state(scene)
    with pytest.raises(InputError, match=words):
        LiverSegLogic(scene, runner).process(node)
    assert runner.calls == 0 and scene_state(scene) == before


def test_existing_segmentation_is_replaced_only_when_passed(phantom_scene):
    scene, node, result = phantom_scene
    manual = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    manual.CreateDefaultDisplayNodes()
    manual.GetSegmentation().AddEmptySegment("Tumour", "Tumour by hand")
    logic = LiverSegLogic(scene, FixedRunner(result))
    new = logic.process(node)
    assert new is not manual and manual.GetSegmentation().GetSegmentIDs() == ("Tumour",)
    failing = LiverSegLogic(scene, FixedRunner(error=RunnerError("no", 1)))
    with pytest.raises(RunnerError):
        failing.process(node, manual)
    assert manual.GetSegmentation().GetSegmentIDs() == ("Tumour",)  # untouched after a failure
    count = scene.GetNumberOfNodes()
    assert logic.process(node, manual) is manual
    assert [manual.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)] == ["Liver", "Liver lesion"]
    assert manual.GetSegmentation().GetNumberOfSegments() == 2 and scene.GetNumberOfNodes() == count
    assert manual.GetAttribute("LiverSeg.Model") == "truth 0"


def test_no_lesion_found_gives_no_lesion_segment_and_says_so(phantom_scene):
    scene, node, result = phantom_scene
    liver_only = result.labelmap.with_array(np.minimum(result.labelmap.array_zyx, 1).astype(np.uint8))
    logic = LiverSegLogic(scene, FixedRunner(SegmentationResult(liver_only, default_labels(), [], 100.0, 0.0,
                                                                "truth", "0", details={"lesion_model": True})))
    seg = logic.process(node)
    assert seg.GetSegmentation().GetSegmentIDs() == ("Liver",)
    assert seg.GetAttribute("LiverSeg.LesionCount") == "0" and seg.GetAttribute("LiverSeg.LesionModel") == "true"
    table = logic.computeStatistics(seg, node)
    assert table.GetNumberOfRows() == 0 and table.GetAttribute("LiverSeg.TumourBurdenPercent") == "0.000"


def test_implausible_liver_volume_warning_reaches_the_node_the_result_and_the_log(phantom_scene, tmp_path):
    """A real in-process run on the small phantom (its whole field of view holds 0.42 L): the plausibility warning
    is on the node (``LiverSeg.Warnings``), in ``lastResult`` (the widget's status and log read it) and logged."""
    scene, node, _ = phantom_scene
    ckpt = make_checkpoint(tmp_path / "tiny.pt", make_phantom(SHAPE, SPACING, seed=3)[0])
    logged: list[str] = []
    logic = LiverSegLogic(scene, InProcessRunner(log=logged.append))
    seg = logic.process(node, modelFile=str(ckpt), device="cpu")
    on_node = json.loads(seg.GetAttribute("LiverSeg.Warnings"))
    (warning,) = [w for w in on_node if w.startswith("liver volume")]
    assert "is outside the plausible 0.5-4.5 L" in warning
    assert on_node == logic.lastResult.warnings and f"warning: {warning}" in logged


def test_logic_outside_slicer_needs_a_scene():
    with pytest.raises(ValueError, match="no MRML scene"):
        LiverSegLogic()


# ---------------------------------------------------------------- console batch


def test_process_folder_writes_cli_outputs_skips_done_cases_and_survives_a_bad_one(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for seed in (1, 2):
        write_volume(make_phantom(SHAPE, SPACING, seed=seed)[0], src / f"case{seed}.nii.gz")
    (src / "broken.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    (src / "notes.txt").write_text("not a case")
    ckpt = make_checkpoint(tmp_path / "tiny.pt", make_phantom(SHAPE, SPACING, seed=3)[0])
    lines = []
    results = processFolder(src, out, modelFile=str(ckpt), device="cpu", lesionThreshold=0.5, log=lines.append)
    assert [(r.case, r.status) for r in results] == [("broken", "failed"), ("case1", "done"), ("case2", "done")]
    assert results[0].exit_code == 2 and "broken.nrrd" in results[0].message
    assert {p.name for p in (out / "case1").iterdir()} == {"segmentation.nii.gz", "lesions.csv", "summary.json",
                                                           "overview.png"}
    seg = read_volume(out / "case1" / "segmentation.nii.gz")
    assert seg.same_grid(read_volume(src / "case1.nii.gz")) and seg.array_zyx.any()
    assert len(lines) == 3 and (out / "batch_summary.csv").is_file()
    again = processFolder(src, out, modelFile=str(ckpt), device="cpu", log=None)
    assert [r.status for r in again] == ["failed", "skipped", "skipped"]
