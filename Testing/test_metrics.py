"""LiTS metrics on constructed cases with known answers, and ``liverseg evaluate`` end to end."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 - the conventional name
import torch
from monai.metrics import compute_dice
from scipy import integrate

from LiverSegLib.cli.main import main
from LiverSegLib.metrics import evaluate_case, lesion_detection, segmentation_scores, summarize

REPO = Path(__file__).resolve().parents[1]


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


# --- overlap scores -------------------------------------------------------------------------------------------

def test_cubes_exact_overlap_scores():
    pred = _box((16, 16, 16), (0, 0, 0), (10, 10, 10))  # 1000 voxels
    ref = _box((16, 16, 16), (2, 0, 0), (12, 10, 5))  # 500 voxels, 8*10*5 = 400 shared
    s = segmentation_scores(pred, ref, (1.0, 1.0, 1.0))
    assert s["dice"] == pytest.approx(800 / 1500)
    assert s["voe"] == pytest.approx(1 - 400 / 1100)
    assert s["rvd"] == pytest.approx(1.0)  # (1000 - 500) / 500: over-segmentation is positive
    assert segmentation_scores(ref, pred, (1.0, 1.0, 1.0))["rvd"] == pytest.approx(-0.5)
    assert (s["intersection"], s["pred_voxels"], s["ref_voxels"]) == (400, 1000, 500)
    # the counts-based Dice agrees with MONAI's
    monai_dice = compute_dice(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float())
    assert s["dice"] == pytest.approx(float(monai_dice))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((5, 4, 4)), (1.0, 1.0, 1.0))


# --- surface distances ----------------------------------------------------------------------------------------

def test_offset_spheres_anisotropic_spacing_match_analytic_distances():
    spacing, radius, k = (2.0, 1.0, 0.8), 10.0, 2  # a sphere in mm, voxelised on an anisotropic grid
    shape = (20, 30, 36)
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape, spacing, strict=True)],
                          indexing="ij")
    ref = z**2 + y**2 + x**2 <= radius**2
    pred = np.roll(ref, k, axis=0)  # shift by k voxels along array axis 0, i.e. k * 2 mm
    d = k * spacing[0]
    # mean distance from one sphere's surface to the other's, averaged over the surface (u = cos(angle))
    analytic_assd = integrate.quad(lambda u: abs(math.sqrt(radius**2 + d**2 - 2 * radius * d * u) - radius),
                                   -1, 1)[0] / 2
    s = segmentation_scores(pred, ref, spacing)
    assert s["mssd"] == pytest.approx(d, abs=1e-5)  # the poles move by exactly d
    assert s["assd"] == pytest.approx(analytic_assd, rel=0.15)
    assert s["rvd"] == 0.0


def test_distances_follow_spacing_of_the_right_axis():
    # two 4x8x8 boxes 8 voxels apart along array axis 0: every surface voxel's nearest surface voxel of the
    # other box is straight along axis 0, at 8-z (layers of 64, 28, 28, 64 surface voxels at 8, 7, 6, 5 voxels)
    ref = _box((16, 16, 16), (2, 4, 4), (6, 12, 12))
    pred = _box((16, 16, 16), (10, 4, 4), (14, 12, 12))
    assd = (64 * 8 + 28 * 7 + 28 * 6 + 64 * 5) / 184
    base = segmentation_scores(pred, ref, (1.0, 1.0, 1.0))
    assert (base["assd"], base["mssd"]) == pytest.approx((assd, 8.0))
    # doubling the spacing of axis 0 doubles every distance ...
    assert tuple(segmentation_scores(pred, ref, (2.0, 1.0, 1.0))[k] for k in ("assd", "mssd")) == pytest.approx(
        (2 * assd, 16.0))
    # ... while the spacing of another axis changes none of them
    assert tuple(segmentation_scores(pred, ref, (1.0, 1.0, 2.0))[k] for k in ("assd", "mssd")) == pytest.approx(
        (assd, 8.0))


# --- empty masks ----------------------------------------------------------------------------------------------

def test_empty_cases_are_explicit():
    empty, cube = np.zeros((8, 8, 8), bool), _box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    both = segmentation_scores(empty, empty, (1.0, 1.0, 1.0))
    assert {k: both[k] for k in ("dice", "voe", "rvd", "assd", "mssd")} == {
        "dice": 1.0, "voe": 0.0, "rvd": 0.0, "assd": 0.0, "mssd": 0.0}
    missed = segmentation_scores(empty, cube, (1.0, 1.0, 1.0))
    assert (missed["dice"], missed["voe"], missed["rvd"]) == (0.0, 1.0, -1.0)
    assert math.isnan(missed["assd"]) and math.isnan(missed["mssd"])
    spurious = segmentation_scores(cube, empty, (1.0, 1.0, 1.0))
    assert (spurious["dice"], spurious["voe"], spurious["rvd"]) == (0.0, 1.0, math.inf)
    assert math.isnan(spurious["assd"]) and math.isnan(spurious["mssd"])
    det = lesion_detection(empty, empty)
    assert (det["n_ref"], det["n_pred"], det["tp"], det["fp"], det["fn"]) == (0, 0, 0, 0, 0)
    assert math.isnan(det["precision"]) and math.isnan(det["recall"])


# --- lesion detection -----------------------------------------------------------------------------------------

def test_lesion_detection_counts():
    shape = (30, 30, 30)
    ref = _box(shape, (2, 2, 2), (6, 6, 6)) | _box(shape, (10, 10, 10), (14, 14, 14)) | _box(shape, (20, 2, 2),
                                                                                           (24, 6, 6))
    ref[6, 6, 6] = True  # touches the first lesion only by a corner: 26-connectivity keeps it one lesion
    pred = _box(shape, (3, 3, 3), (5, 5, 5)) | _box(shape, (20, 20, 20), (23, 23, 23))  # one hit, one FP
    det = lesion_detection(pred, ref)
    assert det == {"n_ref": 3, "n_pred": 2, "tp": 1, "fn": 2, "tp_pred": 1, "fp": 1, "precision": 0.5,
                   "recall": pytest.approx(1 / 3)}
    # the hit covers 8 of 65 voxels of its lesion: not enough at min_overlap 0.5, and it then counts as FP
    strict = lesion_detection(pred, ref, min_overlap=0.5)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (0, 2, 3)
    assert strict["precision"] == 0.0


def test_evaluate_case_liver_includes_lesions():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    ref[4:6, 4:6, 4:6] = 2
    pred = ref.copy()
    pred[pred == 2] = 1  # lesion labelled liver: liver still perfect, lesion missed
    c = evaluate_case(pred, ref, (1.0, 1.0, 1.0))
    assert c["liver_dice"] == 1.0 and c["liver_assd"] == 0.0 and c["liver_ref_voxels"] == 512
    assert c["lesion_dice"] == 0.0 and c["lesion_rvd"] == -1.0 and math.isnan(c["lesion_assd"])
    assert (c["lesion_tp"], c["lesion_fp"], c["lesion_fn"], c["n_ref_lesions"], c["n_pred_lesions"]) == (0, 0, 1, 1, 0)
    assert math.isnan(c["lesion_precision"]) and c["lesion_recall"] == 0.0


# --- dataset totals -------------------------------------------------------------------------------------------

def test_global_dice_differs_from_per_case_mean():
    big = np.zeros((12, 12, 12), np.uint8)
    big[1:11, 1:11, 1:11] = 1  # 1000 voxels, predicted perfectly
    small_ref, small_pred = np.zeros_like(big), np.zeros_like(big)
    small_ref[0, 0, :10] = 1  # 10 voxels, missed completely
    small_pred[11, 11, :10] = 1
    cases = [evaluate_case(big, big, (1.0, 1.0, 1.0)), evaluate_case(small_pred, small_ref, (1.0, 1.0, 1.0))]
    s = summarize(cases)
    assert s["liver_dice_per_case"] == pytest.approx(0.5)
    assert s["liver_dice_global"] == pytest.approx(2 * 1000 / (1010 + 1010))
    assert s["n_skipped"]["liver_assd"] == 0
    assert s["mean"]["liver_assd"] == pytest.approx(cases[1]["liver_assd"] / 2) and cases[1]["liver_assd"] > 0
    # no lesions anywhere: every lesion score is the "both empty" value, detection ratios are undefined
    assert s["lesion_dice_global"] == 1.0 and s["n_skipped"]["lesion_precision"] == 2
    assert math.isnan(s["lesion_precision_pooled"]) and math.isnan(s["mean"]["lesion_recall"])


def test_summarize_skips_non_finite_and_pools_detection():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:9, 1:9, 1:9] = 1
    with_lesion = ref.copy()
    with_lesion[2:4, 2:4, 2:4] = 2
    with_lesion[6:8, 6:8, 6:8] = 2
    cases = [evaluate_case(with_lesion, with_lesion, (1.0, 1.0, 1.0)),  # 2 lesions, both found
             evaluate_case(ref, with_lesion, (1.0, 1.0, 1.0))]  # 2 lesions, none predicted
    s = summarize(cases)
    assert s["n_skipped"]["lesion_assd"] == 1 and s["mean"]["lesion_assd"] == 0.0
    assert s["n_skipped"]["lesion_precision"] == 1 and s["mean"]["lesion_precision"] == 1.0
    assert s["lesion_recall_pooled"] == 0.5 and s["lesion_precision_pooled"] == 1.0
    assert s["sum"]["n_ref_lesions"] == 4 and s["sum"]["lesion_fn"] == 2
    with pytest.raises(ValueError):
        summarize([])


# --- command line ---------------------------------------------------------------------------------------------

def _write(path: Path, labels: np.ndarray, spacing_xyz=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def _liverseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LiverSegLib", "evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@pytest.fixture()
def two_cases(tmp_path: Path) -> list[Path]:
    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:8, 2:12, 2:12] = 1
    ref[4:6, 4:6, 4:6] = 2
    shifted = np.zeros_like(ref)
    shifted[3:9, 2:12, 2:12] = 1  # liver shifted by one 2 mm slice (array axis 0 = k), lesion missed
    return [_write(tmp_path / "a.nii.gz", ref), _write(tmp_path / "a_gt.nii.gz", ref),
            _write(tmp_path / "b.nii.gz", shifted), _write(tmp_path / "b_gt.nii.gz", ref)]


def test_cli_writes_csv_and_table(tmp_path: Path, two_cases: list[Path]):
    out = tmp_path / "metrics.csv"
    proc = _liverseg(*map(str, two_cases), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["a", "b", "mean", "global"]
    assert float(rows["a"]["liver_dice"]) == 1.0 and float(rows["a"]["lesion_recall"]) == 1.0
    assert float(rows["b"]["liver_dice"]) == pytest.approx(2 * 500 / 1200, abs=1e-6)
    assert float(rows["b"]["liver_mssd"]) == pytest.approx(2.0, abs=1e-5)  # spacing_xyz[2], not [0]
    assert rows["b"]["lesion_assd"] == "nan" and "predicted lesion empty" in rows["b"]["notes"]
    assert float(rows["mean"]["liver_dice"]) == pytest.approx((1 + 5 / 6) / 2, abs=1e-6)
    assert float(rows["mean"]["lesion_assd"]) == 0.0 and "lesion_assd=1" in rows["mean"]["notes"]
    assert float(rows["global"]["liver_dice"]) == pytest.approx(2 * (600 + 500) / 2400, abs=1e-6)
    assert float(rows["global"]["lesion_recall"]) == 0.5 and rows["global"]["n_ref_lesions"] == "2"
    table = proc.stdout.splitlines()
    assert table[0].split()[:3] == ["case", "liv.dice", "liv.voe"] and table[2].split()[:2] == ["b", "0.8333"]
    assert len({len(line) for line in table[:5]}) == 1  # aligned columns


def test_cli_refuses_existing_csv(tmp_path: Path, two_cases: list[Path]):
    out = tmp_path / "metrics.csv"
    out.write_text("keep me")
    _assert_one_line_error(_liverseg(*map(str, two_cases[:2]), "-o", str(out)), "--overwrite")
    assert out.read_text() == "keep me"


def test_cli_input_errors(tmp_path: Path, two_cases: list[Path]):
    _assert_one_line_error(_liverseg(*map(str, two_cases[:3])), "odd number")
    _assert_one_line_error(_liverseg(str(two_cases[0]), str(tmp_path / "nope.nii.gz")), "not found")
    moved = _write(tmp_path / "moved.nii.gz", np.zeros((10, 16, 16)), origin=(0.0, 0.0, 5.0))
    proc = _liverseg(str(two_cases[0]), str(moved))
    _assert_one_line_error(proc, "not on the same grid")
    assert "origin" in proc.stderr and "moved.nii.gz" in proc.stderr and "spacing" not in proc.stderr


def test_cli_label_remapping_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture):
    # a TotalSegmentator-like reference: liver = 5, kidney = 2 (must not be taken for a lesion)
    gt = np.zeros((8, 12, 12), np.uint8)
    gt[1:7, 1:7, 1:7] = 5
    gt[1:7, 8:11, 8:11] = 2
    pred = np.where(gt == 5, 1, 0)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    p, g = _write(tmp_path / "pred" / "c1.nii.gz", pred), _write(tmp_path / "gt" / "c1.nii.gz", gt)
    assert main(["evaluate", str(p), str(g)]) == 2  # unexplained label values are refused
    assert "--gt-liver-label" in capsys.readouterr().err
    out = tmp_path / "m.csv"
    code = main(["evaluate", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"),
                 "--gt-liver-label", "5", "--gt-lesion-label", "none", "-o", str(out)])
    assert code == 0
    with out.open(newline="") as f:
        row = next(csv.DictReader(f))
    assert row["case"] == "c1" and float(row["liver_dice"]) == 1.0 and row["n_ref_lesions"] == "0"


def test_cli_compares_a_reference_stored_with_reversed_rows(tmp_path: Path):
    """Same voxels, other storage order (rows reversed, direction and origin rewritten): scored as on one grid."""
    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:8, 1:9, 2:12] = 1  # asymmetric along rows, so a wrong mapping would lose overlap
    pred = ref.copy()
    pred[2:8, 1:3, 2:12] = 0
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(ref[:, ::-1, :]))
    flipped.SetSpacing((0.8, 0.8, 2.0))
    flipped.SetOrigin((0.0, 15 * 0.8, 0.0))  # the first stored row is the last row of the prediction's grid
    flipped.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(flipped, str(tmp_path / "gt_flipped.nii.gz"))
    _write(tmp_path / "gt.nii.gz", ref)
    _write(tmp_path / "pred.nii.gz", pred)
    same = _liverseg(str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "-o", str(tmp_path / "a.csv"))
    other = _liverseg(str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt_flipped.nii.gz"), "-o", str(tmp_path / "b.csv"))
    assert same.returncode == 0 and other.returncode == 0, other.stderr
    dice = [float(next(csv.DictReader((tmp_path / f).open()))["liver_dice"]) for f in ("a.csv", "b.csv")]
    assert dice[0] == pytest.approx(2 * 360 / (360 + 480)) and dice[1] == dice[0]
