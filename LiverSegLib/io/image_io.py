"""Read and write CT volumes (NIfTI, NRRD, MetaImage, DICOM series) as :class:`~LiverSegLib.types.Volume`.

SimpleITK does the reading and writing, so geometry is ITK's: LPS patient coordinates, with NIfTI's RAS
already converted by ITK. Bad input is refused with a one-line :class:`~LiverSegLib.errors.InputError`; for
single files the header is checked before any voxel memory is allocated.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the field's universal alias)

from LiverSegLib.errors import InputError
from LiverSegLib.types import Volume

__all__ = ["read_volume", "write_volume", "output_extension_for", "MAX_VOXELS"]

# Checked longest first so that ".nii.gz" wins over ".gz".
_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}
_SUPPORTED = "a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file or a DICOM series folder"
MAX_VOXELS = 2048 * 2048 * 4096  # far above any CT; a larger header is corrupt, not a scan
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}
_FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "mha": "MetaImage"}
_DICOM_TAGS = {"0020|000d": "study_instance_uid", "0010|0020": "patient_id", "0008|0060": "modality",
               "0008|103e": "series_description"}


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in _FORMATS.items() if name.endswith(suffix)), None)


def _itk_message(exc: RuntimeError) -> str:
    """The first meaningful line of SimpleITK's multi-line error text (no source paths, no object addresses)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in") and not re.search(r"\.(cxx|h|hxx):\d+", ln)]
    if not lines:
        return "unreadable"
    text = re.sub(r"^(sitk::ERROR|itk::ERROR|ITK ERROR):\s*", "", lines[0], flags=re.IGNORECASE)
    text = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    if text.endswith(":") and len(lines) > 1:  # "Read: Error reading x:" then a chain whose last line is the cause
        text = re.sub(r"^(\[\w+\]\s*)?\w+:\s*", "", lines[-1])
    return text[:200]


def _check_image_kind(where: Path, dimension: int, size: tuple[int, ...], pixel_id: int, components: int) -> None:
    """Refuse what is not a grey-scale 3D volume: 2D, 4D, RGB/vector, complex, absurd sizes."""
    if dimension == 2:
        raise InputError(f"{where} is a 2D image ({size[0]}x{size[1]}); LiverSeg needs a 3D CT volume "
                         "(for DICOM pass the series folder)")
    if dimension != 3:
        shape = "x".join(str(s) for s in size)
        raise InputError(f"{where} is a {dimension}D image ({shape}); LiverSeg needs a single 3D CT volume "
                         "(extract one time point or channel first)")
    if pixel_id in _COMPLEX:
        raise InputError(f"{where} has complex voxels; LiverSeg needs a grey-scale CT volume")
    if components != 1:
        raise InputError(f"{where} has {components} components per voxel (RGB/vector); "
                         "LiverSeg needs a grey-scale CT volume")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels == 0 or voxels > MAX_VOXELS:
        raise InputError(f"{where} declares {size[0]}x{size[1]}x{size[2]} voxels, outside what a CT can be "
                         f"(1 to {MAX_VOXELS}); the header is likely corrupt (re-export the image)")


def _text_header(path: Path, limit: int = 65536) -> tuple[list[str], int]:
    """Lines of a text header and the byte offset just after it (first blank line, or end of what was read)."""
    with open(path, "rb") as fh:
        head = fh.read(limit)
    end = head.find(b"\n\n")
    body = head if end < 0 else head[: end + 1]
    return body.decode("latin-1").splitlines(), (len(head) if end < 0 else end + 2)


def _raw_data_extent(path: Path, fmt: str, reader: sitk.ImageFileReader) -> tuple[Path, int] | None:
    """(file holding the voxels, offset of the voxels in it) when they are stored uncompressed, else None.

    Only uncompressed files can be compared with their header; compressed or multi-file layouts return None.
    """
    if fmt == "nifti":
        if path.name.lower().endswith(".gz") or not reader.HasMetaDataKey("vox_offset"):
            return None
        return path, int(float(reader.GetMetaData("vox_offset")))
    lines, header_end = _text_header(path)
    if fmt == "nrrd":
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if v}
        skip = int(fields.get("byte skip", "0"))
        if fields.get("encoding", "raw") != "raw" or skip < 0 or int(fields.get("line skip", "0")) != 0:
            return None
        data_file = fields.get("data file", fields.get("datafile"))
        if data_file is None:
            return path, header_end + skip
        if data_file.startswith("LIST") or " " in data_file:  # multi-file layouts are not checked
            return None
        return path.parent / data_file, skip
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in lines) if v}
    if fields.get("CompressedData", "False").lower() == "true" or int(fields.get("HeaderSize", "0")) != 0:
        return None
    data_file = fields.get("ElementDataFile", "LOCAL")
    if data_file == "LOCAL":
        with open(path, "rb") as fh:  # MetaImage data starts right after the ElementDataFile line
            head = fh.read(65536)
        start = head.find(b"ElementDataFile")
        return (path, head.index(b"\n", start) + 1) if start >= 0 and b"\n" in head[start:] else None
    if data_file.startswith("LIST") or "%" in data_file or " " in data_file:
        return None
    return path.parent / data_file, 0


def _check_not_truncated(path: Path, fmt: str, reader: sitk.ImageFileReader) -> None:
    try:
        extent = _raw_data_extent(path, fmt, reader)
    except (ValueError, OSError):  # an odd header field: leave the verdict to ITK's reader
        return
    if extent is None:
        return
    data_path, offset = extent
    if not data_path.is_file():
        raise InputError(f"{path} refers to a voxel data file that does not exist: {data_path} (copy it alongside)")
    if fmt == "nifti":  # ITK may report the scaled type (scl_slope), so use the stored bits per voxel
        bytes_per_voxel = int(reader.GetMetaData("bitpix")) // 8
    else:
        bytes_per_voxel = _BYTES.get(reader.GetPixelID(), 0) * reader.GetNumberOfComponents()
    declared = int(np.prod(reader.GetSize(), dtype=np.int64)) * bytes_per_voxel
    available = data_path.stat().st_size - offset
    if bytes_per_voxel and available < declared:
        raise InputError(f"{path} is truncated: its header declares {declared} bytes of voxel data but only "
                         f"{max(available, 0)} are there (re-export or re-copy the file)")


def _read_file(path: Path, fmt: str) -> tuple[sitk.Image, dict[str, Any]]:
    if path.stat().st_size == 0:
        raise InputError(f"input file is empty (0 bytes): {path} (re-export or re-copy it)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        kind = _FORMAT_NAMES[fmt]
        raise InputError(f"cannot read {path}: {_itk_message(exc)} (is it a valid {kind} image?)") from None
    _check_image_kind(path, reader.GetDimension(), reader.GetSize(), reader.GetPixelID(),
                      reader.GetNumberOfComponents())
    _check_not_truncated(path, fmt, reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {path}: {_itk_message(exc)} (is the file complete?)") from None
    return image, {"format": fmt, "path": str(path)}


def _gdcm_series_ids(folder: Path) -> tuple[str, ...]:
    # GDCM prints a multi-line warning to stderr when a folder holds no series; we report that ourselves.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, dict[str, Any]]:
    series_ids = _gdcm_series_ids(folder)
    if not series_ids:
        if not any(folder.iterdir()):
            raise InputError(f"input folder is empty: {folder} (pass {_SUPPORTED})")
        raise InputError(f"no DICOM series found in {folder} (pass the folder that directly holds the CT's "
                         "DICOM files, or an image file)")
    # GDCM sorts each series' files by slice position along the slice normal (IPPSorter).
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series_ids}
    uid = max(series_ids, key=lambda u: len(files[u]))
    first = sitk.ImageFileReader()  # the first slice's header: pixel kind and identifying tags, no voxels
    first.SetFileName(files[uid][0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {_itk_message(exc)}") from None
    size = (*first.GetSize()[:2], len(files[uid]))
    _check_image_kind(folder, 3, size, first.GetPixelID(), first.GetNumberOfComponents())
    metadata: dict[str, Any] = {"format": "dicom", "path": str(folder), "series_instance_uid": uid,
                                "file_count": len(files[uid])}
    for tag, key in _DICOM_TAGS.items():
        if first.HasMetaDataKey(tag) and first.GetMetaData(tag).strip():
            metadata[key] = first.GetMetaData(tag).strip()
    if len(series_ids) > 1:
        metadata["series_in_folder"] = len(series_ids)
        metadata["series_choice"] = f"read the series with the most files ({len(files[uid])}) of {len(series_ids)}"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[uid])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {_itk_message(exc)}") from None
    return image, metadata


def _has_finite_value(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.floating):
        return True
    # slab by slab so that the check never doubles the memory of a large float volume
    return any(np.isfinite(array[k : k + 16]).any() for k in range(0, array.shape[0], 16))


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a CT volume from an image file or a DICOM series folder.

    Args:
        path: a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, or a folder holding
            a DICOM series (when it holds several, the series with the most files is read and
            ``metadata["series_choice"]`` says so).

    Returns:
        The volume in its native pixel type, with SimpleITK's geometry (LPS) and ``metadata`` holding at least
        ``format`` ("nifti", "nrrd", "mha" or "dicom") and ``path``; DICOM adds the series/study UIDs, patient
        ID and modality when present.

    Raises:
        InputError: missing path, unsupported or empty file, empty folder or no DICOM series, corrupt or
            truncated file, 2D/4D image, RGB/vector/complex voxels, absurd header size, no finite value.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p} (check the path)")
    if p.is_dir():
        image, metadata = _read_dicom_folder(p)
    elif _format_of(p) is None:
        raise InputError(f"unsupported input: {p} (pass {_SUPPORTED})")
    else:
        image, metadata = _read_file(p, _format_of(p))
    _check_image_kind(p, image.GetDimension(), image.GetSize(), image.GetPixelID(),
                      image.GetNumberOfComponentsPerPixel())
    spacing, origin = image.GetSpacing(), image.GetOrigin()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # row-major: columns = axes
    array = sitk.GetArrayFromImage(image)  # [k, j, i], native dtype
    del image  # the copy above is all we keep; free ITK's buffer now
    if not _has_finite_value(array):
        raise InputError(f"{p} holds no finite value (all NaN or infinite); LiverSeg needs a CT in HU")
    return Volume(array, spacing, origin, direction, metadata)


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a volume with SimpleITK, the format chosen by the extension, geometry exactly as in ``volume``.

    Args:
        volume: the volume to write.
        path: target file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd); its folder must exist.
        compress: compress voxel data where the format allows (.nii.gz, .nrrd, .mha); ``False`` gives
            faster, larger files (e.g. temporary files exchanged with Slicer). A ``.nii`` is never compressed.

    Returns:
        The path written.

    Raises:
        InputError: unsupported extension, missing folder, or the write failed (permissions, disk full).
    """
    p = Path(path)
    if _format_of(p) is None:
        raise InputError(f"unsupported output file type: {p} (use .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd)")
    if not p.parent.is_dir():
        raise InputError(f"output folder does not exist: {p.parent} (create it first)")
    array = volume.array_zyx
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:  # ITK has no half-float pixel type
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    use_compression = compress and not p.name.lower().endswith(".nii")
    try:
        sitk.WriteImage(image, str(p), use_compression)
    except RuntimeError as exc:
        raise InputError(f"cannot write {p}: {_itk_message(exc)} (check the folder is writable)") from None
    return p


def output_extension_for(volume: Volume) -> str:
    """Extension for results written beside ``volume``: the same format family as the input.

    NIfTI gives ".nii.gz" (".nii" when the input was an uncompressed .nii), NRRD ".nrrd", MetaImage ".mha"
    (single file, also for .mhd input), and DICOM or anything unknown ".nrrd".
    """
    fmt = volume.metadata.get("format")
    if fmt == "nifti":
        return ".nii" if str(volume.metadata.get("path", "")).lower().endswith(".nii") else ".nii.gz"
    return ".mha" if fmt == "mha" else ".nrrd"
