"""``liverseg segment`` end to end: outputs, geometry, surfaces, progress and reruns, through real subprocesses
with a tiny self-made checkpoint (see cli_fixtures.py), and the in-process check that the stored orientation is
undone exactly. Refusals of bad inputs and options are in test_cli_bad_input.py.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from cli_fixtures import (
    MODEL_ID,
    SHAPE,
    SPACING,
    assert_one_line_error,
    cli_env,
    file_tree,
    make_tiny_checkpoint,
    run_cli,
    write_nifti_ct,
)
from mesh_checks import mesh_stats, physical_bounds_lps

from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.io import read_volume, write_volume
from LiverSegLib.types import Volume

STAGES = ("read", "coarse", "fine", "post", "write")  # the order a run goes through


# ---------------------------------------------------------------- helpers and fixtures


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def nifti_ct(tmp_path_factory) -> tuple[Path, Volume]:
    return write_nifti_ct(tmp_path_factory.mktemp("nifti"))


def _assert_same_grid(a: Volume, b: Volume) -> None:
    assert a.array_zyx.shape == b.array_zyx.shape
    np.testing.assert_allclose(a.spacing_xyz, b.spacing_xyz, atol=1e-4)
    np.testing.assert_allclose(a.origin_xyz, b.origin_xyz, atol=1e-3)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


def _write_dicom_series(ct: Volume, folder: Path) -> None:
    """``ct`` as a CT series, one file per slice, with the geometry tags a scanner writes."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(ct.array_zyx)
    image.SetSpacing(ct.spacing_xyz)
    image.SetOrigin(ct.origin_xyz)
    image.SetDirection(ct.direction.ravel().tolist())
    d, uid = ct.direction, "1.2.826.0.1.3680043.2.1125.4711"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in {
            "0008|0060": "CT", "0020|000e": uid, "0020|000d": uid + ".1", "0010|0020": "PHANTOM",
            "0020|0037": "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1])),
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{ct.spacing_xyz[1]:.10f}\\{ct.spacing_xyz[0]:.10f}",
            "0020|0013": str(k + 1), "0008|0018": f"{uid}.{k + 1}",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{image.GetDepth() - k:04d}.dcm"))  # names against slice order
        writer.Execute(slice_)


# ---------------------------------------------------------------- one NIfTI run, several checks


@pytest.fixture(scope="module")
def nifti_run(tmp_path_factory, ckpt, env, nifti_ct):
    path, ct = nifti_ct
    out = tmp_path_factory.mktemp("run") / "case1"
    proc = run_cli(path, "-o", out, "--model-file", ckpt, "--device", "cpu", "--surfaces", "stl", "--progress", "json",
                   "--lesion-threshold", "0.5", env=env)
    assert proc.returncode == 0, proc.stderr
    return proc, out, ct


def test_nifti_outputs_lie_on_the_input_grid_and_agree_with_each_other(nifti_run):
    proc, out, ct = nifti_run
    seg = read_volume(out / "segmentation.nii.gz")
    assert seg.array_zyx.dtype == np.uint8
    _assert_same_grid(seg, ct)  # incl. the RAS-like direction and the origin
    values = set(np.unique(seg.array_zyx).tolist())
    assert values <= {0, 1, 2}
    assert 1 in values and 0.01 < np.count_nonzero(seg.array_zyx) / seg.array_zyx.size < 0.9  # not trivial

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["id"] == MODEL_ID
    assert set(STAGES) <= set(summary["timings_s"]), summary["timings_s"]
    assert all(v >= 0 for v in summary["timings_s"].values())
    voxel_ml = float(np.prod(ct.spacing_xyz)) / 1000.0
    assert summary["liver_volume_ml"] == pytest.approx(np.count_nonzero(seg.array_zyx) * voxel_ml, abs=1e-3)
    assert summary["lesion_volume_ml"] == pytest.approx(np.count_nonzero(seg.array_zyx == 2) * voxel_ml, abs=1e-3)
    assert summary["input"]["format"] == "nifti" and summary["input"]["size_xyz"] == list(ct.shape_xyz)

    with open(out / "lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out / "lesions.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert {"id", "volume_ml", "centroid_x_lps_mm"} <= set(header)
    assert len(rows) == summary["lesion_count"]
    assert sum(float(r["volume_ml"]) for r in rows) == pytest.approx(summary["lesion_volume_ml"], abs=1e-2)

    png = (out / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 64 and height >= 64
    assert png.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")  # complete file
    assert not list(out.parent.glob(".liverseg-*")), "temporary folders left behind"


def test_implausible_liver_volume_is_a_warning_in_summary_json_and_the_progress_stream(nifti_run):
    """The phantom's whole field of view holds 0.42 L, so any liver found in it is below the plausible 0.5 L."""
    proc, out, ct = nifti_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["liver_volume_ml"] < 500.0
    (warning,) = [w for w in summary["warnings"] if w.startswith("liver volume")]
    assert f"liver volume {summary['liver_volume_ml'] / 1000:.2f} L is outside the plausible 0.5-4.5 L" in warning
    # the 16-slice scan range: a liver reaching its first or last slice may be cut by the field of view
    seg = read_volume(out / "segmentation.nii.gz").array_zyx > 0  # stored RAS-like: slices still along axis 0
    assert ("field of view may cut it" in warning) == bool(seg[0].any() or seg[-1].any())
    logs = [e["message"] for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "log"]
    assert f"warning: {warning}" in logs  # a front end reading --progress json sees it too


def test_surfaces_are_closed_named_lps_and_in_lps_coordinates(nifti_run):
    _, out, ct = nifti_run
    summary = json.loads((out / "summary.json").read_text())
    files = sorted((out / "surfaces").iterdir())
    assert files and all(f.suffix == ".stl" and "LPS" in f.name for f in files), files
    assert summary["surfaces"]["coordinate_system"] == "LPS"
    liver_file = next(f for f in files if f.name.lower().startswith("liver_"))
    stats = mesh_stats(liver_file)
    assert stats["cells"] > 0, f"{liver_file.name} is empty"
    assert stats["boundary"] == 0 and stats["non_manifold"] == 0
    # LPS, not RAS or index space: the mesh sits on the labelmap's voxels (within a voxel, smoothing shrinks it)
    seg = read_volume(out / "segmentation.nii.gz")
    expected = physical_bounds_lps(seg, seg.array_zyx > 0)
    np.testing.assert_allclose(stats["bounds"], expected, atol=max(ct.spacing_xyz) * 1.5)


def test_progress_json_stream(nifti_run):
    proc, out, _ = nifti_run
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["stage"] for e in progress} >= set(STAGES)
    last: dict[str, float] = {}
    for e in progress:
        assert 0.0 <= e["fraction"] <= 1.0
        assert e["fraction"] >= last.get(e["stage"], 0.0), f"fraction went back in {e}"
        last[e["stage"]] = e["fraction"]
    assert all(last[s] == 1.0 for s in STAGES)
    order = [s for i, s in enumerate(e["stage"] for e in progress) if i == 0 or progress[i - 1]["stage"] != s]
    assert order == list(STAGES), order
    done = events[-1]
    assert done["event"] == "done"
    assert done["model"]["id"] == MODEL_ID
    summary = json.loads((out / "summary.json").read_text())
    assert done["liver_volume_ml"] == summary["liver_volume_ml"]
    assert done["lesion_count"] == summary["lesion_count"]
    assert Path(done["outputs"]["segmentation"]) == out / "segmentation.nii.gz"


# ---------------------------------------------------------------- other input formats


def test_nrrd_input_gives_nrrd_on_an_oblique_grid(tmp_path, ckpt, env):
    angle = np.radians(12.0)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    ct, _ = make_phantom(SHAPE, (1.7, 1.5, 3.0), seed=7, direction=oblique)
    path = write_volume(ct, tmp_path / "ct.nrrd")
    proc = run_cli(path, "-o", tmp_path / "out", "--model-file", ckpt, "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "%|" not in proc.stderr, proc.stderr  # no bar drawn into a pipe
    assert "results in" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lesions.csv", "overview.png", "segmentation.nrrd", "summary.json"]
    seg = read_volume(tmp_path / "out" / "segmentation.nrrd")
    _assert_same_grid(seg, ct)
    assert seg.array_zyx.dtype == np.uint8 and set(np.unique(seg.array_zyx).tolist()) <= {0, 1, 2}


def test_dicom_folder_input_gives_nrrd_on_the_dicom_grid(tmp_path, ckpt, env):
    ct, _ = make_phantom(SHAPE, SPACING, seed=9, origin_xyz=(-51.2, -80.0, 1200.5))
    _write_dicom_series(ct, tmp_path / "series")
    dicom = read_volume(tmp_path / "series")
    proc = run_cli(tmp_path / "series", "-o", tmp_path / "out", "--model-file", ckpt, "--device", "cpu",
                   "--progress", "none", env=env)
    assert proc.returncode == 0, proc.stderr
    seg = read_volume(tmp_path / "out" / "segmentation.nrrd")
    _assert_same_grid(seg, dicom)
    assert set(np.unique(seg.array_zyx).tolist()) <= {0, 1, 2} and np.count_nonzero(seg.array_zyx) > 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"]["format"] == "dicom"


@pytest.fixture(scope="module")
def rerun(tmp_path_factory, ckpt, env):
    """Old results in the output folder; a run without --overwrite, then one with it on an MR-like volume.

    Both checks share the second (full) run to keep the suite fast.
    """
    root = tmp_path_factory.mktemp("rerun")
    ct, _ = make_phantom(SHAPE, SPACING, seed=11)
    a = ct.array_zyx.astype(np.float32)
    mr = ct.with_array((a - a.min()) / (a.max() - a.min()) * 800.0)  # 0..800 like an MR series
    path = write_volume(mr, root / "mr.nii.gz")
    out = root / "out"
    out.mkdir()
    # an earlier run's results, written before summaries named their producer
    (out / "summary.json").write_text('{"model": {"id": "old"}, "outputs": ["segmentation.nii.gz", "old.csv"]}\n')
    (out / "segmentation.nii.gz").write_bytes(b"old labelmap")
    (out / "old.csv").write_text("from an earlier run\n")
    before = file_tree(root)
    refused = run_cli(path, "-o", out, "--model-file", ckpt, "--device", "cpu", env=env)
    after_refusal = file_tree(root)
    replaced = run_cli(path, "-o", out, "--model-file", ckpt, "--device", "cpu", "--overwrite", "--progress", "none",
                       env=env)
    return root, mr, before, refused, after_refusal, replaced


def test_existing_results_are_kept_without_overwrite_and_replaced_with_it(rerun):
    root, mr, before, refused, after_refusal, replaced = rerun
    assert_one_line_error(refused, "already holds", "--overwrite")
    assert after_refusal == before  # bytes and mtimes untouched, no temporary folder

    assert replaced.returncode == 0, replaced.stderr
    out = root / "out"
    assert json.loads((out / "summary.json").read_text())["model"]["id"] == MODEL_ID
    _assert_same_grid(read_volume(out / "segmentation.nii.gz"), mr)
    assert not (out / "old.csv").exists()  # the folder is the new results, not a mixture
    assert json.loads((out / "summary.json").read_text())["producer"]["name"] == "LiverSeg"
    assert sorted(p.name for p in root.iterdir()) == ["mr.nii.gz", "out"]  # no backup or temporary folder left


def test_a_folder_with_the_users_files_is_refused_even_with_overwrite(tmp_path, ckpt, env):
    """A user's file in the output folder is never deleted: refused with one line, folder untouched (issue 10)."""
    ct, _ = make_phantom(SHAPE, SPACING, seed=12)
    path = write_volume(ct, tmp_path / "ct.nii.gz")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "summary.json").write_text('{"producer": {"name": "LiverSeg"}, "outputs": ["lesions.csv"]}\n')
    (mixed / "lesions.csv").write_text("label\n")
    (mixed / "sub").mkdir()
    (mixed / "sub" / "report.docx").write_bytes(b"the user's report")
    before = file_tree(tmp_path)
    for out, text in ((mine, "not LiverSeg results (notes.txt)"), (mixed, "did not write (sub/report.docx)")):
        for extra in ((), ("--overwrite",)):
            refused = run_cli(path, "-o", out, "--model-file", ckpt, "--device", "cpu", *extra, env=env)
            assert_one_line_error(refused, text, "nothing was changed")
    assert file_tree(tmp_path) == before


def test_mr_like_intensities_run_with_a_not_ct_warning(rerun):
    root, _, _, _, _, replaced = rerun
    assert replaced.returncode == 0, replaced.stderr
    warnings = json.loads((root / "out" / "summary.json").read_text())["warnings"]
    assert any("do not look like CT" in w for w in warnings), warnings
    assert "do not look like CT" in replaced.stderr  # the user sees it too


# ---------------------------------------------------------------- in-process: stored orientation is undone exactly


def _store(volume: Volume, perm: tuple[int, int, int], signs: tuple[int, int, int]) -> Volume:
    """The same voxels in the same patient space, stored with image axis ``n`` along patient axis ``perm[n]``
    (sign ``signs[n]``) instead of the canonical identity direction of ``volume``."""
    assert np.allclose(volume.direction, np.eye(3))
    sizes = volume.shape_xyz
    axes = [2 - perm[2 - a] for a in range(3)]  # stored array axis a <- canonical array axis
    array = np.transpose(volume.array_zyx, axes)
    array = array[tuple(slice(None, None, -1) if signs[2 - a] < 0 else slice(None) for a in range(3))]
    direction = np.zeros((3, 3))
    first = np.zeros(3)
    for n in range(3):
        direction[perm[n], n] = signs[n]
        first[perm[n]] = sizes[perm[n]] - 1 if signs[n] < 0 else 0
    origin = volume.index_to_physical(first)
    spacing = tuple(volume.spacing_xyz[perm[n]] for n in range(3))
    return Volume(np.ascontiguousarray(array), spacing, tuple(origin), direction, dict(volume.metadata))


def _unstore(array_zyx: np.ndarray, perm: tuple[int, int, int], signs: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`_store` on arrays: back to the canonical array order."""
    axes = [2 - perm[2 - a] for a in range(3)]
    flipped = array_zyx[tuple(slice(None, None, -1) if signs[2 - a] < 0 else slice(None) for a in range(3))]
    return np.transpose(flipped, np.argsort(axes))


STORED = {"flipped (RAS-like)": ((0, 1, 2), (-1, -1, 1)), "coronal, permuted and flipped": ((0, 2, 1), (1, -1, 1)),
          "all axes permuted": ((2, 0, 1), (-1, 1, -1))}


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_labelmap_is_identical_whatever_the_stored_orientation(ckpt, one_torch_thread):
    import LiverSegLib
    from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
    from LiverSegLib.pipeline.predictor import Predictor

    ct, _ = make_phantom(SHAPE, SPACING, seed=13, origin_xyz=(10.0, -20.0, 30.0))
    reference = LiverSegLib.segment(ct, model=model_from_checkpoint(ckpt), device="cpu", lesion_threshold=0.5)
    ref = reference.labelmap.array_zyx
    assert 0 < np.count_nonzero(ref) < ref.size  # a result that depends on where things are
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for name, (perm, signs) in STORED.items():
        stored = _store(ct, perm, signs)
        # the test's own construction: same voxels at the same LPS points
        np.testing.assert_array_equal(_unstore(stored.array_zyx, perm, signs), ct.array_zyx)
        corners = np.array([[i, j, k] for i in (0, stored.shape_xyz[0] - 1) for j in (0, stored.shape_xyz[1] - 1)
                            for k in (0, stored.shape_xyz[2] - 1)])
        lps = np.asarray(stored.index_to_physical(corners))
        canon_ijk = np.linalg.solve(ct.index_to_physical_matrix()[:3, :3], (lps - ct.origin_xyz).T).T
        for ijk, c in zip(corners, np.rint(canon_ijk).astype(int), strict=True):
            assert stored.array_zyx[ijk[2], ijk[1], ijk[0]] == ct.array_zyx[c[2], c[1], c[0]]

        result = predictor.predict(stored, lesion_threshold=0.5)
        assert result.labelmap.same_grid(stored), name
        np.testing.assert_array_equal(_unstore(result.labelmap.array_zyx, perm, signs), ref, err_msg=name)
        assert result.liver_volume_ml == pytest.approx(reference.liver_volume_ml)
        assert len(result.lesions) == len(reference.lesions)
