"""Slicer: a segmentation saved as DICOM SEG + SR from the logic (issue 12), on real MRML (slicer-core) and a real
DICOM CT series; the files are checked with pydicom/highdicom. Slicer's DICOM database needs the Qt application,
so here the CT's files are given (in Slicer they come from the database through the volume's instance UIDs)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

import slicer_fixtures  # isort: skip # noqa: F401 (first: skips without slicer-core, puts LiverSeg/ on sys.path)
from dicom_fixtures import PATIENT_ID, SERIES_UID, STUDY_UID, sop_uid, ts_series_with_study
from LiverSegSlicer import InProcessRunner, LiverSegLogic
from LiverSegSlicer.statistics import segmentContents
from slicer_fixtures import load_volume_node, slicer

from LiverSegLib.errors import InputError
from LiverSegLib.io import read_volume, write_volume

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The real series loaded into a scene (through an NRRD of it) and segmented with the shipped model."""
    root = tmp_path_factory.mktemp("slicer_dicom")
    series = ts_series_with_study(root / "series")
    ct = read_volume(series)
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, write_volume(ct, root / "ct.nrrd"), "CT")
    logic = LiverSegLogic(scene, InProcessRunner())
    seg = logic.process(node, device="cpu")
    return {"root": root, "files": ct.metadata["dicom_files"], "scene": scene, "node": node, "seg": seg,
            "logic": logic}


def test_export_references_the_series_with_the_segments_and_the_table(case):
    out = case["root"] / "export"
    info = case["logic"].exportDicom(case["seg"], case["node"], out, sourceFiles=case["files"])
    assert sorted(p.rsplit("/", 1)[1] for p in info["files"]) == ["measurements.dcm", "segmentation.dcm"]
    assert info["database"] is False  # slicer-core has no DICOM database
    seg = hd.seg.segread(out / "segmentation.dcm")
    first = pydicom.dcmread(case["files"][0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == STUDY_UID and seg.PatientID == PATIENT_ID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID == SERIES_UID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID != ""
    assert [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence] == [
        ("Liver", "10200004"), ("Liver lesion", "108369006")]
    # each frame holds the Liver segment of the node on the slice it references
    liver, lesion, lesions, _ = segmentContents(case["seg"], case["node"])
    k_of = {sop_uid(f): k for k, f in enumerate(case["files"])}
    pixels = seg.pixel_array
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = k_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(pixels[f] > 0, (liver | lesion)[k] > 0)
    assert seg.NumberOfFrames == np.count_nonzero((liver | lesion).any(axis=(1, 2)))
    sr = pydicom.dcmread(out / "measurements.dcm")
    groups = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    values = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    table = case["logic"].computeStatistics(case["seg"], case["node"])
    assert values["Volume"] == pytest.approx(float(table.GetAttribute("LiverSeg.LiverVolumeMl")), abs=1e-3)
    assert values["Number of liver lesions"] == len(lesions) == int(table.GetAttribute("LiverSeg.LesionCount"))
    assert info["dicom"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID


def test_the_nodes_segments_are_what_gets_saved(case, tmp_path):
    """A segmentation holding other segments than the last run (a third of the liver erased, as an edit would) gets
    a SEG and SR of its own segments: the export reads the node, not the run."""
    from dataclasses import replace

    logic, node = case["logic"], case["node"]
    run = logic.lastResult
    labels = np.asarray(run.labelmap.array_zyx).copy()
    labels[: labels.shape[0] // 3] = 0
    edited = logic.addResult(node, replace(run, labelmap=run.labelmap.with_array(labels)))
    volumes = {}
    for name, seg_node in (("run", case["seg"]), ("edited", edited)):
        info = logic.exportDicom(seg_node, node, tmp_path / name, sourceFiles=case["files"])
        sr = pydicom.dcmread(info["files"][1])
        volumes[name] = {m.name.meaning: m.value for m in hd.sr.MeasurementReport.from_sequence([sr])
                         .get_volumetric_roi_measurement_groups()[0].get_measurements()}["Volume"]
    voxel_ml = run.labelmap.voxel_volume_ml
    assert volumes["edited"] == pytest.approx(np.count_nonzero(labels) * voxel_ml, abs=1e-3)
    assert volumes["run"] == pytest.approx(np.count_nonzero(run.labelmap.array_zyx) * voxel_ml, abs=1e-3)
    assert volumes["edited"] < 0.9 * volumes["run"]
    logic.removeNode(edited)


def test_files_of_another_ct_and_a_used_folder_are_refused_and_nothing_written(case, tmp_path):
    wrong = case["files"][:10]  # half the series: slices missing
    with pytest.raises(InputError, match="distinct slices for the volume's 20"):
        case["logic"].exportDicom(case["seg"], case["node"], tmp_path / "a", sourceFiles=wrong)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a*"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a new or empty folder"):
        case["logic"].exportDicom(case["seg"], case["node"], tmp_path / "used", sourceFiles=case["files"])
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_a_volume_not_from_dicom_is_written_as_a_series_and_referenced(case, tmp_path):
    info = case["logic"].exportDicom(case["seg"], case["node"], tmp_path / "derived")
    copy = read_volume(tmp_path / "derived" / "ct_dicom")
    assert copy.same_grid(read_volume(case["files"][0].rsplit("/", 1)[0]), atol=1e-3)
    seg = pydicom.dcmread(tmp_path / "derived" / "segmentation.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == copy.metadata["series_instance_uid"]
    assert info["dicom"]["source_written_here"] is True
