"""The use-case layer (issue 10): SegmentOptions, the folder batch from the CLI, one source per format."""

from __future__ import annotations

import csv
import json

import pytest
from cli_fixtures import SHAPE, SPACING, assert_one_line_error, cli_env, make_tiny_checkpoint, run_cli

from LiverSegLib.config import ModelConfig
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import InputError
from LiverSegLib.io import read_volume, write_volume
from LiverSegLib.runs import SegmentOptions
from LiverSegLib.runs.folder import find_cases
from LiverSegLib.training.train_config import TrainConfig, load_train_config
from LiverSegLib.types import LesionRecord


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


def test_segment_options_validate_and_render_cli_arguments():
    assert SegmentOptions().cli_args() == ["--device", "auto"]  # no threshold: the model's own value holds
    options = SegmentOptions(model="han-liver", device="cpu", lesion_threshold=0.65, quick=True, surfaces="OBJ",
                             overwrite=True, overview=False)
    assert options.surfaces == "obj" and options.lesion_threshold == 0.65
    assert options.cli_args() == ["--device", "cpu", "--model", "han-liver", "--lesion-threshold", "0.65", "--quick",
                                  "--surfaces", "obj", "--overwrite", "--no-overview"]
    # the CLI parses what the options render, back to the same options
    from LiverSegLib.cli.main import build_parser

    args = build_parser().parse_args(["segment", "in.nii.gz", "-o", "out", *options.cli_args()])
    assert SegmentOptions.from_cli(args) == options
    for bad, text in (({"lesion_threshold": 1.5}, "--lesion-threshold must be between 0 and 1, got 1.5"),
                      ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
                      ({"surfaces": "ply"}, "unsupported surface format: 'ply'"),
                      ({"model": "a", "model_file": "b.pt"}, "not both")):
        with pytest.raises(InputError, match=text):
            SegmentOptions(**bad)
    with pytest.raises(AttributeError):
        options.quick = False  # frozen: one value shared by the front ends


def test_catalogue_entries_round_trip_through_model_config():
    """ModelConfig.to_dict is what the catalogue writers use: every shipped entry comes back unchanged."""
    from LiverSegLib._paths import resources_dir

    data = json.loads((resources_dir() / "models.json").read_text())
    for entry in data["models"]:
        assert json.loads(json.dumps(ModelConfig.from_dict(entry).to_dict())) == entry, entry["id"]


def test_lesion_rows_round_trip(tmp_path):
    record = LesionRecord(3, 120, 1.23456, 14.567, (10.123, -20.456, 30.789), 42.34, 0.98765)
    row = record.as_row()
    assert list(row) == LesionRecord.columns()
    back = LesionRecord.from_row({k: str(v) for k, v in row.items()})  # as csv.DictReader gives it
    assert back.as_row() == row and back.lesion_id == 3 and back.centroid_lps == (10.12, -20.46, 30.79)


def test_recipes_reject_misspelt_keys_naming_them():
    for name in ("cascade_coarse", "cascade_fine", "di2in", "di2in_an", "mixed_unet"):
        assert isinstance(load_train_config(name), TrainConfig)
    for config, override, text in (
            ("cascade_coarse", "sampler.bach=4", "sampler: Additional properties are not allowed ('bach'"),
            ("cascade_coarse", "stepz=3", "top level: Additional properties are not allowed ('stepz'"),
            ("cascade_fine", "synthetic_lesions.radius=[1,2]", "synthetic_lesions: Additional properties"),
            ("di2in_an", "adversarial.lamda=1", "adversarial: Additional properties are not allowed ('lamda'"),
            ("cascade_coarse", "scheduler.name=cosine", "scheduler.name: 'cosine' is not one of"),
            ("cascade_coarse", "loss.alpha=0.3", "loss: bad options for loss 'weighted_ce'"),
            ("cascade_coarse", "optimizer.lr=fast", "optimizer.lr: 'fast' is not of type 'number'")):
        with pytest.raises(InputError, match=text.replace("(", r"\(").replace("[", r"\[")):
            load_train_config(config, [override])


def test_find_cases_names_and_filters(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "a.nii.gz", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert [n for n, _ in find_cases(tmp_path)] == ["a.nii.gz", "a.nrrd", "b", "series"]
    assert [n for n, _ in find_cases(tmp_path, "b*")] == ["b"]
    with pytest.raises(InputError, match="input folder not found"):
        find_cases(tmp_path / "nope")


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    src.mkdir()
    for seed in (1, 2):
        write_volume(make_phantom(SHAPE, SPACING, seed=seed)[0], src / f"case{seed}.nii.gz")
    (src / "broken.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    return root, src


def test_cli_batch_segments_a_folder_resumes_and_reports_a_bad_case(batch_input, ckpt, env):
    root, src = batch_input
    out = root / "out"
    first = run_cli(src, "-o", out, "--batch", "--model-file", ckpt, "--device", "cpu", "--no-overview", env=env)
    # one case failed: exit 2 with one error line after the per-case lines; the good cases are done
    assert first.returncode == 2, first.stderr
    assert "liverseg: error: 1 of 3 case(s) failed" in first.stderr
    assert "[2/3] case1: done" in first.stdout and "[1/3] broken: failed" in first.stdout
    text = (out / "batch_summary.csv").read_text(encoding="utf-8").splitlines()
    rows = {r["case"]: r for r in csv.DictReader(text)}
    assert {k: r["status"] for k, r in rows.items()} == {"broken": "failed", "case1": "done", "case2": "done"}
    assert rows["broken"]["exit_code"] == "2" and "broken.nrrd" in rows["broken"]["message"]
    assert float(rows["case1"]["liver_volume_ml"]) > 0
    assert {p.name for p in (out / "case1").iterdir()} == {"segmentation.nii.gz", "lesions.csv", "summary.json"}
    assert read_volume(out / "case2" / "segmentation.nii.gz").array_zyx.any()
    before = (out / "case1" / "summary.json").stat().st_mtime_ns
    again = run_cli(src, "-o", out, "--batch", "--model-file", ckpt, "--device", "cpu", "--pattern", "case*", env=env)
    assert again.returncode == 0, again.stderr
    assert "2 skipped" in again.stdout and (out / "case1" / "summary.json").stat().st_mtime_ns == before
    assert_one_line_error(run_cli(src / "case1.nii.gz", "-o", out, "--batch", env=env), "--batch needs a folder")
    assert_one_line_error(run_cli(src / "case1.nii.gz", "-o", root / "x", "--pattern", "a*", env=env),
                          "--pattern only applies with --batch")


def test_cpu_count_follows_affinity_and_the_container_quota(tmp_path, monkeypatch):
    import os

    import torch

    from LiverSegLib.runs.cpu import available_cpus, cgroup_cpu_quota, configure_torch_threads

    affinity = len(os.sched_getaffinity(0))
    assert cgroup_cpu_quota(tmp_path) is None and available_cpus(tmp_path) == affinity  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU (cgroup v2)
    assert cgroup_cpu_quota(tmp_path) == 0.5 and available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # cgroup v1, no quota
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LIVERSEG_THREADS", "1")
        assert configure_torch_threads() == 1
    finally:
        torch.set_num_threads(before)
