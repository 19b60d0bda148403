"""Readers of the extra training layouts (``LiverSegLib.training.mask_sources``) on the real files.

The 3D-IRCADb, LiTS and HCC-TACE files live only in ``../shared/data`` beside a development checkout: those tests
skip without it. The TotalSegmentator maps come with the pip-fetched sample data (``load_case``). Only patient 19's
IRCAD archive is read (its CT and reference labels are in ``../shared/data/ircadb1_19``), to keep the file fast.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from LiverSegLib.data.samples import _label_onto, load_case, shared_data_dir
from LiverSegLib.errors import InputError
from LiverSegLib.pipeline.geometry import _image as sitk_image
from LiverSegLib.training import mask_sources as ms
from LiverSegLib.training.organs import ORGANS
from LiverSegLib.types import Volume

TS_DIR = "tests/reference_files"


def _shared(*parts: str) -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data absent: the IRCAD/LiTS/HCC files live only beside a development checkout")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data lacks {'/'.join(parts)}")
    return path


def _lps_centroid(vol: Volume, mask: np.ndarray) -> np.ndarray:
    return vol.index_to_physical(np.array(ndimage.center_of_mass(mask))[::-1])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def ircad19() -> Volume:
    return ms.read_ircad_masks(_shared("ircadb_masks", "3Dircadb1.19", "MASKS_DICOM.zip"))


@pytest.fixture(scope="module")
def seg19_on_map(ircad19: Volume) -> np.ndarray:
    """Patient 19's reference labels (0, 1 liver, 2 tumour) moved onto the map's grid through patient space."""
    seg = sitk.ReadImage(str(_shared("ircadb1_19", "seg.nii.gz")))
    return sitk.GetArrayFromImage(_label_onto(seg, sitk_image(ircad19.array_zyx, ircad19)))


# ------------------------------------------------------------------------------------------------- vocabularies


def test_tables_cover_the_vocabulary() -> None:
    assert sorted(ms.PAINT_ORDER) == sorted(n for n in ORGANS if n != "background")
    assert ms.PAINT_ORDER.index("liver") > max(ms.PAINT_ORDER.index(v) for v in ("portal_vein", "vena_cava", "aorta"))
    assert ms.PAINT_ORDER[0] == "body" and ms.PAINT_ORDER[-1] == "lesion"
    assert set(ms.IRCAD_FOLDER_TO_ORGAN.values()) <= set(ORGANS)
    assert sorted(ms.TOTALSEG_TO_ORGAN) == list(range(1, 118))
    ts = ms.TOTALSEG_TO_ORGAN
    assert (ts[1], ts[5], ts[51], ts[52], ts[63], ts[64], ts[79], ts[86]) == (
        "spleen", "liver", "heart", "aorta", "vena_cava", "portal_vein", "other", "muscle")


# ------------------------------------------------------------------------------------------------------ 3D-IRCADb


def test_list_ircad_mask_sets() -> None:
    sets = ms.list_ircad_mask_sets(_shared("ircadb_masks"))
    assert len(sets) == 17 and list(sets)[:2] == ["ircad1.2", "ircad1.3"] and list(sets)[-1] == "ircad1.19"
    assert sets["ircad1.19"].name == "MASKS_DICOM.zip" and sets["ircad1.19"].parent.name == "3Dircadb1.19"


def test_ircad19_geometry_labels_and_metadata(ircad19: Volume) -> None:
    a = ircad19.array_zyx
    assert a.dtype == np.uint8 and a.shape == (124, 512, 512)
    assert np.allclose(ircad19.spacing_xyz, (0.703125, 0.703125, 4.0)) and ircad19.origin_xyz == (0.0, 0.0, 0.0)
    assert np.array_equal(ircad19.direction, np.eye(3))
    organs = ["body", "bone", "gallbladder", "lesion", "liver", "portal_vein", "vena_cava"]
    assert ircad19.metadata["organs"] == organs
    assert set(np.unique(a)) == {0, *(ORGANS[n] for n in organs)}
    meta = ircad19.metadata
    assert (meta["source"], meta["patient"], meta["licence"]) == ("3D-IRCADb-01", "ircad1.19", "CC BY-NC-ND 4.0")
    assert meta["folders"]["livercyst"] == "lesion" and meta["folders"]["skin"] == "body" and meta["excluded"] == []


def test_ircad19_liver_matches_the_reference_on_its_ct(ircad19: Volume, seg19_on_map: np.ndarray) -> None:
    a = ircad19.array_zyx
    assert _dice(np.isin(a, (1, 2)), seg19_on_map > 0) > 0.97
    # The reference tumours are the 'livertumors' folder; the map adds the 2.8 ml 'livercyst'.
    assert _dice(a == 2, seg19_on_map == 2) > 0.95


def test_ircad19_orientation_is_anatomical(ircad19: Volume) -> None:
    a = ircad19.array_zyx
    liver, body = _lps_centroid(ircad19, a == 1), _lps_centroid(ircad19, a > 0)
    assert liver[0] < body[0] - 30  # LPS x grows to the patient's left: the liver is on the right
    midline = int(ndimage.center_of_mass(a > 0)[2])
    spine = np.zeros_like(a, bool)  # bone within ~2 cm of the midline: the vertebrae
    spine[..., midline - 30: midline + 30] = a[..., midline - 30: midline + 30] == ORGANS["bone"]
    assert _lps_centroid(ircad19, spine)[1] > liver[1]  # posterior (LPS y grows backwards)


def test_ircad19_lesions_touch_the_liver(ircad19: Volume) -> None:
    a = ircad19.array_zyx
    components, count = ndimage.label(a == ORGANS["lesion"])
    assert count >= 10
    liver = a == ORGANS["liver"]
    for box, index in zip(ndimage.find_objects(components), range(1, count + 1), strict=True):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        near = ndimage.binary_dilation(components[grown] == index)
        assert (near & liver[grown]).any(), f"lesion component {index} does not touch the liver"


def test_ircad19_liver_wins_over_vessels_and_exclude(seg19_on_map: np.ndarray) -> None:
    zip_path = _shared("ircadb_masks", "3Dircadb1.19", "MASKS_DICOM.zip")
    vol = ms.read_ircad_masks(zip_path, exclude=("skin", "BONE", "livertumors", "livercyst", "gallbladder"))
    assert vol.metadata["organs"] == ["liver", "portal_vein", "vena_cava"]
    assert vol.metadata["excluded"] == ["bone", "gallbladder", "livercyst", "livertumors", "skin"]
    # The vessel masks overlap the liver mask; painted below it, they leave the reference liver whole.
    assert np.array_equal(vol.array_zyx == ORGANS["liver"], seg19_on_map > 0)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_ircad_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^3D-IRCADb mask archive not found: .*nowhere\.zip$"):
        ms.read_ircad_masks(tmp_path / "nowhere.zip")
    not_zip = tmp_path / "MASKS_DICOM.zip"
    not_zip.write_text("hello")
    with pytest.raises(InputError, match=r"is not a readable zip archive"):
        ms.read_ircad_masks(not_zip)
    other = _zip(tmp_path / "other.zip", {"PATIENT_DICOM/image_0": b"x"})
    with pytest.raises(InputError, match=r"other\.zip holds no MASKS_DICOM/<organ>/ folders"):
        ms.read_ircad_masks(other)
    odd = _zip(tmp_path / "odd.zip", {"MASKS_DICOM/liver/image_0": b"x", "MASKS_DICOM/heartvalve/image_0": b"x"})
    with pytest.raises(InputError, match=r"mask folder\(s\) \['heartvalve'\] with no organ mapping"):
        ms.read_ircad_masks(odd)
    with pytest.raises(InputError, match=r"exclude names \['livr'\] are not 3D-IRCADb mask folders"):
        ms.read_ircad_masks(odd, exclude=["livr", "heartvalve"])
    with pytest.raises(InputError, match=r"no DICOM series found in .*liver"):
        ms.read_ircad_masks(odd, exclude=["heartvalve"])
    with pytest.raises(InputError, match=r"every mask folder was excluded"):
        ms.read_ircad_masks(odd, exclude=["heartvalve", "liver"])
    for lines in (ms.list_ircad_mask_sets, ms.list_lits_masks, ms.list_unlabelled_series):
        with pytest.raises(InputError, match=r"folder not found: .*absent$"):
            lines(tmp_path / "absent")


# ----------------------------------------------------------------------------------------------------------- LiTS


def test_lits_list_and_one_mask() -> None:
    masks = ms.list_lits_masks(_shared("lits_liver_masks"))
    assert len(masks) == 91 and list(masks)[:3] == ["lits-0", "lits-1", "lits-2"] and list(masks)[-1] == "lits-111"
    vol = ms.read_lits_mask(masks["lits-0"])
    a = vol.array_zyx
    assert a.dtype == np.uint8 and a.shape == (170, 512, 512) and set(np.unique(a)) == {0, 1}
    assert np.allclose(vol.spacing_xyz, (0.703125, 0.703125, 1.0), atol=1e-3)
    assert np.allclose(vol.direction, np.diag([1.0, -1.0, 1.0]))
    assert 500 < np.count_nonzero(a) * vol.voxel_volume_ml < 4500
    centre = vol.index_to_physical((np.array(vol.shape_xyz) - 1) / 2)
    assert _lps_centroid(vol, a == 1)[0] < centre[0] - 20  # on the patient's right (no body to compare with)
    meta = vol.metadata
    assert (meta["source"], meta["licence"], meta["case"], meta["kind"]) == ("LiTS", "CC BY-NC-SA 4.0", "lits-0",
                                                                             "label")


def test_lits_bad_inputs(tmp_path: Path) -> None:
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 2, 3], arr[2, 2, 2] = 1, 7
    path = tmp_path / "segmentation-5.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match=r"segmentation-5\.nii\.gz holds values other than 0/1 \(7\)"):
        ms.read_lits_mask(path)
    with pytest.raises(InputError, match=r"^input not found: .*segmentation-9\.nii\.gz"):
        ms.read_lits_mask(tmp_path / "segmentation-9.nii.gz")
    arr[2, 2, 2] = 0
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert ms.read_lits_mask(path).metadata["case"] == "lits-5"


# -------------------------------------------------------------------------------------------------- unlabelled CT


def test_unlabelled_series(tmp_path: Path) -> None:
    series = ms.list_unlabelled_series(_shared("hcc_tace_unlabelled"))
    assert [p.name for p in series] == ["HCC_006_s103.nii.gz", "HCC_009_s103.nii.gz", "HCC_009_s105.nii.gz",
                                        "HCC_009_s107.nii.gz", "HCC_009_s4.nii.gz"]
    vol = ms.read_unlabelled(series[1])
    assert vol.array_zyx.shape == (69, 512, 512) and vol.array_zyx.dtype == np.int16
    assert np.allclose(vol.spacing_xyz[2], 2.5) and vol.metadata["series"] == "HCC_009_s103"
    assert (vol.metadata["licence"], vol.metadata["source"]) == ("CC BY 4.0", "TCIA HCC-TACE-Seg")
    for name in (".hidden.nii.gz", "README.txt", "a.nii.gz", "b.nii"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in ms.list_unlabelled_series(tmp_path)] == ["a.nii.gz", "b.nii"]


# ------------------------------------------------------------------------------------------------ TotalSegmentator


@pytest.fixture(scope="module")
def ts_ct() -> tuple[Volume, Volume, Path]:
    ct, label = load_case("ts_example_ct")
    return ct, label, Path(ct.metadata["path"]).parent


def test_totalsegmentator_map_on_its_ct(ts_ct: tuple[Volume, Volume, Path]) -> None:
    ct, label, folder = ts_ct
    vol = ms.read_totalsegmentator_map(folder / "example_seg_fast_force_split.nii.gz", ct)
    a = vol.array_zyx
    assert vol.same_grid(ct) and a.dtype == np.uint8
    assert np.array_equal(a == ORGANS["liver"], label.array_zyx == 1)
    assert {"liver", "spleen", "kidney", "muscle", "bone", "lung", "bowel", "body"} <= set(vol.metadata["organs"])
    assert "heart" not in vol.metadata["organs"] and "lesion" not in vol.metadata["organs"]
    hu = ct.array_zyx
    assert hu[a == ORGANS["lung"]].mean() < -600 and hu[a == ORGANS["bone"]].mean() > 150
    assert -150 < hu[a == ORGANS["body"]].mean() < 50  # fat and unlabelled soft tissue
    assert hu[a == 0].mean() < -800  # outside the body: air (and the table)
    assert _lps_centroid(vol, a == ORGANS["spleen"])[0] > _lps_centroid(vol, a == ORGANS["liver"])[0] + 100
    plain = ms.read_totalsegmentator_map(folder / "example_seg_fast_force_split.nii.gz")
    assert "body" not in plain.metadata["organs"] and np.array_equal(plain.array_zyx == 1, a == 1)


def test_totalsegmentator_map_with_flipped_rows_lands_on_the_dicom() -> None:
    ct, label = load_case("ts_example_dicom")
    folder = Path(ct.metadata["path"]).parent
    vol = ms.read_totalsegmentator_map(folder / "example_seg_dicom.nii.gz", ct)
    assert vol.same_grid(ct) and np.array_equal(vol.array_zyx == ORGANS["liver"], label.array_zyx == 1)
    assert ct.array_zyx[vol.array_zyx == ORGANS["liver"]].mean() > 50  # contrast liver (~89 HU; flipped: ~ -75)


def test_totalsegmentator_bad_inputs(tmp_path: Path, ts_ct: tuple[Volume, Volume, Path]) -> None:
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 1, 1] = 200
    path = tmp_path / "map.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match=r"map\.nii\.gz holds values outside the integers 0-117 \(range 0 to 200\)"):
        ms.read_totalsegmentator_map(path)
    arr[1, 1, 1] = 5
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match=r"does not lie on the CT's voxel grid"):
        ms.read_totalsegmentator_map(path, ts_ct[0])
    with pytest.raises(InputError, match=r"^input not found: "):
        ms.read_totalsegmentator_map(tmp_path / "missing.nii.gz")
