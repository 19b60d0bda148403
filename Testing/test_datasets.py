"""Training data sets on disk: layout detection, pairing, loading with label maps, K-fold splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from LiverSegLib.errors import InputError
from LiverSegLib.training.datasets import CasePair, detect_layout, list_cases, load_pair, split_folds

SHAPE = (4, 5, 6)  # z, y, x: tiny files, written in milliseconds


def write(path: Path, array: np.ndarray | None = None, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
          dtype: type = np.uint8) -> Path:
    """A tiny 3D image; zeros unless ``array`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(SHAPE, dtype=dtype) if array is None else array
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def junk(path: Path) -> None:
    """A macOS resource-fork file: image-like name, garbage content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07Mac OS X        ")


def test_lits_layout_with_subfolders(tmp_path: Path) -> None:
    for batch, n, ext in (("Training Batch 1", 0, ".nii"), ("Training Batch 2", 10, ".nii.gz"),
                          ("Training Batch 2", 2, ".nii.gz")):
        write(tmp_path / batch / f"volume-{n}{ext}")
        write(tmp_path / batch / f"segmentation-{n}{ext}")
    junk(tmp_path / "Training Batch 1" / "._volume-0.nii")
    assert detect_layout(tmp_path) == "lits"
    cases = list_cases(tmp_path)
    assert [c.name for c in cases] == ["lits-0", "lits-10", "lits-2"]
    assert cases[1] == CasePair("lits-10", tmp_path / "Training Batch 2" / "volume-10.nii.gz",
                                tmp_path / "Training Batch 2" / "segmentation-10.nii.gz")
    assert list_cases(str(tmp_path)) == cases  # deterministic, str accepted


def test_lits_missing_segmentation_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "volume-1.nii")
    write(tmp_path / "segmentation-1.nii")
    write(tmp_path / "batch" / "volume-3.nii.gz")
    with pytest.raises(InputError, match=r"volume-3\.nii\.gz has no label"):
        list_cases(tmp_path)


def _msd(root: Path, with_json: bool = True) -> None:
    for i in (0, 1):
        write(root / "imagesTr" / f"liver_{i}.nii.gz")
        write(root / "labelsTr" / f"liver_{i}.nii.gz")
    junk(root / "imagesTr" / "._liver_0.nii.gz")
    junk(root / "labelsTr" / "._liver_0.nii.gz")
    if with_json:
        training = [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in (1, 0)]
        (root / "dataset.json").write_text(json.dumps({"name": "Liver", "training": training, "test": []}))


@pytest.mark.parametrize("with_json", [True, False])
def test_msd_layout_ignores_macos_junk(tmp_path: Path, with_json: bool) -> None:
    _msd(tmp_path, with_json)
    assert detect_layout(tmp_path) == "msd"
    cases = list_cases(tmp_path)
    assert [c.name for c in cases] == ["liver_0", "liver_1"]
    assert cases[0].image.resolve() == (tmp_path / "imagesTr" / "liver_0.nii.gz").resolve()
    assert cases[0].label.resolve() == (tmp_path / "labelsTr" / "liver_0.nii.gz").resolve()


def test_msd_dataset_json_listing_a_missing_file(tmp_path: Path) -> None:
    _msd(tmp_path)
    (tmp_path / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(InputError, match=r"liver_1\.nii\.gz, which does not exist"):
        list_cases(tmp_path)


def test_pairs_layout_with_images_and_labels_folders(tmp_path: Path) -> None:
    for name in ("b.nii.gz", "a.nrrd"):
        write(tmp_path / "images" / name)
        write(tmp_path / "labels" / name)
    assert detect_layout(tmp_path) == "pairs"
    cases = list_cases(tmp_path)
    assert [(c.name, c.image.name, c.label.parent.name) for c in cases] == [("a", "a.nrrd", "labels"),
                                                                           ("b", "b.nii.gz", "labels")]


def test_pairs_layout_with_suffixes(tmp_path: Path) -> None:
    pairs = {"x": ("x.nii.gz", "x_seg.nii.gz"), "y": ("y.nrrd", "y-label.nrrd"), "z": ("z.mha", "z_labels.mha"),
             "w": ("w.nii", "w_mask.nii"), "v": ("v.nii.gz", "v_label.nii.gz"), "u": ("u.mhd", "u-seg.mhd")}
    for image, label in pairs.values():
        write(tmp_path / image)
        write(tmp_path / label)
    (tmp_path / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "pairs"
    cases = list_cases(tmp_path)
    assert [c.name for c in cases] == sorted(pairs)
    assert all((c.image.name, c.label.name) == pairs[c.name] for c in cases)


def test_pairs_image_without_label(tmp_path: Path) -> None:
    write(tmp_path / "a.nii.gz")
    write(tmp_path / "a_seg.nii.gz")
    write(tmp_path / "b.nii.gz")
    with pytest.raises(InputError, match=r"b\.nii\.gz has no label"):
        list_cases(tmp_path)


def test_unrecognised_folder_names_the_three_layouts(tmp_path: Path) -> None:
    write(tmp_path / "scan.nii.gz")
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "LiTS" in message and "MSD" in message and "pairs" in message
    with pytest.raises(InputError, match="could not recognise"):
        list_cases(tmp_path)


def test_missing_folder_and_layout_without_pairs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(InputError, match="no complete image/label pair"):
        list_cases(tmp_path)


def test_load_pair_maps_labels(tmp_path: Path) -> None:
    ct = write(tmp_path / "ct.nii.gz", np.full(SHAPE, 40, np.int16), dtype=np.int16)
    values = np.zeros(SHAPE, np.uint8)
    values[0], values[1], values[2] = 5, 7, 2
    seg = write(tmp_path / "seg.nii.gz", values)
    image, label = load_pair(CasePair("c", ct, seg), {5: 1})
    assert image.array_zyx.dtype == np.int16 and label.array_zyx.dtype == np.uint8
    assert np.all(label.array_zyx[0] == 1) and not label.array_zyx[1:].any()  # 7 and 2 are not in the map
    assert label.metadata["unmapped_values"] == [2, 7] and label.same_grid(image)

    _, identity = load_pair(CasePair("c", ct, seg))  # default: 0/1/2 kept, anything else -> 0
    assert np.all(identity.array_zyx[2] == 2) and not identity.array_zyx[:2].any()

    floats = write(tmp_path / "float.nii.gz", values.astype(np.float32), dtype=np.float32)
    assert np.array_equal(load_pair(CasePair("c", ct, floats))[1].array_zyx, identity.array_zyx)
    with pytest.raises(InputError, match="label_map targets"):
        load_pair(CasePair("c", ct, seg), {5: 3})


def test_load_pair_refuses_a_label_off_the_grid(tmp_path: Path) -> None:
    ct = write(tmp_path / "ct.nii.gz", dtype=np.int16)
    other_shape = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 5, 6), np.uint8)), str(other_shape))
    with pytest.raises(InputError, match="case lits-4: label grid"):
        load_pair(CasePair("lits-4", ct, other_shape))
    other_spacing = write(tmp_path / "spaced.nii.gz", spacing=(1.0, 1.0, 2.01))
    with pytest.raises(InputError, match="case lits-5: label spacing"):
        load_pair(CasePair("lits-5", ct, other_spacing))
    near = write(tmp_path / "near.nii.gz", spacing=(1.0, 1.0, 2.0005))  # within 1e-3 relative: accepted
    assert load_pair(CasePair("ok", ct, near))[1].array_zyx.shape == SHAPE


def test_split_folds_cover_every_case_once() -> None:
    names = [f"case{i}" for i in range(7)]
    folds = split_folds(names, 3, seed=1)
    assert len(folds) == 3
    vals = [v for _, v in folds]
    assert sorted(n for v in vals for n in v) == sorted(names)
    assert sorted(len(v) for v in vals) == [2, 2, 3]
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert split_folds(names, 3, seed=1) == folds
    assert split_folds(names[::-1], 3, seed=1) == folds  # input order does not matter
    assert any(split_folds(names, 3, seed=s) != folds for s in range(2, 6))
    for k in (1, 8):
        with pytest.raises(ValueError):
            split_folds(names, k)
