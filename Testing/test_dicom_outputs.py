"""DICOM in, DICOM out (issue 12): SEG and TID 1500 SR from the CLI on real CT, checked with pydicom/highdicom.

The real DICOM series is the TotalSegmentator example with a study UID (``dicom_fixtures``); the lesion case is the
real LiTS case 117 written as a DICOM series by LiverSeg's own writer. ``liverseg evaluate`` reads a DICOM SEG
(dcmqi's liver SEG against its NRRD must score Dice 1.0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cli_fixtures import assert_one_line_error, cli_env, file_tree, run_cli
from dicom_fixtures import SERIES_UID, STUDY_UID, TS_DICOM, ts_series_with_study

from LiverSegLib.config import TERMINOLOGY
from LiverSegLib.data.samples import fetch_source, load_case
from LiverSegLib.io import read_volume

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def ts_series(tmp_path_factory) -> Path:
    """The real DICOM example with a Study Instance UID and a patient ID (SOP UIDs still blank in the data sets)."""
    return ts_series_with_study(tmp_path_factory.mktemp("ts") / "series")


@pytest.fixture(scope="module")
def ts_result(ts_series, tmp_path_factory, env) -> Path:
    out = tmp_path_factory.mktemp("ts_out") / "out"
    proc = run_cli(ts_series, "-o", out, "--progress", "none", "--no-overview", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def lits_result(tmp_path_factory, env) -> tuple[Path, Path]:
    """LiTS 117 (real CT, manual lesions) written as a DICOM CT series, segmented through the CLI."""
    from LiverSegLib.outputs.dicom_ct import write_ct_series

    root = tmp_path_factory.mktemp("lits")
    ct, _ = load_case("lits117")
    write_ct_series(ct, root / "series", patient_id="LITS117")
    proc = run_cli(root / "series", "-o", root / "out", "--progress", "none", "--no-overview", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root / "series", root / "out"


def _code(item) -> tuple[str, str]:
    return str(item[0].CodingSchemeDesignator), str(item[0].CodeValue)


def test_seg_references_the_series_and_carries_the_labelmap(ts_series, ts_result):
    out = ts_result
    source = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID:
              pydicom.dcmread(p, stop_before_pixels=True) for p in ts_series.iterdir()}
    first = next(iter(source.values()))
    seg = hd.seg.segread(out / "segmentation.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == STUDY_UID and seg.PatientID == "LIVERSEG-TEST"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID != ""
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID == SERIES_UID
    labels = [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence]
    assert labels == [(1, "Liver"), (2, "Liver lesion")]
    liver, lesion = seg.SegmentSequence
    assert _code(liver.SegmentedPropertyTypeCodeSequence) == ("SCT", TERMINOLOGY["Liver"]["type"]["code"])
    assert _code(liver.SegmentedPropertyCategoryCodeSequence) == ("SCT", "123037004")
    assert _code(lesion.SegmentedPropertyTypeCodeSequence) == ("SCT", "108369006")
    assert _code(lesion.AnatomicRegionSequence) == ("SCT", "10200004")
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    # every frame: a source slice of the series, at that slice's position, holding that slice's liver mask
    labelmap = read_volume(out / "segmentation.nrrd")
    ct = read_volume(ts_series)
    k_of = {uid: k for k, uid in enumerate(pydicom.dcmread(f, stop_before_pixels=True).file_meta
                                           .MediaStorageSOPInstanceUID for f in ct.metadata["dicom_files"])}
    pixels = seg.pixel_array
    assert len(seg.PerFrameFunctionalGroupsSequence) == seg.NumberOfFrames == np.count_nonzero(
        labelmap.array_zyx.any(axis=(1, 2)))  # liver frames; no lesion here, so no lesion frames
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = k_of[uid]
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient, source[uid].ImagePositionPatient)
        assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        np.testing.assert_array_equal(pixels[f] > 0, labelmap.array_zyx[k] > 0)


def test_sr_reports_the_liver_volume_against_the_seg(ts_result):
    out = ts_result
    summary = json.loads((out / "summary.json").read_text())
    seg = pydicom.dcmread(out / "segmentation.dcm")
    sr = pydicom.dcmread(out / "measurements.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == STUDY_UID and sr.CompletionFlag == "COMPLETE"
    assert _code(sr.ConceptNameCodeSequence) == ("DCM", "126000")  # Imaging Measurement Report (TID 1500)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = report.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["Liver"]
    values = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    assert values["Volume"] == pytest.approx(summary["liver_volume_ml"], abs=1e-3)
    assert values["Number of liver lesions"] == summary["lesion_count"] == 0
    ref = groups[0].referenced_segment[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and ref.ReferencedSegmentNumber == 1
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence == {seg.SeriesInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID}
    assert summary["dicom"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert summary["dicom"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert {"segmentation.dcm", "measurements.dcm"} <= set(summary["outputs"])


def test_sr_lesions_match_the_lesion_table_and_their_seg_frames(lits_result):
    series, out = lits_result
    rows = (out / "lesions.csv").read_text().splitlines()[1:]
    table = {int(r.split(",")[0]): [float(v) for v in r.split(",")[1:]] for r in rows}
    assert len(table) >= 5  # the model finds several of LiTS 117's lesions
    seg = hd.seg.segread(out / "segmentation.dcm")
    pixels = seg.pixel_array
    groups = hd.sr.MeasurementReport.from_sequence([pydicom.dcmread(out / "measurements.dcm")]) \
        .get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["Liver"] + [f"Lesion {i}" for i in sorted(table)]
    assert {m.name.meaning: m.value for m in groups[0].get_measurements()}["Number of liver lesions"] == len(table)
    labelmap = read_volume(out / "segmentation.nii.gz" if (out / "segmentation.nii.gz").exists()
                           else out / "segmentation.nrrd")
    for group in groups[1:]:
        lesion_id = int(str(group.tracking_identifier).split()[1])
        voxels, volume, diameter, x, y, z = table[lesion_id][:6]
        values = {m.name.meaning: m for m in group.get_measurements()}
        assert values["Volume"].value == pytest.approx(volume, abs=1e-3)
        assert values["Diameter"].value == pytest.approx(diameter, abs=0.01)
        assert values["Diameter"].derivation.meaning == "Maximum"
        point = [it for it in group[0].ContentSequence if it.ValueType == "SCOORD3D"]
        assert len(point) == 1 and _code(point[0].ConceptNameCodeSequence) == ("DCM", "128138")
        np.testing.assert_allclose(point[0].GraphicData, [x, y, z], atol=0.01)
        assert point[0].ReferencedFrameOfReferenceUID == seg.FrameOfReferenceUID
        ref = group.referenced_segment[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSegmentNumber == 2
        frames = [int(f) for f in ref.ReferencedFrameNumber] if "ReferencedFrameNumber" in ref else []
        assert frames, f"lesion {lesion_id} names no SEG frame"
        for number in frames:  # each named frame is a lesion frame holding lesion voxels
            item = seg.PerFrameFunctionalGroupsSequence[number - 1]
            assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2
            assert pixels[number - 1].any()
    total = sum(v[0] for v in table.values())
    assert total == np.count_nonzero(labelmap.array_zyx == 2)


def test_anonymised_series_without_study_uid_skips_the_dicom_outputs_with_a_warning(tmp_path, env):
    folder = fetch_source("totalsegmentator") / TS_DICOM
    proc = run_cli(folder, "-o", tmp_path / "out", "--progress", "none", "--no-overview", "--quick", env=env,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("no DICOM SEG/SR written" in w and "Instance UID" in w for w in summary["warnings"])
    assert not (tmp_path / "out" / "segmentation.dcm").exists() and "dicom" not in summary
    # asked for explicitly: refused in one line before the model runs, nothing written
    proc = run_cli(folder, "-o", tmp_path / "out2", "--progress", "none", "--dicom-seg", env=env, timeout=300)
    assert_one_line_error(proc, "Instance UID (anonymised?)", "--no-dicom-seg")
    assert not (tmp_path / "out2").exists()


def test_nifti_input_with_dicom_seg_writes_the_ct_series_it_references(tmp_path, env):
    ct_path = fetch_source("totalsegmentator") / "tests/reference_files/example_ct.nii.gz"
    out = tmp_path / "out"
    proc = run_cli(ct_path, "-o", out, "--progress", "none", "--no-overview", "--dicom-seg", "--quick", env=env,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    copy = read_volume(out / "ct_dicom")
    original = read_volume(ct_path)
    assert copy.same_grid(original, atol=1e-3)
    np.testing.assert_array_equal(copy.array_zyx, np.rint(original.array_zyx))
    seg = hd.seg.segread(out / "segmentation.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == copy.metadata["series_instance_uid"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dicom"]["source_written_here"] is True
    assert len([o for o in summary["outputs"] if o.startswith("ct_dicom/")]) == original.shape_xyz[2]
    # (without the switch a NIfTI input gets no DICOM outputs: test_shipped_model's CLI run on this file checks it)


def test_folder_with_two_series_is_refused_listing_them_and_series_picks_one(ts_series, tmp_path, env):
    folder = tmp_path / "two"
    shutil.copytree(ts_series, folder)
    other = "1.2.826.0.1.3680043.10.511.3.99"
    for path in sorted(folder.iterdir())[:3]:  # three files re-filed as a second series (a scout, say)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesDescription = other, "scout"
        ds.save_as(path)
    before = file_tree(tmp_path)
    proc = run_cli(folder, "-o", tmp_path / "out", "--progress", "none", env=env)
    line = assert_one_line_error(proc, "holds 2 DICOM series", other, "scout", "3 files", "--series")
    assert "17 files" in line and file_tree(tmp_path) == before
    proc = run_cli(folder, "-o", tmp_path / "out", "--progress", "none", "--no-overview", "--quick", "--series",
                   other, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["input"]["size_xyz"][2] == 3


def test_series_with_a_missing_slice_is_refused_and_nothing_written(ts_series, tmp_path, env):
    folder = tmp_path / "gap"
    shutil.copytree(ts_series, folder)
    ct = read_volume(folder)
    Path(ct.metadata["dicom_files"][9]).unlink()
    proc = run_cli(folder, "-o", tmp_path / "out", "--progress", "none", env=env)
    assert_one_line_error(proc, "missing slices or uneven slice spacing", "export the complete series")
    assert not (tmp_path / "out").exists()


def _evaluate(*args, env):
    import subprocess
    import sys

    from cli_fixtures import REPO

    return subprocess.run([sys.executable, "-m", "LiverSegLib", "evaluate", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def test_evaluate_reads_dcmqi_liver_seg_as_its_nrrd(tmp_path, env):
    """dcmqi's DICOM SEG of a manual liver against the same liver as NRRD: Dice 1.0, either way round."""
    from LiverSegLib.data.samples import shared_data_dir

    shared = shared_data_dir()
    if shared is None or not (shared / "dcmqi-ct3slice" / "liver.dcm").is_file():
        pytest.skip("../shared/data/dcmqi-ct3slice is not on this checkout (the dcmqi SEG sample)")
    seg, nrrd = shared / "dcmqi-ct3slice" / "liver.dcm", shared / "dcmqi-ct3slice" / "liver_seg.nrrd"
    for pair, option in (((seg, nrrd), "--gt-lesion-label"), ((nrrd, seg), "--pred-lesion-label")):
        proc = _evaluate(*pair, option, "none", "-o", tmp_path / f"{option}.csv", env=env)
        assert proc.returncode == 0, proc.stderr
        row = (tmp_path / f"{option}.csv").read_text().splitlines()[1].split(",")
        assert float(row[1]) == 1.0  # liver_dice
    # a SEG of another CT is refused in one line, as are two SEGs
    other = fetch_source("totalsegmentator") / "tests/reference_files/example_ct.nii.gz"
    proc = _evaluate(seg, other, env=env)
    assert proc.returncode == 2 and "does not belong to this CT" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = _evaluate(seg, seg, env=env)
    assert proc.returncode == 2 and "both DICOM SEG" in proc.stderr


def test_evaluate_scores_our_seg_like_our_labelmap(ts_series, ts_result, env):
    """Our own SEG read back onto the CT series' grid is the labelmap we wrote (Dice 1 against it)."""
    out = ts_result
    proc = _evaluate(out / "segmentation.dcm", out / "segmentation.nrrd", "-o", out.parent / "m.csv", env=env)
    assert proc.returncode == 0, proc.stderr
    header, row = (out.parent / "m.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["liver_dice"]) == 1.0 and int(values["liver_ref_voxels"]) > 100_000
