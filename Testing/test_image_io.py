"""Tests of LiverSegLib.io: geometry round trips (NIfTI/NRRD/MHA/DICOM), RAS->LPS, and every refused input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from scipy.spatial.transform import Rotation

from LiverSegLib.errors import InputError
from LiverSegLib.io import MAX_VOXELS, output_extension_for, read_volume, write_volume
from LiverSegLib.types import Volume

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-123.25, 45.5, -310.75)
OBLIQUE = Rotation.from_euler("xy", [20, -20], degrees=True).as_matrix()  # ~20 degrees about two axes
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcmqi-ct3slice"


def _volume(shape=(7, 9, 11), dtype=np.int16) -> Volume:
    array = (np.arange(np.prod(shape)).reshape(shape) % 2000 - 1000).astype(dtype)
    return Volume(array, SPACING, ORIGIN, OBLIQUE)


def _assert_same_geometry(a: Volume, b: Volume, atol: float) -> None:
    assert a.array_zyx.shape == b.array_zyx.shape
    np.testing.assert_allclose(a.spacing_xyz, b.spacing_xyz, atol=atol)
    np.testing.assert_allclose(a.origin_xyz, b.origin_xyz, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


def _error(path) -> str:
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message  # one line, no ITK dump
    return message


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(("name", "fmt", "atol"), [
    ("ct.nii.gz", "nifti", 1e-4),  # NIfTI stores its affine as float32
    ("ct.nii", "nifti", 1e-4),
    ("ct.nrrd", "nrrd", 1e-9),
    ("ct.nhdr", "nrrd", 1e-9),
    ("ct.mha", "mha", 1e-9),
    ("ct.mhd", "mha", 1e-9),
])
def test_round_trip_keeps_geometry_values_and_dtype(tmp_path, name, fmt, atol):
    volume = _volume()
    written = write_volume(volume, tmp_path / name)
    back = read_volume(written)
    _assert_same_geometry(volume, back, atol)
    assert back.array_zyx.dtype == np.int16
    np.testing.assert_array_equal(back.array_zyx, volume.array_zyx)
    assert back.metadata["format"] == fmt and back.metadata["path"] == str(written)
    # a voxel's physical position survives, not just the fields (catches xyz/zyx mix-ups)
    np.testing.assert_allclose(back.index_to_physical([10, 8, 6]), volume.index_to_physical([10, 8, 6]), atol=1e-3)


def test_compression_is_on_by_default_and_can_be_turned_off(tmp_path):
    volume = Volume(np.zeros((20, 40, 40), np.int16), SPACING, ORIGIN)
    small = write_volume(volume, tmp_path / "c.nrrd")
    big = write_volume(volume, tmp_path / "u.nrrd", compress=False)
    assert b"encoding: gzip" in small.read_bytes()[:400]
    assert b"encoding: raw" in big.read_bytes()[:400]
    assert big.stat().st_size > 20 * 40 * 40 * 2 > small.stat().st_size
    with gzip.open(write_volume(volume, tmp_path / "c.nii.gz")) as fh:  # really gzip
        assert len(fh.read()) >= 20 * 40 * 40 * 2


def test_write_refuses_unknown_extension_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"unsupported output file type: .*x\.png"):
        write_volume(_volume(), tmp_path / "x.png")
    with pytest.raises(InputError, match="output folder does not exist"):
        write_volume(_volume(), tmp_path / "nope" / "x.nrrd")


def test_bool_and_float16_arrays_are_written(tmp_path):
    mask = Volume(np.eye(4, dtype=bool)[None].repeat(3, 0), SPACING, ORIGIN)
    assert read_volume(write_volume(mask, tmp_path / "m.nrrd")).array_zyx.dtype == np.uint8
    half = Volume(np.ones((2, 3, 4), np.float16), SPACING, ORIGIN)
    assert read_volume(write_volume(half, tmp_path / "h.mha")).array_zyx.dtype == np.float32


@pytest.mark.parametrize("oblique", [False, True])
def test_nifti_ras_affine_is_read_as_lps(tmp_path, oblique):
    rotation = OBLIQUE if oblique else np.eye(3)
    ras = np.eye(4)
    ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag(SPACING)  # stored "LPS-like" in RAS terms
    ras[:3, 3] = (12.5, -40.25, 88.0)
    data = np.random.default_rng(0).integers(-1000, 1000, size=(11, 9, 7)).astype(np.int16)  # [i, j, k]
    image = nib.Nifti1Image(data, ras)
    image.set_qform(ras, code=1)
    image.set_sform(ras, code=1)
    path = tmp_path / "ras.nii.gz"
    nib.save(image, path)

    volume = read_volume(path)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ras[:3, :4]  # LPS = diag(-1, -1, 1) @ RAS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    np.testing.assert_allclose(volume.spacing_xyz, SPACING, atol=1e-4)
    np.testing.assert_allclose(volume.spacing_xyz, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.direction, lps[:, :3] / spacing, atol=1e-5)
    np.testing.assert_allclose(volume.origin_xyz, lps[:, 3], atol=1e-4)
    np.testing.assert_array_equal(volume.array_zyx, data.transpose(2, 1, 0))


def test_output_extension_follows_the_input_family():
    def ext(fmt, path):
        return output_extension_for(Volume(np.zeros((1, 1, 1)), SPACING, ORIGIN, metadata={"format": fmt,
                                                                                          "path": path}))
    assert ext("nifti", "/a/ct.nii.gz") == ".nii.gz"
    assert ext("nifti", "/a/CT.NII") == ".nii"
    assert ext("nrrd", "/a/ct.nhdr") == ".nrrd"
    assert ext("mha", "/a/ct.mhd") == ".mha"
    assert ext("dicom", "/a/series") == ".nrrd"
    assert output_extension_for(Volume(np.zeros((1, 1, 1)), SPACING, ORIGIN)) == ".nrrd"


# ---------------------------------------------------------------- DICOM


def _write_dicom_series(volume: Volume, folder: Path, series_uid: str, first_number: int = 1) -> None:
    """Write ``volume`` as a CT series, one file per slice, with the geometry tags a scanner writes."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.array_zyx)
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(volume.direction.ravel().tolist())
    d = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))  # row (i) and column (j) cosines
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in {
            "0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0010|0020": "PHANTOM-1", "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{volume.spacing_xyz[1]:.10f}\\{volume.spacing_xyz[0]:.10f}",
            "0020|0013": str(first_number + k), "0008|0018": f"{series_uid}.{k + 1}",
        }.items():
            slice_.SetMetaData(tag, value)
        # file names run against slice position so that only geometric sorting gives the right order
        writer.SetFileName(str(folder / f"slice{first_number + image.GetDepth() - k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_geometry_and_metadata(tmp_path):
    volume = _volume(shape=(5, 12, 10))
    folder = tmp_path / "series"
    _write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.1")
    _write_dicom_series(_volume(shape=(2, 12, 10)), folder, "1.2.826.0.1.3680043.2.1125.2", first_number=50)

    # two series: refused in one line that lists both, unless one is chosen
    with pytest.raises(InputError, match=r"holds 2 DICOM series: 1\.2\.826\.0\.1\.3680043\.2\.1125\.1 \(CT, 5 "
                                         r"files\); 1\.2\.826\.0\.1\.3680043\.2\.1125\.2 \(CT, 2 files\); choose one "
                                         r"with --series UID"):
        read_volume(folder)
    with pytest.raises(InputError, match=r"series 1\.2\.3 is not in .* it holds: "):
        read_volume(folder, series_uid="1.2.3")
    back = read_volume(folder, series_uid="1.2.826.0.1.3680043.2.1125.1")
    _assert_same_geometry(volume, back, atol=1e-4)
    np.testing.assert_array_equal(back.array_zyx, volume.array_zyx)
    assert back.metadata["format"] == "dicom"
    assert back.metadata["series_instance_uid"] == "1.2.826.0.1.3680043.2.1125.1"
    assert back.metadata["study_instance_uid"] == "1.2.826.0.1.3680043.2.1125.7"
    assert back.metadata["patient_id"] == "PHANTOM-1"
    assert len(back.metadata["dicom_files"]) == 5
    assert read_volume(folder, series_uid="1.2.826.0.1.3680043.2.1125.2").shape_xyz == (10, 12, 2)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """A gap in the slice positions (one file lost in transfer) is refused: every later slice would be misplaced."""
    volume = _volume(shape=(6, 12, 10))
    folder = tmp_path / "series"
    _write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.1")
    assert read_volume(folder).shape_xyz == (10, 12, 6)
    files = sorted(folder.iterdir())
    files[2].unlink()
    with pytest.raises(InputError, match=r"missing slices or uneven slice spacing \(a gap differs from the .* mm "
                                         r"spacing by .* mm\); export the complete series"):
        read_volume(folder)


def test_real_dicom_ct_matches_its_segmentation_grid():
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED} (real DICOM CT from dcmqi) is missing on this checkout")
    ct = read_volume(SHARED / "ct-3slice")
    assert ct.array_zyx.shape == (3, 512, 512)
    np.testing.assert_allclose(ct.spacing_xyz, (0.810547, 0.810547, 1.0), atol=1e-5)
    np.testing.assert_allclose(ct.origin_xyz, (-235.2, -226.8, -128.69), atol=1e-4)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-9)
    assert ct.metadata["modality"] == "CT" and ct.metadata["file_count"] == 3
    seg = read_volume(SHARED / "liver_seg.nrrd")
    assert ct.same_grid(seg)
    # rescaled to HU: air outside the body near -1000, padding at -3024, nothing like raw unsigned values
    assert ct.array_zyx.min() == -3024 and (np.abs(ct.array_zyx + 1000) < 60).any()


# ---------------------------------------------------------------- refused input


def test_missing_path(tmp_path):
    assert _error(tmp_path / "nope.nii.gz") == f"input not found: {tmp_path / 'nope.nii.gz'} (check the path)"


def test_unsupported_file_type(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG....")
    assert _error(tmp_path / "scan.png").startswith(f"unsupported input: {tmp_path / 'scan.png'} (pass a .nii")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nrrd").touch()
    assert "input file is empty (0 bytes)" in _error(tmp_path / "empty.nrrd")


def test_empty_folder_and_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _error(tmp_path / "empty").startswith("input folder is empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    assert _error(tmp_path / "notes").startswith(f"no DICOM series found in {tmp_path / 'notes'}")


def test_garbage_bytes_named_nifti(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    message = _error(path)
    assert message.startswith(f"cannot read {path}:") and "NIfTI" in message
    assert "sitk::ERROR" not in message and ".cxx" not in message


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.Image([30, 20], sitk.sitkInt16), str(tmp_path / "xray.nrrd"))
    assert "is a 2D image (30x20); LiverSeg needs a 3D CT volume" in _error(tmp_path / "xray.nrrd")


def test_4d_image(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), tmp_path / "dyn.nii.gz")
    assert "is a 4D image (4x5x6x2)" in _error(tmp_path / "dyn.nii.gz")


def test_single_slice_3d_is_accepted(tmp_path):
    volume = write_volume(Volume(np.ones((1, 8, 8), np.int16), SPACING, ORIGIN), tmp_path / "one.nrrd")
    assert read_volume(volume).array_zyx.shape == (1, 8, 8)


def test_rgb_image(tmp_path):
    sitk.WriteImage(sitk.Image([6, 6, 6], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.mha"))
    assert _error(tmp_path / "rgb.mha").endswith("has 3 components per voxel (RGB/vector); "
                                                 "LiverSeg needs a grey-scale CT volume")


def test_all_nan_float_image(tmp_path):
    path = write_volume(Volume(np.full((3, 4, 5), np.nan, np.float32), SPACING, ORIGIN), tmp_path / "nan.nrrd")
    assert "holds no finite value (all NaN or infinite)" in _error(path)
    partly = np.full((3, 4, 5), np.inf, np.float32)
    partly[2, 3, 4] = 1.0  # one finite voxel is enough to be read
    back = read_volume(write_volume(Volume(partly, SPACING, ORIGIN), tmp_path / "p.nrrd"))
    assert np.isfinite(back.array_zyx).sum() == 1


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_header_claiming_a_huge_size_is_refused_before_allocation(tmp_path, encoding):
    path = tmp_path / "huge.nrrd"
    path.write_bytes(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 3000\nencoding: {encoding}\n"
                     "endian: little\n\n".encode() + b"\0" * 64)
    message = _error(path)  # reaching here at all shows nothing tried to allocate 60 TB
    assert "declares 100000x100000x3000 voxels" in message and str(MAX_VOXELS) in message


@pytest.mark.parametrize("name", ["cut.nrrd", "cut.nii", "cut.mha"])
def test_truncated_uncompressed_file(tmp_path, name):
    path = write_volume(_volume(), tmp_path / name, compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    message = _error(path)
    assert message.startswith(f"{path} is truncated: its header declares {7 * 9 * 11 * 2} bytes of voxel data")
    assert f"only {7 * 9 * 11 * 2 - 100} are there" in message


@pytest.mark.parametrize("name", ["d.nhdr", "d.mhd"])
def test_detached_header_with_truncated_or_missing_data_file(tmp_path, name):
    header = write_volume(_volume(), tmp_path / name, compress=False)
    raw = next(p for p in tmp_path.iterdir() if p.suffix == ".raw")
    raw.write_bytes(raw.read_bytes()[:10])
    assert f"{header} is truncated: its header declares {7 * 9 * 11 * 2} bytes" in _error(header)
    raw.unlink()
    message = _error(header)  # NRRD's reader notices first, MetaImage's only when reading voxels: we check it
    assert "couldn't open" in message if name.endswith(".nhdr") else "voxel data file that does not exist" in message
