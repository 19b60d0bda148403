"""``liverseg train`` and ``liverseg models import`` as users run them: real subprocesses, real CT, torchrun."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from cli_fixtures import REPO, assert_one_line_error, cli_env

from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.data.samples import load_case
from LiverSegLib.io import read_volume, write_volume

TINY_DI2IN = ["stage.network.kwargs.features=[4,8,16]", "stage.network.kwargs.branch_levels=[2,1,0]",
              "sampler.crop=[16,32,32]", "sampler.batch=2", "adversarial.discriminator.kwargs.features=[4,8]",
              "adversarial.k_d=2", "adversarial.batch_d=2", "adversarial.batch_g=1", "validate_every=2"]


def _liverseg(*args, env, timeout=300, module=("-m", "LiverSegLib")):
    return subprocess.run([sys.executable, *module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def real_ct_folder(tmp_path_factory):
    """TotalSegmentator's example CT and its liver as an image/label pair folder (the smallest real CT here)."""
    folder = tmp_path_factory.mktemp("realct")
    ct, label = load_case("ts_example_ct")
    write_volume(ct, folder / "example.nii.gz")
    write_volume(label, folder / "example_seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    for i in range(4):
        ct, lab = make_phantom((16, 48, 48), (2.0, 2.0, 3.0), seed=i, n_lesions=(1, 2))
        write_volume(ct, folder / f"p{i}.nii.gz")
        write_volume(lab, folder / f"p{i}_seg.nii.gz")
    return folder


def test_di2in_an_trains_on_real_ct_and_segment_uses_the_checkpoint(real_ct_folder, tmp_path):
    env = cli_env(tmp_path / "home")
    out = tmp_path / "run"
    proc = _liverseg("train", "di2in_an", "--data", real_ct_folder, "--val", real_ct_folder, "--out", out,
                     "--max-steps", "2", "--device", "cpu", "--progress", "none", *_sets(TINY_DI2IN), env=env)
    assert proc.returncode == 0, proc.stderr
    for name in ("model.pt", "training_state.pt", "log.csv", "curves.png", "validation.csv", "config.json",
                 "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["counts"] == {"g_steps": 4, "d_steps": 4}  # 2 + 2 x (k_D=2, k_G=1)
    phases = [r["phase"] for r in _rows(out / "log.csv") if r["loss"]]
    assert phases == ["supervised"] * 2 + ["adversarial"] * 2
    table = _rows(out / "validation.csv")
    assert [r["case"] for r in table] == ["example"] and 0.0 <= float(table[0]["dice_liver"]) <= 1.0
    assert "example" in proc.stdout and "liver Dice" in proc.stdout
    seg = tmp_path / "seg"
    proc = _liverseg("segment", real_ct_folder / "example.nii.gz", "--model-file", out / "model.pt", "-o", seg,
                     "--device", "cpu", "--progress", "none", env=env)
    assert proc.returncode == 0, proc.stderr
    labelmap = read_volume(seg / "segmentation.nii.gz")
    ct = read_volume(real_ct_folder / "example.nii.gz")
    assert labelmap.array_zyx.shape == ct.array_zyx.shape and labelmap.same_grid(ct)
    assert set(np.unique(labelmap.array_zyx)) <= {0, 1}  # a liver-only model gives a liver-only result
    summary = json.loads((seg / "summary.json").read_text())
    assert [lb["name"] for lb in summary["labels"]] == ["Liver"]


def test_torchrun_two_gloo_processes_lower_the_loss_and_agree(phantom_folder, tmp_path):
    out = tmp_path / "ddp"
    args = ["--nproc-per-node", "2", "-m", "LiverSegLib", "train", "cascade_coarse", "--data", phantom_folder,
            "--out", out, "--max-steps", "60", "--device", "cpu", "--progress", "none",
            *_sets(["stage.network.kwargs.features=[4,8,16]", "sampler.crop=32", "sampler.batch=4",
                    "optimizer.lr=0.05", "validate_every=20", "stage.preprocessing.spacing_xyz=[null,null,null]"])]
    proc = _liverseg(*args, env=cli_env(tmp_path / "home"), module=("-m", "torch.distributed.run"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # parameters and BN statistics identical on both ranks
    losses = [float(r["loss"]) for r in _rows(out / "log.csv") if r["loss"]]
    assert len(losses) == 60  # rank 0 alone writes the log
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


@pytest.mark.parametrize("case", ["layout", "not_empty", "config", "resume", "folds"])
def test_train_errors_are_one_line(case, phantom_folder, tmp_path):
    env = cli_env(tmp_path / "home")
    out = tmp_path / "out"
    data = phantom_folder
    extra = []
    words = []
    config = "cascade_fine"
    if case == "layout":
        data = tmp_path / "junk"
        data.mkdir()
        (data / "notes.txt").write_text("x")
        words = ["could not recognise", "LiTS", "MSD", "pairs"]
    elif case == "not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        words = ["not empty", "--resume", "--overwrite"]
    elif case == "config":
        config = "cascade_extra_fine"
        words = ["unknown training config", "di2in_an"]
    elif case == "resume":
        extra = ["--resume"]
        words = ["--resume", "training_state.pt"]
    elif case == "folds":
        extra = ["--folds", "9"]
        words = ["--folds 9", "4"]
    proc = _liverseg("train", config, "--data", data, "--out", out, "--device", "cpu", *extra, env=env)
    assert_one_line_error(proc, *words)
    if case == "not_empty":
        assert (out / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_models_import_then_segment_by_id(phantom_folder, tmp_path):
    env = cli_env(tmp_path / "home")
    run = tmp_path / "run"
    proc = _liverseg("train", "cascade_fine", "--data", phantom_folder, "--out", run, "--max-steps", "2",
                     "--device", "cpu", "--progress", "none",
                     *_sets(["stage.network.kwargs.features=[4,8,16]", "sampler.crop=32", "sampler.batch=2",
                             "synthetic_lesions=null"]), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _liverseg("models", "import", run / "model.pt", "--id", "my-liver", env=env)
    assert proc.returncode == 0, proc.stderr
    catalogue = json.loads((tmp_path / "home" / "models.json").read_text())
    entry = next(m for m in catalogue["models"] if m["id"] == "my-liver")
    from LiverSegLib.weights import sha256_file

    weights = tmp_path / "home" / "weights" / entry["stages"]["coarse"]["weights"]  # content-addressed name
    assert entry["stages"]["coarse"]["sha256"] == sha256_file(weights)
    assert entry["stages"]["coarse"]["sha256"] == sha256_file(run / "model.pt")
    assert _liverseg("models", "verify", "my-liver", env=env).returncode == 0
    seg = tmp_path / "seg"
    proc = _liverseg("segment", phantom_folder / "p0.nii.gz", "--model", "my-liver", "-o", seg, "--device", "cpu",
                     "--progress", "none", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((seg / "summary.json").read_text())["model"]["id"] == "my-liver"
    assert_one_line_error(_liverseg("models", "import", run / "model.pt", "--id", "my-liver", env=env),
                          "already", "--overwrite")
    assert_one_line_error(_liverseg("models", "import", run / "model.pt", "--id", "han-demo", env=env), "shipped")
    bad = tmp_path / "evil.pt"
    bad.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" + b"\x00" * 8)
    assert_one_line_error(_liverseg("models", "import", bad, "--id", "evil", env=env), "evil.pt")
    assert [m["id"] for m in json.loads((tmp_path / "home" / "models.json").read_text())["models"]] == ["my-liver"]


def test_folds_train_one_run_per_fold_and_report_every_case(phantom_folder, tmp_path):
    out = tmp_path / "cv"
    proc = _liverseg("train", "cascade_fine", "--data", phantom_folder, "--out", out, "--folds", "2",
                     "--max-steps", "2", "--device", "cpu", "--progress", "none",
                     *_sets(["stage.network.kwargs.features=[4,8,16]", "sampler.crop=32", "sampler.batch=2",
                             "synthetic_lesions=null", "validate_every=2"]), env=cli_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out / "validation.csv")
    assert sorted(r["case"] for r in rows) == ["p0", "p1", "p2", "p3"]  # each case validated exactly once
    assert sorted({r["fold"] for r in rows}) == ["0", "1"]
    for k in (0, 1):
        meta = json.loads((out / f"fold{k}" / "config.json").read_text())
        assert meta["name"] == "cascade_fine" and (out / f"fold{k}" / "model.pt").is_file()
    held_out = {r["case"] for r in _rows(out / "fold0" / "validation.csv")}
    import torch

    trained_on = set(torch.load(out / "fold0" / "model.pt", weights_only=True)["metadata"]["train_cases"])
    assert held_out and not held_out & trained_on


def test_mask_bank_option_feeds_the_discriminator_and_is_recorded(real_ct_folder, tmp_path):
    env = cli_env(tmp_path / "home")
    bank = tmp_path / "bank"
    bank.mkdir()
    _, label = load_case("ts_example_ct")
    write_volume(label, bank / "segmentation-1.nii.gz")  # a LiTS-style liver mask
    out = tmp_path / "run"
    proc = _liverseg("train", "di2in_an", "--data", real_ct_folder, "--out", out, "--max-steps", "1",
                     "--device", "cpu", "--progress", "none", "--mask-bank", bank, *_sets(TINY_DI2IN), env=env)
    assert proc.returncode == 0, proc.stderr
    from LiverSegLib.weights import load_checkpoint

    meta = load_checkpoint(out / "model.pt")["metadata"]
    assert meta["mask_bank"] == [str(bank)] and meta["mask_bank_size"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _liverseg("train", "di2in_an", "--data", real_ct_folder, "--out", tmp_path / "run2", "--max-steps", "1",
                     "--device", "cpu", "--progress", "none", "--mask-bank", empty, *_sets(TINY_DI2IN), env=env)
    assert_one_line_error(proc, "no liver masks found")
