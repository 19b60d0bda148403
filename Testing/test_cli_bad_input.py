"""``liverseg segment`` refuses bad inputs and options: exit code 2, one line on stderr and nothing written.

Real subprocesses with a tiny self-made checkpoint (see cli_fixtures.py); the successful runs are in
test_cli_segment.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from cli_fixtures import (
    REPO,
    SHAPE,
    SPACING,
    assert_one_line_error,
    cli_env,
    file_tree,
    make_tiny_checkpoint,
    run_cli,
    write_nifti_ct,
)

from LiverSegLib.io import write_volume
from LiverSegLib.types import Volume


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def nifti_ct(tmp_path_factory) -> tuple[Path, Volume]:
    return write_nifti_ct(tmp_path_factory.mktemp("nifti"))


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def _write_image(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _missing(d: Path) -> Path:
    return d / "nope.nii.gz"


def _empty_file(d: Path) -> Path:
    (d / "empty.nii.gz").touch()
    return d / "empty.nii.gz"


def _empty_folder(d: Path) -> Path:
    (d / "series").mkdir()
    return d / "series"


def _nifti_2d(d: Path) -> Path:
    return _write_image(d / "slice.nii.gz", sitk.GetImageFromArray(np.zeros((64, 64), np.int16)))


def _png_2d(d: Path) -> Path:
    return _write_image(d / "slice.png", sitk.GetImageFromArray(np.zeros((64, 64), np.uint8)))


def _rgb(d: Path) -> Path:
    return _write_image(d / "rgb.nrrd", sitk.GetImageFromArray(np.zeros((16, 64, 64, 3), np.uint8), isVector=True))


def _all_nan(d: Path) -> Path:  # NRRD: ITK's NIfTI reader (niftilib) turns NaN into 0 while reading
    return write_volume(Volume(np.full(SHAPE, np.nan, np.float32), SPACING, (0.0, 0.0, 0.0)), d / "nan.nrrd")


def _tiny(d: Path) -> Path:
    return write_volume(Volume(np.zeros((4, 8, 8), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), d / "tiny.nii.gz")


BAD_INPUTS = {
    "missing file": (_missing, ["input not found", "nope.nii.gz"]),
    "empty file": (_empty_file, ["empty", "0 bytes"]),
    "empty folder": (_empty_folder, ["folder is empty"]),
    "2D NIfTI": (_nifti_2d, ["2D image", "3D"]),
    "2D PNG": (_png_2d, ["unsupported input", "slice.png"]),
    "RGB": (_rgb, ["3 components", "RGB"]),
    "all NaN": (_all_nan, ["no finite value"]),
    "too small": (_tiny, ["too small to segment", "8x8x4"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, ckpt, env, case):
    make, words = BAD_INPUTS[case]
    source = make(tmp_path)
    before = file_tree(tmp_path)
    proc = run_cli(source, "-o", tmp_path / "out", "--model-file", ckpt, "--device", "cpu", env=env)  # default: bar
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "out").exists()
    assert file_tree(tmp_path) == before


def _catalogue_words() -> list[str]:
    if (REPO / "Resources" / "models.json").is_file():
        return ["unknown model", "no-such-model", "models list"]
    return ["model catalogue not found"]  # the shipped catalogue is still being made


BAD_OPTIONS = {
    "lesion threshold": (["--model-file", "{ckpt}", "--lesion-threshold", "1.5"], ["--lesion-threshold", "1.5"]),
    "unknown model id": (["--model", "no-such-model"], None),
    "missing model file": (["--model-file", "{tmp}/gone.pt"], ["model file not found", "gone.pt"]),
    "cuda without CUDA": (["--model-file", "{ckpt}", "--device", "cuda"], ["CUDA", "--device cpu"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_is_refused_in_one_line_and_nothing_is_written(tmp_path, ckpt, env, nifti_ct, case):
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    options, words = BAD_OPTIONS[case]
    options = [o.format(ckpt=ckpt, tmp=tmp_path) for o in options]
    before = file_tree(tmp_path)
    proc = run_cli(nifti_ct[0], "-o", tmp_path / "out", *options, "--progress", "json", env=env)
    message = assert_one_line_error(proc, *(words or _catalogue_words()))
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1] == {"event": "error", "message": message.removeprefix("liverseg: error: "), "exit_code": 2}
    if case != "cuda without CUDA":  # options are checked before the input is read (it may be a large series)
        assert not any(e["event"] == "progress" for e in events), events
    assert not (tmp_path / "out").exists()
    assert file_tree(tmp_path) == before


def test_usage_error_is_one_line(tmp_path, env, nifti_ct):
    proc = run_cli(nifti_ct[0], env=env)  # no -o
    assert_one_line_error(proc, "-o/--output", "required")
    assert proc.stdout == ""


def test_bad_input_with_json_progress_ends_with_an_error_event(tmp_path, ckpt, env):
    proc = run_cli(tmp_path / "nope.nii.gz", "-o", tmp_path / "out", "--model-file", ckpt, "--progress", "json",
                   env=env)
    assert proc.returncode == 2
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and events[-1]["event"] == "error"
    assert "input not found" in events[-1]["message"] and "\n" not in events[-1]["message"]
    assert not any(e["event"] == "done" for e in events)
    assert_one_line_error(proc, "input not found")
    assert not (tmp_path / "out").exists()
