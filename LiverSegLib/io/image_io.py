"""Read and write CT volumes (NIfTI, NRRD, MetaImage, DICOM series) as :class:`~LiverSegLib.types.Volume`.

SimpleITK does the reading and writing, so geometry is ITK's: LPS patient coordinates, with NIfTI's RAS
already converted by ITK. Bad input is refused with a one-line :class:`~LiverSegLib.errors.InputError`; for
single files the header is checked before any voxel memory is allocated.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the field's universal alias)

from LiverSegLib.errors import InputError
from LiverSegLib.io._itk import itk_message, itk_warnings_off
from LiverSegLib.io.dicom_series import read_dicom_folder
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


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in _FORMATS.items() if name.endswith(suffix)), None)


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
    match = re.search(rb"\r?\n\r?\n", head)  # NRRD allows CRLF line ends
    body = head if match is None else head[: match.start() + 1]
    return body.decode("latin-1").splitlines(), (len(head) if match is None else match.end())


# What an encoding needs on disk at least for n bytes of voxels (_check_declared_size): deflate (gzip, zlib) cannot
# compress better than 1032:1, hex spends two characters per byte, and text at least one character per value.
_DEFLATE_MAX_RATIO = 1032
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "deflate", "gz": "deflate", "hex": "hex", "ascii": "text", "text": "text",
                   "txt": "text", "bzip2": "bzip2", "bz2": "bzip2"}
# NIfTI datatype code -> bytes per voxel (niftilib reads the voxels by datatype; bitpix is only advisory)
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
                1792: 16, 2048: 32, 2304: 4}


def _ints(text: str) -> list[int]:
    """Whitespace-separated integers, or [] when one is not (ITK may still parse the field its own way)."""
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        return []


def _data_layout(path: Path, fmt: str, reader: sitk.ImageFileReader) -> tuple[Path, int, str, list[int]] | None:
    """Where the voxels are and how they are stored: (file, least offset of the voxels in it, encoding, the header's
    own sizes or [] when ITK's are to be used).

    The encoding is "raw", "deflate", "hex", "text" or "bzip2". Multi-file layouts and unknown encodings give None
    (ITK's reader has the last word on them). Offsets err low, so that the checks built on them never refuse a
    file ITK could read.
    """
    if fmt == "nifti":
        if path.name.lower().endswith(".gz"):
            return path, 0, "deflate", []
        vox_offset = float(reader.GetMetaData("vox_offset")) if reader.HasMetaDataKey("vox_offset") else 0.0
        return path, int(vox_offset) if np.isfinite(vox_offset) and vox_offset > 0 else 0, "raw", []
    lines, header_end = _text_header(path)
    if fmt == "nrrd":
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if v}
        sizes = _ints(fields.get("sizes", ""))
        encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "raw").lower())
        skip = int(fields.get("byte skip", "0"))  # -1: the voxels are the file's last bytes
        skip = skip if skip > 0 and encoding == "raw" else 0  # (after decoding for other encodings)
        data_file = fields.get("data file", fields.get("datafile"))
        if encoding is None or (data_file is not None and (data_file.startswith("LIST") or " " in data_file)):
            return None  # unknown encodings and multi-file layouts are not checked
        return (path, header_end + skip, encoding, sizes) if data_file is None else \
            (path.parent / data_file, skip, encoding, sizes)
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in lines) if v}
    sizes = _ints(fields.get("DimSize", ""))
    encoding = "deflate" if fields.get("CompressedData", "False").lower() == "true" else "raw"
    data_file = fields.get("ElementDataFile", "LOCAL")
    if data_file == "LOCAL":
        with open(path, "rb") as fh:  # MetaImage data starts right after the ElementDataFile line
            head = fh.read(65536)
        start = head.find(b"ElementDataFile")
        return (path, head.index(b"\n", start) + 1, encoding, sizes) if start >= 0 and b"\n" in head[start:] \
            else None
    if data_file.startswith("LIST") or "%" in data_file or " " in data_file:
        return None
    return path.parent / data_file, 0, encoding, sizes


def _check_declared_size(path: Path, fmt: str, reader: sitk.ImageFileReader) -> None:
    """Refuse a header whose voxel data cannot be in the file(s), before ITK allocates the image.

    SimpleITK reports sizes in 32 bits (a header's 4294967297 reads as 1), so the header's own sizes are checked
    too. Compressed and text encodings are bounded by the least number of bytes they can hold the voxels in.
    """
    try:
        layout = _data_layout(path, fmt, reader)
    except (ValueError, OverflowError, OSError):  # an odd header field: leave the verdict to ITK's reader
        return
    if layout is None:
        return
    data_path, offset, encoding, sizes = layout
    if any(not 0 < n < 2**31 for n in sizes):
        raise InputError(f"{path} declares {'x'.join(map(str, sizes))} voxels, outside what a CT can be "
                         f"(1 to {MAX_VOXELS}); the header is likely corrupt (re-export the image)")
    if encoding == "bzip2":  # ITK's NRRD reader has no bzip2 decoder (it would fail after allocating the image)
        raise InputError(f"{path} uses NRRD's bzip2 encoding, which cannot be read; re-save it with gzip or raw "
                         "encoding")
    if not data_path.is_file():
        raise InputError(f"{path} refers to a voxel data file that does not exist: {data_path} (copy it alongside)")
    if fmt == "nifti":  # ITK may report the scaled type (scl_slope), so use the stored type
        code = int(reader.GetMetaData("datatype")) if reader.HasMetaDataKey("datatype") else 0
        bytes_per_voxel = _NIFTI_BYTES.get(code, int(reader.GetMetaData("bitpix")) // 8)
    else:
        bytes_per_voxel = _BYTES.get(reader.GetPixelID(), 0) * reader.GetNumberOfComponents()
    values = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    declared = int(np.prod(reader.GetSize(), dtype=np.int64)) * bytes_per_voxel
    available = data_path.stat().st_size - offset
    if encoding == "raw" and bytes_per_voxel and available < declared:
        raise InputError(f"{path} is truncated: its header declares {declared} bytes of voxel data but only "
                         f"{max(available, 0)} are there (re-export or re-copy the file)")
    needed = {"deflate": -(-declared // _DEFLATE_MAX_RATIO), "hex": 2 * declared, "text": values}.get(encoding, 0)
    if available < needed:
        what = "compressed" if encoding == "deflate" else "text-encoded"
        raise InputError(f"{path} is truncated or its header is corrupt: it declares {declared} bytes of voxel data, "
                         f"more than its {max(available, 0)} bytes of {what} data can hold (re-export the image)")


def _check_nifti_header(path: Path) -> None:
    """Refuse what niftilib would either complain about on stderr or silently change: a number of dimensions
    outside 1..7, a spatial size <= 0 (read as 1), an unknown datatype, or NaN/infinity in the voxel size or the
    orientation in use (ITK would spill matrices on stderr, then read a NaN direction or refuse the file)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if path.name.lower().endswith(".gz"):  # what a cut stream holds too (zlib's reader, as ITK's, goes that far)
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 540)
        except zlib.error:  # not gzip: ITK's reader says why
            return
    head = head[:540]
    if len(head) < 348:
        return
    nifti2 = next((e for e in "<>" if struct.unpack_from(e + "i", head)[0] == 540), None)
    if nifti2 and len(head) == 540 and head[4:7] in (b"n+2", b"ni2"):  # NIfTI-2: 64-bit fields
        end = nifti2
        dims, (datatype,) = struct.unpack_from(end + "8q", head, 16), struct.unpack_from(end + "h", head, 12)
        qcode, scode = struct.unpack_from(end + "ii", head, 344)
        pixdim, quatern = struct.unpack_from(end + "8d", head, 104), struct.unpack_from(end + "6d", head, 352)
        srow = struct.unpack_from(end + "12d", head, 400)
    else:  # NIfTI-1 or Analyze; niftilib tells the byte order by dim[0]
        end = next((e for e in "<>" if 1 <= struct.unpack_from(e + "h", head, 40)[0] <= 7), None)
        if end is None:
            raise InputError(f"{path} is not a valid NIfTI file: its header gives "
                             f"{struct.unpack_from('<h', head, 40)[0]} dimensions (1 to 7 are possible); "
                             "the header is corrupt (re-export the image)")
        dims, (datatype,) = struct.unpack_from(end + "8h", head, 40), struct.unpack_from(end + "h", head, 70)
        qcode, scode = struct.unpack_from(end + "hh", head, 252)
        pixdim, quatern = struct.unpack_from(end + "8f", head, 76), struct.unpack_from(end + "6f", head, 256)
        srow = struct.unpack_from(end + "12f", head, 280)
    spatial = dims[1 : 1 + min(max(dims[0], 0), 3)]
    if any(not 0 < n < 2**31 for n in spatial):
        raise InputError(f"{path} declares {'x'.join(map(str, spatial))} voxels, outside what a CT can be "
                         f"(1 to {MAX_VOXELS}); the header is likely corrupt (re-export the image)")
    if datatype not in _NIFTI_BYTES:
        raise InputError(f"{path} has an unknown NIfTI datatype code ({datatype}); the header is corrupt "
                         "(re-export the image)")
    used = list(pixdim[1 : 1 + len(spatial)]) + (list(quatern) if qcode > 0 else []) + \
        (list(srow) if scode > 0 else [])
    if not np.isfinite(used).all():
        raise InputError(f"{path} has NaN or infinite values in its header's voxel size or orientation "
                         "(pixdim/qform/sform); the header is corrupt (re-export the image)")


def _read_file(path: Path, fmt: str) -> tuple[sitk.Image, dict[str, Any]]:
    if path.stat().st_size == 0:
        raise InputError(f"input file is empty (0 bytes): {path} (re-export or re-copy it)")
    if fmt == "nifti":
        _check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with itk_warnings_off():
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            kind = _FORMAT_NAMES[fmt]
            raise InputError(f"cannot read {path}: {itk_message(exc)} (is it a valid {kind} image?)") from None
        _check_image_kind(path, reader.GetDimension(), reader.GetSize(), reader.GetPixelID(),
                          reader.GetNumberOfComponents())
        _check_declared_size(path, fmt, reader)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"cannot read {path}: {itk_message(exc)} (is the file complete?)") from None
    return image, {"format": fmt, "path": str(path)}


def _has_finite_value(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.floating):
        return True
    # slab by slab so that the check never doubles the memory of a large float volume
    return any(np.isfinite(array[k : k + 16]).any() for k in range(0, array.shape[0], 16))


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT volume from an image file or a DICOM series folder.

    Args:
        path: a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, or a folder holding
            a DICOM series.
        series_uid: for a folder holding several DICOM series, the one to read (without it such a folder is
            refused with a line listing its series).

    Returns:
        The volume in its native pixel type, with SimpleITK's geometry (LPS) and ``metadata`` holding at least
        ``format`` ("nifti", "nrrd", "mha" or "dicom") and ``path``; DICOM adds the series/study/frame-of-reference
        UIDs, patient ID, modality and series number when present, and ``dicom_files``: the series' files in slice
        order (the volume's k axis).

    Raises:
        InputError: missing path, unsupported or empty file, empty folder or no DICOM series, several series and
            none chosen, missing slices or uneven spacing, corrupt or truncated file, 2D/4D image,
            RGB/vector/complex voxels, absurd header size, no finite value.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p} (check the path)")
    if p.is_dir():
        image, metadata = read_dicom_folder(p, series_uid, check_kind=_check_image_kind)
    elif _format_of(p) is None:
        raise InputError(f"unsupported input: {p} (pass {_SUPPORTED})")
    else:
        image, metadata = _read_file(p, _format_of(p))
    _check_image_kind(p, image.GetDimension(), image.GetSize(), image.GetPixelID(),
                      image.GetNumberOfComponentsPerPixel())
    spacing, origin = image.GetSpacing(), image.GetOrigin()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # row-major: columns = axes
    if not (np.all(np.isfinite(spacing)) and min(spacing) > 0 and np.isfinite(origin).all()
            and np.isfinite(direction).all()):
        raise InputError(f"{p} has an invalid geometry (voxel size {'x'.join(f'{s:g}' for s in spacing)} mm, "
                         "or a NaN/infinite origin or direction); the header is corrupt (re-export the image)")
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
        raise InputError(f"cannot write {p}: {itk_message(exc)} (check the folder is writable)") from None
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
