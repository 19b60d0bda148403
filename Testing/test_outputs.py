"""Tests of LiverSegLib.outputs: closed LPS surfaces, the overview PNG, and the atomic case writer."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from mesh_checks import mesh_stats, read_mesh
from scipy.spatial.transform import Rotation
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals

from LiverSegLib.errors import InputError, OutputExistsError
from LiverSegLib.io import read_volume
from LiverSegLib.outputs import overview as overview_module
from LiverSegLib.outputs import writer
from LiverSegLib.outputs.overview import radiological_view, render_overview
from LiverSegLib.outputs.surfaces import export_surfaces, labelmap_surface
from LiverSegLib.types import LabelInfo, LesionRecord, SegmentationResult, Volume

SPACING = (0.8, 0.9, 2.0)
LABELS = [
    LabelInfo(1, "Liver", (0.86, 0.45, 0.35), {"type": "SCT^10200004^Liver"}),
    LabelInfo(2, "Liver lesion", (0.9, 0.9, 0.4), {"type": "SCT^108369006^Neoplasm"}),
    LabelInfo(3, "Vessel", (0.0, 0.0, 1.0), {}),  # never present: must be skipped
]


def _direction(mirror: bool) -> np.ndarray:
    rotation = Rotation.from_euler("xz", [20, 20], degrees=True).as_matrix()
    return rotation @ np.diag([1.0, 1.0, -1.0]) if mirror else rotation


def _ball(mirror: bool, radius_mm: float = 12.0) -> tuple[Volume, np.ndarray]:
    """A labelmap holding a ball defined in patient space (so it is a true sphere in mm), and its LPS centre."""
    grid = Volume(np.zeros((22, 56, 60), np.uint8), SPACING, (-30.0, 40.0, -100.0), _direction(mirror))
    k, j, i = np.indices(grid.array_zyx.shape)
    centre = grid.index_to_physical([30.0, 28.0, 11.0])
    inside = np.linalg.norm(grid.index_to_physical(np.stack([i, j, k], -1)) - centre, axis=-1) < radius_mm
    return grid.with_array(inside.astype(np.uint8)), centre


# ---------------------------------------------------------------- surfaces


@pytest.mark.parametrize("mirror", [False, True])
def test_sphere_surface_is_closed_sized_and_placed_in_lps(tmp_path, mirror):
    labelmap, centre = _ball(mirror)
    (path,) = export_surfaces(labelmap, tmp_path, LABELS[:1])
    assert path == tmp_path / "Liver_LPS.stl"
    mesh = read_mesh(path)
    stats = mesh_stats(mesh)
    assert stats["cells"] > 500
    assert stats["boundary"] == 0 and stats["non_manifold"] == 0
    voxel_volume = labelmap.array_zyx.sum() * np.prod(SPACING)
    assert abs(stats["volume"] - voxel_volume) < 0.10 * voxel_volume
    bounds = stats["bounds"].reshape(3, 2)  # a sphere's bounds are its centre +- radius on each axis
    np.testing.assert_allclose(bounds[:, 0], centre - 12.0, atol=1.5)
    np.testing.assert_allclose(bounds[:, 1], centre + 12.0, atol=1.5)

    # STL facets carry no stored normals: their winding must face outward, also under a mirroring direction
    normals = vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.ComputeCellNormalsOn()
    normals.ComputePointNormalsOff()
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.SplittingOff()
    normals.Update()
    cell_normals = vtk_to_numpy(normals.GetOutput().GetCellData().GetNormals())
    points = vtk_to_numpy(mesh.GetPoints().GetData())
    first = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)[:, 0]
    assert np.mean(np.sum((points[first] - centre) * cell_normals, axis=1) > 0) > 0.99


def test_export_skips_absent_labels_and_liver_encloses_its_lesions(tmp_path):
    labelmap, _ = _ball(mirror=False)
    array = labelmap.array_zyx.copy()
    array[9:13, 25:31, 27:33] = np.where(array[9:13, 25:31, 27:33] > 0, 2, 0)  # a lesion inside the liver
    labelmap = labelmap.with_array(array)
    files = export_surfaces(labelmap, tmp_path / "made" / "here", LABELS, file_format="obj")
    assert [p.name for p in files] == ["Liver_LPS.obj", "Liver_lesion_LPS.obj"]
    assert sorted(p.name for p in (tmp_path / "made" / "here").iterdir()) == ["Liver_LPS.obj", "Liver_lesion_LPS.obj"]
    liver, lesion = (mesh_stats(p) for p in files)
    assert liver["boundary"] == 0 and liver["non_manifold"] == 0
    assert lesion["boundary"] == 0 and lesion["non_manifold"] == 0
    whole = (array > 0).sum() * np.prod(SPACING)
    assert abs(liver["volume"] - whole) < 0.10 * whole  # the organ, lesions included: no cavities
    lesion_ml = (array == 2).sum() * np.prod(SPACING)
    assert abs(lesion["volume"] - lesion_ml) < 0.25 * lesion_ml  # small box: relatively more corner loss


def test_surface_touching_the_volume_edge_is_still_closed():
    volume = Volume(np.ones((3, 6, 6), np.uint8), SPACING, (0.0, 0.0, 0.0))  # every voxel is liver
    stats = mesh_stats(labelmap_surface(volume, [1]))
    assert stats["boundary"] == 0 and stats["non_manifold"] == 0
    assert labelmap_surface(volume.with_array(np.zeros((3, 6, 6), np.uint8)), [1]).GetNumberOfPoints() == 0


def test_export_refuses_unknown_format_and_empty_labelmap_writes_nothing(tmp_path):
    labelmap, _ = _ball(mirror=False)
    with pytest.raises(InputError, match=r"unsupported surface format: 'ply' \(use one of stl, obj\)"):
        export_surfaces(labelmap, tmp_path, LABELS, file_format="ply")
    assert export_surfaces(labelmap.with_array(np.zeros_like(labelmap.array_zyx)), tmp_path, LABELS) == []
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- overview


def _phantom(shape=(12, 48, 40), direction=None) -> tuple[Volume, Volume]:
    ct = np.full(shape, -1000, np.int16)
    ct[:, 4:-4, 4:-4] = 40
    labels = np.zeros(shape, np.uint8)
    z0, z1 = shape[0] // 4, max(shape[0] * 3 // 4, shape[0] // 4 + 1)
    labels[z0:z1, 10:30, 6:22] = 1
    labels[z0:z1, 15:20, 10:14] = 2
    volume = Volume(ct, SPACING, (10.0, -20.0, 30.0), np.eye(3) if direction is None else direction)
    return volume, volume.with_array(labels)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_overview_png_is_written_with_a_sensible_size(tmp_path):
    ct, labels = _phantom()
    path = render_overview(ct, labels, tmp_path / "overview.png", "case 7", liver_volume_ml=1500.0, lesion_count=1)
    width, height = _png_size(path)
    assert 800 <= width <= 3000 and 250 <= height <= 1200
    pixels = imread(path)[..., :3]
    green = (pixels[..., 1] > 0.6) & (pixels[..., 0] < 0.4) & (pixels[..., 2] < 0.4)
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert green.sum() > 100 and red.sum() > 20  # the outlines are drawn


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_overview_survives_thin_volumes_and_empty_labelmaps(tmp_path, depth):
    ct, labels = _phantom(shape=(depth, 48, 40))
    assert _png_size(render_overview(ct, labels, tmp_path / "a.png"))[0] > 300
    empty = labels.with_array(np.zeros_like(labels.array_zyx))
    assert _png_size(render_overview(ct, empty, tmp_path / "b.png"))[0] > 300


def test_radiological_view_puts_patient_right_left_and_anterior_up():
    ct, _ = _phantom()
    marker = ct.array_zyx.copy()
    marker[-1, 0, 0] = 999  # LPS storage: i=0 is patient right, j=0 anterior, k=last superior
    view, spacing = radiological_view(ct.with_array(marker))
    assert view[-1, 0, 0] == 999 and spacing == (SPACING[2], SPACING[1], SPACING[0])
    # the same patient stored RAS (i and j reversed, as NIfTI often is) gives the same view
    ras = Volume(marker[:, ::-1, ::-1].copy(), SPACING, (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(radiological_view(ras)[0], view)
    # and so does a volume stored with axes permuted (sagittal slices: k along L, i along P, j along S)
    permuted = Volume(marker.transpose(2, 0, 1).copy(), (SPACING[1], SPACING[2], SPACING[0]), (0.0, 0.0, 0.0),
                      np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(radiological_view(permuted)[0], view)


def test_overview_of_ras_and_lps_storage_is_identical(tmp_path):
    ct, labels = _phantom()
    flip = np.diag([-1.0, -1.0, 1.0])
    ct_ras = Volume(ct.array_zyx[:, ::-1, ::-1].copy(), SPACING, (0.0, 0.0, 0.0), flip)
    labels_ras = ct_ras.with_array(labels.array_zyx[:, ::-1, ::-1].copy())
    a = imread(render_overview(ct, labels, tmp_path / "lps.png", "x"))
    b = imread(render_overview(ct_ras, labels_ras, tmp_path / "ras.png", "x"))
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- writer


def _result(ct: Volume, labels: Volume) -> SegmentationResult:
    lesion = LesionRecord(1, 20, 0.0288, 4.5, (11.0, -5.0, 40.0), 35.2, np.float32(0.97))
    return SegmentationResult(labels, LABELS[:2], [lesion], liver_volume_ml=4.6, lesion_volume_ml=0.0288,
                              model_id="demo", model_version="0.1", timings_s={"fine": 1.23456},
                              details={"box": np.array([1, 2, 3]), "device": "cpu"})


def _ct_from_file(tmp_path, name="ct.nii") -> Volume:
    ct, _ = _phantom()
    return Volume(ct.array_zyx, ct.spacing_xyz, ct.origin_xyz, ct.direction,
                  {"format": "nifti", "path": str(tmp_path / name)})


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".liverseg-")]


def test_writer_writes_every_output(tmp_path):
    ct = _ct_from_file(tmp_path)
    _, labels = _phantom()
    out = tmp_path / "results" / "case1"
    paths = writer.write_case_outputs(_result(ct, labels), ct, out, surfaces="stl", extra_summary={"input": "ct.nii"})
    assert paths["segmentation"] == out / "segmentation.nii"  # same family as the .nii input
    seg = read_volume(paths["segmentation"])
    assert seg.array_zyx.dtype == np.uint8 and seg.same_grid(ct)
    np.testing.assert_array_equal(seg.array_zyx, labels.array_zyx)
    with open(paths["lesions"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["volume_ml"] == "0.0288" and rows[0]["max_probability"] == "0.97"
    summary = json.loads(paths["summary"].read_text())
    assert summary["lesion_count"] == 1 and summary["input"] == "ct.nii" and summary["details"]["box"] == [1, 2, 3]
    assert summary["surfaces"] == {"coordinate_system": "LPS", "units": "mm",
                                   "files": ["surfaces/Liver_LPS.stl", "surfaces/Liver_lesion_LPS.stl"]}
    assert summary["outputs"] == sorted(["segmentation.nii", "lesions.csv", "overview.png", "summary.json",
                                         "surfaces/Liver_LPS.stl", "surfaces/Liver_lesion_LPS.stl"])
    assert all(p.is_file() for p in paths["surfaces"]) and _png_size(paths["overview"])[0] > 300
    assert _leftovers(out.parent) == []
    (tmp_path / "plain").mkdir()  # the results folder gets the permissions of any new folder (umask), not 0700
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_lesion_csv_has_a_header_without_lesions(tmp_path):
    ct, labels = _phantom()
    result = _result(ct, labels)
    result.lesions = []
    paths = writer.write_case_outputs(result, ct, tmp_path / "out")
    assert paths["segmentation"].name == "segmentation.nrrd"  # no input format known: NRRD
    header = paths["lesions"].read_text().splitlines()
    assert header == [",".join(LesionRecord(0, 0, 0.0, 0.0, (0, 0, 0), 0.0, 0.0).as_row())]
    assert "surfaces" not in paths and not (tmp_path / "out" / "surfaces").exists()


def test_check_output_dir(tmp_path):
    writer.check_output_dir(tmp_path / "new", overwrite=False)  # absent: fine
    (tmp_path / "empty").mkdir()
    writer.check_output_dir(tmp_path / "empty", overwrite=False)  # empty: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"output path .*file is a file, not a folder"):
        writer.check_output_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "summary.json").write_text('{"producer": {"name": "LiverSeg"}, "outputs": ["a.csv"]}')
    (tmp_path / "full" / "a.csv").write_text("x")
    with pytest.raises(OutputExistsError) as info:
        writer.check_output_dir(tmp_path / "full", overwrite=False)
    assert str(info.value) == (f"output folder {tmp_path / 'full'} already holds LiverSeg results (summary.json ...); "
                               "pass --overwrite to replace them or choose another folder")
    writer.check_output_dir(tmp_path / "full", overwrite=True)
    # a summary.json that is not LiverSeg's ({} or another tool's) does not make a folder ours to replace
    for name, summary in (("empty_summary", "{}"), ("other_tool", '{"producer": {"name": "X"}, "outputs": []}'),
                          ("broken", "{not json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(summary)
        with pytest.raises(OutputExistsError, match="not LiverSeg results"):
            writer.check_output_dir(tmp_path / name, overwrite=True)
    # a file the summary does not list is the user's: refused even with overwrite
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"did not write \(notes.txt\)"):
        writer.check_output_dir(tmp_path / "full", overwrite=True)


def test_writer_refuses_existing_results_and_changes_nothing(tmp_path):
    ct, labels = _phantom()
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(OLD_SUMMARY)
    with pytest.raises(OutputExistsError):
        writer.write_case_outputs(_result(ct, labels), ct, out)
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == OLD_SUMMARY
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_old_results(tmp_path):
    ct, labels = _phantom()
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")  # written by an earlier LiverSeg version, listed in its summary
    (out / "summary.json").write_text('{"producer": {"name": "LiverSeg"}, "outputs": ["stale.txt"]}')
    writer.write_case_outputs(_result(ct, labels), ct, out, overwrite=True, surfaces="obj")
    assert not (out / "stale.txt").exists() and (out / "summary.json").is_file()
    assert sorted(p.name for p in (out / "surfaces").iterdir()) == ["Liver_LPS.obj", "Liver_lesion_LPS.obj"]
    assert _leftovers(tmp_path) == []


OLD_SUMMARY = '{"producer": {"name": "LiverSeg"}, "outputs": []}'


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def test_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    ct, labels = _phantom()
    monkeypatch.setattr(overview_module, "render_overview", _boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        writer.write_case_outputs(_result(ct, labels), ct, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_keeps_old_results(tmp_path, monkeypatch):
    ct, labels = _phantom()
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(OLD_SUMMARY)
    monkeypatch.setattr(overview_module, "render_overview", _boom)
    with pytest.raises(RuntimeError):
        writer.write_case_outputs(_result(ct, labels), ct, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == OLD_SUMMARY
    assert _leftovers(tmp_path) == []


def test_failure_while_swapping_folders_restores_old_results(tmp_path, monkeypatch):
    ct, labels = _phantom()
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(OLD_SUMMARY)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".liverseg-tmp-"):  # the new results' move into place fails
            raise OSError("injected rename failure")
        real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", rename)
    with pytest.raises(OSError, match="injected rename failure"):
        writer.write_case_outputs(_result(ct, labels), ct, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == OLD_SUMMARY
    assert _leftovers(tmp_path) == []


def test_writer_refuses_a_labelmap_off_the_ct_grid(tmp_path):
    ct, labels = _phantom()
    shifted = Volume(labels.array_zyx, SPACING, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="does not lie on the CT's grid"):
        writer.write_case_outputs(_result(ct, shifted), ct, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
